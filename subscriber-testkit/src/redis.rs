//! [`TestRedis`]: the Redis a test runs against.

use std::net::SocketAddr;

use subscriber_runtime::broker::RedisBroker;
use subscriber_runtime::BrokerError;

use crate::mock_redis::MockRedis;

/// The Redis a test runs against: the server at `REDIS_URL` when it is set (CI sets it), else a
/// [`MockRedis`] started for the test and stopped with this handle. Give each test its own
/// [`broker`](Self::broker) namespace, so that tests share one server side by side.
///
/// ```
/// use switchboard::testing::TestRedis;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::BrokerError> {
/// let redis = TestRedis::start().await?;
/// let broker = redis.broker("my-test")?; // channels become `my-test:<channel>` on Redis
/// # let _ = broker;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    addr: SocketAddr,
    _mock: Option<MockRedis>,
}

impl TestRedis {
    /// `REDIS_URL`'s server, else a new [`MockRedis`].
    ///
    /// # Errors
    /// A `REDIS_URL` that is not `redis://host:port[/db]`, or whose host does not resolve.
    pub async fn start() -> Result<Self, BrokerError> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                let bad = || {
                    BrokerError::Config(format!("REDIS_URL `{url}`: expected redis://host:port"))
                };
                let hostport = url
                    .strip_prefix("redis://")
                    .ok_or_else(bad)?
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let addr = tokio::net::lookup_host(hostport)
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(bad)?;
                Ok(Self {
                    url,
                    addr,
                    _mock: None,
                })
            }
            _ => {
                let mock = MockRedis::start().await;
                Ok(Self {
                    url: mock.url(),
                    addr: mock.addr(),
                    _mock: Some(mock),
                })
            }
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's address (for a [`FaultProxy`](crate::FaultProxy) in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this is the mock (no `REDIS_URL`).
    pub fn is_mock(&self) -> bool {
        self._mock.is_some()
    }

    /// A broker on this server in `namespace`.
    ///
    /// # Errors
    /// As [`RedisBroker::from_url`].
    pub fn broker(&self, namespace: &str) -> Result<RedisBroker, BrokerError> {
        Ok(RedisBroker::from_url(&self.url)?.namespace(namespace))
    }
}
