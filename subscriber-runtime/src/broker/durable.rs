//! Durable channels: what a broker stores for them, and which channels are durable.
//!
//! A publish on a durable channel is appended to the channel's stream and published live with its
//! [`Position`] (the stream's epoch and the message's offset in it), in one atomic step. A worker
//! that sees an offset jump (it was disconnected, or its queue was full) reads what it missed from
//! the stream and handles it first, in order; after a reconnect it reads everything after the last
//! offset it handled. See [`Builder::durable`](crate::Builder::durable).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use regex::Regex;

/// How much of a durable channel's history is kept: a window in messages and in time.
///
/// - At most about the last [`messages`](Self::messages) messages: Redis trims in whole stream
///   nodes (`MAXLEN ~`), so it may keep a few more.
/// - Each message for [`age`](Self::age): it is removed between `age` and `age + age/16` after
///   it was published (Redis checks the window once per sixteenth of it, on a publish), and the
///   whole stream goes between `age` and `age + age/16` after the last publish. A worker or a
///   client that comes back after longer gets `recovered: false` for what is gone, which is
///   counted as lost.
///
/// ```
/// use std::time::Duration;
/// use switchboard::broker::Retention;
///
/// let retention = Retention::new().messages(10_000).age(Duration::from_secs(600));
/// assert_eq!(retention.max_messages(), 10_000);
/// assert_eq!(Retention::default().max_age(), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    messages: u64,
    age: Duration,
}

impl Default for Retention {
    /// 1,000 messages, 5 minutes.
    fn default() -> Self {
        Self {
            messages: 1_000,
            age: Duration::from_secs(300),
        }
    }
}

impl Retention {
    /// The default: 1,000 messages, 5 minutes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at least the last `messages` messages (at least 1).
    #[must_use]
    pub fn messages(mut self, messages: u64) -> Self {
        self.messages = messages.max(1);
        self
    }

    /// Keeps each message for `age` after its publish, and at most `age/16` more (at least 1
    /// ms, at most 365 days). The time is the publisher's clock: keep workers' clocks in sync
    /// (NTP), or a skewed publisher's messages go early or late.
    #[must_use]
    pub fn age(mut self, age: Duration) -> Self {
        self.age = age.clamp(
            Duration::from_millis(1),
            Duration::from_secs(365 * 24 * 3600),
        );
        self
    }

    /// How many messages are kept, at least.
    pub fn max_messages(&self) -> u64 {
        self.messages
    }

    /// How long each message is kept (and the history after the last publish).
    pub fn max_age(&self) -> Duration {
        self.age
    }
}

/// A message's place in its durable channel's stream: the stream's `epoch` (a new one each time
/// the stream starts again from nothing: first use, expiry, a Redis that lost its data) and the
/// message's `offset` in it (1, 2, 3, ... without holes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The message's offset in the stream, from 1.
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// What [`Broker::read_stream`](super::Broker::read_stream) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRead {
    /// The stream's epoch now; `None` when the channel has no stream (never used, or expired).
    pub epoch: Option<Arc<str>>,
    /// The entries read, offsets ascending: `(offset, payload)`.
    pub entries: Vec<(u64, Bytes)>,
    /// The offset of the newest message published (0 when none).
    pub last: u64,
}

/// One entry a [`GroupConsumer`] read or claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Its position in the channel's stream.
    pub position: Position,
    /// The payload, as published.
    pub payload: Bytes,
    /// Whether it was claimed from another consumer that had it for too long without
    /// acknowledging it (that consumer may have handled it before it died or stalled).
    pub claimed: bool,
}

/// A consumer of one durable channel's stream within a consumer group: each entry goes to one
/// consumer of the group, which acknowledges it once handled; the entries a consumer kept too long
/// without acknowledging (it died) can be claimed by another. What run-once handlers read with
/// (see [`Builder::once_claim_idle`](crate::Builder::once_claim_idle)).
///
/// On Redis, `XREADGROUP`, `XACK` and `XAUTOCLAIM` on a connection of the consumer's own, so that
/// a blocking read never holds up a publish.
pub trait GroupConsumer: Send + fmt::Debug {
    /// Makes sure the group exists (created at the stream's end when it does not), so that
    /// every message published from now on reaches the group. Called once, at start.
    fn prepare(&mut self) -> futures_util::future::BoxFuture<'_, Result<(), crate::BrokerError>>;

