//! The Redis Cluster broker: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) over hashed partitions.
//!
//! - `partitions`: the partition channels, their evenly spread hash tags, the framing;
//! - `topology`: the slot map (`CLUSTER SLOTS`);
//! - `node`: one subscriber connection per primary;
//! - `supervisor`: keeps every partition subscribed on its owner;
//! - `resp`: the frames those connections read.
//!
//! With `rediss://` seeds (feature `tls`), the node connections speak TLS (`tokio-rustls`), and the
//! `redis` crate's clients (slot map, publishing, durable channels, consumer groups) get the same
//! roots.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::presence::{Backend, RedisPresence};
use super::{classify, config, Backoff};
use crate::broker::presence::{Feed, PresenceStore, FEED_CHANNEL};
use crate::broker::{Broker, Inbox, Subscriptions};
use crate::error::BrokerError;

mod durable;
mod node;
mod partitions;
mod resp;
mod supervisor;
mod topology;

use self::partitions::{Partitions, MAX_PARTITIONS};

/// Default number of partitions.
const DEFAULT_PARTITIONS: usize = 128;
/// Default period of the slot map's reading.
const DEFAULT_TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Default longest delay between two attempts to subscribe what is missing: short, since a
/// failover is over in a second or two.
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A broker on a Redis Cluster, with sharded pub/sub: throughput grows with the number of
/// primaries, where classic `PUBLISH` on a cluster sends every message to every node.
///
/// ```no_run
/// use switchboard::broker::RedisClusterBroker;
/// use switchboard::Switchboard;
///
/// # fn main() -> Result<(), switchboard::Error> {
/// let broker = RedisClusterBroker::from_urls(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?
///     .namespace("app1")
///     .partitions(128);
/// let app = Switchboard::builder().broker(broker).build()?;
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
///
/// Or from the environment: [`Builder::broker_from_env`](crate::Builder::broker_from_env) picks
/// it when `REDIS_CLUSTER_URLS` (seed nodes, separated by commas) is set.
///
/// # Partitions
///
/// Every channel is hashed into one of [`partitions`](Self::partitions) sharded channels
/// (`<namespace>:sb.p{<tag>}`, 128 by default), and published there with `SPUBLISH`, framed as
/// the channel name, a newline, then the payload. Partition `i` of `n` gets a hash tag whose slot
/// lies in the `i`-th of `n` equal slot ranges, so the partitions spread evenly over the
/// primaries (a naive `{0}`, `{1}`, ... can leave one node with twice another's share).
///
/// A worker subscribes to the partitions of its exact channels. A worker with a glob, regex or
/// `"*"` handler subscribes to **every** partition and keeps what its handlers match: patterns
/// keep working, at the cost of reading every message of the cluster (as on one Redis, where
/// `PSUBSCRIBE *` reads everything too).
///
/// # Connections and failures
///
/// - **Subscribing**: one connection per primary, carrying the partitions whose slots it owns,
///   one `SSUBSCRIBE` per partition (a command never spans two slots, so no `CROSSSLOT`). The
///   slot map (`CLUSTER SLOTS`) is read at start, every
///   [`topology_refresh`](Self::topology_refresh), and at once when Redis unsubscribes a
///   partition on its own (a slot migration, or a primary that became a replica), answers
///   `MOVED` or `CLUSTERDOWN`, or a connection is lost; every partition is then subscribed again
///   on the node that owns it now, retrying with a short jittered backoff (100 ms doubling to
///   500 ms by default). Each recovery (every partition that was lost or moved subscribed again)
///   counts one [`Stats::reconnects`](crate::Stats::reconnects).
/// - **Publishing**: the `redis` crate's cluster client (`MOVED`/`ASK` redirections, reconnects
///   and slot map refreshes are its own), within [`publish_timeout`](Self::publish_timeout).
/// - **TLS**: with `rediss://` seeds (feature `tls`), every connection above is a TLS one, each
///   node's certificate checked against the host the cluster announces for it (`CLUSTER SLOTS`:
///   an IP address unless the nodes announce host names), with the platform's root certificates
///   or a private CA's (`tls_root_certificates`). The nodes must serve clients on their TLS port
///   (`tls-cluster yes` makes them announce it).
/// - **Delivery** is at-most-once, as on one Redis: a message published on a partition while it
///   moves (between Redis's `sunsubscribe` and the subscription on the new owner, usually a few
///   milliseconds; a failover's election, usually one to two seconds) is lost to the workers
///   that were moving it.
///
/// # Presence
///
/// The WebSocket server's shared presence store works on a cluster: its keys are tagged with the
/// slot of the presence feed's partition, so a table write and its feed message are one
/// `MULTI`/`EXEC` on one primary (all presence lives on that primary).
///
/// # Durable channels and run-once handlers
///
/// [Durable channels](crate::Builder::durable) work: a channel's stream and meta hash carry its
/// partition's hash tag, so the publishing script runs on the partition's primary and
/// `SPUBLISH`es the message there. Run-once handlers' consumer groups live on the same stream,
/// each consumer on a cluster connection of its own.
#[derive(Clone)]
pub struct RedisClusterBroker {
    /// The seed nodes, as given (with the TLS roots once given).
    seeds: Arc<[ConnectionInfo]>,
    /// The seeds are `rediss://` ones: every connection speaks TLS.
    tls: bool,
    /// The CA certificates (PEM) that `tls_root_certificates`
    /// gave, trusted instead of the platform's.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_roots: Option<Arc<[u8]>>,
    /// The seeds' URLs with passwords hidden, for logs and errors.
    urls: Arc<str>,
    prefix: Arc<str>,
    /// Why the namespace is unusable, reported by `publish`/`subscribe`.
    invalid_namespace: Option<Arc<str>>,
    /// Why the partition count is unusable, reported the same way.
    invalid_partitions: Option<Arc<str>>,
    partitions: Arc<Partitions>,
    publish_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    topology_refresh: Duration,
    backoff: Backoff,
    publisher: Arc<tokio::sync::Mutex<Option<ClusterConnection>>>,
    /// Epoch candidates for durable channels' new streams.
    epochs: Arc<crate::broker::durable::Epochs>,
    /// Durable messages waiting for their channel's script, by channel (see `durable.rs`).
    durable_queues: Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, crate::broker::redis::durable::DurableQueue>,
        >,
    >,
}

