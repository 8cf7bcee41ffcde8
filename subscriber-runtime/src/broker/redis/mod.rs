//! The Redis broker: workers in several processes (or on several machines) share one Redis server
//! and exchange messages through its pub/sub commands.
//!
//! The broker is split by concept:
//! - `config`: building a [`RedisBroker`] from a URL (with its password redacted for logs) and its
//!   options (namespace, timeouts, reconnect backoff);
//! - `publisher`: the shared, lazily opened and watched publishing connection;
//! - `subscriber`: the subscriber connection, its reader task, `PING` keep-alive and reconnects;
//! - `backoff`: the capped, jittered exponential reconnect delays;
//! - `tls` (feature `tls`): a private CA's roots, and the cluster's TLS connector.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use super::{Broker, Inbox, Position, PresenceStore, Retention, StreamRead, Subscriptions};
use crate::error::BrokerError;

mod backoff;
mod cluster;
mod config;
mod durable;
mod group;
mod presence;
mod publisher;
mod subscriber;
#[cfg(feature = "tls")]
mod tls;

use self::backoff::Backoff;
pub use self::cluster::RedisClusterBroker;
use self::publisher::PublishSlot;
use self::subscriber::{Plan, Reader};

/// A broker on a Redis server (or anything speaking its protocol: Valkey, KeyDB, ...), so that
/// workers in separate processes receive each other's messages.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::broker::RedisBroker;
/// use switchboard::Switchboard;
///
/// # fn main() -> Result<(), switchboard::Error> {
/// let broker = RedisBroker::from_url("redis://127.0.0.1:6379/")?
///     .namespace("app1")                           // channels become `app1:<channel>` on Redis
///     .publish_timeout(Duration::from_secs(1));
/// let app = Switchboard::builder().broker(broker).build()?;
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
///
/// # Delivery: at-most-once
///
/// Redis pub/sub stores nothing: a message published while a worker is disconnected from Redis
/// (during a network failure or a Redis restart, until the broker has reconnected and
/// subscribed again) is lost **to that worker**; the others still receive it. Messages dropped
/// because the worker's dispatch queue was full are lost the same way (and counted in
/// [`Stats::dropped_queue_full`](crate::Stats::dropped_queue_full)). Use a Redis stream or a job
/// queue for messages that must not be lost.
///
/// # Connections
///
/// - **Subscribing** uses one dedicated connection per started application. `SUBSCRIBE` is sent
///   for every exact channel and `PSUBSCRIBE` for every glob pattern of its [`Subscriptions`];
///   [`subscribe`](Broker::subscribe) resolves once Redis has confirmed them all (it fails with
///   [`BrokerError::Unreachable`] or [`BrokerError::Timeout`] when Redis cannot be reached at
///   start). A reader task then moves every message into the worker's [`Inbox`] without ever
///   waiting for handlers. A `PING` every [`ping_interval`](Self::ping_interval) detects a
///   connection that died silently.
/// - **Reconnecting.** When that connection is lost, the broker reconnects with a capped,
///   jittered exponential backoff ([`reconnect_backoff`](Self::reconnect_backoff), by default
///   100 ms doubling up to 5 s), subscribes to everything again, logs each attempt at `warn` and
///   the recovery at `info`, and counts one [`Stats::reconnects`](crate::Stats::reconnects) per
///   recovery. It never gives up; it stops when the application shuts down (after a clean
///   `UNSUBSCRIBE`).
/// - **Publishing** uses one multiplexed connection shared by every clone of the broker, opened
///   on the first publish. A connection the server closed (a restart, a dropped connection) is
///   noticed and replaced before the next publish (`rediss://` ones too); one that fails or times
///   out is replaced too. While Redis is unreachable,
///   [`publish`](Broker::publish) returns [`BrokerError::Unreachable`] (connection refused or
///   lost) or [`BrokerError::Timeout`] within [`publish_timeout`](Self::publish_timeout); it
///   never blocks longer and never panics. A failed publish is **not** retried (a retry could
///   deliver a message twice): the caller decides.
///
/// # Namespace
///
/// With [`namespace("app1")`](Self::namespace), every channel and pattern on Redis is prefixed
/// with `app1:`: publishing on `orders` publishes on `app1:orders`, a handler for `orders`
/// subscribes to `app1:orders`, a glob `orders:*` becomes `app1:orders:*`. Handlers see channel
/// names **without** the prefix. Applications with different namespaces can share one Redis
/// without seeing each other's messages.
///
/// # URLs
///
/// `redis://[user][:password@]host[:port][/db]`, `redis+unix:///path/to/socket`, and
/// `rediss://...` for TLS. TLS needs the `tls` feature (rustls with the `ring` provider); without
/// it a `rediss://` URL is refused by [`from_url`](Self::from_url) with a [`BrokerError::Config`]
/// saying so. The server's certificate is verified against the platform's root certificates, or
/// against a private CA given with `tls_root_certificates` (or `REDIS_TLS_CA_FILE` for
/// [`Builder::broker_from_env`](crate::Builder::broker_from_env)); it must name the URL's host. A
/// certificate that is not trusted fails the start and every publish with
/// [`BrokerError::Unreachable`], whose text says so. `rediss://...#insecure` (no verification) is
/// refused.
#[derive(Clone)]
pub struct RedisBroker {
    client: redis::Client,
    /// The CA certificates (PEM) that `tls_root_certificates` gave, for the TLS connections the
    /// broker opens itself (the publishing ones); `client` carries them too.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_roots: Option<Arc<[u8]>>,
    /// The URL with its password hidden, for logs and errors.
    url: Arc<str>,
    /// The prefix put before every channel on Redis (`"app1:"`), empty without a namespace.
    prefix: Arc<str>,
    /// Set when `namespace(...)` was given an unusable name; reported by `publish`/`subscribe`.
    invalid_namespace: Option<Arc<str>>,
    publish_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    backoff: Backoff,
    publisher: Arc<PublishSlot>,
    /// A second connection, for reading durable channels' streams: a read never queues behind
    /// publishes, nor publishes behind a long read.
    reader: Arc<PublishSlot>,
    /// Epoch candidates for durable channels' new streams.
    epochs: Arc<crate::broker::durable::Epochs>,
    /// Durable publishes waiting for the script, per channel (see `durable.rs`).
    durable_queues: Arc<std::sync::Mutex<std::collections::HashMap<String, durable::DurableQueue>>>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    fn check_config(&self) -> Result<(), BrokerError> {
        match &self.invalid_namespace {
            Some(reason) => Err(BrokerError::Config(reason.to_string())),
            None => Ok(()),
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = format!("{}{channel}", self.prefix);
        Box::pin(async move {
            self.check_config()?;
            match tokio::time::timeout(self.publish_timeout, self.publish_on(&channel, &payload))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => {
                    tracing::debug!(channel = %channel, url = %self.url, %error, "redis publish failed");
                    Err(error)
                }
                Err(_) => {
                    // The connection may be stuck: use a fresh one next time.
                    self.publisher.discard_all();
                    tracing::debug!(
                        channel = %channel,
                        url = %self.url,
                        timeout = ?self.publish_timeout,
                        "redis publish timed out"
                    );
                    Err(BrokerError::Timeout(self.publish_timeout))
                }
            }
        })
    }

