//! [`WebSocket`]: the server handle handlers use, and what it knows of the cluster's clients and
//! rooms. Its sends are in `send.rs`.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use subscriber_runtime::Publisher;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::client::{Client, Conn, DisconnectReason, LocalReceiver, QueueLimits};
use crate::config::WebSocketConfig;
use crate::frame::ClientId;
use crate::hooks::Hooks;
use crate::rooms::{ClientInfo, Entry, State};
use crate::routes::RouteTable;
use crate::stats::Counters;

pub(crate) struct Inner {
    pub(crate) worker_id: Arc<str>,
    pub(crate) publisher: Publisher,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: WebSocketConfig,
    pub(crate) verifier: auth::Verifier,
    pub(crate) routes: RouteTable,
    pub(crate) hooks: Hooks,
    pub(crate) metrics: crate::metrics::Endpoint,
    pub(crate) handler_timeout: Duration,
    state: RwLock<State>,
    pub(crate) epoch: Instant,
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
    /// Presence announcements, published in order by their own task.
    pub(crate) announcer: crate::announce::Announcer,
    /// The cluster's presence: this worker's writes and the other workers' feed.
    pub(crate) presence: crate::presence::Presence,
    /// The channel other workers send to this worker's clients on.
    pub(crate) direct_channel: String,
    /// The inspector, when the application asked for it.
    pub(crate) inspector: Option<Arc<crate::inspector::Inspector>>,
    /// The globs of the durable rooms (see `rooms_durable.rs`).
    pub(crate) durable_rooms: Vec<String>,
}