impl fmt::Debug for RedisClusterBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterBroker")
            .field("urls", &self.urls)
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions.len())
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("topology_refresh", &self.topology_refresh)
            .finish_non_exhaustive()
    }
}

impl RedisClusterBroker {
    /// A broker for the Redis Cluster that these seed nodes belong to (one is enough; more are
    /// tried in turn). The URLs are parsed now; nothing connects until the application starts or
    /// publishes. A password in the first URL is used for every node.
    ///
    /// `rediss://` seeds (TLS, with the `tls` feature) make every connection to every node a TLS
    /// one; the seeds must then all be `rediss://` ones. Each node's certificate is checked
    /// against the host the cluster announces for it (an IP address unless the nodes announce
    /// host names), with the platform's root certificates, or those given to
    /// `tls_root_certificates`.
    ///
    /// # Errors
    /// [`BrokerError::Config`] for no URL, an invalid one, a Unix socket URL, a `rediss://` URL
    /// without the `tls` feature (or with `#insecure`), a mix of `redis://` and `rediss://`
    /// URLs, or a database other than 0 (a cluster has only one).
    pub fn from_urls<I>(urls: I) -> Result<Self, BrokerError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut seeds = Vec::new();
        let mut redacted = Vec::new();
        let mut uses_tls = None;
        for url in urls {
            let url = url.as_ref().trim();
            if url.is_empty() {
                continue;
            }
            let shown = config::redact(url);
            let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
            if matches!(scheme.as_str(), "rediss" | "valkeys") && !cfg!(feature = "tls") {
                return Err(BrokerError::Config(format!(
                    "the Redis Cluster URL {shown} asks for TLS (`{scheme}://`), which needs the `tls` feature (of switchboard, or subscriber-runtime); enable it, or use a `redis://` URL"
                )));
            }
            let info = url.into_connection_info().map_err(|e| {
                BrokerError::Config(format!(
                    "invalid Redis Cluster URL {shown}: {e} (expected redis://[user][:password@]host:port)"
                ))
            })?;
            let tls = match info.addr() {
                ConnectionAddr::Tcp(..) => false,
                ConnectionAddr::TcpTls { insecure: true, .. } => {
                    return Err(BrokerError::Config(format!(
                        "the Redis Cluster URL {shown} asks for TLS without certificate verification (`#insecure`), which is not supported: give the CA of the nodes' certificates with tls_root_certificates (or REDIS_TLS_CA_FILE) instead"
                    )))
                }
                ConnectionAddr::TcpTls { .. } => true,
                _ => {
                    return Err(BrokerError::Config(format!(
                        "the Redis Cluster URL {shown} is not a TCP address: Unix sockets are not supported by the cluster broker"
                    )))
                }
            };
            match uses_tls {
                Some(others) if others != tls => {
                    return Err(BrokerError::Config(format!(
                        "the Redis Cluster URLs mix `redis://` and `rediss://` ({}, {shown}): every node of a cluster is reached the same way; use `rediss://` for all of them (TLS) or for none",
                        redacted.join(",")
                    )))
                }
                _ => uses_tls = Some(tls),
            }
            if info.redis_settings().db() != 0 {
                return Err(BrokerError::Config(format!(
                    "the Redis Cluster URL {shown} selects database {}: a cluster has only database 0",
                    info.redis_settings().db()
                )));
            }
            seeds.push(info);
            redacted.push(shown);
        }
        if seeds.is_empty() {
            return Err(BrokerError::Config(
                "no Redis Cluster URL given: give one or more seed nodes, e.g. redis://127.0.0.1:7000".to_owned(),
            ));
        }
        Ok(Self {
            seeds: seeds.into(),
            tls: uses_tls.unwrap_or(false),
            tls_roots: None,
            urls: redacted.join(",").into(),
            prefix: "".into(),
            invalid_namespace: None,
            invalid_partitions: None,
            partitions: Arc::new(Partitions::new("", DEFAULT_PARTITIONS)),
            publish_timeout: config::DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: config::DEFAULT_CONNECT_TIMEOUT,
            ping_interval: config::DEFAULT_PING_INTERVAL,
            topology_refresh: DEFAULT_TOPOLOGY_REFRESH,
            backoff: Backoff {
                initial: config::DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            },
            publisher: Arc::default(),
            epochs: Arc::default(),
            durable_queues: Arc::default(),
        })
    }

    /// Trusts the CA certificates of `pem` (one or more `-----BEGIN CERTIFICATE-----` blocks) for
    /// the nodes' TLS certificates, **instead of** the platform's root certificates: for a cluster
    /// whose certificates a private CA signed. Every connection uses them: the subscriber
    /// connections, publishing, durable channels and run-once handlers. The seeds must be
    /// `rediss://` URLs. Needs the `tls` feature.
    ///
    /// ```no_run
    /// use switchboard::broker::RedisClusterBroker;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let broker = RedisClusterBroker::from_urls(["rediss://10.0.0.1:7000", "rediss://10.0.0.2:7000"])?
    ///     .tls_root_certificates(&ca)?;
    /// # let _ = broker;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`BrokerError::Config`] when `pem` holds no certificate (or one that cannot be read), or
    /// the seeds are not `rediss://` URLs.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates(mut self, pem: impl AsRef<[u8]>) -> Result<Self, BrokerError> {
        let pem = pem.as_ref();
        // The seeds carry the roots too: the slot map is read through them, and `info_for`
        // copies the first one's.
        self.seeds = super::tls::trusting(&self.seeds, self.tls, pem, &self.urls)?.into();
        self.tls_roots = Some(pem.into());
        Ok(self)
    }

    /// Prefixes every partition channel with `"{namespace}:"`, as
    /// [`RedisBroker::namespace`](super::RedisBroker::namespace) does: applications with
    /// different namespaces share a cluster without seeing each other's messages.
    #[must_use]
    ///
    /// A namespace with `{` or `}` is refused (it would become the hash tag of every partition, so
    /// all of them would land in one slot).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        match config::namespace_prefix(&namespace) {
            Ok(prefix) if prefix.contains(['{', '}']) => {
                self.invalid_namespace = Some(
                    format!("invalid Redis Cluster namespace {namespace:?}: `{{` and `}}` would make it the hash tag of every partition; remove them")
                        .into(),
                );
            }
            Ok(prefix) => {
                self.prefix = prefix;
                self.invalid_namespace = None;
            }
            Err(reason) => self.invalid_namespace = Some(reason),
        }
        self.partitions = Arc::new(Partitions::new(&self.prefix, self.partitions.len()));
        self
    }

    /// The number of partitions (default 128, at most 1024). Every worker and publisher of an
    /// application must use the same number. More partitions spread the load over more slots (so
    /// over more primaries after a resharding); fewer mean fewer subscriptions per worker.
    ///
    /// A number outside 1 to 1024 is reported as [`BrokerError::Config`] when the application
    /// starts or publishes.
    #[must_use]
    pub fn partitions(mut self, count: usize) -> Self {
        if (1..=MAX_PARTITIONS).contains(&count) {
            self.partitions = Arc::new(Partitions::new(&self.prefix, count));
            self.invalid_partitions = None;
        } else {
            self.invalid_partitions = Some(
                format!("{count} Redis Cluster partitions: give between 1 and {MAX_PARTITIONS}")
                    .into(),
            );
        }
        self
    }

    /// How long a publish may take (default 2 s), redirections and retries included.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long connecting to a node may take (default 5 s); at start, how long subscribing
    /// every partition may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often each subscriber connection is checked with a `PING` (default 10 s).
    #[must_use]
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How often the slot map is read even when nothing went wrong (default 5 s). It is also
    /// read at once on any sign of a change.
    #[must_use]
    pub fn topology_refresh(mut self, period: Duration) -> Self {
        self.topology_refresh = period.max(Duration::from_millis(100));
        self
    }

    /// The delays between attempts to subscribe what is missing: `initial` doubling up to `max`
    /// (defaults 100 ms and 500 ms), jittered.
    #[must_use]
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    /// The partition channel that carries `channel` on Redis (`<namespace>:sb.p{<tag>}`): its
    /// hash tag tells which slot, so which primary, carries the channel.
    ///
    /// ```
    /// use switchboard::broker::RedisClusterBroker;
    ///
    /// let broker = RedisClusterBroker::from_urls(["redis://127.0.0.1:7000"])?.namespace("app1");
    /// let partition = broker.partition_channel("orders");
    /// assert!(partition.starts_with("app1:sb.p{"), "{partition}");
    /// # Ok::<(), switchboard::BrokerError>(())
    /// ```
    pub fn partition_channel(&self, channel: &str) -> &str {
        self.partitions.name(self.partitions.of(channel))
    }

    fn check_config(&self) -> Result<(), BrokerError> {
        match self
            .invalid_namespace
            .as_ref()
            .or(self.invalid_partitions.as_ref())
        {
            Some(reason) => Err(BrokerError::Config(reason.to_string())),
            None => Ok(()),
        }
    }

    /// The connection settings for `node` (`host:port`): the first seed's (TLS included), at
    /// that address.
    fn info_for(&self, node: &str) -> Option<ConnectionInfo> {
        let (host, port) = node.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = host.to_owned();
        let addr = match self.seeds[0].addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        Some(self.seeds[0].clone().set_addr(addr))
    }

    /// A cluster client on the seeds, with the TLS roots when given.
    fn cluster_client(
        &self,
        response_timeout: Duration,
    ) -> Result<redis::cluster::ClusterClient, redis::RedisError> {
        #[allow(unused_mut)]
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.seeds.iter().cloned())
            .connection_timeout(self.connect_timeout)
            .response_timeout(response_timeout);
        #[cfg(feature = "tls")]
        if let Some(pem) = &self.tls_roots {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
        builder.build()
    }

    /// The connector of the subscriber connections: `None` for plain TCP.
    fn node_tls(&self) -> Result<node::Tls, BrokerError> {
        if !self.tls {
            return Ok(None);
        }
        #[cfg(feature = "tls")]
        return super::tls::connector(self.tls_roots.as_deref()).map(Some);
        #[cfg(not(feature = "tls"))]
        unreachable!("`rediss://` seeds are refused without the `tls` feature")
    }

    async fn publisher(&self) -> Result<ClusterConnection, redis::RedisError> {
        let mut slot = self.publisher.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let client = self.cluster_client(self.publish_timeout)?;
        let connection = client.get_async_connection().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn publish_on(&self, channel: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let partition = self.partitions.of(channel);
        let framed = partitions::frame(channel, payload);
        let mut connection = self
            .publisher()
            .await
            .map_err(|e| classify(&e, &self.urls, self.connect_timeout))?;
        redis::cmd("SPUBLISH")
            .arg(self.partitions.name(partition))
            .arg(&framed[..])
            .query_async::<i64>(&mut connection)
            .await
            .map(|receivers| tracing::trace!(channel, receivers, "published on the redis cluster"))
            .map_err(|e| classify(&e, &self.urls, self.publish_timeout))
    }
}

