//! Counters the runtime keeps about itself ([`Stats`], the test API); each one is mirrored by a
//! `metrics` counter (see `telemetry.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The counters, and the `metrics` handles that mirror them (see `telemetry.rs`).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
            pub(crate) metrics: crate::observe::telemetry::Metrics,
        }

        /// A snapshot of the runtime's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Messages taken from the broker into the dispatch queue.
    received,
    /// Messages dropped because the dispatch queue was full.
    dropped_queue_full,
    /// Payloads refused: not JSON, too large or too deep.
    invalid_payloads,
    /// Messages skipped because this worker published them without `includeSender`.
    skipped_own,
    /// Messages that matched no handler.
    unrouted,
    /// Handler runs started.
    handler_runs,
    /// Handlers that returned an error.
    handler_errors,
    /// Handlers skipped because an argument was rejected (e.g. `Message<T>` did not deserialize).
    handler_rejections,
    /// Handlers that panicked.
    handler_panics,
    /// Handlers that did not finish within their timeout.
    handler_timeouts,
    /// Handler runs a layer skipped (rate limited, throttled, debounced).
    handler_skips,
    /// Plain `fn` handlers that finished after their caller gave up (their timeout); the result
    /// was discarded.
    late_results,
    /// Predicates that panicked (counted as no match).
    predicate_panics,
    /// Broker reconnects.
    reconnects,
    /// Messages of durable channels read from their streams (a gap in the offsets, a reconnect)
    /// and handled.
    durable_recovered,
    /// Live messages of durable channels skipped because their offset was already handled (read
    /// from the stream first).
    durable_duplicates,
    /// Messages of durable channels lost to this worker: no longer in their stream (trimmed by
    /// its retention, or expired) when the worker came to read them.
    durable_lost,
    /// Messages of run-once handlers this worker took over from another that held them too long
    /// without acknowledging them (it died or hung; they may have run there too).
    once_claimed,
}

impl Counters {
    /// Counters whose `metrics` handles were resolved from the current recorder.
    pub(crate) fn resolved() -> Self {
        Self {
            metrics: crate::observe::telemetry::Metrics::resolve(),
            ..Self::default()
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts messages between the broker and the end of their dispatch, so that tests can wait until
/// everything published so far has been handled.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub(crate) fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn finish(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Lets a warning through at most once per period, counting what it held back.
///
/// ```
/// use std::time::Duration;
/// use switchboard::RateLimit;
///
/// let limit = RateLimit::new(Duration::from_secs(10));
/// assert_eq!(limit.allow(), Some(0)); // the first warning goes through
/// assert_eq!(limit.allow(), None); // the next ones within 10 s are held back...
/// assert_eq!(limit.allow(), None);
/// ```
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    /// At most one warning per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since last time)` when a warning may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

/// Lets a warning about one key (a channel, a handler on a channel) through at most once per
/// interval, counting what it held back; keeps at most 4,096 keys (the oldest go first).
#[derive(Debug)]
pub(crate) struct KeyedRateLimit {
    period: Duration,
    /// Per key: when its warning was last let through, and how many were held back since.
    state: Mutex<std::collections::HashMap<LogKey, (Instant, u64)>>,
}

/// A handler's index (or `u32::MAX` for none) and a channel.
type LogKey = (u32, std::sync::Arc<str>);

impl KeyedRateLimit {
    const MAX_KEYS: usize = 4096;

    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// `Some(suppressed since the last one)` when the warning about `key` may be logged now.
    pub(crate) fn allow(&self, key: (u32, &std::sync::Arc<str>)) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some((last, held)) = state.get_mut(&(key.0, key.1.clone())) {
            if now.duration_since(*last) < self.period {
                *held += 1;
                return None;
            }
            *last = now;
            return Some(std::mem::take(held));
        }
        if state.len() >= Self::MAX_KEYS {
            let period = self.period;
            state.retain(|_, (last, _)| now.duration_since(*last) < period);
            if state.len() >= Self::MAX_KEYS {
                state.clear();
            }
        }
        state.insert((key.0, key.1.clone()), (now, 0));
        Some(0)
    }
}
