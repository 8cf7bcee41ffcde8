//! Metrics of the runtime, emitted through the [`metrics`] facade, and the optional Prometheus
//! endpoint.
//!
//! Every handle is resolved once: the runtime-wide ones and each handler's at `build()`, each
//! channel's when the router first sees the channel (and caches its candidates). The hot path only
//! bumps handles it already holds: no label allocation, no registry lookup per message.
//!
//! A handle is bound to the recorder that was installed when it was resolved, so a recorder must
//! be installed before `build()`; [`Builder::prometheus`](crate::Builder::prometheus) installs its
//! own there, before resolving anything.

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::server::DisconnectReason;

/// Messages taken from the broker, by `channel` (the label rule is in `routing.rs`).
pub(crate) const MESSAGES_RECEIVED: &str = "switchboard_messages_received_total";
/// Messages lost, by `reason`: `queue_full`, `invalid_payload`.
pub(crate) const MESSAGES_DROPPED: &str = "switchboard_messages_dropped_total";
/// Messages deliberately not handled, by `reason`: `own_message`, `no_handler`.
pub(crate) const MESSAGES_SKIPPED: &str = "switchboard_messages_skipped_total";
/// Time from a message's receipt to the end of its last handler.
pub(crate) const DISPATCH_DURATION: &str = "switchboard_dispatch_duration_seconds";
pub(crate) const HANDLER_RUNS: &str = "switchboard_handler_runs_total";
pub(crate) const HANDLER_ERRORS: &str = "switchboard_handler_errors_total";
pub(crate) const HANDLER_REJECTIONS: &str = "switchboard_handler_rejections_total";
pub(crate) const HANDLER_PANICS: &str = "switchboard_handler_panics_total";
pub(crate) const HANDLER_TIMEOUTS: &str = "switchboard_handler_timeouts_total";
pub(crate) const HANDLER_DURATION: &str = "switchboard_handler_duration_seconds";
pub(crate) const PREDICATE_PANICS: &str = "switchboard_predicate_panics_total";
pub(crate) const BROKER_RECONNECTS: &str = "switchboard_broker_reconnects_total";
pub(crate) const CLIENTS_CONNECTED: &str = "switchboard_clients_connected";
pub(crate) const CLIENT_CONNECTIONS: &str = "switchboard_client_connections_total";
pub(crate) const CLIENT_DISCONNECTIONS: &str = "switchboard_client_disconnections_total";
pub(crate) const SLOW_CONSUMER_DISCONNECTS: &str = "switchboard_slow_consumer_disconnects_total";
pub(crate) const AUTH_REJECTIONS: &str = "switchboard_auth_rejections_total";
pub(crate) const CLIENT_MESSAGES: &str = "switchboard_client_messages_total";
pub(crate) const CLIENT_ERRORS: &str = "switchboard_client_errors_total";

/// The label value of a channel that is neither named by the application nor routed by a
/// pattern, a regex or `"*"`.
pub(crate) const OTHER_CHANNEL: &str = "other";

/// Histogram buckets of the `_seconds` metrics, 50 µs to 30 s.
#[cfg(feature = "prometheus")]
const SECONDS_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The disconnect reasons, as `reason` label values, in [`reason_index`] order.
const DISCONNECT_REASONS: [&str; 8] = [
    "client_closed",
    "connection_lost",
    "slow_consumer",
    "message_too_big",
    "heartbeat_timeout",
    "idle",
    "kicked",
    "shutdown",
];

fn reason_index(reason: &DisconnectReason) -> usize {
    match reason {
        DisconnectReason::ClientClosed(_) => 0,
        DisconnectReason::ConnectionLost(_) => 1,
        DisconnectReason::SlowConsumer => 2,
        DisconnectReason::MessageTooBig => 3,
        DisconnectReason::HeartbeatTimeout => 4,
        DisconnectReason::Idle => 5,
        DisconnectReason::Kicked => 6,
        DisconnectReason::Shutdown => 7,
    }
}

