//! The server's metrics, emitted through the [`metrics`] facade, and the optional Prometheus
//! endpoint (feature `prometheus`) served next to `/ws`.
//!
//! Every handle is resolved once, when the server is built (after the Prometheus recorder is
//! installed, if asked for): the hot path only bumps handles it already holds.

use metrics::{Counter, Gauge};

use crate::client::DisconnectReason;

pub(crate) const CLIENTS_CONNECTED: &str = "switchboard_clients_connected";
pub(crate) const CLIENT_CONNECTIONS: &str = "switchboard_client_connections_total";
pub(crate) const CLIENT_DISCONNECTIONS: &str = "switchboard_client_disconnections_total";
pub(crate) const SLOW_CONSUMER_DISCONNECTS: &str = "switchboard_slow_consumer_disconnects_total";
pub(crate) const AUTH_REJECTIONS: &str = "switchboard_auth_rejections_total";
pub(crate) const USER_LIMIT_REJECTIONS: &str = "switchboard_user_limit_rejections_total";
pub(crate) const CLIENT_MESSAGES: &str = "switchboard_client_messages_total";
pub(crate) const CLIENT_ERRORS: &str = "switchboard_client_errors_total";

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

/// The server's handles (no-ops until [`Metrics::resolve`]).
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) clients: Gauge,
    pub(crate) connections: Counter,
    disconnections: [Counter; DISCONNECT_REASONS.len()],
    pub(crate) slow_consumers: Counter,
    pub(crate) auth_rejections: Counter,
    pub(crate) user_limit_rejections: Counter,
    pub(crate) client_messages: Counter,
    pub(crate) client_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            clients: Gauge::noop(),
            connections: Counter::noop(),
            disconnections: std::array::from_fn(|_| Counter::noop()),
            slow_consumers: Counter::noop(),
            auth_rejections: Counter::noop(),
            user_limit_rejections: Counter::noop(),
            client_messages: Counter::noop(),
            client_errors: Counter::noop(),
        }
    }
}

impl Metrics {
    /// Describes every metric to the current recorder and resolves the handles.
    pub(crate) fn resolve() -> Self {
        describe();
        Self {
            clients: metrics::gauge!(CLIENTS_CONNECTED),
            connections: metrics::counter!(CLIENT_CONNECTIONS),
            disconnections: DISCONNECT_REASONS
                .map(|reason| metrics::counter!(CLIENT_DISCONNECTIONS, "reason" => reason)),
            slow_consumers: metrics::counter!(SLOW_CONSUMER_DISCONNECTS),
            auth_rejections: metrics::counter!(AUTH_REJECTIONS),
            user_limit_rejections: metrics::counter!(USER_LIMIT_REJECTIONS),
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

/// Gives every metric its help text (shown as `# HELP` by Prometheus). Idempotent.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
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
    describe_counter!(
        USER_LIMIT_REJECTIONS,
        "WebSocket connections refused with 429 (the user was at its connection limit)"
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

    use subscriber_runtime::telemetry::{DISPATCH_DURATION, HANDLER_DURATION, SECONDS_BUCKETS};

    use super::Endpoint;
    use crate::error::ServerError;

    /// The content type of the Prometheus text format.
    pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// The recorder this crate installed, shared by every application of the process.
    static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

    /// Checks that `path` can be an axum route of its own.
    pub(crate) fn validate_path(path: &str) -> Result<(), ServerError> {
        let invalid = |reason: &str| ServerError::InvalidMetricsPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !path.starts_with('/') {
            return Err(invalid("it must start with `/`"));
        }
        if path == crate::WS_PATH {
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
    pub(crate) fn install(path: &str) -> Result<Endpoint, ServerError> {
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
                    .map_err(|_| ServerError::MetricsRecorderInstalled)?;
                installed.insert(handle).clone()
            }
        };
        Ok(Endpoint {
            served: Some((Arc::from(path), handle)),
        })
    }
}
