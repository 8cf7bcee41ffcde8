//! Durable channels in the dispatcher: each channel's cursor (the last offset handled), and the
//! filling of gaps from the channel's stream, in order, inside the channel's lane.
//!
//! - A live message one past the cursor runs; one at or before it is a duplicate (it was already
//!   read from the stream) and is skipped; one further on first has the gap read from the stream
//!   and handled.
//! - A message of another epoch means the stream started again (it expired, or Redis lost its
//!   data): the new epoch's earlier messages are read from offset 1.
//! - After a reconnect (and once at start), every channel with a cursor is read from its cursor
//!   to the end of its stream ([`Work::CatchUp`](super::Work)), at most [`MAX_CATCH_UP_READS`]
//!   streams at a time.
//! - What the stream no longer holds (trimmed by its retention, or expired) is counted in
//!   [`Stats::durable_lost`](crate::Stats::durable_lost) and logged.
//! - A live message's position is trusted only as far as its stream bears it out when the stream
//!   is read for it: anyone may `PUBLISH` on the channel. One beyond the top of its stream (say
//!   offset `u64::MAX`) is not handled, and one of an epoch that is neither the cursor's nor the
//!   stream's is handled without moving the cursor, so that neither makes the worker skip or
//!   repeat the real messages after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Dispatcher;
use crate::broker::Position;
use crate::observe::stats::Counters;

/// How many entries one read of a stream takes.
const BATCH: usize = 256;
/// How many times a failed read of a stream is tried before the gap is given up as lost.
const READ_ATTEMPTS: u32 = 6;
/// At most this many reads of streams at a time for recoveries (the dispatcher's
/// `catch_up_reads`). After a reconnect every durable channel with a cursor is read again, each
/// in its lane, and lanes alone would allow `max_concurrent_channels` reads of up to [`BATCH`]
/// entries at once on a Redis that just came back; the cap holds only the read itself, not the
/// handlers' runs nor the wait before a retry.
pub(super) const MAX_CATCH_UP_READS: usize = 8;

/// Where the worker is in a durable channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// `None`: the channel had no stream when the cursor was set (any epoch then starts at 1).
    pub(crate) epoch: Option<Arc<str>>,
    /// The last offset handled (0: none).
    pub(crate) offset: u64,
}

/// At most this many cursors are kept: a publisher inventing channel names under a durable
/// pattern cannot make a worker's memory grow without bound.
const MAX_CURSORS: usize = 100_000;
/// A cursor untouched for this long is the first to go when the table is full.
const IDLE: Duration = Duration::from_secs(600);

/// Every durable channel's cursor.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    map: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    cursors: HashMap<Arc<str>, (Cursor, Instant)>,
    /// When idle cursors were last swept (at most once a second, when the table is full).
    swept: Option<Instant>,
}

impl Cursors {
    pub(crate) fn get(&self, channel: &str) -> Option<Cursor> {
        self.lock().cursors.get(channel).map(|(c, _)| c.clone())
    }

    pub(crate) fn set(&self, channel: &Arc<str>, cursor: Cursor) {
        let now = Instant::now();
        let mut table = self.lock();
        if table.cursors.len() >= MAX_CURSORS && !table.cursors.contains_key(channel) {
            if table
                .swept
                .is_none_or(|at| now - at > Duration::from_secs(1))
            {
                table.swept = Some(now);
                table
                    .cursors
                    .retain(|_, (_, touched)| now - *touched < IDLE);
            }
            if table.cursors.len() >= MAX_CURSORS {
                // All recent: any one goes (its channel's next message starts it again).
                let any = table.cursors.keys().next().cloned();
                if let Some(any) = any {
                    table.cursors.remove(&any);
                }
            }
        }
        table.cursors.insert(channel.clone(), (cursor, now));
    }

