//! The WebSocket server of a worker: its clients, the cluster's clients and rooms (mirrored
//! through the broker), local and cluster-wide sends, client routes, heartbeats, slow consumers
//! and graceful shutdown.
//!
//! - [`WebSocket`] is the handle handlers use (it is a subscriber and route extractor).
//! - The endpoint is `/ws`, served by `Switchboard::serve` or mounted with `Running::router`.
//! - Every frame is serialized once; each client has a bounded queue (messages and bytes) drained
//!   by its own writer, so a slow client is disconnected (close code 1013) instead of slowing the
//!   others. No lock is held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::Delivery;
use crate::error::PublishError;
use crate::event;
use crate::publish::Publisher;
use crate::stats::Counters;

mod auth;
mod client;
mod config;
mod connection;
mod frame;
mod http;
pub(crate) mod routes;

pub use client::{Client, DisconnectReason, User, UserId};
pub(crate) use client::{Conn, LocalReceiver, QueueLimits};
pub use config::{InvalidSecret, JwtSecret, RoomPolicy, WebSocketConfig};
pub use frame::{ClientId, Frame, InvalidClientId, Outgoing};
pub use http::WS_PATH;
pub use routes::{Data, DataRejection, FromRoute, IntoReply, Reply, RouteContext, RouteHandler};

use client::Pushed;
use frame::error_frame;
use routes::{InlineRoute, RouteTable};

/// A client message as the `on_message` hook sees it (before it is routed).
#[derive(Debug, Clone, Copy)]
pub struct ClientMessage<'a> {
    pub(crate) kind: &'a str,
    pub(crate) action: &'a str,
    pub(crate) data: &'a Value,
}

impl ClientMessage<'_> {
    /// The message's `type`.
    pub fn kind(&self) -> &str {
        self.kind
    }
    /// The message's `action`.
    pub fn action(&self) -> &str {
        self.action
    }
    /// The message's `data` (`null` when absent).
    pub fn data(&self) -> &Value {
        self.data
    }
}

type ConnectHook = Arc<dyn Fn(&Client, &WebSocket) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Client, &WebSocket, &DisconnectReason) + Send + Sync>;
type MessageHook = Arc<dyn Fn(&Client, &ClientMessage<'_>) + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&Client, &str) + Send + Sync>;

/// Lifecycle hooks given to the builder.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) connect: Vec<ConnectHook>,
    pub(crate) disconnect: Vec<DisconnectHook>,
    pub(crate) message: Vec<MessageHook>,
    pub(crate) error: Vec<ErrorHook>,
}

/// Runs a hook, logging (not propagating) a panic.
fn guarded(hook: &str, client: &ClientId, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
        let panic = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(hook, client_id = %client, %panic, "WebSocket lifecycle hook panicked");
    }
}

/// What the builder collects for the server.
#[derive(Default)]
pub(crate) struct ServerSetup {
    pub(crate) config: WebSocketConfig,
    pub(crate) routes: Vec<InlineRoute>,
    pub(crate) hooks: Hooks,
    /// The Prometheus endpoint to serve next to `/ws` (set by `build()`).
    pub(crate) metrics: crate::telemetry::Endpoint,
}

impl fmt::Debug for ServerSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSetup")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// A room membership change to mirror on the other workers.
struct RoomChange {
    joined: bool,
    left: Vec<Arc<str>>,
}

/// What the worker knows about one client of the cluster.
struct Entry {
    worker_id: Arc<str>,
    user: Option<Arc<User>>,
    /// Milliseconds since the Unix epoch, as the owning worker last said (remote clients).
    last_activity: u64,
    rooms: Vec<Arc<str>>,
    local: Option<Arc<Conn>>,
}

#[derive(Default)]
struct State {
    clients: HashMap<ClientId, Entry>,
    local: HashMap<ClientId, Arc<Conn>>,
    rooms: HashMap<Arc<str>, HashMap<ClientId, Option<Arc<Conn>>>>,
}