    fn subscribe(
        &self,
        subscriptions: Subscriptions,
        inbox: Inbox,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.check_config()?;
            if subscriptions.is_empty() {
                tracing::debug!(url = %self.url, "nothing to subscribe to on redis");
                return Ok(());
            }
            let plan = Plan::new(subscriptions, &self.prefix);
            let connection = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                connection = self.connect_subscriber(&plan) => connection?,
            };
            tracing::info!(
                url = %self.url,
                namespace = %self.prefix.strip_suffix(':').unwrap_or(""),
                channels = plan.channels.len(),
                patterns = plan.patterns.len(),
                "redis subscription active"
            );
            let reader = Reader {
                broker: self.clone(),
                plan,
                inbox,
                shutdown,
            };
            tokio::spawn(reader.run(connection));
            Ok(())
        })
    }

    fn has_streams(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn presence(&self) -> Option<Arc<dyn PresenceStore>> {
        Some(Arc::new(presence::RedisPresence(self.clone())))
    }

    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Position, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_config()?;
            // The script's call has its own timeout (and replaces a stuck connection); this one
            // also bounds the wait in the channel's queue.
            let work = durable::publish_batched(self, &channel, &payload, retention);
            tokio::time::timeout(self.publish_timeout, work)
                .await
                .unwrap_or(Err(BrokerError::Timeout(self.publish_timeout)))
        })
    }

    fn group_consumer(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn crate::broker::GroupConsumer>, BrokerError> {
        self.check_config()?;
        Ok(Box::new(group::RedisGroupConsumer::new(
            self, channel, group, consumer,
        )))
    }

    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<StreamRead, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_config()?;
            let work = self.read_stream_on(&channel, after, limit);
            match tokio::time::timeout(self.publish_timeout, work).await {
                Ok(result) => result,
                Err(_) => {
                    self.reader.discard_all();
                    Err(BrokerError::Timeout(self.publish_timeout))
                }
            }
        })
    }
}

/// Maps a Redis error to a [`BrokerError`].
fn classify(error: &RedisError, url: &str, timeout: Duration) -> BrokerError {
    if error.is_timeout() {
        BrokerError::Timeout(timeout)
    } else if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
    {
        let error = error.to_string();
        #[cfg(feature = "tls")]
        let error = tls::explain(&error);
        BrokerError::Unreachable(format!("redis at {url}: {error}"))
    } else {
        BrokerError::Other(format!("redis at {url}: {error}"))
    }
}
