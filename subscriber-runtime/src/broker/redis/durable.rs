//! Durable channels on Redis: a stream and a meta hash per channel, written with the live
//! `PUBLISH` by one script (`durable_publish.lua`), and read with `XRANGE` on the reading
//! connection.
//!
//! Keys (after the namespace prefix): `switchboard:stream:{<channel>}` and
//! `switchboard:meta:{<channel>}`. Both carry the channel as their hash tag, so that on a Redis
//! Cluster a channel's two keys live in one slot, as the script needs.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use redis::{RedisError, Value};

use super::{classify, RedisBroker};
use crate::broker::durable::split_live;
use crate::broker::{Position, Retention, StreamRead};
use crate::error::BrokerError;

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

impl RedisBroker {
    pub(super) async fn publish_durable_on(
        &self,
        channel: &str,
        payload: &[u8],
        retention: Retention,
    ) -> Result<Position, BrokerError> {
        if payload.first() != Some(&b'{') {
            return Err(BrokerError::Other(format!(
                "a durable channel's payload must be a JSON object (`{channel}`)"
            )));
        }
        let on_redis = format!("{}{channel}", self.prefix);
        let (stream, meta) = keys(&on_redis);
        let (generation, mut conn) = self
            .publisher
            .get(&self.client, self.publish_timeout)
            .await
            .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
        let ttl_ms = u64::try_from(retention.max_age().as_millis()).unwrap_or(u64::MAX);
        // The payload after its `{`, with a `,` first unless the object is empty: the script puts
        // the position in front.
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
        let result: Result<(String, u64), RedisError> = PUBLISH_SCRIPT
            .key(&stream)
            .key(&meta)
            .arg(&on_redis)
            .arg(tail)
            .arg(retention.max_messages())
            .arg(ttl_ms)
            .arg(&*self.epochs.next())
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((epoch, offset)) => {
                tracing::trace!(channel, %epoch, offset, "published on a durable channel");
                Ok(Position {
                    epoch: Arc::from(epoch),
                    offset,
                })
            }
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.publisher.discard(generation);
                }
                Err(classify(&e, &self.url, self.publish_timeout))
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
            .get(&self.client, self.publish_timeout)
            .await
            .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
        // One transaction: the epoch, the newest offset and the entries agree.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(&meta)
            .arg("epoch")
            .arg("offset")
            .cmd("XRANGE")
            .arg(&stream)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1));
        let result: Result<(Vec<Option<String>>, Value), RedisError> =
            pipe.query_async(&mut conn).await;
        let (meta, entries) = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.reader.discard(generation);
                }
                return Err(classify(&e, &self.url, self.publish_timeout));
            }
        };
        let epoch = meta.first().cloned().flatten().map(Arc::from);
        let last = meta
            .get(1)
            .cloned()
            .flatten()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        Ok(StreamRead {
            epoch,
            entries: parse_entries(entries),
            last,
        })
    }
}

/// `XRANGE`'s reply: `[[id, [field, value, ...]], ...]` → `(offset, payload)`: each entry's
/// message (field `m`, the live form) without its position; what is not one of the script's
/// entries is skipped.
fn parse_entries(reply: Value) -> Vec<(u64, Bytes)> {
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