/// The runtime-wide handles (no-ops until [`Metrics::resolve`]).
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) dropped_queue_full: Counter,
    pub(crate) dropped_invalid: Counter,
    pub(crate) skipped_own: Counter,
    pub(crate) skipped_unrouted: Counter,
    pub(crate) dispatch_duration: Histogram,
    pub(crate) reconnects: Counter,
    pub(crate) clients: Gauge,
    pub(crate) connections: Counter,
    disconnections: [Counter; DISCONNECT_REASONS.len()],
    pub(crate) slow_consumers: Counter,
    pub(crate) auth_rejections: Counter,
    pub(crate) client_messages: Counter,
    pub(crate) client_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            dropped_queue_full: Counter::noop(),
            dropped_invalid: Counter::noop(),
            skipped_own: Counter::noop(),
            skipped_unrouted: Counter::noop(),
            dispatch_duration: Histogram::noop(),
            reconnects: Counter::noop(),
            clients: Gauge::noop(),
            connections: Counter::noop(),
            disconnections: std::array::from_fn(|_| Counter::noop()),
            slow_consumers: Counter::noop(),
            auth_rejections: Counter::noop(),
            client_messages: Counter::noop(),
            client_errors: Counter::noop(),
        }
    }
}

impl Metrics {
    /// Describes every metric to the current recorder and resolves the runtime-wide handles.
    pub(crate) fn resolve() -> Self {
        describe();
        Self {
            dropped_queue_full: metrics::counter!(MESSAGES_DROPPED, "reason" => "queue_full"),
            dropped_invalid: metrics::counter!(MESSAGES_DROPPED, "reason" => "invalid_payload"),
            skipped_own: metrics::counter!(MESSAGES_SKIPPED, "reason" => "own_message"),
            skipped_unrouted: metrics::counter!(MESSAGES_SKIPPED, "reason" => "no_handler"),
            dispatch_duration: metrics::histogram!(DISPATCH_DURATION),
            reconnects: metrics::counter!(BROKER_RECONNECTS),
            clients: metrics::gauge!(CLIENTS_CONNECTED),
            connections: metrics::counter!(CLIENT_CONNECTIONS),
            disconnections: DISCONNECT_REASONS
                .map(|reason| metrics::counter!(CLIENT_DISCONNECTIONS, "reason" => reason)),
            slow_consumers: metrics::counter!(SLOW_CONSUMER_DISCONNECTS),
            auth_rejections: metrics::counter!(AUTH_REJECTIONS),
            client_messages: metrics::counter!(CLIENT_MESSAGES),
            client_errors: metrics::counter!(CLIENT_ERRORS),
        }
    }

    /// Counts a client of this worker that disconnected.
    pub(crate) fn disconnected(&self, reason: &DisconnectReason) {
        self.clients.decrement(1.0);
        self.disconnections[reason_index(reason)].increment(1);
    }
}

/// One handler's handles, resolved at `build()` and kept in its registry entry.
#[derive(Debug)]
pub(crate) struct HandlerMetrics {
    pub(crate) runs: Counter,
    pub(crate) errors: Counter,
    pub(crate) rejections: Counter,
    pub(crate) panics: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) predicate_panics: Counter,
    pub(crate) duration: Histogram,
}

impl Default for HandlerMetrics {
    fn default() -> Self {
        Self {
            runs: Counter::noop(),
            errors: Counter::noop(),
            rejections: Counter::noop(),
            panics: Counter::noop(),
            timeouts: Counter::noop(),
            predicate_panics: Counter::noop(),
            duration: Histogram::noop(),
        }
    }
}

impl HandlerMetrics {
    /// The handles of the handler `name` (names are unique, so one series per handler).
    pub(crate) fn resolve(name: &str) -> Self {
        let label = || [("handler", name.to_owned())];
        Self {
            runs: metrics::counter!(HANDLER_RUNS, &label()),
            errors: metrics::counter!(HANDLER_ERRORS, &label()),
            rejections: metrics::counter!(HANDLER_REJECTIONS, &label()),
            panics: metrics::counter!(HANDLER_PANICS, &label()),
            timeouts: metrics::counter!(HANDLER_TIMEOUTS, &label()),
            predicate_panics: metrics::counter!(PREDICATE_PANICS, &label()),
            duration: metrics::histogram!(HANDLER_DURATION, &label()),
        }
    }
}

/// The `switchboard_messages_received_total` handle of a channel label.
pub(crate) fn channel_received(label: String) -> Counter {
    metrics::counter!(MESSAGES_RECEIVED, "channel" => label)
}

