//! The Redis broker: workers in several processes (or on several machines) share one Redis server
//! and exchange messages through its pub/sub commands.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisError};
use tokio_util::sync::CancellationToken;

use super::{Broker, Inbox, Subscriptions};
use crate::error::BrokerError;

/// Default time a [`publish`](Broker::publish) may take, connecting included.
const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time connecting and subscribing may take.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default period of the `PING` that detects a silently dead subscriber connection.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default first reconnect delay.
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Default longest reconnect delay.
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a clean `UNSUBSCRIBE` at shutdown may take before the connection is simply closed.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

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
///   noticed and replaced before the next publish (for `rediss://`, after the publish that
///   fails on it); one that fails or times out is replaced too. While Redis is unreachable,
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
/// `rediss://...` for TLS. TLS needs the `tls` feature of `subscriber-runtime` (rustls, with the
/// platform's root certificates); without it a `rediss://` URL is refused by
/// [`from_url`](Self::from_url) with a [`BrokerError::Config`] saying so.
#[derive(Clone)]
pub struct RedisBroker {
    client: redis::Client,
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
    /// A broker for the Redis server at `url` (e.g. `redis://127.0.0.1:6379/`). The URL is parsed
    /// now; nothing connects until the application starts or publishes.
    ///
    /// # Errors
    /// [`BrokerError::Config`] for a URL that is not a valid Redis URL, or a `rediss://` URL
    /// without the `tls` feature.
    pub fn from_url(url: &str) -> Result<Self, BrokerError> {
        let url = url.trim();
        let redacted = redact(url);
        let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
        if matches!(scheme.as_str(), "rediss" | "valkeys") && !cfg!(feature = "tls") {
            return Err(BrokerError::Config(format!(
                "the Redis URL {redacted} asks for TLS (`{scheme}://`), which needs the `tls` feature of subscriber-runtime; enable it, or use a `redis://` URL"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            BrokerError::Config(format!(
                "invalid Redis URL {redacted}: {e} (expected redis://[user][:password@]host[:port][/db])"
            ))
        })?;
        Ok(Self {
            client,
            url: redacted.into(),
            prefix: "".into(),
            invalid_namespace: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            backoff: Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            },
            publisher: Arc::default(),
        })
    }

    /// Prefixes every channel and pattern on Redis with `"{namespace}:"` (a trailing `:` in
    /// `namespace` is not doubled). Handlers see channel names without the prefix. An empty
    /// namespace means no prefix.
    ///
    /// A namespace with whitespace or control characters is reported as
    /// [`BrokerError::Config`] when the application starts or publishes.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let name = namespace.strip_suffix(':').unwrap_or(&namespace);
        self.invalid_namespace = None;
        if name.is_empty() {
            self.prefix = "".into();
        } else if let Err(e) = subscriber_patterns::validate_channel(name) {
            self.invalid_namespace = Some(
                format!(
                    "invalid Redis namespace {namespace:?}: {}",
                    e.message().replacen("channel name", "namespace", 1)
                )
                .into(),
            );
        } else {
            self.prefix = format!("{name}:").into();
        }
        self
    }

    /// How long a publish may take, connecting included (default 2 s). Past it, publish returns
    /// [`BrokerError::Timeout`].
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long connecting and subscribing may take (default 5 s), at start and per reconnect
    /// attempt.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the subscriber connection is checked with a `PING` (default 10 s). A `PING`
    /// not answered within the same interval counts as a lost connection.
    #[must_use]
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The reconnect delays: `initial` before the first attempt, doubling per failed attempt up
    /// to `max` (defaults 100 ms and 5 s). Each delay is jittered down by up to half, so that
    /// workers restarted together do not reconnect in lockstep.
    #[must_use]
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    fn check_config(&self) -> Result<(), BrokerError> {
        match &self.invalid_namespace {
            Some(reason) => Err(BrokerError::Config(reason.to_string())),
            None => Ok(()),
        }
    }

