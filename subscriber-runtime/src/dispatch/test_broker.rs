//! The in-process broker with the faults the dispatcher's tests need: stream reads that take a
//! while (counted: how many at once, at most), run-once reads whose reply arrives late (the
//! entries already taken in the group), and a subscription that can be cut and restored (a
//! reconnect).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, GroupConsumer, GroupEntry, Inbox, Position, Retention, StreamRead, Subscriptions,
};
use crate::{BrokerError, MemoryBroker};

/// The worker's link to the in-process bus, which a test cuts and restores (set by `subscribe`).
#[derive(Debug)]
pub(super) struct Link {
    subscriptions: Subscriptions,
    inbox: Inbox,
    shutdown: CancellationToken,
    current: CancellationToken,
}

/// A [`MemoryBroker`] with faults; `Default` has none.
#[derive(Debug, Clone, Default)]
pub(super) struct FaultyMemory {
    pub(super) inner: MemoryBroker,
    /// How long each stream read takes.
    pub(super) read_delay: Duration,
    /// How long a run-once read that took entries waits before returning them.
    pub(super) reply_delay: Duration,
    /// Stream reads in flight, and the most at once.
    pub(super) reads: Arc<AtomicUsize>,
    pub(super) max_reads: Arc<AtomicUsize>,
    /// Whether a run-once read took entries, and the offsets acknowledged.
    pub(super) answered: Arc<AtomicBool>,
    pub(super) acked: Arc<Mutex<Vec<u64>>>,
    pub(super) link: Arc<Mutex<Option<Link>>>,
}

impl FaultyMemory {
    /// Cuts the worker's subscription: what is published meanwhile does not reach it.
    pub(super) fn cut(&self) {
        self.link.lock().unwrap().as_ref().unwrap().current.cancel();
    }

    /// Subscribes the worker again and tells it it reconnected.
    pub(super) async fn restore(&self) {
        let (subscriptions, inbox, current) = {
            let mut link = self.link.lock().unwrap();
            let link = link.as_mut().unwrap();
            link.current = link.shutdown.child_token();
            (
                link.subscriptions.clone(),
                link.inbox.clone(),
                link.current.clone(),
            )
        };
        self.inner
            .subscribe(subscriptions, inbox.clone(), current)
            .await
            .unwrap();
        inbox.count_reconnect();
    }
}

/// Decrements the count of reads in flight when a read ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Broker for FaultyMemory {
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(channel, payload)
    }

    fn subscribe(
        &self,
        subscriptions: Subscriptions,
        inbox: Inbox,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let current = shutdown.child_token();
        *self.link.lock().unwrap() = Some(Link {
            subscriptions: subscriptions.clone(),
            inbox: inbox.clone(),
            shutdown,
            current: current.clone(),
        });
        self.inner.subscribe(subscriptions, inbox, current)
    }

    fn kind(&self) -> &'static str {
        "faulty memory"
    }

    fn has_streams(&self) -> bool {
        true
    }

    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Position, BrokerError>> {
        self.inner.publish_durable(channel, payload, retention)
    }

    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<StreamRead, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            let now = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            let _in_flight = InFlight(self.reads.clone());
            self.max_reads.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.read_delay).await;
            self.inner.read_stream(&channel, after, limit).await
        })
    }

    fn group_consumer(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn GroupConsumer>, BrokerError> {
        Ok(Box::new(SlowConsumer {
            inner: self.inner.group_consumer(channel, group, consumer)?,
            broker: self.clone(),
        }))
    }
}

/// A consumer whose reads that take entries return them only after the broker's `reply_delay`
/// (a Redis reply in flight: the entries are already delivered in the group).
#[derive(Debug)]
struct SlowConsumer {
    inner: Box<dyn GroupConsumer>,
    broker: FaultyMemory,
}

impl GroupConsumer for SlowConsumer {
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.prepare()
    }

    fn read(
        &mut self,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        Box::pin(async move {
            let entries = self.inner.read(count, block).await?;
            if !entries.is_empty() {
                self.broker.answered.store(true, Ordering::SeqCst);
                tokio::time::sleep(self.broker.reply_delay).await;
            }
            Ok(entries)
        })
    }

    fn ack(&mut self, offsets: Vec<u64>) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.broker.acked.lock().unwrap().extend(&offsets);
        self.inner.ack(offsets)
    }

    fn claim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        self.inner.claim(min_idle, count)
    }
}
