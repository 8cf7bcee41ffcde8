//! The in-process broker: Redis pub/sub semantics in memory, for one process or for several
//! workers in one test.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::durable::{new_epoch, Position, Retention, StreamRead};
use super::presence::{Feed, GroupMember, MemoryPresence, PresenceChange, PresenceTable};
use super::{Broker, Inbox, PresenceStore, Subscriptions};
use crate::error::BrokerError;

/// An in-process broker. Clones share one bus, so several applications built on clones of the same
/// `MemoryBroker` behave like workers sharing one Redis.
///
/// Delivery follows Redis pub/sub: a message reaches every subscriber whose channels or patterns
/// match it, once; nothing is stored for subscribers that join later; a subscriber whose dispatch
/// queue is full loses the message (counted).
///
/// It also keeps a [presence store](super::presence) in memory, shared by its clones, so that
/// the WebSocket servers of workers on one bus see each other's clients as they would on Redis,
/// and the streams of [durable](crate::Builder::durable) channels, so that a message a full queue
/// dropped is read again, as on Redis.
///
/// ```
/// use switchboard::{MemoryBroker, Switchboard};
///
/// let bus = MemoryBroker::new();
/// let worker_a = Switchboard::builder().broker(bus.clone());
/// let worker_b = Switchboard::builder().broker(bus);
/// # let _ = (worker_a, worker_b);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    bus: Arc<RwLock<Vec<Subscriber>>>,
    presence: Arc<MemoryPresence>,
    streams: Arc<Mutex<HashMap<String, MemoryStream>>>,
}

/// A durable channel's history in memory.
#[derive(Debug)]
struct MemoryStream {
    epoch: Arc<str>,
    entries: VecDeque<(u64, Bytes)>,
    last: u64,
    expires: Instant,
}

#[derive(Debug)]
struct Subscriber {
    subscriptions: Subscriptions,
    inbox: Inbox,
    shutdown: CancellationToken,
}

impl MemoryBroker {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes synchronously; returns how many subscribers received the message (like Redis'
    /// `PUBLISH` reply).
    pub fn publish_now(&self, channel: &str, payload: Bytes) -> usize {
        let mut bus = self
            .bus
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bus.retain(|s| !s.shutdown.is_cancelled());
        let mut receivers = 0;
        for s in bus.iter().filter(|s| s.subscriptions.matches(channel)) {
            receivers += 1;
            s.inbox.deliver(channel, payload.clone());
        }
        receivers
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_now(channel, payload);
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(
        &self,
        subscriptions: Subscriptions,
        inbox: Inbox,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.bus
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Subscriber {
                subscriptions,
                inbox,
                shutdown,
            });
        Box::pin(std::future::ready(Ok(())))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Position, BrokerError>> {
        let now = Instant::now();
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.retain(|_, s| s.expires > now);
        let stream = streams
            .entry(channel.to_owned())
            .or_insert_with(|| MemoryStream {
                epoch: new_epoch(),
                entries: VecDeque::new(),
                last: 0,
                expires: now,
            });
        stream.last += 1;
        stream.expires = now + retention.max_age();
        stream.entries.push_back((stream.last, payload.clone()));
        let keep = usize::try_from(retention.max_messages()).unwrap_or(usize::MAX);
        while stream.entries.len() > keep {
            stream.entries.pop_front();
        }
        let position = Position {
            epoch: stream.epoch.clone(),
            offset: stream.last,
        };
        // Delivered under the streams' lock, so that every subscriber gets a channel's offsets in
        // order whatever the publishers race.
        let mut bus = self
            .bus
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bus.retain(|s| !s.shutdown.is_cancelled());
        for s in bus.iter().filter(|s| s.subscriptions.matches(channel)) {
            s.inbox
                .deliver_at(channel, payload.clone(), Some(position.clone()));
        }
        Box::pin(std::future::ready(Ok(position)))
    }

    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<StreamRead, BrokerError>> {
        let now = Instant::now();
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let read = match streams.get(channel).filter(|s| s.expires > now) {
            None => StreamRead::default(),
            Some(stream) => StreamRead {
                epoch: Some(stream.epoch.clone()),
                entries: stream
                    .entries
                    .iter()
                    .filter(|(offset, _)| *offset > after)
                    .take(limit)
                    .cloned()
                    .collect(),
                last: stream.last,
            },
        };
        Box::pin(std::future::ready(Ok(read)))
    }

    fn presence(&self) -> Option<Arc<dyn PresenceStore>> {
        Some(Arc::new(self.clone()))
    }
}

impl PresenceStore for MemoryBroker {
    fn write(
        &self,
        worker: &str,
        changes: Vec<PresenceChange>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.presence.write(worker, changes, seq, ttl);
        self.publish_now(&feed.channel, feed.payload);
        Box::pin(std::future::ready(Ok(())))
    }

    fn replace(
        &self,
        worker: &str,
        records: Vec<(String, Bytes)>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.presence.replace(worker, records, seq, ttl);
        self.publish_now(&feed.channel, feed.payload);
        Box::pin(std::future::ready(Ok(())))
    }

    fn renew(
        &self,
        worker: &str,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<bool, BrokerError>> {
        let renewed = self.presence.renew(worker, ttl);
        if renewed {
            self.publish_now(&feed.channel, feed.payload);
        }
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn read(&self, worker: &str) -> BoxFuture<'_, Result<Option<PresenceTable>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.presence.read(worker))))
    }

    fn workers(&self) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.presence.workers())))
    }

    fn remove(&self, worker: &str, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.presence.remove(worker);
        self.publish_now(&feed.channel, feed.payload);
        Box::pin(std::future::ready(Ok(())))
    }

    fn enter(
        &self,
        group: &str,
        member: GroupMember,
    ) -> BoxFuture<'_, Result<Vec<GroupMember>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.presence.enter(group, member))))
    }

    fn leave(&self, group: &str, member: GroupMember) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.presence.leave(group, &member);
        Box::pin(std::future::ready(Ok(())))
    }
}