/// Gives every metric its help text (shown as `# HELP` by Prometheus). Idempotent.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MESSAGES_RECEIVED,
        "Messages taken from the broker, by channel (named channels keep their name; others are labelled by the pattern, regex or \"*\" that routed them, else \"other\")"
    );
    describe_counter!(
        MESSAGES_DROPPED,
        "Messages lost: the dispatch queue was full, or the payload was not JSON, too large or too deep"
    );
    describe_counter!(
        MESSAGES_SKIPPED,
        "Messages not handled on purpose: published by this worker without includeSender, or matched by no handler"
    );
    describe_histogram!(
        DISPATCH_DURATION,
        Unit::Seconds,
        "Time from a message's receipt to the end of its last handler"
    );
    describe_counter!(HANDLER_RUNS, "Subscriber handler runs started");
    describe_counter!(HANDLER_ERRORS, "Subscriber handlers that returned an error");
    describe_counter!(
        HANDLER_REJECTIONS,
        "Subscriber handlers skipped because an argument was rejected"
    );
    describe_counter!(HANDLER_PANICS, "Subscriber handlers that panicked");
    describe_counter!(
        HANDLER_TIMEOUTS,
        "Subscriber handlers cancelled by their timeout"
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Time of one subscriber handler run, whatever its outcome"
    );
    describe_counter!(
        PREDICATE_PANICS,
        "Matcher predicates that panicked (counted as no match)"
    );
    describe_counter!(BROKER_RECONNECTS, "Reconnects of the broker's connection");
    describe_gauge!(
        CLIENTS_CONNECTED,
        "WebSocket clients connected to this worker now"
    );
    describe_counter!(
        CLIENT_CONNECTIONS,
        "WebSocket clients that connected to this worker"
    );
    describe_counter!(
        CLIENT_DISCONNECTIONS,
        "WebSocket clients of this worker that disconnected, by reason"
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "WebSocket clients disconnected (1013) because their send queue was full"
    );
    describe_counter!(
        AUTH_REJECTIONS,
        "WebSocket connections refused with 401 (bad, expired or missing token)"
    );
    describe_counter!(CLIENT_MESSAGES, "Messages received from WebSocket clients");
    describe_counter!(CLIENT_ERRORS, "Error frames sent to WebSocket clients");
}

/// The Prometheus endpoint an application serves, if any.
#[derive(Clone, Default)]
pub(crate) struct Endpoint {
    #[cfg(feature = "prometheus")]
    served: Option<(
        std::sync::Arc<str>,
        metrics_exporter_prometheus::PrometheusHandle,
    )>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "prometheus")]
        if let Some((path, _)) = &self.served {
            return f.debug_tuple("Endpoint").field(path).finish();
        }
        f.write_str("Endpoint(none)")
    }
}

impl Endpoint {
    /// Adds the endpoint's route to `router`.
    pub(crate) fn mount<S>(&self, router: axum::Router<S>) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        #[cfg(feature = "prometheus")]
        if let Some((path, handle)) = &self.served {
            let handle = handle.clone();
            return router.route(
                path,
                axum::routing::get(move || {
                    let text = handle.render();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
                            text,
                        )
                    }
                }),
            );
        }
        router
    }

    /// The path it is served at, if any.
    pub(crate) fn path(&self) -> Option<&str> {
        #[cfg(feature = "prometheus")]
        if let Some((path, _)) = &self.served {
            return Some(path);
        }
        None
    }

    /// Drains the recorder's histogram samples every few seconds until `stop`, so that memory
    /// stays bounded between scrapes (rendering drains them too).
    pub(crate) fn spawn_upkeep(&self, stop: tokio_util::sync::CancellationToken) {
        #[cfg(feature = "prometheus")]
        if let Some((_, handle)) = &self.served {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            });
        }
        #[cfg(not(feature = "prometheus"))]
        drop(stop);
    }
}

#[cfg(feature = "prometheus")]
pub(crate) mod prometheus {
    //! The process-wide Prometheus recorder.

    use std::sync::{Arc, Mutex, PoisonError};

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    use super::{Endpoint, DISPATCH_DURATION, HANDLER_DURATION, SECONDS_BUCKETS};
    use crate::error::BuildError;

    /// The content type of the Prometheus text format.
    pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// The recorder this crate installed, shared by every application of the process.
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