    /// Reads up to `count` new entries, waiting up to `block` for one. The group is created when
    /// it does not exist (at the stream's end the first time, at its start when the stream was
    /// lost since).
    fn read(
        &mut self,
        count: usize,
        block: Duration,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<GroupEntry>, crate::BrokerError>>;

    /// Acknowledges handled entries by offset.
    fn ack(
        &mut self,
        offsets: Vec<u64>,
    ) -> futures_util::future::BoxFuture<'_, Result<(), crate::BrokerError>>;

    /// Claims up to `count` entries that other consumers of the group have held for at least
    /// `min_idle` without acknowledging them.
    fn claim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<GroupEntry>, crate::BrokerError>>;
}

/// A new random epoch: 16 hex digits.
pub(crate) fn new_epoch() -> Arc<str> {
    let id = uuid::Uuid::new_v4().as_u64_pair().0;
    Arc::from(format!("{id:016x}"))
}

/// Epoch candidates for a publisher, cheap to make: a random prefix and a counter (16 hex
/// digits), so that no two are equal, whoever makes them.
#[derive(Debug)]
pub(crate) struct Epochs {
    prefix: u32,
    next: std::sync::atomic::AtomicU32,
}

impl Default for Epochs {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().as_u64_pair();
        Self {
            // Truncations of random bits.
            prefix: random.0 as u32,
            next: std::sync::atomic::AtomicU32::new(random.1 as u32),
        }
    }
}

impl Epochs {
    /// The next candidate.
    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:08x}{n:08x}", self.prefix)
    }
}

