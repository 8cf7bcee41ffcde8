//! Presence across the cluster: each worker's clients (id, user, connected-at, rooms, metadata)
//! kept in the broker's [presence store](subscriber_runtime::broker::presence), the source of
//! truth, and in each worker's memory for reads.
//!
//! - **Writing.** A change to a local client (connect, room join or leave, metadata,
//!   disconnect) marks it dirty and wakes one writer task, which writes the current record of
//!   every dirty client in one atomic step with the next sequence number, and publishes the same
//!   records on the feed channel. Changes made while a write is in flight go in the next one, so
//!   the cost per change falls as the load rises. Every quarter of the presence TTL the writer
//!   renews its table (a heartbeat, also on the feed). When a write fails (the broker is away) or
//!   the table expired, the worker replaces its whole table once the broker answers: its clients
//!   are re-asserted and those that left meanwhile are gone.
//! - **Reading.** Each worker applies the other workers' feed messages in order (one channel, one
//!   dispatch lane). A gap in the sequence numbers, a replaced table or an unknown worker makes it
//!   read that worker's table, holding the feed messages that arrive meanwhile and applying the
//!   newer ones after. A worker not heard from for the TTL is dropped with all its clients.
//! - **Consistency.** A worker reads its own changes at once; every other worker sees them as
//!   soon as the feed message arrives (one broker hop); a worker that crashed disappears within
//!   the TTL of its last heartbeat.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use subscriber_runtime::broker::presence::{Feed, GroupMember, PresenceChange};
use subscriber_runtime::broker::PresenceStore;
use subscriber_runtime::RateLimit;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::frame::ClientId;
use crate::rooms::{Record, Remote};
use crate::WebSocket;

/// The channel every worker publishes its presence changes and heartbeats on.
pub(crate) const FEED_CHANNEL: &str = subscriber_runtime::broker::presence::FEED_CHANNEL;

/// The channel on which a worker receives what other workers send to its clients.
pub(crate) fn worker_channel(worker: &str) -> String {
    format!("switchboard.worker.{worker}")
}

/// The most changes a feed message carries; a larger batch makes the others read the table.
const MAX_FEED_CHANGES: usize = 256;

/// How often silent workers are looked for.
const SWEEP: Duration = Duration::from_millis(250);

/// How long to wait before trying the store again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// A message of the presence feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FeedMessage {
    /// The worker.
    #[serde(rename = "w")]
    pub(crate) worker: String,
    /// The sequence number of its table after this change.
    #[serde(rename = "s")]
    pub(crate) seq: u64,
    /// `d` changes, `r` table replaced, `h` heartbeat, `x` worker stopped.
    #[serde(rename = "k")]
    pub(crate) kind: Kind,
    /// For `d`: each changed client's record, `null` when it left.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) changes: Vec<(String, Option<Record>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    #[serde(rename = "d")]
    Changes,
    #[serde(rename = "r")]
    Replaced,
    #[serde(rename = "h")]
    Heartbeat,
    #[serde(rename = "x")]
    Stopped,
}

/// This worker's side of presence: the store, what changed, and the writer's state.
pub(crate) struct Presence {
    pub(crate) store: Option<Arc<dyn PresenceStore>>,
    pub(crate) ttl: Duration,
    dirty: Mutex<HashSet<ClientId>>,
    wake: Notify,
    seq: AtomicU64,
    /// The next write replaces the whole table.
    replace: AtomicBool,
    warn: RateLimit,
    /// Changes marked so far (with `dirty`, under its lock), and the count of them written.
    changed: AtomicU64,
    written: AtomicU64,
    flushed: Notify,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("store", &self.store)
            .field("ttl", &self.ttl)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Presence {
    pub(crate) fn new(store: Option<Arc<dyn PresenceStore>>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            dirty: Mutex::default(),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            replace: AtomicBool::new(true),
            warn: RateLimit::new(Duration::from_secs(10)),
            changed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            flushed: Notify::new(),
        }
    }