    /// Checks that `path` can be an axum route of its own.
    pub(crate) fn validate_path(path: &str) -> Result<(), BuildError> {
        let invalid = |reason: &str| BuildError::InvalidMetricsPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !path.starts_with('/') {
            return Err(invalid("it must start with `/`"));
        }
        if path == crate::server::WS_PATH {
            return Err(invalid("it is the WebSocket endpoint's path"));
        }
        if let Some(c) = path
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~')))
        {
            return Err(invalid(&format!(
                "{c:?} is not allowed: use letters, digits, `/`, `-`, `_`, `.` and `~`"
            )));
        }
        Ok(())
    }

    /// Installs this crate's Prometheus recorder as the global recorder (once per process; later
    /// applications reuse it) and returns the endpoint serving it at `path`.
    pub(crate) fn install(path: &str) -> Result<Endpoint, BuildError> {
        validate_path(path)?;
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = match &*installed {
            Some(handle) => handle.clone(),
            None => {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Full(DISPATCH_DURATION.to_owned()),
                        &SECONDS_BUCKETS,
                    )
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(HANDLER_DURATION.to_owned()),
                            &SECONDS_BUCKETS,
                        )
                    })
                    .expect("the bucket list is not empty")
                    .build_recorder();
                let handle = recorder.handle();
                metrics::set_global_recorder(recorder)
                    .map_err(|_| BuildError::MetricsRecorderInstalled)?;
                installed.insert(handle).clone()
            }
        };
        Ok(Endpoint {
            served: Some((Arc::from(path), handle)),
        })
    }
}

#[cfg(feature = "prometheus")]
impl crate::app::Builder {
    /// Serves Prometheus metrics at `path` (usually `"/metrics"`) on the same server as the
    /// WebSocket endpoint ([`Running::listen`](crate::Running::listen),
    /// [`serve`](crate::Switchboard::serve), [`Running::router`](crate::Running::router)), in the
    /// text format (`text/plain; version=0.0.4`).
    ///
    /// `build()` installs a Prometheus recorder as the process's global
    /// [`metrics`](https://docs.rs/metrics) recorder, before it resolves the metric handles. The
    /// recorder is installed once per process: a second application built with `prometheus` shares
    /// it (and so its series). Metric names, labels and the rule that bounds the `channel` label
    /// are listed in the README's "Metrics" section. Histograms have buckets from 50 µs to 30 s.
    /// A worker's series carry no worker label: Prometheus adds `instance` to each scraped target.
    ///
    /// Already have a recorder (another exporter, or your own Prometheus set-up)? Leave this out
    /// and install yours before `build()`: the runtime emits into whatever global recorder is
    /// installed then.
    ///
    /// Needs the `prometheus` feature (on by default in `switchboard`).
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let running = Switchboard::builder()
    ///     .without_linked_handlers()
    ///     .prometheus("/metrics")
    ///     .subscriber(Subscriber::channels(["orders"]).name("audit").handle(|| {}))
    ///     .build()?
    ///     .start()
    ///     .await?;
    /// let addr = running.listen(tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    /// running.publisher().publish_including_sender("orders", &serde_json::json!({"id": 1})).await?;
    /// running.wait_idle().await;
    ///
    /// // What Prometheus scrapes:
    /// let mut http = tokio::net::TcpStream::connect(addr).await?;
    /// http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    /// let mut response = String::new();
    /// http.read_to_string(&mut response).await?;
    /// assert!(response.contains("content-type: text/plain; version=0.0.4"));
    /// assert!(response.contains(r#"switchboard_messages_received_total{channel="orders"} 1"#));
    /// assert!(response.contains(r#"switchboard_handler_runs_total{handler="audit"} 1"#));
    /// running.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors (at `build()`)
    /// [`BuildError::InvalidMetricsPath`](crate::BuildError::InvalidMetricsPath) when `path` does
    /// not start with `/`, is `/ws`, or has characters other than letters, digits, `/`, `-`, `_`,
    /// `.` and `~`;
    /// [`BuildError::MetricsRecorderInstalled`](crate::BuildError::MetricsRecorderInstalled) when
    /// another global recorder is installed already.
    pub fn prometheus(mut self, path: impl Into<String>) -> Self {
        self.prometheus = Some(path.into());
        self
    }
}