/// The WebSocket server handle: this worker's clients, the cluster's clients and rooms, and every
/// way of sending to them. Cheap to clone; take it as a handler argument.
///
/// The cluster's clients, users and rooms ([`cluster_client_count`](Self::cluster_client_count),
/// [`is_connected`](Self::is_connected), [`client`](Self::client), [`rooms`](Self::rooms),
/// [`room_members`](Self::room_members), [`clients_of_user`](Self::clients_of_user)) are read
/// from memory, without a round trip. **Consistency:** this worker's own changes are visible at
/// once; another worker's are visible as soon as its presence feed message arrives (one broker
/// hop); a worker that crashed or lost the broker is dropped at most
/// [`presence_ttl`](crate::WebSocketConfig::presence_ttl) after its last heartbeat; after a broker
/// outage, each worker's view is right again within about a second of the broker's return.
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
/// `ServerStats::slow_consumer_disconnects`) rather than slowing the others.
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
        setup: crate::plugin::ServerSetup,
        routes: RouteTable,
        worker_id: Arc<str>,
        publisher: Publisher,
        counters: Arc<Counters>,
        handler_timeout: Duration,
        store: Option<Arc<dyn subscriber_runtime::broker::PresenceStore>>,
    ) -> Self {
        let verifier =
            auth::Verifier::new(setup.config.jwt_secret.as_ref(), setup.config.require_auth);
        if setup.config.require_auth && setup.config.jwt_secret.is_none() {
            tracing::warn!(
                worker_id = %worker_id,
                "WebSocket auth is required but no JWT secret is configured: every client will be refused (401)"
            );
        }
        if !routes.keys().is_empty() && tracing::enabled!(tracing::Level::INFO) {
            tracing::info!(
                worker_id = %worker_id,
                "client routes (route, handler, location):{}",
                routes.table()
            );
        }
        let presence = crate::presence::Presence::new(store, setup.config.presence_ttl);
        Self {
            inner: Arc::new(Inner {
                direct_channel: crate::presence::worker_channel(&worker_id),
                inspector: setup.inspector,
                durable_rooms: setup.durable_rooms,
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
                announcer: crate::announce::Announcer::new(),
                presence,
            }),
        }
    }

    /// The current wall-clock time in milliseconds since the Unix epoch.
    pub(crate) fn wall_now(&self) -> u64 {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
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
            routes: self.inner.config.max_concurrent_routes,
        }
    }

    /// The server's counters (clients, disconnects by reason, auth rejections, client messages
    /// and errors).
    pub fn stats(&self) -> crate::ServerStats {
        self.inner.counters.snapshot()
    }

    /// This worker's instance id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Number of clients connected to this worker.
    pub fn client_count(&self) -> usize {
        self.read().local.len()
    }

    /// Number of clients connected to the whole cluster (this worker's included).
    pub fn cluster_client_count(&self) -> usize {
        self.read().clients.len()
    }

    /// The ids of the clients connected to this worker.
    pub fn local_clients(&self) -> Vec<ClientId> {
        self.read().local.keys().cloned().collect()
    }

    /// A client of the cluster: its worker, user, rooms, metadata.
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
                None => e.connected_at,
            },
            connected_at: e.connected_at,
            metadata: (*e.metadata).clone(),
        })
    }

    /// Whether the client is connected to any worker of the cluster.
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

    /// How many clients each worker of the cluster has, this one included, sorted by worker id
    /// (what the inspector shows).
    pub fn clients_per_worker(&self) -> Vec<(String, usize)> {
        let state = self.read();
        let mut counts: std::collections::BTreeMap<String, usize> =
            std::collections::BTreeMap::new();
        counts.insert(self.inner.worker_id.to_string(), 0);
        for entry in state.clients.values() {
            *counts.entry(entry.worker_id.to_string()).or_default() += 1;
        }
        counts.into_iter().collect()
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

    /// Tells the other workers, without waiting (see `announce.rs`).
    pub(crate) fn announce(&self, channel: &'static str, message: Value) {
        self.inner.announcer.announce(channel, message);
    }

    /// Registers a new connection of this worker.
    pub(crate) fn register(&self, conn: Arc<Conn>) {
        let id = conn.client.id.clone();
        let entry = Entry {
            worker_id: self.inner.worker_id.clone(),
            user: conn.client.user.clone(),
            connected_at: self.wall_now(),
            metadata: Arc::new(Value::Null),
            rooms: Vec::new(),
            local: Some(conn.clone()),
        };
        {
            let mut state = self.write();
            state.insert(id.clone(), entry);
            state.local.insert(id.clone(), conn);
        }
        self.inner.presence.touch(&id);
    }

    /// Forgets a connection of this worker (and its rooms).
    pub(crate) fn unregister(&self, id: &ClientId) -> bool {
        let removed = self.write().remove(id).is_some();
        self.inner.presence.touch(id);
        removed
    }

    /// The clients of the cluster authenticated as `user` (ids compare as text), from an index:
    /// no scan of the cluster's clients.
    pub fn clients_of_user(&self, user: impl fmt::Display) -> Vec<ClientId> {
        // Formatted before the lock is taken: `Display` may be the application's code.
        let user = user.to_string();
        self.read().clients_of(&user).cloned().collect()
    }

    /// Attaches `metadata` to a client of this worker (replacing what was there); every worker
    /// sees it in [`client`](Self::client) once this worker's presence change reaches it.
    ///
    /// # Errors
    /// [`RoomError::NotLocal`](crate::RoomError::NotLocal) when the client is not connected here.
    pub fn set_client_metadata(
        &self,
        client: &ClientId,
        metadata: Value,
    ) -> Result<(), crate::RoomError> {
        {
            let mut state = self.write();
            let entry = state
                .clients
                .get_mut(client)
                .filter(|e| e.local.is_some())
                .ok_or_else(|| crate::RoomError::NotLocal(client.clone()))?;
            entry.metadata = Arc::new(metadata);
        }
        self.inner.presence.touch(client);
        Ok(())
    }

    /// Waits until every presence change of this worker's clients made before the call is in the
    /// presence store and announced to the other workers (at once without a store). Not public
    /// API: the test kit's cluster waits for it before it looks at another worker.
    #[doc(hidden)]
    pub async fn presence_flushed(&self) {
        self.inner.presence.flushed().await;
    }

    /// Registers an in-process client (the test kit's) whose frames arrive on the returned
    /// receiver (a queue of `capacity` frames). Not public API.
    #[doc(hidden)]
    pub fn attach_local(&self, capacity: usize) -> (ClientId, LocalReceiver) {
        let client = Client::new(ClientId::generate(), None);
        let limits = QueueLimits {
            messages: capacity.max(1),
            bytes: usize::MAX,
            routes: 1,
        };
        let conn = Arc::new(Conn::new(client, self.now_ms(), limits));
        let id = conn.client.id.clone();
        self.register(conn.clone());
        (id, LocalReceiver { conn })
    }

    /// Handles `text` as a frame sent by the in-process client `id` (the test kit's), as the
    /// connection's reader would: system actions at once, a route's handler spawned. False when
    /// the client is not connected here. Not public API.
    #[doc(hidden)]
    pub async fn push_local(
        &self,
        resources: &Arc<subscriber_runtime::Resources>,
        id: &ClientId,
        text: &str,
    ) -> bool {
        let Some(conn) = self.read().local.get(id).cloned() else {
            return false;
        };
        crate::connection::on_text(resources, self, &conn, text).await;
        true
    }

    /// Removes an in-process client. Not public API.
    #[doc(hidden)]
    pub fn detach_local(&self, id: &ClientId) {
        let conn = self.write().remove(id).and_then(|e| e.local);
        self.inner.presence.touch(id);
        if let Some(conn) = conn {
            conn.close(DisconnectReason::ClientClosed(None));
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