/// The live form of a durable message (a test of the parser below), as Redis's script publishes it: the position first, then
/// the stored payload's fields: `{"streamEpoch":"<epoch>","streamOffset":<offset>,...}`.
#[cfg(test)]
pub(crate) fn live_payload(position: &Position, stored: &[u8]) -> Vec<u8> {
    let rest = &stored[1.min(stored.len())..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'}');
    let mut out = Vec::with_capacity(stored.len() + position.epoch.len() + 40);
    out.extend_from_slice(b"{\"streamEpoch\":\"");
    out.extend_from_slice(position.epoch.as_bytes());
    out.extend_from_slice(b"\",\"streamOffset\":");
    out.extend_from_slice(position.offset.to_string().as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// How a live durable message starts.
pub(crate) const LIVE_PREFIX: &[u8] = b"{\"streamEpoch\":\"";

/// Splits a live durable message into its position and the stored payload (the bytes as they
/// were published); `None` for any other payload.
pub(crate) fn split_live(payload: &[u8]) -> Option<(Position, Bytes)> {
    let rest = payload.strip_prefix(LIVE_PREFIX)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let epoch = std::str::from_utf8(&rest[..end]).ok()?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let rest = rest[end + 1..].strip_prefix(b",\"streamOffset\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let offset: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    if offset == 0 {
        return None;
    }
    let rest = &rest[digits..];
    let rest = rest.strip_prefix(b",").unwrap_or(rest);
    let mut stored = Vec::with_capacity(rest.len() + 1);
    stored.push(b'{');
    stored.extend_from_slice(rest);
    Some((
        Position {
            epoch: Arc::from(epoch),
            offset,
        },
        Bytes::from(stored),
    ))
}

/// What the dispatcher must read again from durable channels' streams: everything (the broker
/// reconnected, or the worker started), or the channels whose messages a full queue dropped.
#[derive(Debug, Default)]
pub(crate) struct Resync {
    all: std::sync::atomic::AtomicBool,
    /// Channel → the first position dropped on it since the last catch-up.
    lagging: std::sync::Mutex<HashMap<Arc<str>, Position>>,
    pub(crate) notify: tokio::sync::Notify,
}

/// At most this many channels are remembered as lagging; beyond, everything is read again.
const MAX_LAGGING: usize = 10_000;

impl Resync {
    /// Every channel with a cursor is read again.
    pub(crate) fn everything(&self) {
        self.all.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// A message of `channel` at `position` was dropped: the channel is read again.
    pub(crate) fn dropped(&self, channel: &str, position: Position) {
        let mut lagging = self
            .lagging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lagging.len() >= MAX_LAGGING && !lagging.contains_key(channel) {
            drop(lagging);
            self.everything();
            return;
        }
        lagging.entry(Arc::from(channel)).or_insert(position);
        drop(lagging);
        self.notify.notify_one();
    }

    /// What to read again: whether everything, and the lagging channels.
    pub(crate) fn take(&self) -> (bool, Vec<(Arc<str>, Position)>) {
        let all = self.all.swap(false, std::sync::atomic::Ordering::SeqCst);
        let lagging = std::mem::take(
            &mut *self
                .lagging
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        (all, lagging.into_iter().collect())
    }
}

/// A rule making channels durable.
#[derive(Debug, Clone)]
pub(crate) enum DurableRule {
    /// An exact channel.
    Channel(String),
    /// A Redis glob pattern.
    Pattern(String),
    /// A regex.
    Regex(Regex),
}

impl fmt::Display for DurableRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(c) => write!(f, "{c:?}"),
            Self::Pattern(p) => write!(f, "pattern({p:?})"),
            Self::Regex(r) => write!(f, "regex({:?})", r.as_str()),
        }
    }
}

/// Which channels are durable, with their retention. Shared by the publisher and the dispatcher;
/// set once at `build()`.
#[derive(Debug, Default)]
pub(crate) struct DurableChannels {
    rules: OnceLock<Rules>,
}

#[derive(Debug, Default)]
struct Rules {
    exact: HashMap<String, Retention>,
    other: Vec<(DurableRule, Retention)>,
}

impl DurableChannels {
    /// Sets the rules (the first rule given for a channel wins).
    pub(crate) fn set(&self, rules: Vec<(DurableRule, Retention)>) {
        let mut built = Rules::default();
        for (rule, retention) in rules {
            match rule {
                DurableRule::Channel(c) => {
                    built.exact.entry(c).or_insert(retention);
                }
                other => built.other.push((other, retention)),
            }
        }
        let _ = self.rules.set(built);
    }

    /// The retention of `channel` when it is durable.
    pub(crate) fn retention(&self, channel: &str) -> Option<Retention> {
        let rules = self.rules.get()?;
        if let Some(r) = rules.exact.get(channel) {
            return Some(*r);
        }
        rules.other.iter().find_map(|(rule, retention)| {
            let hit = match rule {
                DurableRule::Channel(c) => c == channel,
                DurableRule::Pattern(p) => subscriber_patterns::glob::matches(p, channel),
                DurableRule::Regex(r) => r.is_match(channel),
            };
            hit.then_some(*retention)
        })
    }

    /// The exact durable channels.
    pub(crate) fn exact(&self) -> Vec<String> {
        self.rules
            .get()
            .map(|r| r.exact.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether no channel is durable.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules
            .get()
            .is_none_or(|r| r.exact.is_empty() && r.other.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_payloads_split_back_into_position_and_stored_bytes() {
        let position = Position {
            epoch: Arc::from("0a1b2c3d4e5f6071"),
            offset: 42,
        };
        for stored in [
            &br#"{"workerId":"w","a":[1,2]}"#[..],
            b"{}",
            b"{ }",
            br#"{"x":"}"}"#,
        ] {
            let live = live_payload(&position, stored);
            serde_json::from_slice::<serde_json::Value>(&live).expect("valid JSON");
            let (back, bytes) = split_live(&live).expect("a live durable payload");
            assert_eq!(back, position);
            assert_eq!(&bytes[..], stored);
        }
        assert!(split_live(br#"{"workerId":"w"}"#).is_none());
        assert!(split_live(br#"{"streamEpoch":"a b","streamOffset":1}"#).is_none());
        assert!(split_live(br#"{"streamEpoch":"ab","streamOffset":x}"#).is_none());
    }

    #[test]
    fn rules_find_the_retention_of_exact_glob_and_regex_channels() {
        let set = DurableChannels::default();
        assert!(set.is_empty());
        assert_eq!(set.retention("orders"), None);
        set.set(vec![
            (
                DurableRule::Channel("orders".into()),
                Retention::new().messages(5),
            ),
            (
                DurableRule::Pattern("audit:*".into()),
                Retention::new().messages(6),
            ),
            (
                DurableRule::Regex(Regex::new("^pay:[0-9]+$").unwrap()),
                Retention::new().messages(7),
            ),
        ]);
        assert_eq!(set.retention("orders").map(|r| r.max_messages()), Some(5));
        assert_eq!(set.retention("audit:x").map(|r| r.max_messages()), Some(6));
        assert_eq!(set.retention("pay:12").map(|r| r.max_messages()), Some(7));
        assert_eq!(set.retention("pay:x"), None);
        assert_eq!(set.exact(), vec!["orders".to_owned()]);
    }
}
