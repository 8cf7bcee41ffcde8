//! Brokers carry messages between workers: the in-process [`MemoryBroker`] (the default) and the
//! Redis broker.
//!
//! Redis pub/sub, and so every broker here, is **at-most-once** for ordinary channels: a message
//! published while a worker is disconnected, or dropped because its dispatch queue is full, is lost
//! to that worker. Both cases are counted (see [`Stats`](crate::Stats)). A
//! [durable](crate::Builder::durable) channel is **at-least-once**: its messages are also kept in
//! a stream (see [`durable`]), from which a worker fills any gap in the offsets it sees.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::observe::stats::{Counters, InFlight, RateLimit};

pub mod durable;
mod memory;
pub mod presence;
mod redis;

pub use self::durable::{GroupConsumer, GroupEntry, Position, Retention, StreamRead};
pub use self::presence::PresenceStore;
pub use self::redis::{RedisBroker, RedisClusterBroker};
pub use memory::MemoryBroker;

/// A transport between workers: publish to a channel, and deliver what the worker subscribed to
/// into its [`Inbox`].
///
/// Implementations must never wait on the inbox: [`Inbox::deliver`] never blocks, and drops (and
/// counts) a message when the dispatch queue is full, so the transport's socket is always drained.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Publishes a payload on a channel (the channel as handlers see it; a broker with a namespace
    /// adds its prefix).
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Starts delivering every message on the subscribed channels and patterns into `inbox`, until
    /// `shutdown` is cancelled. Resolves once the subscription is active.
    fn subscribe(
        &self,
        subscriptions: Subscriptions,
        inbox: Inbox,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// A short name for logs (`"memory"`, `"redis"`).
    fn kind(&self) -> &'static str;

    /// The broker's shared [presence store](presence), for a plugin that keeps a cluster-wide view
    /// of its clients (the WebSocket server). `None` (the default) for a broker without one: each
    /// worker then sees its own clients only.
    fn presence(&self) -> Option<Arc<dyn PresenceStore>> {
        None
    }

    /// Whether this broker keeps streams, so that it can carry
    /// [durable channels](crate::Builder::durable) and run-once handlers. An application with
    /// durable channels refuses to start on a broker without them. The default: `false`; a broker
    /// that implements [`publish_durable`](Self::publish_durable) must say `true`.
    fn has_streams(&self) -> bool {
        false
    }

    /// Appends `payload` (a JSON object's text) to the stream of the durable `channel`, trimmed
    /// to `retention`, and publishes it live with its [`Position`], atomically. The default
    /// refuses: a broker without streams has no durable channels.
    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Position, BrokerError>> {
        let _ = (payload, retention);
        let error = BrokerError::Config(format!(
            "the {} broker has no streams, so `{channel}` cannot be durable",
            self.kind()
        ));
        Box::pin(std::future::ready(Err(error)))
    }

    /// Reads at most `limit` entries of `channel`'s stream after the offset `after`, and the
    /// stream's epoch and newest offset.
    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<StreamRead, BrokerError>> {
        let _ = (channel, after, limit);
        Box::pin(std::future::ready(Ok(StreamRead::default())))
    }

    /// A consumer named `consumer` in the consumer group `group` of the durable `channel`'s
    /// stream, for run-once handlers. The default refuses: a broker without streams has none.
    ///
    /// # Errors
    /// [`BrokerError::Config`] when the broker has no consumer groups.
    fn group_consumer(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn GroupConsumer>, BrokerError> {
        let _ = (group, consumer);
        Err(BrokerError::Config(format!(
            "the {} broker has no consumer groups, so handlers of `{channel}` cannot run once",
            self.kind()
        )))
    }
}

/// The exact channels and glob patterns a worker needs, with what is already covered removed: an
/// exact channel matched by a subscribed pattern, and a pattern covered by a broader one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    /// The literal prefixes of the patterns that are exactly `<literal>*` (`""` for `*`).
    prefixes: HashSet<String>,
    /// The distinct lengths of those prefixes, ascending.
    prefix_lens: Vec<usize>,
    /// The other patterns, tested one by one.
    complex: Vec<String>,
}

