//! Durable channels on Redis: a stream and a meta hash per channel, written with the live
//! `PUBLISH` by one script (`durable_publish.lua`), and read with `XRANGE` on the reading
//! connection.
//!
//! Keys (after the namespace prefix): `switchboard:stream:{<channel>}` and
//! `switchboard:meta:{<channel>}`. Both carry the channel as their hash tag, so that on a Redis
//! Cluster a channel's two keys live in one slot, as the script needs.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use bytes::Bytes;
use redis::{RedisError, Value};

use super::{classify, RedisBroker};
use crate::broker::durable::split_live;
use crate::broker::{Position, Retention, StreamRead};
use crate::error::BrokerError;

/// At most this many messages go in one call of the script...
const MAX_BATCH: usize = 256;
/// ... and about this many bytes.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Where a queued message's position (or the failure) goes.
type Waiter = oneshot::Sender<Result<Position, BrokerError>>;

/// The messages of one durable channel waiting for the script, and whether a task sends them
/// (see [`BatchScript`]).
#[derive(Default)]
pub(super) struct DurableQueue {
    sending: bool,
    waiting: Vec<(Vec<u8>, Waiter)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The script, loaded once per server (`EVALSHA`, then `SCRIPT LOAD` on `NOSCRIPT`).
static PUBLISH_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("durable_publish.lua")));

/// The stream and meta keys of a channel (the channel as on Redis, namespace included).
pub(super) fn keys(channel_on_redis: &str) -> (String, String) {
    (
        format!("switchboard:stream:{{{channel_on_redis}}}"),
        format!("switchboard:meta:{{{channel_on_redis}}}"),
    )
}

/// A broker whose durable publishes are batched: the queues of its channels, and one call of its
/// script for a batch. On one Redis and on a cluster alike, the messages queued on a channel
/// while a call runs go together in the next call (one script call per batch, not per message),
/// in the order they were queued.
pub(super) trait BatchScript: Clone + Send + Sync + 'static {
    /// The broker's queues, by channel.
    fn durable_queues(&self) -> &Mutex<HashMap<String, DurableQueue>>;

    /// One call of the script for `tails`, in order, on `channel`: the epoch and the first
    /// message's offset.
    fn run_batch<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
        tails: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(String, u64), BrokerError>>;
}

/// Queues a message for `channel`'s stream and waits for its position.
pub(super) async fn publish_batched<B: BatchScript>(
    broker: &B,
    channel: &str,
    payload: &[u8],
    retention: Retention,
) -> Result<Position, BrokerError> {
    let tail = tail_of(channel, payload)?;
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut queues = lock(broker.durable_queues());
        let queue = queues.entry(channel.to_owned()).or_default();
        queue.waiting.push((tail, tx));
        !std::mem::replace(&mut queue.sending, true)
    };
    if start {
        // On a task of its own, so that the queue is sent even when this caller gives up.
        tokio::spawn(send_queue(broker.clone(), channel.to_owned(), retention));
    }
    rx.await.unwrap_or_else(|_| {
        Err(BrokerError::Other(
            "the durable publish was abandoned".to_owned(),
        ))
    })
}