    pub(crate) fn channels(&self) -> Vec<Arc<str>> {
        self.lock().cursors.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the stream, read for a live message (a gap before it, or its epoch unknown), says of
/// the message's position. Anyone may `PUBLISH` on a durable channel: a position the stream does
/// not bear out must not become the cursor, or the real messages after it would be taken for
/// duplicates (a spoofed offset `u64::MAX`) or handled again (a spoofed epoch, after which the
/// real one looks new and is read from offset 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Live {
    /// Its stream has it (or had it: an epoch that ended since): the message is handled and
    /// becomes the cursor.
    Next,
    /// Its epoch is neither the cursor's nor the stream's: handled (it may be real, from a stream
    /// that started again twice while it was read), the cursor stays.
    ForeignEpoch,
    /// Its offset is beyond the top of its stream, in the stream's own epoch: it was not
    /// published by the durable script, or Redis lost it since (a failover or restart that
    /// hands its offset out again). Not handled, the cursor stays.
    BeyondTop,
}

impl Dispatcher {
    /// A live message of a durable channel, in its lane.
    pub(super) async fn durable_message(
        &self,
        channel: &Arc<str>,
        payload: Bytes,
        position: Position,
    ) {
        let live = match self.cursors.get(channel) {
            Some(cursor) if cursor.epoch.as_deref() == Some(&*position.epoch) => {
                if position.offset <= cursor.offset {
                    Counters::inc(&self.counters.durable_duplicates);
                    tracing::trace!(channel = %channel, %position, "durable message already handled");
                    return;
                }
                if position.offset > cursor.offset.saturating_add(1) {
                    self.recover(channel, Some(&position)).await
                } else {
                    Live::Next
                }
            }
            // The worker knew the channel (or that it had no stream): everything of this epoch
            // before this message was published since.
            Some(cursor) if cursor.epoch.is_some() || position.offset > 1 => {
                self.recover(channel, Some(&position)).await
            }
            // No stream at the worker's start, and this is its first message: nothing to read.
            Some(_) => Live::Next,
            // The first message seen on a channel no cursor was set for (a pattern's channel):
            // the worker starts here.
            None => Live::Next,
        };
        match live {
            Live::Next => self.cursors.set(
                channel,
                Cursor {
                    epoch: Some(position.epoch.clone()),
                    offset: position.offset,
                },
            ),
            Live::ForeignEpoch => {
                tracing::warn!(
                    channel = %channel,
                    worker_id = %self.config.worker_id,
                    %position,
                    "live durable message of an epoch that is neither this worker's nor its stream's (not published by the durable script, or a stream that started again twice meanwhile): handled, the cursor stays"
                );
            }
            Live::BeyondTop => {
                tracing::warn!(
                    channel = %channel,
                    worker_id = %self.config.worker_id,
                    %position,
                    "live durable message beyond the top of its stream (not published by the durable script, or Redis lost its last writes since): not handled"
                );
                return;
            }
        }
        self.handle_stored(channel, payload, position, false).await;
    }

    /// Reads `channel`'s stream from its cursor and handles each entry, in order: up to just
    /// before `until` (a live message's position), or to the end of the stream (`None`).
    /// Returns what the stream, as read, says of `until` ([`Live::Next`] without one).
    pub(super) async fn recover(&self, channel: &Arc<str>, until: Option<&Position>) -> Live {
        let Some(mut cursor) = self.cursors.get(channel) else {
            return Live::Next;
        };
        loop {
            if let Some(until) = until {
                if cursor.epoch.as_deref() == Some(&*until.epoch)
                    && cursor.offset.saturating_add(1) >= until.offset
                {
                    return Live::Next;
                }
            }
            let Some(read) = self.read_with_retries(channel, cursor.offset).await else {
                let missed = until.map_or(0, |u| {
                    u.offset.saturating_sub(cursor.offset.saturating_add(1))
                });
                self.lost(channel, missed, "the stream could not be read");
                return Live::Next;
            };
            if let Some(until) = until {
                if read.epoch.as_ref() != Some(&until.epoch) {
                    // No stream (any more), or another epoch: the live message's epoch is gone.
                    if cursor.epoch.as_ref() != Some(&until.epoch) {
                        // Nor is it the epoch this worker was in: its offsets say nothing of
                        // what this worker missed, and are no cursor.
                        return Live::ForeignEpoch;
                    }
                    // The stream started again (or expired) after the live message.
                    let missed = until.offset.saturating_sub(cursor.offset.saturating_add(1));
                    self.lost(
                        channel,
                        missed,
                        "the stream expired or started a new epoch since",
                    );
                    return Live::Next;
                }
            }
            let Some(epoch) = read.epoch.clone() else {
                // No stream (any more): nothing to read.
                return Live::Next;
            };
            if cursor.epoch.as_deref() != Some(&*epoch) {
                if let Some(old) = &cursor.epoch {
                    tracing::warn!(
                        channel = %channel,
                        worker_id = %self.config.worker_id,
                        old_epoch = %old,
                        new_epoch = %epoch,
                        "durable channel's stream started again (expired, or Redis lost its data): the old epoch's unread messages are lost; reading the new one from its start"
                    );
                    // Re-read from the start of the new epoch.
                    cursor = Cursor {
                        epoch: Some(epoch),
                        offset: 0,
                    };
                    continue;
                }
                cursor.epoch = Some(epoch.clone());
            }
            if read.last < cursor.offset {
                // The stream is behind what this worker handled, in the same epoch: Redis went
                // back (a failover to a replica that had not received the last writes, or a
                // restart that lost them), and the offsets after its top will be handed out
                // again, to new messages. Taken for duplicates, they would be skipped.
                tracing::warn!(
                    channel = %channel,
                    worker_id = %self.config.worker_id,
                    handled = cursor.offset,
                    stream_top = read.last,
                    "durable channel's stream went back (a Redis failover or restart lost its last writes): the offsets after its top are taken as new messages"
                );
                cursor.offset = read.last;
                self.cursors.set(channel, cursor.clone());
                continue;
            }
            let limit = until.map_or(u64::MAX, |u| u.offset - 1);
            let mut progressed = false;
            for (offset, payload) in read.entries {
                if offset > limit {
                    break;
                }
                if offset <= cursor.offset {
                    continue;
                }
                if offset > cursor.offset.saturating_add(1) {
                    self.lost(
                        channel,
                        offset - cursor.offset - 1,
                        "trimmed from the stream (its retention is too short for the outage)",
                    );
                }
                let position = Position {
                    epoch: epoch.clone(),
                    offset,
                };
                cursor.offset = offset;
                progressed = true;
                self.cursors.set(channel, cursor.clone());
                Counters::inc(&self.counters.durable_recovered);
                self.counters.metrics.durable_recovered.increment(1);
                self.handle_stored(channel, payload, position, true).await;
            }
            if !progressed {
                // Only what the stream has published: a live message beyond its top was not (or
                // no longer is) in it, and the offsets up to it are no loss.
                let beyond = until.is_some_and(|u| u.offset > read.last);
                let end = until.map_or(read.last, |u| (u.offset - 1).min(read.last));
                if end > cursor.offset {
                    self.lost(
                        channel,
                        end - cursor.offset,
                        "no longer in the stream (trimmed by its retention)",
                    );
                    cursor.offset = end;
                    self.cursors.set(channel, cursor.clone());
                }
                return if beyond { Live::BeyondTop } else { Live::Next };
            }
        }
    }

