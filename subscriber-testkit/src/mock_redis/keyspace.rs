//! The keyspace: the values (strings, hashes, sets, lists, streams), their expiry, the `WATCH`
//! bookkeeping, and the signal that wakes the clients blocked on streams.
//!
//! Expiry is lazy, as in Redis: a key whose deadline has passed is deleted when it is next looked
//! up. [`Keyspace::len`] and [`Keyspace::keys`] purge every expired key first, so `DBSIZE`, `KEYS`
//! and `EXISTS` never report one. Deadlines are absolute Unix times in milliseconds, as Redis stores
//! them (which makes `PXAT`/`EXAT` exact).
//!
//! A modification of a key *touches* it: every client watching it gets its next `EXEC` aborted.
//! The data commands call [`Keyspace::touch`] themselves when they change a value in place; every
//! other change (insert, remove, expiry, flush) touches on its own.
//!
//! A client blocked by `XREAD`/`XREADGROUP ... BLOCK` waits on [`Keyspace::stream_signal`]: every
//! `XADD`, `XGROUP DESTROY` and removal of a stream (deleted, replaced, expired, flushed) signals
//! it, and each waiting client then checks its own streams again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use super::stream::Stream;

/// A value, of one of the five types the mock knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    String(Bytes),
    Hash(BTreeMap<Bytes, Bytes>),
    Set(BTreeSet<Bytes>),
    List(VecDeque<Bytes>),
    Stream(Stream),
}

impl Value {
    /// The name `TYPE` answers.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::List(_) => "list",
            Value::Stream(_) => "stream",
        }
    }

    /// An empty hash, set or list, which Redis never keeps (an empty stream stays).
    fn is_empty_collection(&self) -> bool {
        match self {
            Value::String(_) | Value::Stream(_) => false,
            Value::Hash(h) => h.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::List(l) => l.is_empty(),
        }
    }
}

/// A collection type, for [`Keyspace::get`] and [`Keyspace::get_or_create`].
pub(super) trait Collection: Default {
    fn of(value: &mut Value) -> Option<&mut Self>;
    fn into_value(self) -> Value;
}

impl Collection for BTreeMap<Bytes, Bytes> {
    fn of(value: &mut Value) -> Option<&mut Self> {
        match value {
            Value::Hash(h) => Some(h),
            _ => None,
        }
    }
    fn into_value(self) -> Value {
        Value::Hash(self)
    }
}

impl Collection for BTreeSet<Bytes> {
    fn of(value: &mut Value) -> Option<&mut Self> {
        match value {
            Value::Set(s) => Some(s),
            _ => None,
        }
    }
    fn into_value(self) -> Value {
        Value::Set(self)
    }
}

