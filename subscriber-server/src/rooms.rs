//! The cluster's clients and rooms as this worker knows them: its own clients, and the other
//! workers' as their presence feed and tables say (see `presence.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

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
    /// When it connected, in milliseconds since the Unix epoch.
    pub(crate) connected_at: u64,
    /// What the application attached to it (`Value::Null` for nothing).
    pub(crate) metadata: Arc<Value>,
    pub(crate) rooms: Vec<Arc<str>>,
    pub(crate) local: Option<Arc<Conn>>,
}

/// What this worker knows of another worker's presence.
pub(crate) struct Remote {
    /// The sequence number of the last change applied.
    pub(crate) seq: u64,
    /// Whether `seq` and the clients come from the worker's table (false until first read).
    pub(crate) known: bool,
    /// Its table is being read: feed messages wait in `pending`.
    pub(crate) syncing: bool,
    pub(crate) pending: Vec<crate::presence::FeedMessage>,
    /// When anything was last heard from it.
    pub(crate) heard: Instant,
    pub(crate) clients: HashSet<ClientId>,
}

impl Remote {
    pub(crate) fn new() -> Self {
        Self {
            seq: 0,
            known: false,
            syncing: false,
            pending: Vec::new(),
            heard: Instant::now(),
            clients: HashSet::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) clients: HashMap<ClientId, Entry>,
    pub(crate) local: HashMap<ClientId, Arc<Conn>>,
    pub(crate) rooms: HashMap<Arc<str>, HashMap<ClientId, Option<Arc<Conn>>>>,
    pub(crate) remotes: HashMap<Arc<str>, Remote>,
    /// The clients of each authenticated user, cluster-wide.
    pub(crate) users: HashMap<Arc<str>, HashSet<ClientId>>,
}

impl State {
    /// Lists a client (replacing what was listed under its id).
    pub(crate) fn insert(&mut self, id: ClientId, entry: Entry) {
        if let Some(user) = &entry.user {
            self.users
                .entry(Arc::from(user.id().as_str()))
                .or_default()
                .insert(id.clone());
        }
        if let Some(old) = self.clients.insert(id.clone(), entry) {
            self.unlist_user(&id, &old);
        }
    }

    fn unlist_user(&mut self, id: &ClientId, entry: &Entry) {
        let Some(user) = &entry.user else { return };
        if let Some(clients) = self.users.get_mut(user.id().as_str()) {
            clients.remove(id);
            if clients.is_empty() {
                self.users.remove(user.id().as_str());
            }
        }
    }

    /// The clients of `user`, cluster-wide.
    pub(crate) fn clients_of(&self, user: &str) -> impl Iterator<Item = &ClientId> {
        self.users.get(user).into_iter().flatten()
    }

    pub(crate) fn remove(&mut self, id: &ClientId) -> Option<Entry> {
        let entry = self.clients.remove(id)?;
        self.unlist_user(id, &entry);
        self.local.remove(id);
        if entry.local.is_none() {
            if let Some(remote) = self.remotes.get_mut(&entry.worker_id) {
                remote.clients.remove(id);
            }
        }
        for room in &entry.rooms {
            self.leave_room_only(room, id);
        }
        Some(entry)
    }

    /// Sets what another worker says of one of its clients (its record replaces what was known).
    pub(crate) fn put_remote(&mut self, worker: &Arc<str>, id: ClientId, record: Record) {
        if self.local.contains_key(&id) {
            return;
        }
        self.remove(&id);
        let mut entry = Entry {
            worker_id: worker.clone(),
            user: record.user.map(Arc::new),
            connected_at: record.connected_at,
            metadata: Arc::new(record.metadata),
            rooms: Vec::with_capacity(record.rooms.len()),
            local: None,
        };
        for room in record.rooms {
            if room.is_empty() || entry.rooms.iter().any(|r| **r == *room) {
                continue;
            }
            let room: Arc<str> = self
                .rooms
                .get_key_value(room.as_str())
                .map_or_else(|| Arc::from(room.as_str()), |(k, _)| k.clone());
            self.rooms
                .entry(room.clone())
                .or_default()
                .insert(id.clone(), None);
            entry.rooms.push(room);
        }
        self.insert(id.clone(), entry);
        self.remotes
            .entry(worker.clone())
            .or_insert_with(Remote::new)
            .clients
            .insert(id);
    }

    /// Forgets every client of another worker; returns how many there were.
    pub(crate) fn clear_remote(&mut self, worker: &str) -> usize {
        let ids = match self.remotes.get_mut(worker) {
            Some(remote) => std::mem::take(&mut remote.clients),
            None => return 0,
        };
        for id in &ids {
            self.remove(id);
        }
        ids.len()
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

/// A client's record in its worker's presence table, and in the presence feed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    #[serde(default, with = "wire_user")]
    pub(crate) user: Option<User>,
    #[serde(rename = "connectedAt", default)]
    pub(crate) connected_at: u64,
    #[serde(default)]
    pub(crate) rooms: Vec<String>,
    #[serde(rename = "metadata", default, skip_serializing_if = "Value::is_null")]
    pub(crate) metadata: Value,
}

mod wire_user {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::client::User;

    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(user: &Option<User>, s: S) -> Result<S::Ok, S::Error> {
        user.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<User>, D::Error> {
        Ok(User::from_wire(&Value::deserialize(d)?))
    }
}

impl Entry {
    /// This client's record, for the presence table.
    pub(crate) fn record(&self) -> Record {
        Record {
            user: self.user.as_deref().cloned(),
            connected_at: self.connected_at,
            rooms: self.rooms.iter().map(|r| r.to_string()).collect(),
            metadata: (*self.metadata).clone(),
        }
    }
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
    /// When it last sent a message, in milliseconds since the Unix epoch (for a client of
    /// another worker: when it connected; activity is not shared across the cluster).
    pub last_activity: u64,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// What the application attached with
    /// [`set_client_metadata`](crate::WebSocket::set_client_metadata) (`null` for nothing).
    pub metadata: Value,
}

/// The `user` of a `clientJoinedRoom` message, in the reference's shape: `{id, email, userType,
/// username}` (defaults: the authenticated id or the client id, the `email` claim or `null`,
/// `"user"`, `"user_" + 8 characters of the client id`), plus `payload` (the claims) when
/// authenticated. `data` is the `system:joinRoom` frame's data (`userId`, `userType`,
/// `username`, `email`).
pub(crate) fn room_user(client: &Client, data: Option<&Value>) -> Value {
    let field = |name: &str| {
        data.and_then(|d| d.get(name))
            .filter(|v| !v.is_null())
            .cloned()
    };
    let id = match client.user_id() {
        Some(id) => serde_json::to_value(id).unwrap_or(Value::Null),
        None => field("userId").unwrap_or_else(|| Value::from(client.id.as_str())),
    };
    let email = client
        .claims()
        .and_then(|c| c.get("email"))
        .filter(|v| !v.is_null())
        .cloned()
        .or_else(|| field("email"))
        .unwrap_or(Value::Null);
    let short = &client.id.as_str()[..8.min(client.id.as_str().len())];
    let mut user = json!({
        "id": id,
        "email": email,
        "userType": field("userType").unwrap_or_else(|| Value::from("user")),
        "username": field("username").unwrap_or_else(|| Value::from(format!("user_{short}"))),
    });
    if let Some(claims) = client.claims() {
        user["payload"] = claims.clone();
    }
    user
}