impl Broker for RedisClusterBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_config()?;
            if let Err(e) = subscriber_patterns::validate_channel(&channel) {
                return Err(BrokerError::Config(e.message().to_owned()));
            }
            match tokio::time::timeout(self.publish_timeout, self.publish_on(&channel, &payload))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Timeout(self.publish_timeout)),
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
                tracing::debug!(urls = %self.urls, "nothing to subscribe to on the redis cluster");
                return Ok(());
            }
            let mut wanted: Vec<usize> = if subscriptions.patterns().next().is_some() {
                (0..self.partitions.len()).collect()
            } else {
                subscriptions
                    .channels()
                    .map(|c| self.partitions.of(c))
                    .collect()
            };
            wanted.sort_unstable();
            wanted.dedup();
            let partitions = wanted.len();
            let subscriptions = Arc::new(subscriptions);
            let target = inbox.clone();
            let deliver: node::Deliver = Arc::new(move |message: Bytes| {
                let Some((channel, payload)) = partitions::unframe(&message) else {
                    tracing::debug!(
                        "a message not framed by switchboard on a partition channel ignored"
                    );
                    return;
                };
                if subscriptions.matches(channel) {
                    target.deliver(channel, payload);
                }
            });
            let tls = self.node_tls()?;
            let (ready_tx, ready) = oneshot::channel();
            let last_error = Arc::new(Mutex::new(None));
            let stop = shutdown.child_token();
            let supervisor = supervisor::Supervisor {
                broker: self.clone(),
                tls,
                wanted,
                deliver,
                inbox,
                shutdown: stop.clone(),
                ready: Some(ready_tx),
                last_error: last_error.clone(),
            };
            tokio::spawn(supervisor.run());
            tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                started = tokio::time::timeout(self.connect_timeout, ready) => match started {
                    Ok(Ok(())) => {
                        tracing::info!(urls = %self.urls, partitions, namespace = %self.prefix.strip_suffix(':').unwrap_or(""), "redis cluster subscription active");
                        Ok(())
                    }
                    _ => {
                        stop.cancel();
                        let reason = last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                            .unwrap_or_else(|| format!("not every partition subscribed within {:?}", self.connect_timeout));
                        Err(BrokerError::Unreachable(format!("redis cluster at {}: {reason}", self.urls)))
                    }
                },
            }
        })
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }

    fn presence(&self) -> Option<Arc<dyn PresenceStore>> {
        Some(Arc::new(RedisPresence(self.clone())))
    }

    fn has_streams(&self) -> bool {
        true
    }

    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: crate::broker::Retention,
    ) -> BoxFuture<'_, Result<crate::broker::Position, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_config()?;
            let work =
                crate::broker::redis::durable::publish_batched(self, &channel, &payload, retention);
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
        Ok(Box::new(super::group::RedisGroupConsumer::new(
            self, channel, group, consumer,
        )))
    }

    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::broker::StreamRead, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_config()?;
            let work = self.read_stream_on(&channel, after, limit);
            tokio::time::timeout(self.publish_timeout, work)
                .await
                .unwrap_or(Err(BrokerError::Timeout(self.publish_timeout)))
        })
    }
}

