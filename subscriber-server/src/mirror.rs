//! The cluster mirror: an internal subscriber that delivers the cluster sends (`sendMessageToAll`,
//! `sendMessageToRoom`, `messageError`, `disconnectClient`, and what other workers send to this
//! worker's clients on its own channel) and applies the other workers' presence feed (see
//! `presence.rs`). It runs before the application's handlers of the same message, in its
//! channel's lane.
//!
//! The presence events of the reference's wire format (`clientConnected`, `clientJoinedRoom`,
//! `clientLeftRoom`, `clientDisconnected`) are still published for the application's handlers and
//! for reference workers, but the view of the cluster no longer comes from them: they travel on
//! four channels, in four lanes, in no order relative to each other.

use serde_json::Value;
use subscriber_runtime::{event, Context};

use crate::client::DisconnectReason;
use crate::frame::{ClientId, Frame};
use crate::WebSocket;

/// The framework channels the mirror acts on (besides the presence feed and this worker's own
/// channel).
pub(crate) const CHANNELS: [&str; 4] = [
    event::SEND_MESSAGE_TO_ALL,
    event::SEND_MESSAGE_TO_ROOM,
    event::DISCONNECT_CLIENT,
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
            event::DISCONNECT_CLIENT => {
                let Some(id) = client_id() else { return };
                let conn = self.read().local.get(&id).cloned();
                if let Some(conn) = conn {
                    tracing::info!(client_id = %id, worker_id = %self.inner.worker_id, "disconnecting client on request");
                    conn.close(DisconnectReason::Kicked);
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
            crate::presence::FEED_CHANNEL => self.on_presence_feed(&cx.raw()),
            channel if channel == self.inner.direct_channel.as_str() => self.on_direct(&cx.raw()),
            _ => {}
        }
    }
}