    async fn publish_on(&self, channel: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let (generation, mut conn) = self
            .publisher
            .get(&self.client, self.publish_timeout)
            .await
            .map_err(|e| classify(&e, &self.url, self.publish_timeout))?;
        let result: Result<i64, RedisError> = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await;
        match result {
            Ok(receivers) => {
                tracing::trace!(channel, receivers, "published on redis");
                Ok(())
            }
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() {
                    self.publisher.discard(generation);
                }
                Err(classify(&e, &self.url, self.publish_timeout))
            }
        }
    }

    /// Connects a pub/sub connection and subscribes to everything in `plan`.
    async fn connect_subscriber(
        &self,
        plan: &Plan,
    ) -> Result<(PubSubSink, PubSubStream), BrokerError> {
        let attempt = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            if !plan.channels.is_empty() {
                sink.subscribe(plan.channels.as_slice()).await?;
            }
            if !plan.patterns.is_empty() {
                sink.psubscribe(plan.patterns.as_slice()).await?;
            }
            Ok::<_, RedisError>((sink, stream))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(classify(&e, &self.url, self.connect_timeout)),
            Err(_) => Err(BrokerError::Timeout(self.connect_timeout)),
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

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// What one worker subscribes to on Redis, namespaced, and how to map it back.
struct Plan {
    subscriptions: Subscriptions,
    prefix: Arc<str>,
    /// `SUBSCRIBE` arguments, prefixed.
    channels: Vec<String>,
    /// `PSUBSCRIBE` arguments, prefixed (the prefix escaped).
    patterns: Vec<String>,
    /// Prefixed pattern → pattern as in `subscriptions`.
    pattern_names: HashMap<String, String>,
}

impl Plan {
    fn new(subscriptions: Subscriptions, prefix: &Arc<str>) -> Self {
        let channels = subscriptions
            .channels()
            .map(|c| format!("{prefix}{c}"))
            .collect();
        let escaped = subscriber_patterns::glob::escape(prefix);
        let pattern_names: HashMap<String, String> = subscriptions
            .patterns()
            .map(|p| (format!("{escaped}{p}"), p.to_owned()))
            .collect();
        let mut patterns: Vec<String> = pattern_names.keys().cloned().collect();
        patterns.sort();
        Self {
            subscriptions,
            prefix: prefix.clone(),
            channels,
            patterns,
            pattern_names,
        }
    }
}

/// Why a subscriber connection stopped.
enum Ended {
    Shutdown,
    Lost(String),
}

/// The task that reads the subscriber connection, and reconnects it.
struct Reader {
    broker: RedisBroker,
    plan: Plan,
    inbox: Inbox,
    shutdown: CancellationToken,
}

impl Reader {
    async fn run(self, first: (PubSubSink, PubSubStream)) {
        let mut connection = first;
        loop {
            let reason = match self.pump(connection).await {
                Ended::Shutdown => {
                    tracing::debug!(url = %self.broker.url, "redis subscription closed");
                    return;
                }
                Ended::Lost(reason) => reason,
            };
            // The publishing connection most likely went down with this one.
            self.broker.publisher.discard_all();
            tracing::warn!(
                url = %self.broker.url,
                reason = %reason,
                "redis subscriber connection lost: messages published until it is back are lost to this worker"
            );
            match self.reconnect().await {
                Some(c) => connection = c,
                None => return,
            }
        }
    }

    /// Reconnects and resubscribes until it works (`Some`) or the application shuts down.
    async fn reconnect(&self) -> Option<(PubSubSink, PubSubStream)> {
        let lost_at = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let delay = self.broker.backoff.delay(attempt);
            tracing::warn!(
                url = %self.broker.url,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "reconnecting to redis"
            );
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                result = self.broker.connect_subscriber(&self.plan) => result,
            };
            match result {
                Ok(connection) => {
                    self.inbox.count_reconnect();
                    tracing::info!(
                        url = %self.broker.url,
                        attempt,
                        downtime_ms = u64::try_from(lost_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                        channels = self.plan.channels.len(),
                        patterns = self.plan.patterns.len(),
                        "reconnected to redis and subscribed again"
                    );
                    return Some(connection);
                }
                Err(error) => {
                    tracing::warn!(url = %self.broker.url, attempt, %error, "redis reconnect attempt failed");
                }
            }
        }
    }

    /// Moves messages into the inbox until the connection is lost or the application stops.
    async fn pump(&self, (mut sink, mut stream): (PubSubSink, PubSubStream)) -> Ended {
        let interval = self.broker.ping_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping: Option<BoxFuture<'static, Result<(), String>>> = None;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let unsubscribe = async {
                        if !self.plan.channels.is_empty() {
                            sink.unsubscribe(self.plan.channels.as_slice()).await?;
                        }
                        if !self.plan.patterns.is_empty() {
                            sink.punsubscribe(self.plan.patterns.as_slice()).await?;
                        }
                        Ok::<_, RedisError>(())
                    };
                    if let Ok(Err(error)) = tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, unsubscribe).await {
                        tracing::debug!(url = %self.broker.url, %error, "redis unsubscribe at shutdown failed");
                    }
                    return Ended::Shutdown;
                }
                result = async { ping.as_mut().expect("guarded by the condition").await }, if ping.is_some() => {
                    ping = None;
                    if let Err(reason) = result {
                        return Ended::Lost(reason);
                    }
                }
                _ = ticks.tick(), if ping.is_none() => {
                    let mut sink = sink.clone();
                    ping = Some(Box::pin(async move {
                        match tokio::time::timeout(interval, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(format!("PING failed: {e}")),
                            Err(_) => Err(format!("no answer to PING within {interval:?}")),
                        }
                    }));
                }
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return Ended::Lost("connection closed".to_owned()),
                },
            }
        }
    }

    fn deliver(&self, message: &redis::Msg) {
        let Ok(full) = message.get_channel::<String>() else {
            tracing::debug!("redis message on a non-UTF-8 channel ignored");
            return;
        };
        let Some(channel) = full.strip_prefix(&*self.plan.prefix) else {
            tracing::debug!(channel = %full, "redis message outside the namespace ignored");
            return;
        };
        if message.from_pattern() {
            // Redis sends one `pmessage` per matching pattern: keep exactly one.
            let pattern = message.get_pattern::<String>().unwrap_or_default();
            let keep = self
                .plan
                .pattern_names
                .get(&pattern)
                .is_some_and(|p| self.plan.subscriptions.is_canonical_pattern(p, channel));
            if !keep {
                return;
            }
        }
        self.inbox
            .deliver(channel, Bytes::copy_from_slice(message.get_payload_bytes()));
    }
}