/// Every prefix of `s` at a character boundary, `""` and `s` included.
fn prefixes_of(s: &str) -> impl Iterator<Item = &str> {
    s.char_indices()
        .map(move |(i, _)| &s[..i])
        .chain(std::iter::once(s))
}

impl Subscriptions {
    /// Builds the minimal set from exact channels and glob patterns.
    ///
    /// Runs in time linear in the number of channels and patterns (times their length) for the
    /// common `<literal>*` patterns, so that a registry of thousands of handlers plans fast.
    pub fn new(
        channels: impl IntoIterator<Item = String>,
        patterns: impl IntoIterator<Item = String>,
    ) -> Self {
        let channels: Vec<String> = channels.into_iter().collect();
        let patterns: Vec<String> = patterns.into_iter().collect();
        Self::plan(
            channels.iter().map(String::as_str).collect(),
            patterns.iter().map(String::as_str).collect(),
        )
    }

    /// [`new`](Self::new) on borrowed names (in any order, repeats allowed): only what is kept is
    /// copied.
    pub(crate) fn plan(mut channels: Vec<&str>, mut patterns: Vec<&str>) -> Self {
        patterns.sort_unstable();
        patterns.dedup();
        let all_prefixes: HashSet<&str> = patterns
            .iter()
            .filter_map(|p| subscriber_patterns::glob::simple_prefix(p))
            .collect();
        // A pattern is dropped when a broader `<literal>*` pattern covers it.
        let patterns: BTreeSet<String> = patterns
            .iter()
            .filter(|p| {
                let own = subscriber_patterns::glob::simple_prefix(p);
                !prefixes_of(p).any(|pre| all_prefixes.contains(pre) && Some(pre) != own)
            })
            .map(|p| (*p).to_owned())
            .collect();
        let prefixes: HashSet<String> = patterns
            .iter()
            .filter_map(|p| subscriber_patterns::glob::simple_prefix(p))
            .map(str::to_owned)
            .collect();
        let mut prefix_lens: Vec<usize> = prefixes.iter().map(String::len).collect();
        prefix_lens.sort_unstable();
        prefix_lens.dedup();
        let complex: Vec<String> = patterns
            .iter()
            .filter(|p| subscriber_patterns::glob::simple_prefix(p).is_none())
            .cloned()
            .collect();
        let mut this = Self {
            channels: BTreeSet::new(),
            patterns,
            prefixes,
            prefix_lens,
            complex,
        };
        // An exact channel that a pattern matches is not subscribed again (Redis would deliver
        // it twice: once as `message`, once as `pmessage`).
        channels.retain(|c| !this.pattern_matches(c));
        channels.sort_unstable();
        channels.dedup();
        this.channels = channels.into_iter().map(str::to_owned).collect();
        this
    }

    fn pattern_matches(&self, channel: &str) -> bool {
        // Only the prefix lengths that some pattern has are looked up.
        self.prefix_lens
            .iter()
            .take_while(|&&len| len <= channel.len())
            .any(|&len| channel.is_char_boundary(len) && self.prefixes.contains(&channel[..len]))
            || self
                .complex
                .iter()
                .any(|p| subscriber_patterns::glob::matches(p, channel))
    }

    /// The exact channels to `SUBSCRIBE` to.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// The glob patterns to `PSUBSCRIBE` to.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(String::as_str)
    }

    /// Whether nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty()
    }

    /// Whether a message on `channel` is delivered by these subscriptions.
    pub fn matches(&self, channel: &str) -> bool {
        self.channels.contains(channel) || self.pattern_matches(channel)
    }

    /// For a message Redis delivered through `pattern`: whether this is the one delivery to keep.
    /// Redis sends a message once per matching pattern; keeping only the first matching pattern
    /// (in sorted order) hands each message to the dispatcher exactly once.
    pub fn is_canonical_pattern(&self, pattern: &str, channel: &str) -> bool {
        let simple = prefixes_of(channel)
            .filter(|pre| self.prefixes.contains(*pre))
            .map(|pre| format!("{pre}*"));
        let complex = self
            .complex
            .iter()
            .filter(|p| subscriber_patterns::glob::matches(p, channel))
            .cloned();
        simple
            .chain(complex)
            .min()
            .is_some_and(|first| first == pattern)
    }
}