    async fn read_with_retries(
        &self,
        channel: &Arc<str>,
        after: u64,
    ) -> Option<crate::broker::StreamRead> {
        let broker = self.shared.publisher.broker();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=READ_ATTEMPTS {
            let read = {
                let _permit = self
                    .catch_up_reads
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                broker.read_stream(channel, after, BATCH).await
            };
            match read {
                Ok(read) => return Some(read),
                Err(error) => {
                    tracing::warn!(
                        channel = %channel,
                        worker_id = %self.config.worker_id,
                        attempt,
                        %error,
                        "reading a durable channel's stream failed; retrying"
                    );
                    if attempt < READ_ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        None
    }

    fn lost(&self, channel: &Arc<str>, count: u64, why: &str) {
        if count == 0 {
            return;
        }
        self.counters
            .durable_lost
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        self.counters.metrics.durable_lost.increment(count);
        tracing::warn!(
            channel = %channel,
            worker_id = %self.config.worker_id,
            count,
            reason = why,
            "durable channel's messages lost to this worker"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::broker::Retention;
    use crate::dispatch::test_broker::FaultyMemory;
    use crate::{Channel, Message, Subscriber, Switchboard};

    #[tokio::test]
    async fn catch_ups_after_a_reconnect_read_at_most_max_catch_up_reads_streams_at_once() {
        const CHANNELS: usize = 40;
        let channels: Vec<String> = (0..CHANNELS).map(|i| format!("ledger:{i}")).collect();
        let broker = FaultyMemory {
            read_delay: Duration::from_millis(20),
            ..FaultyMemory::default()
        };
        let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let sink = log.clone();
        let running = Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(broker.clone())
            .subscriber(
                Subscriber::channels(channels.clone())
                    .name("ledger")
                    .durable()
                    .handle(move |Message(m): Message, channel: Channel| {
                        let sink = sink.clone();
                        async move {
                            let n = m["n"].as_u64().unwrap();
                            sink.lock().unwrap().push((channel.to_string(), n));
                        }
                    }),
            )
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        // Another worker on the same bus publishes (a worker skips its own messages).
        let mut source = Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(broker.inner.clone());
        for channel in &channels {
            source = source.durable(channel.as_str(), Retention::default());
        }
        let source = source.build().unwrap().start().await.unwrap();
        let publish = |n: u64| {
            let (source, channels) = (&source, &channels);
            async move {
                for channel in channels {
                    source
                        .publisher()
                        .publish(channel, &serde_json::json!({"n": n}))
                        .await
                        .unwrap();
                }
            }
        };
        let wait_for = |count: usize| {
            let log = &log;
            async move {
                let start = Instant::now();
                while log.lock().unwrap().len() < count {
                    assert!(start.elapsed() < Duration::from_secs(20), "never handled");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        publish(0).await;
        wait_for(CHANNELS).await;
        running.wait_idle().await;

        // Cut off: three messages per channel go to the streams only; the reconnect reads them.
        broker.cut();
        for n in 1..=3 {
            publish(n).await;
        }
        broker.max_reads.store(0, Ordering::SeqCst);
        broker.restore().await;
        wait_for(4 * CHANNELS).await;
        running.wait_idle().await;

        let max = broker.max_reads.load(Ordering::SeqCst);
        assert!(
            max <= MAX_CATCH_UP_READS,
            "{max} stream reads at once, above the cap"
        );
        assert!(max > 1, "the catch-ups read concurrently: {max}");
        let log = log.lock().unwrap().clone();
        for channel in &channels {
            let handled: Vec<u64> = log
                .iter()
                .filter(|(c, _)| c == channel)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(handled, [0, 1, 2, 3], "{channel}");
        }
        assert_eq!(running.stats().durable_lost, 0);
    }
}
