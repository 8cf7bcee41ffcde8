//! Building a [`RedisBroker`]: URL parsing (with the password redacted for logs and errors) and
//! the builder options.

use std::sync::Arc;
use std::time::Duration;

use super::{Backoff, RedisBroker};
use crate::error::BrokerError;

/// Default time a [`publish`](super::Broker::publish) may take, connecting included.
pub(super) const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time connecting and subscribing may take.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default period of the `PING` that detects a silently dead subscriber connection.
pub(super) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default first reconnect delay.
pub(super) const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Default longest reconnect delay.
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl RedisBroker {
    /// A broker for the Redis server at `url` (e.g. `redis://127.0.0.1:6379/`, or
    /// `rediss://redis.example:6380/` for TLS). The URL is parsed now; nothing connects until the
    /// application starts or publishes.
    ///
    /// # Errors
    /// [`BrokerError::Config`] for a URL that is not a valid Redis URL, a `rediss://` URL without
    /// the `tls` feature, or a `rediss://...#insecure` URL (certificates are always verified:
    /// give a private CA with `tls_root_certificates` instead).
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
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } =
            client.get_connection_info().addr()
        {
            return Err(BrokerError::Config(format!(
                "the Redis URL {redacted} asks for TLS without certificate verification (`#insecure`), which is not supported: give the CA of the server's certificate with tls_root_certificates (or REDIS_TLS_CA_FILE) instead"
            )));
        }
        Ok(Self {
            client,
            tls_roots: None,
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
            reader: Arc::default(),
            epochs: Arc::default(),
            durable_queues: Arc::default(),
        })
    }

    /// Trusts the CA certificates of `pem` (one or more `-----BEGIN CERTIFICATE-----` blocks) for
    /// the server's TLS certificate, **instead of** the platform's root certificates: for a Redis
    /// whose certificate a private CA signed. The URL must be a `rediss://` one. Needs the `tls`
    /// feature.
    ///
    /// ```no_run
    /// use switchboard::broker::RedisBroker;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let broker = RedisBroker::from_url("rediss://redis.internal:6380/")?
    ///     .tls_root_certificates(&ca)?;
    /// # let _ = broker;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`BrokerError::Config`] when `pem` holds no certificate (or one that cannot be read), or
    /// the URL is not a `rediss://` URL.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates(mut self, pem: impl AsRef<[u8]>) -> Result<Self, BrokerError> {
        let pem = pem.as_ref();
        let info = self.client.get_connection_info().clone();
        let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let trusting = super::tls::trusting(&[info], is_tls, pem, &self.url)?;
        self.client = redis::Client::open(trusting[0].clone()).map_err(|e| {
            BrokerError::Config(format!("the TLS root certificates for {}: {e}", self.url))
        })?;
        self.tls_roots = Some(pem.into());
        Ok(self)
    }

    /// Prefixes every channel and pattern on Redis with `"{namespace}:"` (a trailing `:` in
    /// `namespace` is not doubled). Handlers see channel names without the prefix. An empty
    /// namespace means no prefix.
    ///
    /// A namespace with whitespace or control characters is reported as
    /// [`BrokerError::Config`] when the application starts or publishes.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        match namespace_prefix(&namespace.into()) {
            Ok(prefix) => {
                self.prefix = prefix;
                self.invalid_namespace = None;
            }
            Err(reason) => self.invalid_namespace = Some(reason),
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
}

/// The prefix for `namespace` (`"app1:"`, or `""` for none), or why it is unusable.
pub(super) fn namespace_prefix(namespace: &str) -> Result<Arc<str>, Arc<str>> {
    let name = namespace.strip_suffix(':').unwrap_or(namespace);
    if name.is_empty() {
        return Ok("".into());
    }
    match subscriber_patterns::validate_channel(name) {
        Ok(()) => Ok(format!("{name}:").into()),
        Err(e) => Err(format!(
            "invalid Redis namespace {namespace:?}: {}",
            e.message().replacen("channel name", "namespace", 1)
        )
        .into()),
    }
}

/// The URL with its password replaced by `***`.
pub(super) fn redact(url: &str) -> String {
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
}