impl fmt::Display for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "channels {:?}, patterns {:?}",
            self.channels, self.patterns
        )
    }
}

/// One message taken from the broker.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) channel: Arc<str>,
    pub(crate) payload: Bytes,
    /// Its place in the channel's stream, for a message of a durable channel.
    pub(crate) position: Option<Position>,
    /// When the broker handed it over (the start of `switchboard_dispatch_duration_seconds`).
    pub(crate) received: std::time::Instant,
}

/// Where a broker puts what it receives: the worker's bounded dispatch queue.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Incoming>,
    counters: Arc<Counters>,
    in_flight: Arc<InFlight>,
    warn: Arc<RateLimit>,
    resync: Arc<durable::Resync>,
    /// The application's durable channels: only their messages carry a position.
    durable: Arc<durable::DurableChannels>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("capacity", &self.tx.max_capacity())
            .finish_non_exhaustive()
    }
}

impl Inbox {
    pub(crate) fn new(
        capacity: usize,
        counters: Arc<Counters>,
        in_flight: Arc<InFlight>,
        resync: Arc<durable::Resync>,
        durable: Arc<durable::DurableChannels>,
    ) -> (Self, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                counters,
                in_flight,
                warn: Arc::new(RateLimit::new(Duration::from_secs(5))),
                resync,
                durable,
            },
            rx,
        )
    }

    /// Hands a message to the dispatcher without waiting. Returns false when it was dropped
    /// because the queue is full (counted, with a rate-limited warning) or the worker stopped.
    ///
    /// A live message of a durable channel (as a broker's script publishes it, its position
    /// first) is recognised here: the dispatcher gets its position and the payload as stored.
    /// Only on the application's durable channels: elsewhere such a payload is an ordinary one.
    pub fn deliver(&self, channel: &str, payload: Bytes) -> bool {
        if payload.starts_with(durable::LIVE_PREFIX) && self.durable.retention(channel).is_some() {
            if let Some((position, stored)) = durable::split_live(&payload) {
                return self.deliver_at(channel, stored, Some(position));
            }
        }
        self.deliver_at(channel, payload, None)
    }

    /// [`deliver`](Self::deliver) for a message whose position the broker already knows.
    pub(crate) fn deliver_at(
        &self,
        channel: &str,
        payload: Bytes,
        position: Option<Position>,
    ) -> bool {
        self.in_flight.start();
        let item = Incoming {
            channel: Arc::from(channel),
            payload,
            position,
            received: std::time::Instant::now(),
        };
        match self.tx.try_send(item) {
            Ok(()) => {
                Counters::inc(&self.counters.received);
                true
            }
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.in_flight.finish();
                if let Some(position) = item.position.clone() {
                    // Read again from the stream, even if nothing follows on this channel.
                    self.resync.dropped(&item.channel, position);
                }
                Counters::inc(&self.counters.dropped_queue_full);
                self.counters.metrics.dropped_queue_full.increment(1);
                if let Some(suppressed) = self.warn.allow() {
                    tracing::warn!(
                        channel = %item.channel,
                        capacity = self.tx.max_capacity(),
                        suppressed,
                        "dispatch queue full: message dropped (handlers are slower than the incoming rate)"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.in_flight.finish();
                false
            }
        }
    }

    /// Counts a reconnect of the broker's connection, and asks the dispatcher to read what the
    /// worker missed on its durable channels meanwhile.
    pub fn count_reconnect(&self) {
        Counters::inc(&self.counters.reconnects);
        self.counters.metrics.reconnects.increment(1);
        self.resync.everything();
    }
}