impl State {
    fn remove(&mut self, id: &ClientId) -> Option<Entry> {
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
    fn join(&mut self, id: &ClientId, room: &str, policy: RoomPolicy) -> Option<RoomChange> {
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

    fn leave(&mut self, id: &ClientId, room: &str) -> bool {
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

pub(crate) struct Inner {
    pub(crate) worker_id: Arc<str>,
    pub(crate) publisher: Publisher,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: WebSocketConfig,
    pub(crate) verifier: auth::Verifier,
    pub(crate) routes: RouteTable,
    pub(crate) hooks: Hooks,
    pub(crate) metrics: crate::telemetry::Endpoint,
    pub(crate) handler_timeout: Duration,
    state: RwLock<State>,
    epoch: Instant,
    epoch_wall: SystemTime,
    /// Stops accepting connections.
    pub(crate) accept_stop: CancellationToken,
    /// Closes every connection with 1001 once its current message is handled.
    pub(crate) closing_all: CancellationToken,
    /// The shutdown deadline passed: abandon running route handlers.
    pub(crate) force: CancellationToken,
    /// Every connection task.
    pub(crate) tracker: TaskTracker,
    pub(crate) servers: Mutex<Vec<JoinHandle<()>>>,
}

/// The WebSocket server handle: this worker's clients, the cluster's clients and rooms, and every
/// way of sending to them. Cheap to clone; take it as a handler argument.
///
/// Local sends (`broadcast_*`) reach the clients connected to this worker and return how many
/// were sent to. Cluster sends ([`send_message_to_all`](Self::send_message_to_all),
/// [`send_custom_message`](Self::send_custom_message),
/// [`broadcast_to_room_everywhere`](Self::broadcast_to_room_everywhere)) go through the broker,
/// and every worker, this one included, delivers to its own clients. No envelope field
/// (`workerId`, `includeSender`) ever reaches a client.
///
/// Every send serializes the frame once and hands the same bytes to each recipient's bounded
/// queue; a client whose queue is full is disconnected with close code 1013 (counted in
/// `Stats::slow_consumer_disconnects`) rather than slowing the others.
///
/// ```
/// use switchboard::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let running = Switchboard::builder().without_linked_handlers().build()?.start().await?;
/// let ws = running.websocket();
/// let sent = ws.broadcast_to_all_clients(Outgoing::new("jobs", "completed", serde_json::json!({"id": 7})));
/// assert_eq!(sent, 0); // nobody is connected yet
/// ws.send_message_to_all(Outgoing::new("news", "flash", "hello cluster")).await?;
/// running.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct WebSocket {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("worker_id", &self.inner.worker_id)
            .field("clients", &self.client_count())
            .field("routes", &self.inner.routes)
            .finish()
    }
}

impl WebSocket {
    pub(crate) fn new(
        setup: ServerSetup,
        routes: RouteTable,
        worker_id: Arc<str>,
        publisher: Publisher,
        counters: Arc<Counters>,
        handler_timeout: Duration,
    ) -> Self {
        let verifier =
            auth::Verifier::new(setup.config.jwt_secret.as_ref(), setup.config.require_auth);
        if setup.config.require_auth && setup.config.jwt_secret.is_none() {
            tracing::warn!(
                worker_id = %worker_id,
                "WebSocket auth is required but no JWT secret is configured: every client will be refused (401)"
            );
        }
        if !routes.keys().is_empty() {
            tracing::info!(worker_id = %worker_id, routes = ?routes.keys(), "client routes");
        }
        Self {
            inner: Arc::new(Inner {
                worker_id,
                publisher,
                counters,
                config: setup.config,
                verifier,
                routes,
                hooks: setup.hooks,
                metrics: setup.metrics,
                handler_timeout,
                state: RwLock::default(),
                epoch: Instant::now(),
                epoch_wall: SystemTime::now(),
                accept_stop: CancellationToken::new(),
                closing_all: CancellationToken::new(),
                force: CancellationToken::new(),
                tracker: TaskTracker::new(),
                servers: Mutex::new(Vec::new()),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Milliseconds since the server's monotonic epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A server-epoch timestamp as milliseconds since the Unix epoch.
    fn wall_ms(&self, ms: u64) -> u64 {
        let wall = self.inner.epoch_wall + Duration::from_millis(ms);
        u64::try_from(
            wall.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    pub(crate) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            messages: self.inner.config.max_queued_messages,
            bytes: self.inner.config.max_queued_bytes,
        }
    }

    /// This worker's instance id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Number of clients connected to this worker.
    pub fn client_count(&self) -> usize {
        self.read().local.len()
    }

    /// Number of clients this worker knows of in the whole cluster (its own included).
    pub fn cluster_client_count(&self) -> usize {
        self.read().clients.len()
    }

    /// The ids of the clients connected to this worker.
    pub fn local_clients(&self) -> Vec<ClientId> {
        self.read().local.keys().cloned().collect()
    }

    /// What this worker knows about a client of the cluster.
    pub fn client(&self, id: &ClientId) -> Option<ClientInfo> {
        let state = self.read();
        let e = state.clients.get(id)?;
        let mut rooms: Vec<String> = e.rooms.iter().map(|r| r.to_string()).collect();
        rooms.sort();
        Some(ClientInfo {
            id: id.clone(),
            worker_id: e.worker_id.to_string(),
            user: e.user.as_deref().cloned(),
            rooms,
            local: e.local.is_some(),
            last_activity: match &e.local {
                Some(conn) => self.wall_ms(conn.last_activity()),
                None => e.last_activity,
            },
        })
    }

    /// Whether the client is connected to any worker of the cluster (as far as this worker knows).
    pub fn is_connected(&self, id: &ClientId) -> bool {
        self.read().clients.contains_key(id)
    }

    /// Whether the client is connected to this worker.
    pub fn is_local(&self, id: &ClientId) -> bool {
        self.read().local.contains_key(id)
    }

    /// Every room of the cluster with at least one member, sorted.
    pub fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.read().rooms.keys().map(|r| r.to_string()).collect();
        rooms.sort();
        rooms
    }

    /// The members of a room, cluster-wide (empty for an unknown room).
    pub fn room_members(&self, room: &str) -> Vec<ClientId> {
        self.read()
            .rooms
            .get(room)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The rooms a client is in, sorted.
    pub fn rooms_of(&self, id: &ClientId) -> Vec<String> {
        self.client(id).map(|c| c.rooms).unwrap_or_default()
    }

    /// Queues a frame for one local connection.
    pub(crate) fn deliver(&self, conn: &Conn, frame: &Frame) -> bool {
        match conn.push(frame) {
            Pushed::Queued => true,
            Pushed::Closed => false,
            Pushed::Slow => {
                Counters::inc(&self.inner.counters.slow_consumer_disconnects);
                self.inner.counters.metrics.slow_consumers.increment(1);
                tracing::warn!(
                    client_id = %conn.client.id,
                    worker_id = %self.inner.worker_id,
                    max_messages = self.inner.config.max_queued_messages,
                    max_bytes = self.inner.config.max_queued_bytes,
                    "slow consumer: send queue full, disconnecting the client (1013)"
                );
                false
            }
        }
    }

    /// Sends a frame to every client of this worker; returns how many got it.
    pub fn broadcast_to_all_clients(&self, frame: impl Into<Frame>) -> usize {
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .values()
            .filter(|conn| self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to every client of this worker but one (typically the sender).
    pub fn broadcast_to_all_clients_except(
        &self,
        frame: impl Into<Frame>,
        excluded: &ClientId,
    ) -> usize {
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .iter()
            .filter(|(id, conn)| *id != excluded && self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to the clients of this worker for which `predicate` is true.
    ///
    /// ```
    /// # use switchboard::{Outgoing, WebSocket};
    /// # fn f(ws: WebSocket) {
    /// let admins = ws.broadcast_to_all_clients_where(Outgoing::new("admin", "notice", "hi"), |client| {
    ///     client.claims().is_some_and(|c| c["role"] == "admin")
    /// });
    /// # let _ = admins;
    /// # }
    /// ```
    pub fn broadcast_to_all_clients_where(
        &self,
        frame: impl Into<Frame>,
        predicate: impl Fn(&Client) -> bool,
    ) -> usize {
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .values()
            .filter(|conn| predicate(&conn.client) && self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to the members of a room connected to this worker.
    pub fn broadcast_to_room(&self, room: &str, frame: impl Into<Frame>) -> usize {
        self.room_send(room, &frame.into(), None)
    }

    /// Sends a frame to the members of a room connected to this worker, but one.
    pub fn broadcast_to_room_except(
        &self,
        room: &str,
        frame: impl Into<Frame>,
        excluded: &ClientId,
    ) -> usize {
        self.room_send(room, &frame.into(), Some(excluded))
    }

    fn room_send(&self, room: &str, frame: &Frame, excluded: Option<&ClientId>) -> usize {
        let state = self.read();
        let Some(members) = state.rooms.get(room) else {
            tracing::trace!(room, "broadcast to a room with no members");
            return 0;
        };
        members
            .iter()
            .filter_map(|(id, conn)| conn.as_ref().filter(|_| Some(id) != excluded))
            .filter(|conn| self.deliver(conn, frame))
            .count()
    }

    /// Sends a frame to the clients of this worker authenticated as one of `users`. Ids compare
    /// as text, so `42` and `"42"` are the same user.
    pub fn broadcast_to_users<I>(&self, users: I, frame: impl Into<Frame>) -> usize
    where
        I: IntoIterator,
        I::Item: fmt::Display,
    {
        let wanted: HashSet<String> = users.into_iter().map(|u| u.to_string()).collect();
        if wanted.is_empty() {
            return 0;
        }
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .values()
            .filter(|conn| {
                conn.client
                    .user_id()
                    .is_some_and(|u| wanted.contains(u.as_str()))
            })
            .filter(|conn| self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to one client of this worker; false when it is not connected here (or is
    /// being disconnected).
    pub fn broadcast_to_client(&self, client: &ClientId, frame: impl Into<Frame>) -> bool {
        let state = self.read();
        state
            .local
            .get(client)
            .is_some_and(|conn| self.deliver(conn, &frame.into()))
    }

    /// Sends the error frame `{"type":"error","action":"message","data":{"error":...}}` to one
    /// client of this worker.
    pub fn send_error(&self, client: &ClientId, error: &str) -> bool {
        let conn = self.read().local.get(client).cloned();
        conn.is_some_and(|conn| self.send_error_to(&conn, error))
    }

    pub(crate) fn send_error_to(&self, conn: &Conn, error: &str) -> bool {
        Counters::inc(&self.inner.counters.client_errors);
        self.inner.counters.metrics.client_errors.increment(1);
        tracing::debug!(client_id = %conn.client.id, %error, "error frame to client");
        for hook in &self.inner.hooks.error {
            guarded("on_error", &conn.client.id, || hook(&conn.client, error));
        }
        self.deliver(conn, &error_frame(error))
    }

    /// Publishes `message` (a JSON object, usually an [`Outgoing`]) on `sendMessageToAll`: every
    /// worker of the cluster, this one included, sends it to all of its clients (the bytes as
    /// published, without `workerId`/`includeSender`). Like every cluster send, it relies on the
    /// framework channels being subscribed (the default).
    ///
    /// Delivery is at-most-once, as Redis pub/sub: a worker disconnected from the broker at that
    /// moment does not deliver it.
    ///
    /// # Errors
    /// What [`Publisher::publish`] returns (e.g. the message is not a JSON object).
    pub async fn send_message_to_all(&self, message: impl Serialize) -> Result<(), PublishError> {
        self.inner
            .publisher
            .publish_including_sender(event::SEND_MESSAGE_TO_ALL, &message)
            .await
    }

    /// Publishes `message` on `custom`, for the subscriber handlers of every worker, this one
    /// included (clients get nothing unless a handler passes it on).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn send_custom_message(&self, message: impl Serialize) -> Result<(), PublishError> {
        self.inner
            .publisher
            .publish_including_sender(event::CUSTOM, &message)
            .await
    }

    /// Sends `message` to the members of `room` on every worker of the cluster (through the
    /// broker, on `sendMessageToRoom`).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn broadcast_to_room_everywhere(
        &self,
        room: &str,
        message: impl Serialize,
    ) -> Result<(), PublishError> {
        self.room_everywhere(room, message, None).await
    }

    /// As [`broadcast_to_room_everywhere`](Self::broadcast_to_room_everywhere), but not to
    /// `excluded` (typically the sender).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn broadcast_to_room_everywhere_except(
        &self,
        room: &str,
        message: impl Serialize,
        excluded: &ClientId,
    ) -> Result<(), PublishError> {
        self.room_everywhere(room, message, Some(excluded)).await
    }

    async fn room_everywhere(
        &self,
        room: &str,
        message: impl Serialize,
        excluded: Option<&ClientId>,
    ) -> Result<(), PublishError> {
        #[derive(Serialize)]
        struct ToRoom<'a, T> {
            #[serde(rename = "roomName")]
            room_name: &'a str,
            message: T,
            #[serde(rename = "excludeClientId", skip_serializing_if = "Option::is_none")]
            exclude: Option<&'a ClientId>,
        }
        self.inner
            .publisher
            .publish_including_sender(
                event::SEND_MESSAGE_TO_ROOM,
                &ToRoom {
                    room_name: room,
                    message,
                    exclude: excluded,
                },
            )
            .await
    }

    /// Adds a client of this worker to a room, and tells the other workers
    /// (`clientJoinedRoom`). Under [`RoomPolicy::Single`] the client first leaves its other rooms
    /// (`clientLeftRoom` for each). Returns false when it was already in the room.
    ///
    /// # Errors
    /// [`RoomError`] for an empty room name or a client not connected here. A failure to tell the
    /// other workers is logged, not returned: the join happened.
    pub async fn join_room(&self, client: &ClientId, room: &str) -> Result<bool, RoomError> {
        let user = {
            let state = self.read();
            let conn = state
                .local
                .get(client)
                .ok_or_else(|| RoomError::NotLocal(client.clone()))?;
            room_user(&conn.client, None)
        };
        self.join_with(client, room, user).await
    }

    pub(crate) async fn join_with(
        &self,
        client: &ClientId,
        room: &str,
        user: Value,
    ) -> Result<bool, RoomError> {
        if room.is_empty() {
            return Err(RoomError::EmptyName);
        }
        let change = {
            let mut state = self.write();
            if !state.local.contains_key(client) {
                return Err(RoomError::NotLocal(client.clone()));
            }
            state
                .join(client, room, self.inner.config.room_policy)
                .ok_or_else(|| RoomError::NotLocal(client.clone()))?
        };
        for old in &change.left {
            tracing::debug!(client_id = %client, room = %old, "client left room (single-room policy)");
            self.publish_quietly(
                event::CLIENT_LEFT_ROOM,
                &json!({"clientId": client, "room": &**old}),
            )
            .await;
        }
        if change.joined {
            tracing::debug!(client_id = %client, room, worker_id = %self.inner.worker_id, "client joined room");
            self.publish_quietly(
                event::CLIENT_JOINED_ROOM,
                &json!({"clientId": client, "user": user, "roomName": room}),
            )
            .await;
        }
        Ok(change.joined)
    }

    /// Removes a client of this worker from a room and tells the other workers
    /// (`clientLeftRoom`). Returns false when it was not in the room. A room is deleted when its
    /// last member leaves.
    ///
    /// # Errors
    /// [`RoomError`] for an empty room name or a client not connected here.
    pub async fn leave_room(&self, client: &ClientId, room: &str) -> Result<bool, RoomError> {
        if room.is_empty() {
            return Err(RoomError::EmptyName);
        }
        let left = {
            let mut state = self.write();
            if !state.local.contains_key(client) {
                return Err(RoomError::NotLocal(client.clone()));
            }
            state.leave(client, room)
        };
        if left {
            tracing::debug!(client_id = %client, room, worker_id = %self.inner.worker_id, "client left room");
            self.publish_quietly(
                event::CLIENT_LEFT_ROOM,
                &json!({"clientId": client, "room": room}),
            )
            .await;
        }
        Ok(left)
    }

    /// Closes a client wherever it is connected: at once when it is connected here (close code
    /// 1000, after its queued frames), otherwise by publishing `disconnectClient`.
    ///
    /// # Errors
    /// The publish failure, when the client is not connected here.
    pub async fn disconnect_client(&self, client: &ClientId) -> Result<(), PublishError> {
        let conn = self.read().local.get(client).cloned();
        if let Some(conn) = conn {
            conn.close(DisconnectReason::Kicked);
            return Ok(());
        }
        self.inner
            .publisher
            .publish(event::DISCONNECT_CLIENT, &json!({ "clientId": client }))
            .await
    }

    async fn publish_quietly(&self, channel: &str, message: &Value) {
        if let Err(error) = self.inner.publisher.publish(channel, message).await {
            tracing::warn!(
                channel,
                worker_id = %self.inner.worker_id,
                %error,
                "could not tell the other workers; their view of the cluster may be stale"
            );
        }
    }

    /// Registers a new connection of this worker.
    pub(crate) fn register(&self, conn: Arc<Conn>) {
        let id = conn.client.id.clone();
        let entry = Entry {
            worker_id: self.inner.worker_id.clone(),
            user: conn.client.user.clone(),
            last_activity: 0,
            rooms: Vec::new(),
            local: Some(conn.clone()),
        };
        let mut state = self.write();
        state.clients.insert(id.clone(), entry);
        state.local.insert(id, conn);
    }

    /// Forgets a connection of this worker (and its rooms).
    pub(crate) fn unregister(&self, id: &ClientId) -> bool {
        self.write().remove(id).is_some()
    }

    /// Registers an in-process client (tests) whose frames arrive on the returned receiver (a
    /// queue of `capacity` frames).
    pub(crate) fn attach(&self, capacity: usize) -> (ClientId, LocalReceiver) {
        let client = Client::new(ClientId::generate(), None);
        let limits = QueueLimits {
            messages: capacity.max(1),
            bytes: usize::MAX,
        };
        let conn = Arc::new(Conn::new(client, self.now_ms(), limits));
        let id = conn.client.id.clone();
        self.register(conn.clone());
        (id, LocalReceiver { conn })
    }

    /// Removes an in-process client.
    pub(crate) fn detach(&self, id: &ClientId) {
        let conn = self.write().remove(id).and_then(|e| e.local);
        if let Some(conn) = conn {
            conn.close(DisconnectReason::ClientClosed(None));
        }
    }

    /// Whether the server acts on messages of this framework channel (so they are dispatched even
    /// without a subscriber handler).
    pub(crate) fn handles(&self, channel: &str) -> bool {
        matches!(
            channel,
            event::SEND_MESSAGE_TO_ALL
                | event::SEND_MESSAGE_TO_ROOM
                | event::CLIENT_CONNECTED
                | event::CLIENT_DISCONNECTED
                | event::DISCONNECT_CLIENT
                | event::CLIENT_JOINED_ROOM
                | event::CLIENT_LEFT_ROOM
                | event::MESSAGE_ERROR
        )
    }

    /// The built-in action of a framework channel, run by the dispatcher before the message's
    /// subscriber handlers. Never waits.
    pub(crate) fn handle_framework(&self, delivery: &Delivery) {
        let message = &delivery.message;
        let client_id = || {
            message
                .get("clientId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(ClientId::from_wire)
        };
        match &*delivery.channel {
            event::SEND_MESSAGE_TO_ALL => {
                let bytes = if delivery.stripped {
                    match without_envelope_prefix(&delivery.raw) {
                        Some(bytes) => bytes,
                        None => delivery
                            .raw_stripped
                            .get_or_init(|| {
                                bytes::Bytes::from(
                                    serde_json::to_vec(message)
                                        .expect("serializing a JSON value cannot fail"),
                                )
                            })
                            .clone(),
                    }
                } else {
                    delivery.raw.clone()
                };
                if let Some(frame) = Frame::from_utf8(bytes) {
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
                let worker: Arc<str> = delivery
                    .worker_id
                    .clone()
                    .unwrap_or_else(|| Arc::from("unknown"));
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
                    let worker = delivery
                        .worker_id
                        .clone()
                        .unwrap_or_else(|| Arc::from("unknown"));
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

    /// Stops accepting connections (the listeners stop; `/ws` answers 503).
    pub(crate) fn stop_accepting(&self) {
        self.inner.accept_stop.cancel();
    }

    /// Closes every connection with 1001 once its running route handler is done, waits for them
    /// until `deadline`, then abandons running handlers and waits for the sockets to close.
    pub(crate) async fn close_all(&self, deadline: Instant) {
        self.inner.accept_stop.cancel();
        self.inner.closing_all.cancel();
        self.inner.tracker.close();
        let deadline = tokio::time::Instant::from_std(deadline);
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker_id = %self.inner.worker_id,
                "shutdown: connections still busy after the grace period; abandoning their handlers"
            );
            self.inner.force.cancel();
            let _ = tokio::time::timeout(
                self.inner.config.close_timeout + Duration::from_secs(1),
                self.inner.tracker.wait(),
            )
            .await;
        }
        let servers: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .inner
                .servers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for server in servers {
            if tokio::time::timeout(Duration::from_secs(1), server)
                .await
                .is_err()
            {
                tracing::warn!("shutdown: an HTTP listener did not stop in time");
            }
        }
    }

    /// Stops everything at once (dropping the application).
    pub(crate) fn abort(&self) {
        self.inner.accept_stop.cancel();
        self.inner.closing_all.cancel();
        self.inner.force.cancel();
    }
}

/// The payload without the envelope fields that [`Publisher`] puts first
/// (`{"workerId":"…",["includeSender":true,]…}`), keeping the publisher's bytes and key order.
/// `None` when the payload does not start that way (then it is re-serialized from the parsed value).
fn without_envelope_prefix(raw: &[u8]) -> Option<bytes::Bytes> {
    let start = raw.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = raw[start..].strip_prefix(b"{\"workerId\":\"")?;
    let mut i = 0;
    loop {
        match *rest.get(i)? {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    let mut rest = &rest[i + 1..];
    if let Some(r) = rest.strip_prefix(b",\"includeSender\":true") {
        rest = r;
    }
    let body = match rest.first()? {
        b',' => &rest[1..],
        b'}' => rest,
        _ => return None,
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(b'{');
    out.extend_from_slice(body);
    Some(bytes::Bytes::from(out))
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

/// An ISO 8601 UTC timestamp with milliseconds (`2024-05-01T12:00:00.000Z`), as JavaScript's
/// `toISOString`.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_prefix_is_cut_without_reordering() {
        let cut = |s: &str| {
            without_envelope_prefix(s.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        assert_eq!(
            cut(r#"{"workerId":"w1","includeSender":true,"type":"a","data":{"z":1,"a":2}}"#)
                .as_deref(),
            Some(r#"{"type":"a","data":{"z":1,"a":2}}"#)
        );
        assert_eq!(
            cut(r#"{"workerId":"w\"1","b":1}"#).as_deref(),
            Some(r#"{"b":1}"#)
        );
        assert_eq!(cut(r#"{"workerId":"w1"}"#).as_deref(), Some("{}"));
        assert_eq!(cut(r#"{"type":"a","workerId":"w1"}"#), None);
        assert_eq!(cut(r#"{"workerId":1,"a":1}"#), None);
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_millis(1_714_564_800_123)),
            "2024-05-01T12:00:00.123Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn rooms_follow_the_policy() {
        let mut state = State::default();
        let a = ClientId::generate();
        state.clients.insert(
            a.clone(),
            Entry {
                worker_id: "w".into(),
                user: None,
                last_activity: 0,
                rooms: Vec::new(),
                local: None,
            },
        );
        assert!(state.join(&a, "r1", RoomPolicy::Multiple).unwrap().joined);
        assert!(!state.join(&a, "r1", RoomPolicy::Multiple).unwrap().joined);
        assert!(state.join(&a, "r2", RoomPolicy::Multiple).unwrap().joined);
        assert_eq!(state.rooms.len(), 2);
        let change = state.join(&a, "r3", RoomPolicy::Single).unwrap();
        assert_eq!(change.left.len(), 2);
        assert_eq!(state.rooms.keys().map(|k| &**k).collect::<Vec<_>>(), ["r3"]);
        assert!(state.leave(&a, "r3"));
        assert!(!state.leave(&a, "r3"));
        assert!(
            state.rooms.is_empty(),
            "the last member leaving removes the room"
        );
        assert!(state
            .join(&ClientId::generate(), "x", RoomPolicy::Multiple)
            .is_none());
    }
}