/// The shared publishing connection, opened lazily and replaced after a failure.
#[derive(Default)]
struct PublishSlot {
    connection: tokio::sync::Mutex<Option<Cached>>,
    /// Generation of the newest connection opened.
    opened: AtomicU64,
    /// Connections of this generation or older must not be used any more.
    discarded: AtomicU64,
}

struct Cached {
    generation: u64,
    connection: MultiplexedConnection,
    /// False once the connection's driver has stopped (the server closed it): a publish on it
    /// would fail, so a new one is opened first. `None` when it cannot be watched (TLS).
    alive: Option<Arc<AtomicBool>>,
}

impl PublishSlot {
    async fn get(
        &self,
        client: &redis::Client,
        timeout: Duration,
    ) -> Result<(u64, MultiplexedConnection), RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(cached) = &*slot {
            let alive = cached
                .alive
                .as_ref()
                .is_none_or(|alive| alive.load(Ordering::SeqCst));
            if alive && cached.generation > self.discarded.load(Ordering::SeqCst) {
                return Ok((cached.generation, cached.connection.clone()));
            }
        }
        *slot = None;
        let (connection, alive) = open_watched(client, timeout).await?;
        let generation = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        *slot = Some(Cached {
            generation,
            connection: connection.clone(),
            alive,
        });
        Ok((generation, connection))
    }

    /// Stops using the connection of `generation` (and older ones).
    fn discard(&self, generation: u64) {
        self.discarded.fetch_max(generation, Ordering::SeqCst);
    }

    /// Stops using every connection opened so far.
    fn discard_all(&self) {
        self.discard(self.opened.load(Ordering::SeqCst));
    }
}

