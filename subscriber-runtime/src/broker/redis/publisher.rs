//! Publishing: one multiplexed connection shared by every clone of the broker, opened lazily,
//! watched, and replaced after a failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use super::{classify, RedisBroker};
use crate::error::BrokerError;

impl RedisBroker {
    pub(super) async fn publish_on(
        &self,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        let (generation, mut conn) = self
            .publisher
            .get(self, self.publish_timeout)
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
}

/// The shared publishing connection, opened lazily and replaced after a failure.
#[derive(Default)]
pub(super) struct PublishSlot {
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
    /// would fail, so a new one is opened first. `None` when it cannot be watched (a
    /// `rediss://...#insecure` URL, which the broker refuses anyway).
    alive: Option<Arc<AtomicBool>>,
}

impl PublishSlot {
    pub(super) async fn get(
        &self,
        broker: &RedisBroker,
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
        let (connection, alive) = open_watched(broker, timeout).await?;
        let generation = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        *slot = Some(Cached {
            generation,
            connection: connection.clone(),
            alive,
        });
        Ok((generation, connection))
    }

    /// Stops using the connection of `generation` (and older ones).
    pub(super) fn discard(&self, generation: u64) {
        self.discarded.fetch_max(generation, Ordering::SeqCst);
    }

    /// Stops using every connection opened so far.
    pub(super) fn discard_all(&self) {
        self.discard(self.opened.load(Ordering::SeqCst));
    }
}

/// Opens a multiplexed connection whose end is observed, so that a connection the server closed
/// (e.g. a Redis restart) is replaced *before* a publish is sent on it, rather than failing that
/// publish. TLS connections are opened here too (with the roots the `redis` crate would use).
async fn open_watched(
    broker: &RedisBroker,
    timeout: Duration,
) -> Result<(MultiplexedConnection, Option<Arc<AtomicBool>>), RedisError> {
    let client = &broker.client;
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
        #[cfg(feature = "tls")]
        redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            ..
        } => {
            let connector = super::tls::connector(broker.tls_roots.as_deref())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let name = super::tls::server_name(host).map_err(std::io::Error::other)?;
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let _ = stream.set_nodelay(true);
            let stream = connector.connect(name, stream).await?;
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
