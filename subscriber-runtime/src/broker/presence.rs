//! The cluster's shared presence store: what a [`Broker`](super::Broker) offers a plugin (the
//! WebSocket server) so that every worker sees the same clients, users and rooms.
//!
//! The store keeps one **table** per worker (the records of that worker's clients, opaque bytes,
//! with a sequence number) and one **group** per key (an ordered list of members, used for
//! cluster-wide limits such as connections per user). Each worker writes only its own table, so
//! nothing needs a lock across workers:
//! - every [`write`](PresenceStore::write) changes the table, sets its sequence number and renews
//!   its time to live atomically, and publishes a feed message on a channel in the same step; the
//!   other workers apply the feed in order and read the table again when they see a gap;
//! - a worker that stops renewing (it crashed, or lost Redis) loses its table when the time to
//!   live runs out, and the others stop listing its clients.
//!
//! On Redis a table is a hash (`<namespace>switchboard:presence:<worker>`, field `~seq` for the
//! sequence number), the known workers a set (`...:presence:workers`), a group a list
//! (`...:presence:group:<key>`); each write is one `MULTI`/`EXEC` with its `PUBLISH`. The
//! [`MemoryBroker`](super::MemoryBroker) keeps the same model in memory for workers in one process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::BrokerError;

/// The table field that holds the sequence number (client ids never start with `~`).
pub const SEQ_FIELD: &str = "~seq";

/// The channel of the presence feed (the WebSocket server's): a store may keep its keys next to
/// it (on a Redis Cluster, in its slot, so that a write and its feed message are one transaction).
pub const FEED_CHANNEL: &str = "switchboard.presence";

/// One change to a worker's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// Sets the record of `id`.
    Put {
        /// The record's key (a client id).
        id: String,
        /// The record.
        record: Bytes,
    },
    /// Removes the record of `id`.
    Remove {
        /// The record's key.
        id: String,
    },
}

/// A worker's table as read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceTable {
    /// The sequence number of the last write.
    pub seq: u64,
    /// The records, by key.
    pub records: BTreeMap<String, Bytes>,
}

/// A member of a group: the worker that added it and its own id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupMember {
    /// The worker that added the member.
    pub worker: String,
    /// The member's id (a client id).
    pub id: String,
}

/// A feed message: what a write publishes, on which (un-namespaced) channel.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The channel, as handlers see it (the store adds the broker's namespace).
    pub channel: String,
    /// The payload.
    pub payload: Bytes,
}

