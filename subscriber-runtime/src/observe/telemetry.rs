//! Metrics of the core, emitted through the [`metrics`] facade (the WebSocket server has its own,
//! and serves a Prometheus endpoint).
//!
//! Every handle is resolved once: the runtime-wide ones and each handler's at `build()`, each
//! channel's when the router first sees the channel (and caches its candidates). The hot path only
//! bumps handles it already holds: no label allocation, no registry lookup per message.
//!
//! A handle is bound to the recorder that was installed when it was resolved, so a recorder must
//! be installed before `build()` (a plugin may install one in its `build`, before the core
//! resolves anything).

use metrics::{Counter, Histogram, Unit};

/// Messages taken from the broker, by `channel` (the label rule is in `routing.rs`).
pub(crate) const MESSAGES_RECEIVED: &str = "switchboard_messages_received_total";
/// Messages lost, by `reason`: `queue_full`, `invalid_payload`.
pub(crate) const MESSAGES_DROPPED: &str = "switchboard_messages_dropped_total";
/// Messages deliberately not handled, by `reason`: `own_message`, `no_handler`.
pub(crate) const MESSAGES_SKIPPED: &str = "switchboard_messages_skipped_total";
/// Time from a message's receipt to the end of its last handler.
pub const DISPATCH_DURATION: &str = "switchboard_dispatch_duration_seconds";
pub(crate) const HANDLER_RUNS: &str = "switchboard_handler_runs_total";
pub(crate) const HANDLER_ERRORS: &str = "switchboard_handler_errors_total";
pub(crate) const HANDLER_REJECTIONS: &str = "switchboard_handler_rejections_total";
pub(crate) const HANDLER_PANICS: &str = "switchboard_handler_panics_total";
pub(crate) const HANDLER_TIMEOUTS: &str = "switchboard_handler_timeouts_total";
pub(crate) const HANDLER_SKIPS: &str = "switchboard_handler_skips_total";
/// Plain `fn` handlers that finished after their caller gave up (their timeout): the result was
/// discarded.
pub(crate) const LATE_RESULTS: &str = "switchboard_handler_late_results_total";
/// Time of one handler run.
pub const HANDLER_DURATION: &str = "switchboard_handler_duration_seconds";
pub(crate) const PREDICATE_PANICS: &str = "switchboard_predicate_panics_total";
pub(crate) const BROKER_RECONNECTS: &str = "switchboard_broker_reconnects_total";
/// Messages of durable channels read from their streams (a gap, a reconnect).
pub(crate) const DURABLE_RECOVERED: &str = "switchboard_durable_recovered_total";
/// Messages of durable channels lost to a worker: no longer in their stream.
pub(crate) const DURABLE_LOST: &str = "switchboard_durable_lost_total";
/// Run-once messages taken over from a worker that held them too long.
pub(crate) const ONCE_CLAIMED: &str = "switchboard_once_claimed_total";

/// The label value of a channel that is neither named by the application nor routed by a
/// pattern, a regex or `"*"`.
pub(crate) const OTHER_CHANNEL: &str = "other";

/// Histogram buckets of the `_seconds` metrics, 50 µs to 30 s, for recorders that ask (the
/// WebSocket server's Prometheus recorder uses them).
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The runtime-wide handles (no-ops until [`Metrics::resolve`]).
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) dropped_queue_full: Counter,
    pub(crate) dropped_invalid: Counter,
    pub(crate) skipped_own: Counter,
    pub(crate) skipped_unrouted: Counter,
    pub(crate) dispatch_duration: Histogram,
    pub(crate) reconnects: Counter,
    pub(crate) late_results: Counter,
    pub(crate) durable_recovered: Counter,
    pub(crate) durable_lost: Counter,
    pub(crate) once_claimed: Counter,
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
            late_results: Counter::noop(),
            durable_recovered: Counter::noop(),
            durable_lost: Counter::noop(),
            once_claimed: Counter::noop(),
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
            late_results: metrics::counter!(LATE_RESULTS),
            durable_recovered: metrics::counter!(DURABLE_RECOVERED),
            durable_lost: metrics::counter!(DURABLE_LOST),
            once_claimed: metrics::counter!(ONCE_CLAIMED),
        }
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
    pub(crate) skips: Counter,
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
            skips: Counter::noop(),
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
            skips: metrics::counter!(HANDLER_SKIPS, &label()),
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
    use metrics::{describe_counter, describe_histogram};
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
    describe_counter!(
        HANDLER_SKIPS,
        "Subscriber handler runs a layer skipped (rate limited, throttled, debounced)"
    );
    describe_counter!(
        LATE_RESULTS,
        "Plain fn handlers that finished after their timeout; their result was discarded"
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
    describe_counter!(
        DURABLE_RECOVERED,
        "Messages of durable channels read from their streams after a gap or a reconnect"
    );
    describe_counter!(
        ONCE_CLAIMED,
        "Run-once messages taken over from a worker that held them too long without acknowledging them"
    );
    describe_counter!(
        DURABLE_LOST,
        "Messages of durable channels lost to this worker: no longer in their stream"
    );
}