/// Opens a multiplexed connection whose end is observed, so that a connection the server closed
/// (e.g. a Redis restart) is replaced *before* a publish is sent on it, rather than failing that
/// publish. TLS connections are opened by the `redis` crate and not watched.
async fn open_watched(
    client: &redis::Client,
    timeout: Duration,
) -> Result<(MultiplexedConnection, Option<Arc<AtomicBool>>), RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let info = client.get_connection_info();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let _ = stream.set_nodelay(true);
            watch(info.redis_settings(), stream, config).await
        }
        #[cfg(unix)]
        redis::ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            watch(info.redis_settings(), stream, config).await
        }
        _ => Ok((
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
            None,
        )),
    }
}

async fn watch<S>(
    settings: &redis::RedisConnectionInfo,
    stream: S,
    config: AsyncConnectionConfig,
) -> Result<(MultiplexedConnection, Option<Arc<AtomicBool>>), RedisError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (connection, driver) =
        MultiplexedConnection::new_with_config(settings, stream, config).await?;
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    // The driver ends when the connection closes, or when every clone of it is dropped.
    tokio::spawn(async move {
        driver.await;
        flag.store(false, Ordering::SeqCst);
    });
    Ok((connection, Some(alive)))
}

/// Capped, jittered exponential backoff.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (1-based): `initial * 2^(attempt-1)`, capped
    /// at `max`, then jittered into its upper half.
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let capped = self.initial.saturating_mul(factor).min(self.max);
        let half = capped / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A pseudo-random number in `[0, 1)`, good enough for jitter.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
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
        BrokerError::Unreachable(format!("redis at {url}: {error}"))
    } else {
        BrokerError::Other(format!("redis at {url}: {error}"))
    }
}

/// The URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://user:secret@host:1/2"),
            "redis://user:***@host:1/2"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in ["", "nope", "http://example.com", "redis://host:notaport"] {
            let err = RedisBroker::from_url(url).expect_err(url);
            assert!(matches!(err, BrokerError::Config(_)), "{url}: {err}");
        }
        let err = RedisBroker::from_url("redis://:hunter2@host:notaport").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(RedisBroker::from_url("redis://127.0.0.1:6379/3").is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_urls_need_the_feature() {
        let err = RedisBroker::from_url("rediss://127.0.0.1:6380").unwrap_err();
        assert!(
            matches!(&err, BrokerError::Config(m) if m.contains("`tls` feature")),
            "{err}"
        );
    }

    #[test]
    fn namespaces_prefix_channels_and_escape_patterns() {
        let broker = RedisBroker::from_url("redis://127.0.0.1/")
            .unwrap()
            .namespace("app[1]:");
        assert_eq!(&*broker.prefix, "app[1]:");
        let plan = Plan::new(
            Subscriptions::new(["orders".to_owned()], ["analytics:*".to_owned()]),
            &broker.prefix,
        );
        assert_eq!(plan.channels, ["app[1]:orders"]);
        assert_eq!(plan.patterns, ["app\\[1\\]:analytics:*"]);
        assert!(subscriber_patterns::glob::matches(
            &plan.patterns[0],
            "app[1]:analytics:pageview"
        ));
        let bad = RedisBroker::from_url("redis://127.0.0.1/")
            .unwrap()
            .namespace("two words");
        assert!(matches!(bad.check_config(), Err(BrokerError::Config(_))));
        assert_eq!(
            &*RedisBroker::from_url("redis://h/")
                .unwrap()
                .namespace("")
                .prefix,
            ""
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 1..=40 {
            let d = b.delay(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
