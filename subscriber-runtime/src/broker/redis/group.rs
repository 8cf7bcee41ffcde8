//! Consumer groups on a durable channel's stream, for run-once handlers: `XREADGROUP`, `XACK` and
//! `XAUTOCLAIM`, each consumer on a connection of its own (a blocking read never holds up a
//! publish or another consumer).

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError, Value};

use super::durable::keys;
use super::{classify, RedisBroker};
use crate::broker::durable::{split_live, GroupConsumer, GroupEntry};
use crate::error::BrokerError;

/// What a consumer needs of its broker: the stream's key, and connections of its own.
pub(super) trait GroupBackend: Clone + Send + Sync + 'static {
    /// A connection (one per consumer: its blocking reads hold nobody else up).
    type Connection: ConnectionLike + Clone + Send + Sync + 'static;
    /// The key of `channel`'s stream.
    fn stream_key(&self, channel: &str) -> String;
    /// The broker's configuration error, if any.
    fn check(&self) -> Result<(), BrokerError>;
    /// How long a command other than a blocking read may take.
    fn command_timeout(&self) -> Duration;
    /// A Redis error as a broker error.
    fn classify(&self, e: &RedisError, timeout: Duration) -> BrokerError;
    /// Opens a connection whose replies may take `response_timeout`.
    fn open(
        &self,
        response_timeout: Duration,
    ) -> BoxFuture<'_, Result<Self::Connection, BrokerError>>;
}

impl GroupBackend for RedisBroker {
    type Connection = MultiplexedConnection;

    fn stream_key(&self, channel: &str) -> String {
        keys(&format!("{}{channel}", self.prefix)).0
    }

    fn check(&self) -> Result<(), BrokerError> {
        self.check_config()
    }

    fn command_timeout(&self) -> Duration {
        self.publish_timeout
    }

    fn classify(&self, e: &RedisError, timeout: Duration) -> BrokerError {
        classify(e, &self.url, timeout)
    }

    fn open(
        &self,
        response_timeout: Duration,
    ) -> BoxFuture<'_, Result<MultiplexedConnection, BrokerError>> {
        Box::pin(async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(response_timeout));
            self.client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| classify(&e, &self.url, self.connect_timeout))
        })
    }
}

/// Extra time allowed for a blocking read's answer beyond its `BLOCK`.
const READ_MARGIN: Duration = Duration::from_secs(5);

/// One consumer of a group, on its own connection (opened lazily, replaced after an error).
pub(super) struct RedisGroupConsumer<B: GroupBackend> {
    broker: B,
    stream: String,
    group: String,
    consumer: String,
    connection: Option<B::Connection>,
    /// Whether the group was made sure of (created at the stream's end if it did not exist).
    ready: bool,
    /// Where the next `XAUTOCLAIM` starts.
    claim_cursor: String,
}

impl<B: GroupBackend> std::fmt::Debug for RedisGroupConsumer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGroupConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<B: GroupBackend> RedisGroupConsumer<B> {
    pub(super) fn new(broker: &B, channel: &str, group: &str, consumer: &str) -> Self {
        let stream = broker.stream_key(channel);
        Self {
            broker: broker.clone(),
            stream,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            connection: None,
            ready: false,
            claim_cursor: "0-0".to_owned(),
        }
    }

    async fn connection(&mut self, timeout: Duration) -> Result<B::Connection, BrokerError> {
        if let Some(c) = &self.connection {
            return Ok(c.clone());
        }
        let c = self.broker.open(timeout).await?;
        self.connection = Some(c.clone());
        Ok(c)
    }

    /// Maps an error, dropping the connection when it is the connection's fault.
    fn failed(&mut self, e: &RedisError, timeout: Duration) -> BrokerError {
        if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
            self.connection = None;
        }
        self.broker.classify(e, timeout)
    }

    /// `XGROUP CREATE ... MKSTREAM` from `start` (`$`: the end; `0`: everything); an existing
    /// group is left as it is.
    async fn create_group(&mut self, start: &str) -> Result<(), BrokerError> {
        let timeout = self.broker.command_timeout();
        let mut conn = self.connection(timeout + READ_MARGIN).await?;
        let result: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.failed(&e, timeout)),
        }
    }
}

/// The entries of an `XREADGROUP`/`XAUTOCLAIM` reply's entry list.
fn entries(list: Value, claimed: bool) -> Vec<GroupEntry> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let Some(Value::Array(fields)) = pair.into_iter().nth(1) else {
                return None;
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                    if name == b"m" {
                        let (position, payload) = split_live(&value)?;
                        return Some(GroupEntry {
                            position,
                            payload,
                            claimed,
                        });
                    }
                }
            }
            None
        })
        .collect()
}

impl<B: GroupBackend> GroupConsumer for RedisGroupConsumer<B> {
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.broker.check()?;
            self.create_group("$").await?;
            self.ready = true;
            Ok(())
        })
    }

    fn read(
        &mut self,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        Box::pin(async move {
            self.broker.check()?;
            if !self.ready {
                self.create_group("$").await?;
                self.ready = true;
            }
            let timeout = block + READ_MARGIN;
            for attempt in 0..2 {
                let mut conn = self.connection(timeout).await?;
                let result: Result<Value, RedisError> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(count.max(1))
                    .arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await;
                match result {
                    Ok(Value::Array(streams)) => {
                        return Ok(streams
                            .into_iter()
                            .flat_map(|s| match s {
                                Value::Array(pair) => {
                                    pair.into_iter().nth(1).map(|l| entries(l, false))
                                }
                                _ => None,
                            })
                            .flatten()
                            .collect());
                    }
                    Ok(_) => return Ok(Vec::new()),
                    // The stream (and the group with it) was deleted: expired, or replaced by a
                    // new epoch. Everything in the new stream is new to the group.
                    Err(e)
                        if attempt == 0
                            && (e.code() == Some("NOGROUP") || e.code() == Some("UNBLOCKED")) =>
                    {
                        tracing::info!(
                            stream = %self.stream,
                            group = %self.group,
                            "consumer group gone with its stream: creating it again from the stream's start"
                        );
                        self.create_group("0").await?;
                    }
                    Err(e) => return Err(self.failed(&e, timeout)),
                }
            }
            Ok(Vec::new())
        })
    }

    fn ack(&mut self, offsets: Vec<u64>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if offsets.is_empty() {
                return Ok(());
            }
            let timeout = self.broker.command_timeout();
            let mut conn = self.connection(timeout + READ_MARGIN).await?;
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.stream).arg(&self.group);
            for offset in offsets {
                cmd.arg(format!("{offset}-0"));
            }
            let result: Result<Value, RedisError> = cmd.query_async(&mut conn).await;
            result.map(drop).map_err(|e| self.failed(&e, timeout))
        })
    }

    fn claim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<GroupEntry>, BrokerError>> {
        Box::pin(async move {
            let timeout = self.broker.command_timeout();
            let mut conn = self.connection(timeout + READ_MARGIN).await?;
            let result: Result<Value, RedisError> = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&self.claim_cursor)
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut conn)
                .await;
            match result {
                Ok(Value::Array(parts)) => {
                    let mut parts = parts.into_iter();
                    if let Some(Value::BulkString(next)) = parts.next() {
                        self.claim_cursor = String::from_utf8_lossy(&next).into_owned();
                    }
                    Ok(parts.next().map(|l| entries(l, true)).unwrap_or_default())
                }
                Ok(_) => Ok(Vec::new()),
                Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
                Err(e) => Err(self.failed(&e, timeout)),
            }
        })
    }
}