/// Sends a channel's queue, batch after batch, until it is empty.
async fn send_queue<B: BatchScript>(broker: B, channel: String, retention: Retention) {
    /// Should this task end before the queue is empty (its runtime stopped), the next publish
    /// starts another.
    struct Sending<'a, B: BatchScript>(&'a B, &'a str);
    impl<B: BatchScript> Drop for Sending<'_, B> {
        fn drop(&mut self) {
            if let Some(queue) = lock(self.0.durable_queues()).get_mut(self.1) {
                queue.sending = false;
            }
        }
    }
    let _sending = Sending(&broker, &channel);
    loop {
        let batch: Vec<(Vec<u8>, Waiter)> = {
            let mut queues = lock(broker.durable_queues());
            let Some(queue) = queues.get_mut(&channel) else {
                return;
            };
            // A caller that gave up (its timeout) was told the publish failed: its message is
            // not sent after all.
            queue.waiting.retain(|(_, waiter)| !waiter.is_closed());
            if queue.waiting.is_empty() {
                queues.remove(&channel);
                return;
            }
            // Up to MAX_BATCH messages and about MAX_BATCH_BYTES (at least one message).
            let mut bytes = 0;
            let n = queue
                .waiting
                .iter()
                .take(MAX_BATCH)
                .take_while(|(tail, _)| {
                    bytes += tail.len();
                    bytes <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            queue.waiting.drain(..n).collect()
        };
        let (tails, waiters): (Vec<Vec<u8>>, Vec<Waiter>) = batch.into_iter().unzip();
        match broker.run_batch(&channel, retention, &tails).await {
            Ok((epoch, first)) => {
                tracing::trace!(channel, %epoch, first, messages = waiters.len(), "published on a durable channel");
                let epoch: Arc<str> = Arc::from(epoch);
                for (i, waiter) in (0_u64..).zip(waiters) {
                    let _ = waiter.send(Ok(Position {
                        epoch: epoch.clone(),
                        offset: first + i,
                    }));
                }
            }
            Err(error) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
    }
}

impl BatchScript for RedisBroker {
    fn durable_queues(&self) -> &Mutex<HashMap<String, DurableQueue>> {
        &self.durable_queues
    }

    fn run_batch<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
        tails: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(String, u64), BrokerError>> {
        Box::pin(async move {
            let on_redis = format!("{}{channel}", self.prefix);
            let (stream, meta) = keys(&on_redis);
            self.run_publish_script(&stream, &meta, &on_redis, tails, retention)
                .await
        })
    }
}

impl RedisBroker {
    async fn run_publish_script(
        &self,
        stream: &str,
        meta: &str,
        on_redis: &str,
        tails: &[Vec<u8>],
        retention: Retention,
    ) -> Result<(String, u64), BrokerError> {
        let (generation, mut conn) = self
            .publisher
            .get(self, self.publish_timeout)
            .await
            .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
        let mut invocation = PUBLISH_SCRIPT.key(stream);
        invocation.key(meta).arg(on_redis);
        script_args(&mut invocation, retention, &self.epochs.next(), tails);
        let call = invocation.invoke_async(&mut conn);
        match tokio::time::timeout(self.publish_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.publisher.discard(generation);
                }
                Err(classify(&e, &self.url, self.publish_timeout))
            }
            Err(_) => {
                self.publisher.discard(generation);
                Err(BrokerError::Timeout(self.publish_timeout))
            }
        }
    }

    pub(super) async fn read_stream_on(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<StreamRead, BrokerError> {
        let on_redis = format!("{}{channel}", self.prefix);
        let (stream, meta) = keys(&on_redis);
        let (generation, mut conn) = self
            .reader
            .get(self, self.publish_timeout)
            .await
            .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
        let result: Result<(Vec<Option<String>>, Value), RedisError> =
            read_pipeline(&stream, &meta, after, limit)
                .query_async(&mut conn)
                .await;
        match result {
            Ok((meta, entries)) => Ok(stream_read(&meta, entries)),
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.reader.discard(generation);
                }
                Err(classify(&e, &self.url, self.publish_timeout))
            }
        }
    }
}

/// One transaction that reads a stream: its meta hash's epoch and newest offset, and the entries
/// after `after` (at most `limit`), so that the three agree.
pub(super) fn read_pipeline(stream: &str, meta: &str, after: u64, limit: usize) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HMGET")
        .arg(meta)
        .arg("epoch")
        .arg("offset")
        .cmd("XRANGE")
        .arg(stream)
        .arg(format!("{}-0", after.saturating_add(1)))
        .arg("+")
        .arg("COUNT")
        .arg(limit.max(1));
    pipe
}

/// The answer of [`read_pipeline`] as a [`StreamRead`].
pub(super) fn stream_read(meta: &[Option<String>], entries: Value) -> StreamRead {
    let epoch = meta.first().cloned().flatten().map(Arc::from);
    let last = meta
        .get(1)
        .cloned()
        .flatten()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    StreamRead {
        epoch,
        entries: parse_entries(entries),
        last,
    }
}

/// The script's arguments after the channel (`ARGV[2]` on), on one Redis and on a cluster: the
/// messages kept, the window (ms), the epoch for a new stream, the publisher's clock, then the
/// payloads.
pub(super) fn script_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    retention: Retention,
    epoch: &str,
    tails: &[Vec<u8>],
) {
    let window_ms = u64::try_from(retention.max_age().as_millis()).unwrap_or(u64::MAX);
    invocation
        .arg(retention.max_messages())
        .arg(window_ms)
        .arg(epoch)
        .arg(now_ms());
    for tail in tails {
        invocation.arg(tail.as_slice());
    }
}

/// The publisher's clock for the script's time window: milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the script takes of a durable message's payload: the JSON object after its `{`, with a
/// `,` first unless the object is empty (the script puts the position in front).
pub(super) fn tail_of(channel: &str, payload: &[u8]) -> Result<Vec<u8>, BrokerError> {
    if payload.first() != Some(&b'{') {
        return Err(BrokerError::Other(format!(
            "a durable channel's payload must be a JSON object (`{channel}`)"
        )));
    }
    let rest = &payload[1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'}');
    let mut tail = Vec::with_capacity(rest.len() + 1);
    if !empty {
        tail.push(b',');
    }
    tail.extend_from_slice(rest);
    Ok(tail)
}

/// `XRANGE`'s reply: `[[id, [field, value, ...]], ...]` → `(offset, payload)`: each entry's
/// message (field `m`, the live form) without its position; what is not one of the script's
/// entries is skipped.
pub(super) fn parse_entries(reply: Value) -> Vec<(u64, Bytes)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            continue;
        };
        let Some(Value::Array(fields)) = pair.into_iter().nth(1) else {
            continue;
        };
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                if name == b"m" {
                    if let Some((position, payload)) = split_live(&value) {
                        out.push((position.offset, payload));
                    }
                    break;
                }
            }
        }
    }
    out
}
