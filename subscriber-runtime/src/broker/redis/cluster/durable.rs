//! Durable channels on a Redis Cluster: the single-node broker's script, with the live message
//! `SPUBLISH`ed on the channel's partition instead of `PUBLISH`ed.
//!
//! A channel's stream and meta hash carry the hash tag of the channel's partition
//! (`<ns>:sb.stream{<tag>}:<channel>`, `<ns>:sb.meta{<tag>}:<channel>`), so that both keys and
//! the partition channel are in one slot: the script's `XADD`, `HINCRBY` and `SPUBLISH` run on
//! one primary, atomically, as on a single Redis. Publishes that queue up on a channel while a
//! call runs go together in the next call, as on one Redis (`BatchScript`). Run-once
//! handlers' consumer groups are the single-node broker's (`group.rs`), each consumer on a
//! cluster connection of its own.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use redis::Value;

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::cluster_async::ClusterConnection;
use redis::RedisError;

use super::RedisClusterBroker;
use crate::broker::redis::classify;
use crate::broker::redis::durable::{
    read_pipeline, script_args, stream_read, BatchScript, DurableQueue,
};
use crate::broker::redis::group::GroupBackend;
use crate::broker::{Retention, StreamRead};
use crate::error::BrokerError;

/// The single-node script, made to `SPUBLISH` `ARGV[1]`, a newline and the message (the
/// partition's framing) on `KEYS[3]`, the partition channel.
static CLUSTER_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&source()));

const PUBLISH_LINE: &str = "redis.call('PUBLISH', ARGV[1], message)";

fn source() -> String {
    include_str!("../durable_publish.lua")
        .replacen(
            "-- switchboard:durable-publish:4",
            "-- switchboard:durable-publish-cluster:2 (KEYS[3] the partition channel, ARGV[1] the channel)",
            1,
        )
        .replacen(
            PUBLISH_LINE,
            "redis.call('SPUBLISH', KEYS[3], ARGV[1] .. '\\n' .. message)",
            1,
        )
}

impl RedisClusterBroker {
    /// The stream and meta keys of `channel`, in its partition's slot.
    fn stream_keys(&self, channel: &str) -> (String, String) {
        let tag = self.tag_of(self.partitions.of(channel));
        (
            format!("{}sb.stream{{{tag}}}:{channel}", self.prefix),
            format!("{}sb.meta{{{tag}}}:{channel}", self.prefix),
        )
    }

    pub(super) async fn read_stream_on(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<StreamRead, BrokerError> {
        let (stream, meta) = self.stream_keys(channel);
        let mut connection = self
            .publisher()
            .await
            .map_err(|e| classify(&e, &self.urls, self.connect_timeout))?;
        // One transaction, on the slot's primary.
        let (meta, entries): (Vec<Option<String>>, Value) =
            read_pipeline(&stream, &meta, after, limit)
                .query_async(&mut connection)
                .await
                .map_err(|e| classify(&e, &self.urls, self.publish_timeout))?;
        Ok(stream_read(&meta, entries))
    }
}

/// A durable channel's batch: one call of the cluster script on the partition's primary.
impl BatchScript for RedisClusterBroker {
    fn durable_queues(&self) -> &Mutex<HashMap<String, DurableQueue>> {
        &self.durable_queues
    }

    fn run_batch<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
        tails: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(String, u64), BrokerError>> {
        // Bounded as a whole (the cluster client retries on its own): a batch that hangs would
        // hold up every publish queued behind it on the channel.
        let call = async move {
            let (stream, meta) = self.stream_keys(channel);
            let partition = self.partitions.name(self.partitions.of(channel));
            let mut connection = self
                .publisher()
                .await
                .map_err(|e| classify(&e, &self.urls, self.connect_timeout))?;
            let mut invocation = CLUSTER_SCRIPT.key(&stream);
            invocation.key(&meta).key(partition).arg(channel);
            script_args(&mut invocation, retention, &self.epochs.next(), tails);
            invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| classify(&e, &self.urls, self.publish_timeout))
        };
        Box::pin(async move {
            tokio::time::timeout(self.publish_timeout, call)
                .await
                .unwrap_or(Err(BrokerError::Timeout(self.publish_timeout)))
        })
    }
}

/// Run-once handlers' consumer groups on a cluster: each consumer has a cluster connection of its
/// own (its blocking `XREADGROUP` holds up no other command), routed to the stream's primary.
impl GroupBackend for RedisClusterBroker {
    type Connection = ClusterConnection;

    fn stream_key(&self, channel: &str) -> String {
        self.stream_keys(channel).0
    }

    fn check(&self) -> Result<(), BrokerError> {
        self.check_config()
    }

    fn command_timeout(&self) -> Duration {
        self.publish_timeout
    }

    fn classify(&self, e: &RedisError, timeout: Duration) -> BrokerError {
        classify(e, &self.urls, timeout)
    }

    fn open(
        &self,
        response_timeout: Duration,
    ) -> BoxFuture<'_, Result<ClusterConnection, BrokerError>> {
        Box::pin(async move {
            let client = self
                .cluster_client(response_timeout)
                .map_err(|e| classify(&e, &self.urls, self.connect_timeout))?;
            client
                .get_async_connection()
                .await
                .map_err(|e| classify(&e, &self.urls, self.connect_timeout))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_script_spublishes_the_framed_message_on_the_partition() {
        let source = source();
        assert!(
            !source.contains(PUBLISH_LINE),
            "the PUBLISH line was replaced"
        );
        assert!(source.contains("redis.call('SPUBLISH', KEYS[3], ARGV[1] .. '\\n' .. message)"));
        assert!(source.starts_with("-- switchboard:durable-publish-cluster:2"));
    }

    #[test]
    fn a_channel_s_keys_share_its_partition_s_slot() {
        let broker = RedisClusterBroker::from_urls(["redis://127.0.0.1:7000"])
            .unwrap()
            .namespace("app");
        for channel in ["ledger", "orders:1", "x"] {
            let (stream, meta) = broker.stream_keys(channel);
            let slot =
                super::super::partitions::slot_of(broker.partition_channel(channel).as_bytes());
            assert_eq!(super::super::partitions::slot_of(stream.as_bytes()), slot);
            assert_eq!(super::super::partitions::slot_of(meta.as_bytes()), slot);
            assert!(stream.starts_with("app:sb.stream{"), "{stream}");
        }
    }
}
