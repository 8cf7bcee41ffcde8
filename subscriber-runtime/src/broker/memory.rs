//! The in-process broker: Redis pub/sub semantics in memory, for one process or for several
//! workers in one test.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::durable::{new_epoch, GroupConsumer, GroupEntry, Position, Retention, StreamRead};
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
    /// Woken by every durable publish (for consumer groups' blocking reads).
    appended: Arc<tokio::sync::Notify>,
}

/// A durable channel's history in memory.
#[derive(Debug)]
struct MemoryStream {
    epoch: Arc<str>,
    /// `(offset, payload, published at)`, offsets ascending without holes.
    entries: VecDeque<(u64, Bytes, Instant)>,
    last: u64,
    expires: Instant,
    groups: HashMap<String, MemoryGroup>,
}

/// A consumer group in memory: the last offset delivered, and the entries delivered but not
/// acknowledged (offset → consumer, since when).
#[derive(Debug, Default)]
struct MemoryGroup {
    delivered: u64,
    pending: std::collections::BTreeMap<u64, (String, Instant)>,
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

    fn has_streams(&self) -> bool {
        true
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
                groups: HashMap::new(),
            });
        stream.last += 1;
        stream.expires = now + retention.max_age();
        stream
            .entries
            .push_back((stream.last, payload.clone(), now));
        // The window in messages, then in time (exactly: Redis may keep a little more of both).
        let keep = usize::try_from(retention.max_messages()).unwrap_or(usize::MAX);
        while stream.entries.len() > keep {
            stream.entries.pop_front();
        }
        while stream
            .entries
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > retention.max_age())
        {
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
        self.appended.notify_waiters();
        Box::pin(std::future::ready(Ok(position)))
    }

    fn group_consumer(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn GroupConsumer>, BrokerError> {
        Ok(Box::new(MemoryConsumer {
            broker: self.clone(),
            channel: channel.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        }))
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
                    .filter(|(offset, _, _)| *offset > after)
                    .take(limit)
                    .map(|(offset, payload, _)| (*offset, payload.clone()))
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

/// A consumer of a consumer group in memory.
#[derive(Debug)]
struct MemoryConsumer {
    broker: MemoryBroker,
    channel: String,
    group: String,
    consumer: String,
}

impl MemoryConsumer {
    /// Runs `f` on the group (created at the stream's end; the stream is created empty when it
    /// does not exist yet).
    fn with_group<T>(&self, f: impl FnOnce(&mut MemoryStream, &mut MemoryGroup) -> T) -> T {
        let now = Instant::now();
        let mut streams = self
            .broker
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if streams.get(&self.channel).is_some_and(|s| s.expires <= now) {
            streams.remove(&self.channel);
        }
        let stream = streams
            .entry(self.channel.clone())
            .or_insert_with(|| MemoryStream {
                epoch: new_epoch(),
                entries: VecDeque::new(),
                last: 0,
                expires: now + Duration::from_secs(24 * 3600),
                groups: HashMap::new(),
            });
        let mut group = stream
            .groups
            .remove(&self.group)
            .unwrap_or_else(|| MemoryGroup {
                delivered: stream.last,
                pending: std::collections::BTreeMap::new(),
            });
        let out = f(stream, &mut group);
        stream.groups.insert(self.group.clone(), group);
        out
    }

    fn entry(stream: &MemoryStream, offset: u64, claimed: bool) -> Option<GroupEntry> {
        let first = stream.entries.front()?.0;
        let (_, payload, _) = stream
            .entries
            .get(usize::try_from(offset.checked_sub(first)?).ok()?)?;
        Some(GroupEntry {
            position: Position {
                epoch: stream.epoch.clone(),
                offset,
            },
            payload: payload.clone(),
            claimed,
        })
    }
}

impl GroupConsumer for MemoryConsumer {
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.with_group(|_, _| ());
        Box::pin(std::future::ready(Ok(())))
    }

    fn read(
        &mut self,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + block;
            loop {
                let appended = self.broker.appended.clone();
                let notified = appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let read = self.with_group(|stream, group| {
                    let mut out = Vec::new();
                    while out.len() < count.max(1) && group.delivered < stream.last {
                        group.delivered += 1;
                        if let Some(entry) = Self::entry(stream, group.delivered, false) {
                            group
                                .pending
                                .insert(group.delivered, (self.consumer.clone(), Instant::now()));
                            out.push(entry);
                        }
                    }
                    out
                });
                if !read.is_empty() {
                    return Ok(read);
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(Vec::new());
                }
            }
        })
    }

    fn ack(&mut self, offsets: Vec<u64>) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.with_group(|_, group| {
            for offset in offsets {
                group.pending.remove(&offset);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        let now = Instant::now();
        let claimed = self.with_group(|stream, group| {
            let idle: Vec<u64> = group
                .pending
                .iter()
                .filter(|(_, (_, since))| now.duration_since(*since) >= min_idle)
                .map(|(offset, _)| *offset)
                .take(count.max(1))
                .collect();
            let mut out = Vec::new();
            for offset in idle {
                match Self::entry(stream, offset, true) {
                    Some(entry) => {
                        group.pending.insert(offset, (self.consumer.clone(), now));
                        out.push(entry);
                    }
                    // Trimmed since: nothing to hand over.
                    None => {
                        group.pending.remove(&offset);
                    }
                }
            }
            out
        });
        Box::pin(std::future::ready(Ok(claimed)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_keeps_its_window_in_messages_and_in_time() {
        let broker = MemoryBroker::new();
        let age = Duration::from_secs(1);
        let retention = Retention::new().messages(3).age(age);
        for n in 1..=5 {
            let payload = Bytes::from(format!("{{\"n\":{n}}}"));
            broker
                .publish_durable("c", payload, retention)
                .await
                .unwrap();
        }
        let read = broker.read_stream("c", 0, 100).await.unwrap();
        let offsets: Vec<u64> = read.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [3, 4, 5], "the last 3 messages");
        // A publish 600 ms later keeps the stream; 600 ms after it, the first five are past the
        // window, and the next publish leaves the last two.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            broker
                .publish_durable("c", Bytes::from_static(b"{}"), retention)
                .await
                .unwrap();
        }
        let read = broker.read_stream("c", 0, 100).await.unwrap();
        let offsets: Vec<u64> = read.entries.iter().map(|(o, _)| *o).collect();
        assert_eq!((offsets, read.last), (vec![6, 7], 7));
    }
}