    /// Takes the dirty clients, with the count of changes they stand for.
    fn take_dirty(&self) -> (HashSet<ClientId>, u64) {
        let mut dirty = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            std::mem::take(&mut *dirty),
            self.changed.load(Ordering::SeqCst),
        )
    }

    /// The changes counted in `upto` are in the store.
    fn mark_written(&self, upto: u64) {
        self.written.fetch_max(upto, Ordering::SeqCst);
        self.flushed.notify_waiters();
    }

    /// Waits until every change marked before the call is in the store (and its feed message
    /// published): what a test waits for before it looks at another worker.
    pub(crate) async fn flushed(&self) {
        if self.store.is_none() {
            return;
        }
        let target = self.changed.load(Ordering::SeqCst);
        loop {
            let notified = self.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.written.load(Ordering::SeqCst) >= target {
                return;
            }
            notified.await;
        }
    }

    /// Marks a local client as changed; the writer writes its current record soon.
    pub(crate) fn touch(&self, id: &ClientId) {
        if self.store.is_none() {
            return;
        }
        {
            let mut dirty = self
                .dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            dirty.insert(id.clone());
            self.changed.fetch_add(1, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    fn heartbeat_interval(&self) -> Duration {
        self.ttl / 4
    }

    fn warn(&self, what: &str, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.warn.allow() {
            tracing::warn!(%error, suppressed, "presence: {what}; retrying (other workers' view of this worker's clients may be stale until then)");
        }
    }
}

/// A feed message with the envelope's `workerId`, so that the worker's own messages are
/// dropped before dispatch, like every message a worker publishes for the others.
fn feed(message: &FeedMessage) -> Feed {
    #[derive(Serialize)]
    struct Signed<'a> {
        #[serde(rename = "workerId")]
        worker_id: &'a str,
        #[serde(flatten)]
        message: &'a FeedMessage,
    }
    let signed = Signed {
        worker_id: &message.worker,
        message,
    };
    Feed {
        channel: FEED_CHANNEL.to_owned(),
        payload: Bytes::from(serde_json::to_vec(&signed).unwrap_or_default()),
    }
}

fn raw(record: &Record) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

impl WebSocket {
    fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// The writer: writes changes, renews the table, replaces it after a failure, until `stop`;
    /// then removes this worker's table (its clients are all gone by then).
    pub(crate) async fn run_presence_writer(self, stop: CancellationToken) {
        let Some(store) = self.presence().store.clone() else {
            return;
        };
        let worker = self.inner.worker_id.to_string();
        let mut next_heartbeat = tokio::time::Instant::now() + self.presence().heartbeat_interval();
        loop {
            let failed = if self.presence().replace.load(Ordering::SeqCst) {
                self.replace_table(&*store, &worker).await
            } else {
                self.write_dirty(&*store, &worker).await
            };
            let failed = failed
                || (tokio::time::Instant::now() >= next_heartbeat
                    && self.renew_table(&*store, &worker).await);
            if tokio::time::Instant::now() >= next_heartbeat {
                next_heartbeat = tokio::time::Instant::now() + self.presence().heartbeat_interval();
            }
            let wake_at = if failed {
                tokio::time::Instant::now() + RETRY
            } else {
                next_heartbeat
            };
            let again = {
                let dirty = self
                    .presence()
                    .dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                !dirty.is_empty() && !failed
            };
            if again {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.presence().wake.notified(), if !failed => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
        let message = FeedMessage {
            worker: worker.clone(),
            seq: self.presence().seq.load(Ordering::SeqCst) + 1,
            kind: Kind::Stopped,
            changes: Vec::new(),
        };
        if let Err(error) = store.remove(&worker, feed(&message)).await {
            tracing::warn!(%error, "presence: could not remove this worker's table at shutdown; it expires on its own");
        }
    }

    /// Writes the dirty clients' records. True when it failed.
    async fn write_dirty(&self, store: &dyn PresenceStore, worker: &str) -> bool {
        let (ids, upto) = self.presence().take_dirty();
        if ids.is_empty() {
            self.presence().mark_written(upto);
            return false;
        }
        let mut changes = Vec::with_capacity(ids.len());
        let mut published = Vec::with_capacity(ids.len());
        {
            let state = self.read();
            for id in ids {
                match state.clients.get(&id).filter(|e| e.local.is_some()) {
                    Some(entry) => {
                        let record = entry.record();
                        changes.push(PresenceChange::Put {
                            id: id.as_str().to_owned(),
                            record: raw(&record),
                        });
                        published.push((id.as_str().to_owned(), Some(record)));
                    }
                    None => {
                        published.push((id.as_str().to_owned(), None));
                        changes.push(PresenceChange::Remove {
                            id: id.as_str().to_owned(),
                        });
                    }
                }
            }
        }
        let seq = self.presence().seq.load(Ordering::SeqCst) + 1;
        // A large batch (a burst of connects) is not copied into the feed: the others read the
        // table instead, as after a replacement.
        let message = if published.len() > MAX_FEED_CHANGES {
            FeedMessage {
                worker: worker.to_owned(),
                seq,
                kind: Kind::Replaced,
                changes: Vec::new(),
            }
        } else {
            FeedMessage {
                worker: worker.to_owned(),
                seq,
                kind: Kind::Changes,
                changes: published,
            }
        };
        match store
            .write(worker, changes, seq, self.presence().ttl, feed(&message))
            .await
        {
            Ok(()) => {
                self.presence().seq.store(seq, Ordering::SeqCst);
                self.presence().mark_written(upto);
                false
            }
            Err(error) => {
                // What was lost is re-asserted by replacing the whole table.
                self.presence().replace.store(true, Ordering::SeqCst);
                self.presence().warn("a write failed", &error);
                true
            }
        }
    }

    /// Replaces this worker's table with its current clients. True when it failed.
    async fn replace_table(&self, store: &dyn PresenceStore, worker: &str) -> bool {
        // Everything dirty is in the table written now.
        let (_, upto) = self.presence().take_dirty();
        let records: Vec<(String, Bytes)> = {
            let state = self.read();
            state
                .local
                .keys()
                .filter_map(|id| {
                    Some((
                        id.as_str().to_owned(),
                        raw(&state.clients.get(id)?.record()),
                    ))
                })
                .collect()
        };
        let seq = self.presence().seq.load(Ordering::SeqCst) + 1;
        let message = FeedMessage {
            worker: worker.to_owned(),
            seq,
            kind: Kind::Replaced,
            changes: Vec::new(),
        };
        let clients = records.len();
        match store
            .replace(worker, records, seq, self.presence().ttl, feed(&message))
            .await
        {
            Ok(()) => {
                self.presence().seq.store(seq, Ordering::SeqCst);
                self.presence().replace.store(false, Ordering::SeqCst);
                self.presence().mark_written(upto);
                tracing::debug!(
                    worker_id = worker,
                    clients,
                    seq,
                    "presence table written in full"
                );
                false
            }
            Err(error) => {
                self.presence().warn("writing the table failed", &error);
                true
            }
        }
    }

    /// Renews this worker's table. True when it failed.
    async fn renew_table(&self, store: &dyn PresenceStore, worker: &str) -> bool {
        let message = FeedMessage {
            worker: worker.to_owned(),
            seq: self.presence().seq.load(Ordering::SeqCst),
            kind: Kind::Heartbeat,
            changes: Vec::new(),
        };
        match store
            .renew(worker, self.presence().ttl, feed(&message))
            .await
        {
            Ok(true) => false,
            Ok(false) => {
                tracing::info!(
                    worker_id = worker,
                    "presence table had expired; writing it again"
                );
                self.presence().replace.store(true, Ordering::SeqCst);
                self.presence().wake.notify_one();
                false
            }
            Err(error) => {
                self.presence().warn("a heartbeat failed", &error);
                true
            }
        }
    }

    /// Reads every worker's table: the workers listed in the store, and those this worker knows.
    /// False when the store could not list them.
    async fn sync_all(&self, store: &dyn PresenceStore) -> bool {
        match store.workers().await {
            Ok(listed) => {
                let mut workers: HashSet<Arc<str>> =
                    listed.iter().map(|w| Arc::from(w.as_str())).collect();
                workers.extend(self.read().remotes.keys().cloned());
                for worker in workers {
                    if *worker != *self.inner.worker_id {
                        self.resync(worker, None);
                    }
                }
                true
            }
            Err(error) => {
                self.presence().warn("listing the workers failed", &error);
                false
            }
        }
    }

    /// Learns every worker that has a table (at start, so that a worker started later sees the
    /// cluster at once, and again each time the broker's subscription comes back, since feed
    /// messages were lost meanwhile), then drops the workers not heard from for the TTL.
    pub(crate) async fn run_presence_reader(
        self,
        resources: Arc<subscriber_runtime::Resources>,
        stop: CancellationToken,
    ) {
        let Some(store) = self.presence().store.clone() else {
            return;
        };
        let mut reconnects = resources.stats().reconnects;
        while !self.sync_all(&*store).await {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
        // Checked every SWEEP and dropped a tenth of the TTL early (at 9 s of silence for the
        // default 10 s, after three missed heartbeats), so that a silent worker is gone at most
        // the TTL after its last heartbeat, delivery delays and this sweep's period included.
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = resources.stats().reconnects;
            if now != reconnects {
                reconnects = now;
                tracing::debug!(worker_id = %self.inner.worker_id, "broker subscription back: reading every worker's presence table");
                let (ws, store) = (self.clone(), store.clone());
                tokio::spawn(async move { ws.sync_all(&*store).await });
            }
            let ttl = self.presence().ttl - (self.presence().ttl / 10).max(SWEEP);
            let mut state = self.write();
            let silent: Vec<Arc<str>> = state
                .remotes
                .iter()
                .filter(|(_, r)| !r.syncing && r.heard.elapsed() > ttl)
                .map(|(w, _)| w.clone())
                .collect();
            for worker in silent {
                let clients = state.clear_remote(&worker);
                state.remotes.remove(&worker);
                tracing::info!(worker_id = %self.inner.worker_id, gone = %worker, clients, "worker not heard from within the presence TTL: its clients are no longer listed");
            }
        }
    }

    /// Applies one message of the presence feed. Never waits.
    pub(crate) fn on_presence_feed(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<FeedMessage>(payload) else {
            tracing::debug!("presence: unreadable feed message ignored");
            return;
        };
        if *message.worker == *self.inner.worker_id {
            return;
        }
        let worker: Arc<str> = Arc::from(message.worker.as_str());
        let mut state = self.write();
        if message.kind == Kind::Stopped {
            let clients = state.clear_remote(&worker);
            state.remotes.remove(&worker);
            tracing::debug!(gone = %worker, clients, "worker stopped");
            return;
        }
        let remote = state
            .remotes
            .entry(worker.clone())
            .or_insert_with(Remote::new);
        remote.heard = Instant::now();
        if remote.syncing {
            remote.pending.push(message);
            return;
        }
        let needs_read = match message.kind {
            _ if !remote.known => true,
            Kind::Replaced => message.seq > remote.seq,
            Kind::Heartbeat => message.seq > remote.seq,
            Kind::Changes => message.seq > remote.seq + 1,
            Kind::Stopped => false,
        };
        if needs_read {
            drop(state);
            self.resync(worker, Some(message));
            return;
        }
        if message.kind == Kind::Changes && message.seq == remote.seq + 1 {
            remote.seq = message.seq;
            apply_changes(&mut state, &worker, message.changes);
        }
    }

    /// Reads `worker`'s table, holding its feed messages meanwhile, then applies the newer ones.
    fn resync(&self, worker: Arc<str>, first: Option<FeedMessage>) {
        let Some(store) = self.presence().store.clone() else {
            return;
        };
        {
            let mut state = self.write();
            let remote = state
                .remotes
                .entry(worker.clone())
                .or_insert_with(Remote::new);
            remote.pending.extend(first);
            if remote.syncing {
                return;
            }
            remote.syncing = true;
        }
        let ws = self.clone();
        tokio::spawn(async move {
            let table = store.read(&worker).await;
            let mut state = ws.write();
            match table {
                Ok(Some(table)) => {
                    state.clear_remote(&worker);
                    for (id, record) in &table.records {
                        match serde_json::from_slice::<Record>(record) {
                            Ok(record) => {
                                state.put_remote(&worker, ClientId::from_wire(id), record)
                            }
                            Err(error) => {
                                tracing::debug!(%error, client_id = id, "presence: unreadable record ignored")
                            }
                        }
                    }
                    let remote = state
                        .remotes
                        .entry(worker.clone())
                        .or_insert_with(Remote::new);
                    remote.seq = table.seq;
                    remote.known = true;
                    remote.syncing = false;
                    remote.heard = Instant::now();
                    let pending = std::mem::take(&mut remote.pending);
                    tracing::debug!(worker = %worker, clients = table.records.len(), seq = table.seq, "presence table of a worker read");
                    drop(state);
                    for message in pending {
                        let payload = serde_json::to_vec(&message).unwrap_or_default();
                        ws.on_presence_feed(&payload);
                    }
                }
                Ok(None) => {
                    state.clear_remote(&worker);
                    state.remotes.remove(&worker);
                }
                Err(error) => {
                    // Tried again on its next heartbeat, or dropped when it stays silent.
                    if let Some(remote) = state.remotes.get_mut(&worker) {
                        remote.syncing = false;
                        remote.known = false;
                        remote.pending.clear();
                    }
                    drop(state);
                    ws.presence()
                        .warn("reading another worker's table failed", &error);
                }
            }
        });
    }

    /// Enters `client` into its user's group when a per-user limit is set; `Ok(None)` when there
    /// is no limit or no user, `Err(())` when the user is over the limit.
    pub(crate) async fn admit(
        &self,
        client: &ClientId,
        user: Option<&crate::UserId>,
    ) -> Result<Option<GroupMember>, ()> {
        let (Some(limit), Some(user)) = (self.inner.config.max_connections_per_user, user) else {
            return Ok(None);
        };
        let local_count = || {
            let state = self.read();
            state
                .clients_of(user.as_str())
                .filter(|id| state.local.contains_key(*id))
                .count()
        };
        let Some(store) = self.presence().store.clone() else {
            return if local_count() < limit {
                Ok(None)
            } else {
                Err(())
            };
        };
        let member = GroupMember {
            worker: self.inner.worker_id.to_string(),
            id: client.as_str().to_owned(),
        };
        let group = format!("user:{}", user.as_str());
        match store.enter(&group, member.clone()).await {
            Ok(members) => {
                let ahead = members.iter().take_while(|m| **m != member).count();
                if ahead < limit {
                    Ok(Some(member))
                } else {
                    if let Err(error) = store.leave(&group, member).await {
                        self.presence()
                            .warn("leaving a user's group failed", &error);
                    }
                    Err(())
                }
            }
            Err(error) => {
                self.presence().warn(
                    "the per-user connection count is unavailable (enforced on this worker only)",
                    &error,
                );
                if local_count() < limit {
                    Ok(None)
                } else {
                    Err(())
                }
            }
        }
    }

    /// Takes a client out of its user's group (when a per-user limit is set).
    pub(crate) fn release(&self, client: &ClientId, user: Option<&crate::User>) {
        let (Some(store), Some(user), Some(_)) = (
            self.presence().store.clone(),
            user,
            self.inner.config.max_connections_per_user,
        ) else {
            return;
        };
        let member = GroupMember {
            worker: self.inner.worker_id.to_string(),
            id: client.as_str().to_owned(),
        };
        let group = format!("user:{}", user.id().as_str());
        let ws = self.clone();
        tokio::spawn(async move {
            if let Err(error) = store.leave(&group, member).await {
                ws.presence().warn("leaving a user's group failed", &error);
            }
        });
    }
}

fn apply_changes(
    state: &mut crate::rooms::State,
    worker: &Arc<str>,
    changes: Vec<(String, Option<Record>)>,
) {
    for (id, record) in changes {
        let id = ClientId::from_wire(&id);
        match record {
            Some(record) => state.put_remote(worker, id, record),
            None => {
                if state.clients.get(&id).is_some_and(|e| e.local.is_none()) {
                    state.remove(&id);
                }
            }
        }
    }
}
