//! The presence store on Redis: each write is one `MULTI`/`EXEC` (with its feed message) on a
//! publishing connection, bounded by the publish timeout.
//!
//! The store's logic is written once, over a [`Backend`]: the single-node broker's (keys under
//! `<ns>switchboard:presence:`, the feed `PUBLISH`ed) and the cluster broker's (every key tagged
//! with the slot of the presence feed's partition, so that a write and its `SPUBLISH` are one
//! transaction on one node).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Pipeline, RedisError};

use super::{classify, RedisBroker};
use crate::broker::presence::{
    decode_member, encode_member, Feed, GroupMember, PresenceChange, PresenceStore, PresenceTable,
    SEQ_FIELD,
};
use crate::error::BrokerError;

/// Where presence lives on a Redis deployment.
pub(super) trait Backend: Send + Sync + fmt::Debug + 'static {
    fn table_key(&self, worker: &str) -> String;
    fn workers_key(&self) -> String;
    fn group_key(&self, group: &str) -> String;
    /// Adds the publication of `feed` to the transaction `pipe`; false when it cannot be part of
    /// it (then it is published right after the transaction).
    fn add_feed(&self, pipe: &mut Pipeline, feed: &Feed) -> bool;
    /// Publishes `feed` on its own.
    fn publish_feed(&self, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Runs `pipe` within the publish timeout.
    fn run<T: FromRedisValue + Send + 'static>(
        &self,
        pipe: Pipeline,
    ) -> BoxFuture<'_, Result<T, BrokerError>>;
}

/// The presence store of a Redis [`Backend`].
#[derive(Debug)]
pub(super) struct RedisPresence<B>(pub(super) B);

impl RedisBroker {
    /// Runs `f` on the publishing connection within the publish timeout; a connection that fails
    /// or times out is replaced before the next use.
    async fn on_connection<T, F, Fut>(&self, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.check_config()?;
        let run = async {
            let (generation, conn) = self
                .publisher
                .get(self, self.publish_timeout)
                .await
                .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
            f(conn).await.map_err(|e| {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.publisher.discard(generation);
                }
                classify(&e, &self.url, self.publish_timeout)
            })
        };
        match tokio::time::timeout(self.publish_timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                self.publisher.discard_all();
                Err(BrokerError::Timeout(self.publish_timeout))
            }
        }
    }
}

impl Backend for RedisBroker {
    fn table_key(&self, worker: &str) -> String {
        format!("{}switchboard:presence:{worker}", self.prefix)
    }

    fn workers_key(&self) -> String {
        format!("{}switchboard:presence:workers", self.prefix)
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}switchboard:presence:group:{group}", self.prefix)
    }

    fn add_feed(&self, pipe: &mut Pipeline, feed: &Feed) -> bool {
        pipe.publish(
            format!("{}{}", self.prefix, feed.channel),
            feed.payload.to_vec(),
        )
        .ignore();
        true
    }

    fn publish_feed(&self, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut pipe = redis::pipe();
        self.add_feed(&mut pipe, &feed);
        self.run(pipe)
    }

    fn run<T: FromRedisValue + Send + 'static>(
        &self,
        pipe: Pipeline,
    ) -> BoxFuture<'_, Result<T, BrokerError>> {
        let pipe = Arc::new(pipe);
        Box::pin(
            self.on_connection(move |mut conn| async move { pipe.query_async(&mut conn).await }),
        )
    }
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A table's fields for `HMSET`: the sequence number, then the records.
fn fields(seq: u64, records: Vec<(String, Bytes)>) -> Vec<(String, Vec<u8>)> {
    std::iter::once((SEQ_FIELD.to_owned(), seq.to_string().into_bytes()))
        .chain(records.into_iter().map(|(id, r)| (id, r.to_vec())))
        .collect()
}

impl<B: Backend> RedisPresence<B> {
    /// The end of every table write: renew the table's time to live, list the worker, publish
    /// the feed message (in the transaction when the backend can).
    fn seal(
        &self,
        pipe: &mut Pipeline,
        key: &str,
        worker: &str,
        ttl: Duration,
        feed: &Feed,
    ) -> bool {
        pipe.pexpire(key, millis(ttl)).ignore();
        pipe.sadd(self.0.workers_key(), worker).ignore();
        self.0.add_feed(pipe, feed)
    }

    /// Runs the transaction `pipe`, then publishes `feed` when it was not part of it.
    async fn commit(
        &self,
        pipe: Pipeline,
        feed: Feed,
        in_transaction: bool,
    ) -> Result<(), BrokerError> {
        self.0.run::<()>(pipe).await?;
        if !in_transaction {
            self.0.publish_feed(feed).await?;
        }
        Ok(())
    }
}

