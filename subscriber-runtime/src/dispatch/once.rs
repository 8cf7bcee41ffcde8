//! Run-once handlers: each reads its channels' streams in a consumer group of its own (one group
//! per handler, every worker a consumer in it), so that each message runs on one worker. Every
//! entry is acknowledged once its run ends (whatever the outcome: a failure is logged, and
//! retried only by a retry layer); the entries another consumer held for longer than
//! `once_claim_idle` without acknowledging them (it died, or hangs) are claimed and run here.
//!
//! Unlike a live message, a run-once handler's message runs even on the worker that published it:
//! one worker gets each message, so skipping it there would skip it everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{DispatchEvent, Dispatcher};
use crate::broker::{GroupConsumer, GroupEntry};
use crate::handler::context::{Context, Delivery};
use crate::message::envelope;
use crate::observe::stats::{Counters, RateLimit};

/// Entries read (or claimed) at a time.
const BATCH: usize = 64;
/// The longest a read waits for a new entry (so that claims are looked for in between, and so
/// that a shutdown, which lets the read in flight finish, waits no longer).
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// The consumer group of a run-once handler.
pub(crate) fn group_name(handler: &str) -> String {
    format!("switchboard.once.{handler}")
}

impl Dispatcher {
    /// The exact channels of every run-once handler: `(handler index, channel)`.
    pub(crate) fn once_channels(&self) -> Vec<(u32, Arc<str>)> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate().filter(|(_, e)| e.once) {
            let i = u32::try_from(i).expect("fewer than 2^32 handlers");
            for m in &e.matchers {
                if let crate::message::matcher::Compiled::Channel(c) = m {
                    out.push((i, c.clone()));
                }
            }
        }
        out
    }

    /// Starts a consumer loop on the dispatcher's task tracker (waited for at shutdown).
    pub(crate) fn spawn_once(
        self: &Arc<Self>,
        index: u32,
        channel: Arc<str>,
        consumer: Box<dyn GroupConsumer>,
        claim_idle: Duration,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        self.tracker.spawn(async move {
            this.run_once(index, channel, consumer, claim_idle, shutdown)
                .await;
        });
    }

    async fn run_once(
        &self,
        index: u32,
        channel: Arc<str>,
        mut consumer: Box<dyn GroupConsumer>,
        claim_idle: Duration,
        shutdown: CancellationToken,
    ) {
        let handler = self.entries[index as usize].info.name.clone();
        let claim_every = (claim_idle / 2).max(Duration::from_millis(50));
        let mut next_claim = Instant::now() + claim_every;
        let mut delay = Duration::from_millis(100);
        let warn = RateLimit::new(Duration::from_secs(5));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let block = next_claim
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), MAX_BLOCK);
            // Not cancelled at shutdown: a read the broker already answered has delivered its
            // entries to this consumer, and dropping it would leave them pending in the group
            // (run nowhere until another worker claims them after `claim_idle`). It ends within
            // `block` (at most MAX_BLOCK, plus the broker's reply timeout), and what it returns
            // still runs and is acknowledged: the dispatcher waits for its task tracker, up to
            // the grace period, at shutdown.
            match consumer.read(BATCH, block).await {
                Ok(entries) => {
                    delay = Duration::from_millis(100);
                    if shutdown.is_cancelled() && !entries.is_empty() {
                        tracing::debug!(
                            handler = %handler,
                            channel = %channel,
                            worker_id = %self.config.worker_id,
                            entries = entries.len(),
                            "run-once handler: shutting down; running what the last read took before stopping"
                        );
                    }
                    self.run_entries(index, &channel, &mut *consumer, entries)
                        .await;
                }
                Err(error) => {
                    if let Some(suppressed) = warn.allow() {
                        tracing::warn!(
                            handler = %handler,
                            channel = %channel,
                            worker_id = %self.config.worker_id,
                            %error,
                            suppressed,
                            "run-once handler: reading its consumer group failed; retrying"
                        );
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            // No new claim once shutting down: what is claimed now would only be held until
            // the grace period ends.
            if !shutdown.is_cancelled() && Instant::now() >= next_claim {
                next_claim = Instant::now() + claim_every;
                match consumer.claim(claim_idle, BATCH).await {
                    Ok(entries) => {
                        self.run_entries(index, &channel, &mut *consumer, entries)
                            .await;
                    }
                    Err(error) => {
                        if let Some(suppressed) = warn.allow() {
                            tracing::warn!(
                                handler = %handler,
                                channel = %channel,
                                %error,
                                suppressed,
                                "run-once handler: claiming a dead consumer's messages failed; retrying"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Runs the handler for each entry, in order, acknowledging each as soon as its run ends (so
    /// that no entry waits for the others of its batch, and none is claimed while this worker is
    /// alive and the run is within its timeout).
    async fn run_entries(
        &self,
        index: u32,
        channel: &Arc<str>,
        consumer: &mut dyn GroupConsumer,
        entries: Vec<GroupEntry>,
    ) {
        let entry = &self.entries[index as usize];
        for e in entries {
            let offset = e.position.offset;
            self.run_entry(index, channel, e).await;
            if let Err(error) = consumer.ack(vec![offset]).await {
                tracing::warn!(
                    handler = %entry.info.name,
                    channel = %channel,
                    offset,
                    %error,
                    "run-once handler: acknowledging failed; the message will be taken over and run again"
                );
            }
        }
    }

    /// One entry's run (nothing for an invalid payload or a predicate that does not match).
    async fn run_entry(&self, index: u32, channel: &Arc<str>, e: GroupEntry) {
        let entry = &self.entries[index as usize];
        if e.claimed {
            Counters::inc(&self.counters.once_claimed);
            self.counters.metrics.once_claimed.increment(1);
            tracing::info!(
                handler = %entry.info.name,
                channel = %channel,
                position = %e.position,
                worker_id = %self.config.worker_id,
                "run-once message taken over from a worker that held it too long (it may have run there too)"
            );
        }
        let parsed = match envelope::parse(&e.payload, &self.config.limits) {
            Ok(parsed) => parsed,
            Err(error) => {
                Counters::inc(&self.counters.invalid_payloads);
                tracing::warn!(channel = %channel, %error, "invalid payload in a run-once handler's stream: skipped");
                return;
            }
        };
        let mut delivery = Delivery::new(channel.clone(), parsed, e.payload);
        delivery.position = Some(e.position);
        delivery.recovered = e.claimed;
        if entry.has_predicate() && !self.predicates_match(entry, &delivery) {
            return;
        }
        let cx = Context {
            delivery: Arc::new(delivery),
            shared: self.shared.clone(),
        };
        let started = Instant::now();
        let outcome = self.run_handler(index, entry, cx, channel).await;
        self.observe(|| DispatchEvent::Ran {
            handler: entry.info.name.to_string(),
            channel: channel.clone(),
            outcome: outcome.clone(),
            elapsed: started.elapsed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use super::*;
    use crate::broker::Broker;
    use crate::dispatch::test_broker::FaultyMemory;
    use crate::{MemoryBroker, Message, Subscriber, Switchboard};

    #[tokio::test]
    async fn a_read_answered_when_shutdown_starts_is_run_and_acknowledged() {
        let bus = MemoryBroker::new();
        let broker = FaultyMemory {
            inner: bus.clone(),
            reply_delay: Duration::from_millis(300),
            ..FaultyMemory::default()
        };
        let seen = broker.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let running = Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(broker)
            .subscriber(Subscriber::channels(["jobs"]).name("charge").once().handle(
                move |Message(m): Message| {
                    let sink = sink.clone();
                    async move { sink.lock().unwrap().push(m["n"].as_u64().unwrap()) }
                },
            ))
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        // A run-once message runs on the worker that published it too.
        running
            .publisher()
            .publish("jobs", &serde_json::json!({"n": 7}))
            .await
            .unwrap();
        let start = Instant::now();
        while !seen.answered.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(10), "never read");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The read took the entry (it is pending in the group) and its reply is in flight.
        running.shutdown().await;
        assert_eq!(*log.lock().unwrap(), [7], "the entry ran");
        assert_eq!(
            *seen.acked.lock().unwrap(),
            [1],
            "the entry was acknowledged"
        );
        let pending = bus
            .group_consumer("jobs", &group_name("charge"), "another")
            .unwrap()
            .claim(Duration::ZERO, 10)
            .await
            .unwrap();
        assert!(pending.is_empty(), "left pending in the group: {pending:?}");
    }
}
