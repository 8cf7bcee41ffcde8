//! The cluster mirror: an internal subscriber on the framework channels that keeps this worker's
//! view of the other workers' clients and rooms, and delivers the cluster sends
//! (`sendMessageToAll`, `sendMessageToRoom`, `messageError`, `disconnectClient`) to this worker's
//! clients. It runs before the application's handlers of the same message, in its channel's lane.

use std::sync::Arc;

use serde_json::Value;
use subscriber_runtime::{event, Context};

use crate::client::{DisconnectReason, User};
use crate::frame::{ClientId, Frame};
use crate::rooms::Entry;
use crate::WebSocket;

/// The channels the mirror acts on.
pub(crate) const CHANNELS: [&str; 8] = [
    event::SEND_MESSAGE_TO_ALL,
    event::SEND_MESSAGE_TO_ROOM,
    event::CLIENT_CONNECTED,
    event::CLIENT_DISCONNECTED,
    event::DISCONNECT_CLIENT,
    event::CLIENT_JOINED_ROOM,
    event::CLIENT_LEFT_ROOM,
    event::MESSAGE_ERROR,
];

impl WebSocket {
    /// The mirror's action for one message of a framework channel. Never waits.
    pub(crate) fn on_framework_message(&self, cx: &Context) {
        let message = cx.message();
        let client_id = || {
            message
                .get("clientId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(ClientId::from_wire)
        };
        let sender = || {
            cx.envelope()
                .worker_id()
                .map_or_else(|| Arc::from("unknown"), Arc::from)
        };
        match cx.channel() {
            event::SEND_MESSAGE_TO_ALL => {
                // The bytes as published, less the envelope fields.
                if let Some(frame) = Frame::from_utf8(cx.raw()) {
                    let sent = self.broadcast_to_all_clients(frame);
                    tracing::trace!(sent, "sendMessageToAll delivered");
                }
            }
            event::SEND_MESSAGE_TO_ROOM => {
                let Some(room) = message.get("roomName").and_then(Value::as_str) else {
                    return;
                };
                let Some(inner) = message.get("message") else {
                    return;
                };
                let Ok(frame) = Frame::json(inner) else {
                    return;
                };
                let excluded = message
                    .get("excludeClientId")
                    .and_then(Value::as_str)
                    .map(ClientId::from_wire);
                self.room_send(room, &frame, excluded.as_ref());
            }
            event::CLIENT_CONNECTED => {
                let Some(id) = client_id() else { return };
                let worker: Arc<str> = sender();
                let user = message.get("user").and_then(User::from_wire).map(Arc::new);
                let last_activity = message
                    .get("lastActivity")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let mut state = self.write();
                if state.local.contains_key(&id) {
                    return;
                }
                let rooms = state
                    .clients
                    .remove(&id)
                    .map(|e| e.rooms)
                    .unwrap_or_default();
                state.clients.insert(
                    id,
                    Entry {
                        worker_id: worker,
                        user,
                        last_activity,
                        rooms,
                        local: None,
                    },
                );
            }
            event::CLIENT_DISCONNECTED => {
                let Some(id) = client_id() else { return };
                let mut state = self.write();
                if !state.local.contains_key(&id) {
                    state.remove(&id);
                }
            }
            event::DISCONNECT_CLIENT => {
                let Some(id) = client_id() else { return };
                let conn = self.read().local.get(&id).cloned();
                if let Some(conn) = conn {
                    tracing::info!(client_id = %id, worker_id = %self.inner.worker_id, "disconnecting client on request");
                    conn.close(DisconnectReason::Kicked);
                }
            }
            event::CLIENT_JOINED_ROOM => {
                let Some(id) = client_id() else { return };
                let Some(room) = message
                    .get("roomName")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                else {
                    return;
                };
                let mut state = self.write();
                if state.local.contains_key(&id) {
                    return;
                }
                if !state.clients.contains_key(&id) {
                    // Its `clientConnected` was missed (this worker started later): learn it here.
                    let worker = sender();
                    let user = message.get("user").and_then(User::from_wire).map(Arc::new);
                    state.clients.insert(
                        id.clone(),
                        Entry {
                            worker_id: worker,
                            user,
                            last_activity: 0,
                            rooms: Vec::new(),
                            local: None,
                        },
                    );
                }
                state.join(&id, room, self.inner.config.room_policy);
            }
            event::CLIENT_LEFT_ROOM => {
                let Some(id) = client_id() else { return };
                let Some(room) = message.get("room").and_then(Value::as_str) else {
                    return;
                };
                let mut state = self.write();
                if !state.local.contains_key(&id) {
                    state.leave(&id, room);
                }
            }
            event::MESSAGE_ERROR => {
                let Some(id) = client_id() else { return };
                let error = match message.get("error") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "Unknown error".to_owned(),
                };
                self.send_error(&id, &error);
            }
            _ => {}
        }
    }
}