/// The shared presence store of a broker (see the [module docs](self)).
///
/// Every method is one atomic step on the store (one round trip on Redis, except
/// [`enter`](Self::enter), which takes two) and fails with a [`BrokerError`] when the store
/// cannot be reached; none waits longer than the broker's publish timeout.
pub trait PresenceStore: Send + Sync + fmt::Debug + 'static {
    /// Applies `changes` to `worker`'s table, sets its sequence number to `seq`, renews its time to
    /// live to `ttl`, lists the worker among the known workers, and publishes `feed`, atomically.
    fn write(
        &self,
        worker: &str,
        changes: Vec<PresenceChange>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Replaces `worker`'s whole table with `records` (and `seq`, `ttl`), and publishes `feed`,
    /// atomically.
    fn replace(
        &self,
        worker: &str,
        records: Vec<(String, Bytes)>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Renews `worker`'s time to live and publishes `feed` (a heartbeat). `Ok(false)` when the
    /// table no longer exists (it expired): the worker must [`replace`](Self::replace) it.
    fn renew(
        &self,
        worker: &str,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<bool, BrokerError>>;

    /// Reads `worker`'s table; `None` when it does not exist (the worker is gone).
    fn read(&self, worker: &str) -> BoxFuture<'_, Result<Option<PresenceTable>, BrokerError>>;

    /// The workers that wrote a table (some may be gone since: [`read`](Self::read) says).
    fn workers(&self) -> BoxFuture<'_, Result<Vec<String>, BrokerError>>;

    /// Deletes `worker`'s table and its place among the known workers, and publishes `feed`.
    fn remove(&self, worker: &str, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Appends `member` to `group` and returns the group's members in the order they entered,
    /// `member` last among them, without the members of workers whose table no longer exists
    /// (they are removed).
    fn enter(
        &self,
        group: &str,
        member: GroupMember,
    ) -> BoxFuture<'_, Result<Vec<GroupMember>, BrokerError>>;

    /// Removes `member` from `group`.
    fn leave(&self, group: &str, member: GroupMember) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// How a group member is stored: `<worker>\t<id>`.
pub(crate) fn encode_member(member: &GroupMember) -> String {
    format!("{}\t{}", member.worker, member.id)
}

pub(crate) fn decode_member(text: &str) -> Option<GroupMember> {
    let (worker, id) = text.split_once('\t')?;
    Some(GroupMember {
        worker: worker.to_owned(),
        id: id.to_owned(),
    })
}

/// The in-memory store of a [`MemoryBroker`](super::MemoryBroker), shared by its clones.
#[derive(Default)]
pub(crate) struct MemoryPresence {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    tables: HashMap<String, (PresenceTable, Instant)>,
    groups: HashMap<String, Vec<GroupMember>>,
}

impl MemoryState {
    fn live(&mut self, worker: &str) -> Option<&mut PresenceTable> {
        let now = Instant::now();
        if self
            .tables
            .get(worker)
            .is_some_and(|(_, until)| *until <= now)
        {
            self.tables.remove(worker);
        }
        self.tables.get_mut(worker).map(|(t, _)| t)
    }
}

impl fmt::Debug for MemoryPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPresence").finish_non_exhaustive()
    }
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write(
        &self,
        worker: &str,
        changes: Vec<PresenceChange>,
        seq: u64,
        ttl: Duration,
    ) {
        let mut state = self.lock();
        state.live(worker);
        let (table, until) = state
            .tables
            .entry(worker.to_owned())
            .or_insert_with(|| (PresenceTable::default(), Instant::now()));
        for change in changes {
            match change {
                PresenceChange::Put { id, record } => {
                    table.records.insert(id, record);
                }
                PresenceChange::Remove { id } => {
                    table.records.remove(&id);
                }
            }
        }
        table.seq = seq;
        *until = Instant::now() + ttl;
    }

    pub(crate) fn replace(
        &self,
        worker: &str,
        records: Vec<(String, Bytes)>,
        seq: u64,
        ttl: Duration,
    ) {
        let table = PresenceTable {
            seq,
            records: records.into_iter().collect(),
        };
        self.lock()
            .tables
            .insert(worker.to_owned(), (table, Instant::now() + ttl));
    }

    pub(crate) fn renew(&self, worker: &str, ttl: Duration) -> bool {
        let mut state = self.lock();
        state.live(worker);
        match state.tables.get_mut(worker) {
            Some((_, until)) => {
                *until = Instant::now() + ttl;
                true
            }
            None => false,
        }
    }

    pub(crate) fn read(&self, worker: &str) -> Option<PresenceTable> {
        self.lock().live(worker).cloned()
    }

    pub(crate) fn workers(&self) -> Vec<String> {
        let mut state = self.lock();
        let names: Vec<String> = state.tables.keys().cloned().collect();
        names
            .into_iter()
            .filter(|w| state.live(w).is_some())
            .collect()
    }

    pub(crate) fn remove(&self, worker: &str) {
        self.lock().tables.remove(worker);
    }

    pub(crate) fn enter(&self, group: &str, member: GroupMember) -> Vec<GroupMember> {
        let mut state = self.lock();
        let mut members = state.groups.remove(group).unwrap_or_default();
        let worker = member.worker.clone();
        members.push(member);
        // The entering worker's own members count even before its table is first written.
        members.retain(|m| m.worker == worker || state.live(&m.worker).is_some());
        let out = members.clone();
        state.groups.insert(group.to_owned(), members);
        out
    }

    pub(crate) fn leave(&self, group: &str, member: &GroupMember) {
        let mut state = self.lock();
        if let Some(members) = state.groups.get_mut(group) {
            members.retain(|m| m != member);
            if members.is_empty() {
                state.groups.remove(group);
            }
        }
    }
}