impl RedisClusterBroker {
    /// The hash tag of a partition: keys that must share its slot carry it.
    fn tag_of(&self, partition: usize) -> &str {
        let name = self.partitions.name(partition);
        let open = name.rfind('{').map_or(0, |i| i + 1);
        name[open..].trim_end_matches('}')
    }

    /// The hash tag of the presence feed's partition: presence keys carry it, so that they share
    /// the feed's slot.
    fn presence_tag(&self) -> &str {
        self.tag_of(self.partitions.of(FEED_CHANNEL))
    }
}

/// Presence on a cluster: every key is tagged with the slot of the feed's partition, so that a
/// table write, the workers' set and the feed's `SPUBLISH` are one `MULTI`/`EXEC` on one node.
/// All presence lives on that node (a few writes per second per worker, batched).
impl Backend for RedisClusterBroker {
    fn table_key(&self, worker: &str) -> String {
        format!(
            "{}sb.presence{{{}}}:{worker}",
            self.prefix,
            self.presence_tag()
        )
    }

    fn workers_key(&self) -> String {
        format!(
            "{}sb.presence{{{}}}:workers",
            self.prefix,
            self.presence_tag()
        )
    }

    fn group_key(&self, group: &str) -> String {
        format!(
            "{}sb.presence{{{}}}:group:{group}",
            self.prefix,
            self.presence_tag()
        )
    }

    fn add_feed(&self, pipe: &mut redis::Pipeline, feed: &Feed) -> bool {
        let partition = self.partitions.of(&feed.channel);
        if partition != self.partitions.of(FEED_CHANNEL) {
            return false;
        }
        pipe.cmd("SPUBLISH")
            .arg(self.partitions.name(partition))
            .arg(&partitions::frame(&feed.channel, &feed.payload)[..])
            .ignore();
        true
    }

    fn publish_feed(&self, feed: Feed) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.publish(&feed.channel, feed.payload).await })
    }

    fn run<T: redis::FromRedisValue + Send + 'static>(
        &self,
        pipe: redis::Pipeline,
    ) -> BoxFuture<'_, Result<T, BrokerError>> {
        Box::pin(async move {
            self.check_config()?;
            let work = async {
                let mut connection = self
                    .publisher()
                    .await
                    .map_err(|e| classify(&e, &self.urls, self.connect_timeout))?;
                pipe.query_async::<T>(&mut connection)
                    .await
                    .map_err(|e| classify(&e, &self.urls, self.publish_timeout))
            };
            tokio::time::timeout(self.publish_timeout, work)
                .await
                .unwrap_or(Err(BrokerError::Timeout(self.publish_timeout)))
        })
    }
}
