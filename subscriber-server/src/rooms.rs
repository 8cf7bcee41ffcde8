//! The cluster's clients and rooms as this worker knows them: its own clients, and the others'
//! mirrored from the framework channels (see `mirror.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::client::{Client, Conn, User};
use crate::config::RoomPolicy;
use crate::frame::ClientId;

/// A room membership change to mirror on the other workers.
pub(crate) struct RoomChange {
    pub(crate) joined: bool,
    pub(crate) left: Vec<Arc<str>>,
}

/// What the worker knows about one client of the cluster.
pub(crate) struct Entry {
    pub(crate) worker_id: Arc<str>,
    pub(crate) user: Option<Arc<User>>,
    /// Milliseconds since the Unix epoch, as the owning worker last said (remote clients).
    pub(crate) last_activity: u64,
    pub(crate) rooms: Vec<Arc<str>>,
    pub(crate) local: Option<Arc<Conn>>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) clients: HashMap<ClientId, Entry>,
    pub(crate) local: HashMap<ClientId, Arc<Conn>>,
    pub(crate) rooms: HashMap<Arc<str>, HashMap<ClientId, Option<Arc<Conn>>>>,
}

impl State {
    pub(crate) fn remove(&mut self, id: &ClientId) -> Option<Entry> {
        let entry = self.clients.remove(id)?;
        self.local.remove(id);
        for room in &entry.rooms {
            self.leave_room_only(room, id);
        }
        Some(entry)
    }

    fn leave_room_only(&mut self, room: &str, id: &ClientId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Adds `id` to `room` (leaving its other rooms first under the single-room policy).
    pub(crate) fn join(
        &mut self,
        id: &ClientId,
        room: &str,
        policy: RoomPolicy,
    ) -> Option<RoomChange> {
        let entry = self.clients.get_mut(id)?;
        if entry.rooms.iter().any(|r| &**r == room) {
            return Some(RoomChange {
                joined: false,
                left: Vec::new(),
            });
        }
        let left = match policy {
            RoomPolicy::Multiple => Vec::new(),
            RoomPolicy::Single => std::mem::take(&mut entry.rooms),
        };
        let room: Arc<str> = self
            .rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone());
        entry.rooms.push(room.clone());
        let local = entry.local.clone();
        for old in &left {
            self.leave_room_only(old, id);
        }
        self.rooms
            .entry(room)
            .or_default()
            .insert(id.clone(), local);
        Some(RoomChange { joined: true, left })
    }

    pub(crate) fn leave(&mut self, id: &ClientId, room: &str) -> bool {
        let Some(entry) = self.clients.get_mut(id) else {
            return false;
        };
        let before = entry.rooms.len();
        entry.rooms.retain(|r| &**r != room);
        if entry.rooms.len() == before {
            return false;
        }
        self.leave_room_only(room, id);
        true
    }
}

/// Why a room operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The room name is empty.
    #[error("Room name is required")]
    EmptyName,
    /// The client is not connected to this worker (rooms are joined on the client's worker).
    #[error("client {0} is not connected to this worker")]
    NotLocal(ClientId),
}

/// A client as the worker knows it (connected here or to another worker of the cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    /// The client's id.
    pub id: ClientId,
    /// The instance id of the worker it is connected to.
    pub worker_id: String,
    /// Its authenticated user, if any.
    pub user: Option<User>,
    /// The rooms it is in, sorted.
    pub rooms: Vec<String>,
    /// Whether it is connected to this worker.
    pub local: bool,
    /// When it last sent a message, in milliseconds since the Unix epoch.
    pub last_activity: u64,
}

/// The `user` of a `clientJoinedRoom` message, as the reference's `joinRoom` builds it:
/// `{userId, userType, username}` (defaults: the authenticated id or the client id, `"user"`,
/// `"user_" + 8 characters of the client id`), plus `payload` (the claims) when authenticated.
pub(crate) fn room_user(client: &Client, data: Option<&Value>) -> Value {
    let field = |name: &str| {
        data.and_then(|d| d.get(name))
            .filter(|v| !v.is_null())
            .cloned()
    };
    let user_id = match client.user_id() {
        Some(id) => serde_json::to_value(id).unwrap_or(Value::Null),
        None => field("userId").unwrap_or_else(|| Value::from(client.id.as_str())),
    };
    let mut user = json!({
        "userId": user_id,
        "userType": field("userType").unwrap_or_else(|| Value::from("user")),
        "username": field("username")
            .unwrap_or_else(|| Value::from(format!("user_{}", &client.id.as_str()[..8.min(client.id.as_str().len())]))),
    });
    if let Some(claims) = client.claims() {
        user["payload"] = claims.clone();
    }
    user
}