impl Collection for VecDeque<Bytes> {
    fn of(value: &mut Value) -> Option<&mut Self> {
        match value {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    fn into_value(self) -> Value {
        Value::List(self)
    }
}

/// The key holds a value of another type than the command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WrongType;

#[derive(Debug)]
struct Entry {
    value: Value,
    /// Unix time in milliseconds after which the key no longer exists.
    expires_at: Option<i64>,
}

/// The keys `WATCH`ed by one client, and whether one was modified since.
#[derive(Debug, Default)]
struct Watch {
    keys: BTreeSet<Bytes>,
    dirty: bool,
}

/// Every key of the server (all databases share it), and the clients' watched keys.
#[derive(Debug, Default)]
pub(super) struct Keyspace {
    entries: BTreeMap<Bytes, Entry>,
    watches: HashMap<u64, Watch>,
    /// Wakes the clients blocked on streams (see the module's documentation).
    stream_signal: Arc<Notify>,
}

/// The current Unix time in milliseconds.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Keyspace {
    /// Deletes `key` if its deadline has passed (Redis: the key exists until `now > deadline`).
    fn expire_if_due(&mut self, key: &[u8], now: i64) {
        let due = self
            .entries
            .get(key)
            .and_then(|e| e.expires_at)
            .is_some_and(|at| now > at);
        if due {
            let removed = self.entries.remove(key);
            self.removed(key, removed.as_ref());
        }
    }

    /// Deletes every key whose deadline has passed.
    fn expire_all_due(&mut self) {
        let now = now_ms();
        let due: Vec<Bytes> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|at| now > at))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let removed = self.entries.remove(&key);
            self.removed(&key, removed.as_ref());
        }
    }

    /// The live value of `key`.
    pub(super) fn value(&mut self, key: &[u8]) -> Option<&mut Value> {
        self.expire_if_due(key, now_ms());
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Whether `key` exists (and has not expired).
    pub(super) fn contains(&mut self, key: &[u8]) -> bool {
        self.value(key).is_some()
    }

    /// The collection at `key`: `Ok(None)` when there is no such key.
    pub(super) fn get<T: Collection>(&mut self, key: &[u8]) -> Result<Option<&mut T>, WrongType> {
        match self.value(key) {
            None => Ok(None),
            Some(value) => T::of(value).map(Some).ok_or(WrongType),
        }
    }

    /// The collection at `key`, created empty when there is no such key. The caller leaves it
    /// non-empty, or [`Keyspace::remove_if_empty`] deletes it.
    pub(super) fn get_or_create<T: Collection>(
        &mut self,
        key: &Bytes,
    ) -> Result<&mut T, WrongType> {
        if !self.contains(key) {
            self.entries.insert(
                key.clone(),
                Entry {
                    value: T::default().into_value(),
                    expires_at: None,
                },
            );
        }
        let entry = self.entries.get_mut(key).expect("inserted above");
        T::of(&mut entry.value).ok_or(WrongType)
    }

    /// Deletes `key` when it holds an empty hash, set or list, as Redis never keeps one.
    pub(super) fn remove_if_empty(&mut self, key: &[u8]) {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.value.is_empty_collection())
        {
            self.entries.remove(key);
        }
    }

    /// Stores `value` at `key`, replacing any value, with the given deadline.
    pub(super) fn insert(&mut self, key: Bytes, value: Value, expires_at: Option<i64>) {
        self.touch(&key);
        if let Some(old) = self.entries.insert(key, Entry { value, expires_at }) {
            self.signal_if_stream(&old);
        }
    }

    /// Deletes `key`; true when it existed.
    pub(super) fn remove(&mut self, key: &[u8]) -> bool {
        self.expire_if_due(key, now_ms());
        let removed = self.entries.remove(key);
        self.removed(key, removed.as_ref());
        removed.is_some()
    }

    /// The deadline of `key`: `None` when there is no such key, `Some(None)` when it has none.
    pub(super) fn expires_at(&mut self, key: &[u8]) -> Option<Option<i64>> {
        self.expire_if_due(key, now_ms());
        self.entries.get(key).map(|e| e.expires_at)
    }

    /// Sets (or with `None` removes) the deadline of an existing key. A deadline already past
    /// deletes the key. False when there is no such key.
    pub(super) fn set_expiry(&mut self, key: &[u8], expires_at: Option<i64>) -> bool {
        let now = now_ms();
        self.expire_if_due(key, now);
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if expires_at.is_some_and(|at| at <= now) {
            let removed = self.entries.remove(key);
            if let Some(removed) = &removed {
                self.signal_if_stream(removed);
            }
        } else {
            entry.expires_at = expires_at;
        }
        self.touch(key);
        true
    }

    /// The live keys, sorted.
    pub(super) fn keys(&mut self) -> Vec<Bytes> {
        self.expire_all_due();
        self.entries.keys().cloned().collect()
    }

    /// How many live keys there are.
    pub(super) fn len(&mut self) -> usize {
        self.expire_all_due();
        self.entries.len()
    }

    /// Deletes every key (`FLUSHALL`, `FLUSHDB`), touching the watched ones that existed.
    pub(super) fn flush(&mut self) {
        self.expire_all_due();
        let entries = std::mem::take(&mut self.entries);
        for watch in self.watches.values_mut() {
            if watch.keys.iter().any(|k| entries.contains_key(k)) {
                watch.dirty = true;
            }
        }
        if entries
            .values()
            .any(|e| matches!(e.value, Value::Stream(_)))
        {
            self.signal_streams();
        }
    }

    /// Forgets everything, watches included (a restart, which drops every client).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.watches.clear();
    }

    /// After `key` was removed (`removed` is its entry, if it existed): touches it, and wakes the
    /// clients blocked on a stream.
    fn removed(&mut self, key: &[u8], removed: Option<&Entry>) {
        if let Some(entry) = removed {
            self.touch(key);
            self.signal_if_stream(entry);
        }
    }

    fn signal_if_stream(&self, entry: &Entry) {
        if matches!(entry.value, Value::Stream(_)) {
            self.signal_streams();
        }
    }

    /// Wakes every client blocked on a stream, to check its streams again.
    pub(super) fn signal_streams(&self) {
        self.stream_signal.notify_waiters();
    }

    /// What the clients blocked on streams wait on.
    pub(super) fn stream_signal(&self) -> Arc<Notify> {
        self.stream_signal.clone()
    }

    /// Signals a modification of `key`: every client watching it will have its `EXEC` aborted.
    pub(super) fn touch(&mut self, key: &[u8]) {
        for watch in self.watches.values_mut() {
            if watch.keys.contains(key) {
                watch.dirty = true;
            }
        }
    }

    /// `WATCH key` for client `id`.
    pub(super) fn watch(&mut self, id: u64, key: &Bytes) {
        // An expired key is deleted now, so that its expiry does not count as a later change.
        self.expire_if_due(key, now_ms());
        self.watches.entry(id).or_default().keys.insert(key.clone());
    }

    /// Forgets the watched keys of client `id` (`UNWATCH`, `EXEC`, `DISCARD`, disconnection).
    pub(super) fn unwatch(&mut self, id: u64) {
        self.watches.remove(&id);
    }

    /// Whether a key watched by client `id` was modified (or expired) since it was watched.
    pub(super) fn watch_broken(&mut self, id: u64) -> bool {
        let keys: Vec<Bytes> = self
            .watches
            .get(&id)
            .map(|w| w.keys.iter().cloned().collect())
            .unwrap_or_default();
        let now = now_ms();
        for key in &keys {
            self.expire_if_due(key, now);
        }
        self.watches.get(&id).is_some_and(|w| w.dirty)
    }
}