impl<B: Backend> PresenceStore for RedisPresence<B> {
    fn write(
        &self,
        worker: &str,
        changes: Vec<PresenceChange>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let key = self.0.table_key(worker);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut puts = Vec::new();
        let mut removes = Vec::new();
        for change in changes {
            match change {
                PresenceChange::Put { id, record } => puts.push((id, record)),
                PresenceChange::Remove { id } => removes.push(id),
            }
        }
        let puts = fields(seq, puts);
        if !removes.is_empty() {
            pipe.hdel(&key, removes).ignore();
        }
        pipe.hset_multiple(&key, &puts).ignore();
        let inside = self.seal(&mut pipe, &key, worker, ttl, &feed);
        Box::pin(self.commit(pipe, feed, inside))
    }

    fn replace(
        &self,
        worker: &str,
        records: Vec<(String, Bytes)>,
        seq: u64,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let key = self.0.table_key(worker);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&key).ignore();
        pipe.hset_multiple(&key, &fields(seq, records)).ignore();
        let inside = self.seal(&mut pipe, &key, worker, ttl, &feed);
        Box::pin(self.commit(pipe, feed, inside))
    }

    fn renew(
        &self,
        worker: &str,
        ttl: Duration,
        feed: Feed,
    ) -> BoxFuture<'_, Result<bool, BrokerError>> {
        let key = self.0.table_key(worker);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.pexpire(&key, millis(ttl));
        pipe.sadd(self.0.workers_key(), worker).ignore();
        let inside = self.0.add_feed(&mut pipe, &feed);
        Box::pin(async move {
            let (renewed,): (bool,) = self.0.run(pipe).await?;
            if !inside {
                self.0.publish_feed(feed).await?;
            }
            Ok(renewed)
        })
    }

    fn read(&self, worker: &str) -> BoxFuture<'_, Result<Option<PresenceTable>, BrokerError>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.0.table_key(worker));
        let worker = worker.to_owned();
        Box::pin(async move {
            let (fields,): (BTreeMap<String, Vec<u8>>,) = self.0.run(pipe).await?;
            if fields.is_empty() {
                return Ok(None);
            }
            let mut table = PresenceTable::default();
            for (field, value) in fields {
                if field == SEQ_FIELD {
                    table.seq = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                } else if !field.starts_with('~') {
                    table.records.insert(field, Bytes::from(value));
                }
            }
            tracing::trace!(
                worker,
                records = table.records.len(),
                seq = table.seq,
                "presence table read"
            );
            Ok(Some(table))
        })
    }

    fn workers(&self) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        let mut pipe = redis::pipe();
        pipe.smembers(self.0.workers_key());
        Box::pin(async move {
            let (workers,): (Vec<String>,) = self.0.run(pipe).await?;
            Ok(workers)
        })
    }

    fn remove(&self, worker: &str, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(self.0.table_key(worker)).ignore();
        pipe.srem(self.0.workers_key(), worker).ignore();
        let inside = self.0.add_feed(&mut pipe, &feed);
        Box::pin(self.commit(pipe, feed, inside))
    }

    fn enter(
        &self,
        group: &str,
        member: GroupMember,
    ) -> BoxFuture<'_, Result<Vec<GroupMember>, BrokerError>> {
        let key = self.0.group_key(group);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.rpush(&key, encode_member(&member)).ignore();
        pipe.lrange(&key, 0, -1);
        Box::pin(async move {
            let (listed,): (Vec<String>,) = self.0.run(pipe).await?;
            let members: Vec<GroupMember> =
                listed.iter().filter_map(|m| decode_member(m)).collect();
            // Which of the other workers still have a table.
            let mut others: Vec<String> = members
                .iter()
                .filter(|m| m.worker != member.worker)
                .map(|m| m.worker.clone())
                .collect();
            others.sort_unstable();
            others.dedup();
            if others.is_empty() {
                return Ok(members);
            }
            let mut check = redis::pipe();
            for w in &others {
                check.exists(self.0.table_key(w));
            }
            let alive: Vec<bool> = self.0.run(check).await?;
            let dead: Vec<String> = others
                .into_iter()
                .zip(alive)
                .filter(|(_, alive)| !alive)
                .map(|(w, _)| w)
                .collect();
            if dead.is_empty() {
                return Ok(members);
            }
            let (kept, gone): (Vec<GroupMember>, Vec<GroupMember>) =
                members.into_iter().partition(|m| !dead.contains(&m.worker));
            let mut clean = redis::pipe();
            for m in &gone {
                clean.lrem(&key, 0, encode_member(m)).ignore();
            }
            self.0.run::<()>(clean).await?;
            Ok(kept)
        })
    }

    fn leave(&self, group: &str, member: GroupMember) -> BoxFuture<'_, Result<(), BrokerError>> {
        let mut pipe = redis::pipe();
        pipe.lrem(self.0.group_key(group), 0, encode_member(&member))
            .ignore();
        self.0.run::<()>(pipe)
    }
}
