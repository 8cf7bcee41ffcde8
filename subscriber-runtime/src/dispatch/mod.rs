//! Dispatch: runs the matching handlers of each message, one after another in priority order.
//!
//! Messages on one channel are handled in arrival order (one "lane" per active channel); different
//! channels are handled concurrently, at most `max_concurrent_channels` at a time. The number of
//! messages read from the queue but not yet handled is bounded too, so a slow handler makes the
//! queue fill up (and drops get counted) instead of memory growing.
//!
//! Each message is handled inside a `switchboard.message` span (channel, worker id, payload size)
//! and each handler run inside a `switchboard.handler` span (handler, channel, priority), both at
//! INFO level, so whatever a handler logs carries them.

mod durable;
mod once;
pub(crate) mod registry;
#[cfg(test)]
mod test_broker;
pub(crate) use durable::Cursor;
pub(crate) use once::group_name;
pub(crate) mod routing;

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::{Incoming, Position};
use crate::dispatch::registry::Entry;
use crate::dispatch::routing::{Route, Router};
use crate::handler::context::{Context, Delivery, Resources};
use crate::handler::HandlerFailure;
use crate::message::envelope::{self, PayloadLimits};
use crate::message::matcher::{Compiled, MatchContext};
use crate::observe::stats::{Counters, InFlight, KeyedRateLimit};

/// How one handler's run for one message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It completed.
    Completed,
    /// It returned an error (the error's text).
    Failed(String),
    /// An argument was rejected, so it did not run (the reason).
    Rejected(String),
    /// It panicked (the panic message).
    Panicked(String),
    /// It did not finish within its timeout.
    TimedOut(Duration),
    /// A layer decided not to call it (rate limited, throttled, debounced): the reason.
    Skipped(String),
}

impl Outcome {
    /// True for [`Outcome::Completed`].
    pub fn is_completed(&self) -> bool {
        matches!(self, Self::Completed)
    }
}

/// What the dispatcher reports to the observers given to
/// [`Builder::observe`](crate::Builder::observe) (test kits, inspectors).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DispatchEvent {
    /// An application handler ran for a message.
    Ran {
        /// The handler's name.
        handler: String,
        /// The message's channel.
        channel: Arc<str>,
        /// How the run ended.
        outcome: Outcome,
        /// How long it took.
        elapsed: Duration,
    },
    /// A payload was refused (not JSON, too large, too deep).
    Invalid {
        /// The channel.
        channel: Arc<str>,
        /// Why.
        reason: String,
    },
    /// A message this worker published without `includeSender` was skipped.
    SkippedOwn {
        /// The channel.
        channel: Arc<str>,
    },
    /// A message was taken from the broker (before it is parsed; not for the framework's
    /// internal channels).
    Received {
        /// The channel.
        channel: Arc<str>,
    },
}

pub(crate) type Observer = Arc<dyn Fn(&DispatchEvent) + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct DispatchConfig {
    pub(crate) limits: PayloadLimits,
    pub(crate) handler_timeout: Duration,
    pub(crate) max_concurrent_channels: usize,
    pub(crate) max_pending: usize,
    pub(crate) worker_id: Arc<str>,
    /// At most one warning per this interval about invalid input on one channel (and handler).
    pub(crate) invalid_log_interval: Duration,
}

struct Job {
    work: Work,
    /// When the broker handed the message over.
    received: Instant,
    _pending: Option<OwnedSemaphorePermit>,
}

/// What a lane does next.
enum Work {
    /// An ordinary message, parsed and routed.
    Ready {
        delivery: Arc<Delivery>,
        route: Arc<Route>,
    },
    /// A message of a durable channel: any gap before it is filled from the stream first.
    Durable { payload: Bytes, position: Position },
    /// Reads what the worker missed on this durable channel (at start, after a reconnect).
    CatchUp,
}

pub(crate) struct Dispatcher {
    pub(crate) entries: Vec<Entry>,
    router: Router,
    shared: Arc<Resources>,
    config: DispatchConfig,
    counters: Arc<Counters>,
    in_flight: Arc<InFlight>,
    observers: Vec<Observer>,
    lanes: Mutex<HashMap<Arc<str>, VecDeque<Job>>>,
    channel_permits: Arc<Semaphore>,
    pending_permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Warnings about invalid payloads and rejected arguments, per channel and handler.
    invalid_log: KeyedRateLimit,
    /// Where this worker is in each durable channel's stream.
    pub(crate) cursors: durable::Cursors,
    /// The reads of durable channels' streams in flight for recoveries (catch-ups after a
    /// reconnect, gaps before a live message): at most [`durable::MAX_CATCH_UP_READS`].
    catch_up_reads: Semaphore,
}

/// The key of the warnings about a channel's invalid payloads (no handler).
const NO_HANDLER: u32 = u32::MAX;

impl Dispatcher {
    /// `named`: the channels the application names besides its handlers' exact channels (they
    /// keep their name as a metric label).
    pub(crate) fn new(
        entries: Vec<Entry>,
        named: impl IntoIterator<Item = String>,
        shared: Arc<Resources>,
        config: DispatchConfig,
        counters: Arc<Counters>,
        in_flight: Arc<InFlight>,
        observers: Vec<Observer>,
    ) -> Self {
        let router = Router::new(&entries, named);
        Self {
            entries,
            router,
            shared,
            channel_permits: Arc::new(Semaphore::new(config.max_concurrent_channels.max(1))),
            pending_permits: Arc::new(Semaphore::new(config.max_pending.max(1))),
            invalid_log: KeyedRateLimit::new(config.invalid_log_interval),
            config,
            counters,
            in_flight,
            observers,
            lanes: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            cursors: durable::Cursors::default(),
            catch_up_reads: Semaphore::new(durable::MAX_CATCH_UP_READS),
        }
    }

    /// Reads the queue until `shutdown`, then waits up to `grace` for running handlers.
    ///
    /// `resync` is notified when the broker reconnected (and once at start): every durable
    /// channel this worker has a cursor on is then read from that cursor on.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Incoming>,
        resync: Arc<crate::broker::durable::Resync>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        loop {
            let item = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = resync.notify.notified() => {
                    let (all, lagging) = resync.take();
                    let mut channels = if all { self.cursors.channels() } else { Vec::new() };
                    for (channel, position) in lagging {
                        // A channel first seen through a dropped message starts just before it.
                        if self.cursors.get(&channel).is_none() {
                            self.cursors.set(&channel, Cursor {
                                epoch: Some(position.epoch.clone()),
                                offset: position.offset.saturating_sub(1),
                            });
                        }
                        if !all {
                            channels.push(channel);
                        }
                    }
                    for channel in channels {
                        self.in_flight.start();
                        let job = Job { work: Work::CatchUp, received: Instant::now(), _pending: None };
                        self.enqueue(channel, job).await;
                    }
                    continue;
                }
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
            };
            self.accept(item).await;
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker_id = %self.config.worker_id,
                grace = ?grace,
                "shutdown: handlers still running after the grace period were abandoned"
            );
        }
    }

    fn observe(&self, event: impl FnOnce() -> DispatchEvent) {
        if self.observers.is_empty() {
            return;
        }
        let event = event();
        for observer in &self.observers {
            observer(&event);
        }
    }

    async fn accept(self: &Arc<Self>, item: Incoming) {
        let Incoming {
            channel,
            payload,
            position,
            received,
        } = item;
        if !self.observers.is_empty() && !crate::message::event::is_internal(&channel) {
            self.observe(|| DispatchEvent::Received {
                channel: channel.clone(),
            });
        }
        let work = match position {
            // Its offset is checked in its lane, in order, whatever it holds.
            Some(position) => Work::Durable { payload, position },
            None => {
                let route = self.router.route(&channel);
                route.received.increment(1);
                match self.prepare(&channel, &payload, &route) {
                    Some(parsed) => Work::Ready {
                        delivery: Arc::new(Delivery::new(channel.clone(), parsed, payload)),
                        route,
                    },
                    None => {
                        self.in_flight.finish();
                        return;
                    }
                }
            }
        };
        let pending = self
            .pending_permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let job = Job {
            work,
            received,
            _pending: Some(pending),
        };
        self.enqueue(channel, job).await;
    }

    /// Parses a payload within the limits and decides whether it runs here: `None` (counted and
    /// logged) when it is invalid, this worker's own, or matches no handler.
    fn prepare(
        &self,
        channel: &Arc<str>,
        payload: &Bytes,
        route: &Route,
    ) -> Option<envelope::Parsed> {
        // The framework's internal channels carry its own messages, whose size does not depend on
        // the application's payloads: they are held to the default limits, whatever the
        // application chose for its own.
        let internal_limits = PayloadLimits::default();
        let limits = if crate::message::event::is_internal(channel) {
            &internal_limits
        } else {
            &self.config.limits
        };
        let parsed = match envelope::parse(payload, limits) {
            Ok(parsed) => parsed,
            Err(error) => {
                Counters::inc(&self.counters.invalid_payloads);
                self.counters.metrics.dropped_invalid.increment(1);
                if let Some(suppressed) = self.invalid_log.allow((NO_HANDLER, channel)) {
                    tracing::warn!(
                        channel = %channel,
                        worker_id = %self.config.worker_id,
                        size = payload.len(),
                        reason = error.reason(),
                        preview = %envelope::preview(payload),
                        %error,
                        suppressed,
                        "invalid payload dropped (at most one such warning per channel per interval; `suppressed` counts the ones held back since the last)"
                    );
                }
                self.observe(|| DispatchEvent::Invalid {
                    channel: channel.clone(),
                    reason: error.to_string(),
                });
                return None;
            }
        };
        if parsed.is_own(&self.config.worker_id) {
            // The framework's own plumbing (a plugin's feed on an internal channel) comes back to
            // its sender too: dropped without a count, so that `skipped_own` counts application
            // messages only.
            if crate::message::event::is_internal(channel) {
                return None;
            }
            Counters::inc(&self.counters.skipped_own);
            self.counters.metrics.skipped_own.increment(1);
            self.observe(|| DispatchEvent::SkippedOwn {
                channel: channel.clone(),
            });
            return None;
        }
        if route.candidates.is_empty() {
            Counters::inc(&self.counters.unrouted);
            self.counters.metrics.skipped_unrouted.increment(1);
            tracing::trace!(channel = %channel, "no handler matches");
            return None;
        }
        Some(parsed)
    }

    /// Appends a job to its channel's lane, starting the lane when it is idle.
    async fn enqueue(self: &Arc<Self>, channel: Arc<str>, job: Job) {
        {
            let mut lanes = self
                .lanes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(queue) = lanes.get_mut(&channel) {
                queue.push_back(job);
                return;
            }
            lanes.insert(channel.clone(), VecDeque::new());
        }
        let permit = self
            .channel_permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let this = self.clone();
        self.tracker.spawn(async move {
            this.run_lane(channel, job).await;
            drop(permit);
        });
    }

    async fn run_lane(&self, channel: Arc<str>, first: Job) {
        let mut job = first;
        loop {
            self.process(&channel, job).await;
            let next = {
                let mut lanes = self
                    .lanes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match lanes.get_mut(&channel).and_then(VecDeque::pop_front) {
                    Some(next) => next,
                    None => {
                        lanes.remove(&channel);
                        return;
                    }
                }
            };
            job = next;
        }
    }

    async fn process(&self, channel: &Arc<str>, job: Job) {
        match job.work {
            Work::Ready { delivery, route } => {
                self.run_candidates(&delivery, &route).await;
                self.counters
                    .metrics
                    .dispatch_duration
                    .record(job.received.elapsed());
            }
            Work::Durable { payload, position } => {
                self.durable_message(channel, payload, position).await;
                self.counters
                    .metrics
                    .dispatch_duration
                    .record(job.received.elapsed());
            }
            Work::CatchUp => {
                self.recover(channel, None).await;
            }
        }
        drop(job._pending);
        self.in_flight.finish();
    }

    /// Handles one message read from (or published to) a durable channel's stream at
    /// `position`: parsed, routed and run like any other, its handlers seeing the position.
    pub(crate) async fn handle_stored(
        &self,
        channel: &Arc<str>,
        payload: Bytes,
        position: Position,
        recovered: bool,
    ) {
        let route = self.router.route(channel);
        route.received.increment(1);
        let Some(parsed) = self.prepare(channel, &payload, &route) else {
            return;
        };
        let mut delivery = Delivery::new(channel.clone(), parsed, payload);
        delivery.position = Some(position);
        delivery.recovered = recovered;
        self.run_candidates(&Arc::new(delivery), &route).await;
    }

    /// Runs the matching handlers of one message, in order; returns how many ran.
    async fn run_candidates(&self, delivery: &Arc<Delivery>, route: &Route) -> usize {
        let span = tracing::info_span!(
            "switchboard.message",
            channel = &*delivery.channel,
            worker_id = &*self.config.worker_id,
            size = delivery.raw.len(),
        );
        async {
            let mut ran = 0;
            for candidate in &route.candidates {
                let entry = &self.entries[candidate.handler as usize];
                if candidate.conditional && !self.predicates_match(entry, delivery) {
                    continue;
                }
                let cx = Context {
                    delivery: delivery.clone(),
                    shared: self.shared.clone(),
                };
                if entry.internal {
                    self.run_internal(entry, cx).await;
                    continue;
                }
                let started = Instant::now();
                let outcome = self
                    .run_handler(candidate.handler, entry, cx, &delivery.channel)
                    .await;
                ran += 1;
                self.observe(|| DispatchEvent::Ran {
                    handler: entry.info.name.to_string(),
                    channel: delivery.channel.clone(),
                    outcome: outcome.clone(),
                    elapsed: started.elapsed(),
                });
            }
            ran
        }
        .instrument(span)
        .await
    }

    /// Whether any handler (or internal subscriber) may run for `channel`.
    pub(crate) fn routes(&self, channel: &str) -> bool {
        !self.router.route(channel).candidates.is_empty()
    }

    /// Routes one message (cached channel candidates, then predicates); returns how many handlers
    /// would run (benchmarks).
    pub(crate) fn route_count(&self, channel: &str, message: &serde_json::Value) -> usize {
        let route = self.router.route(channel);
        let mcx = MatchContext { channel, message };
        route
            .candidates
            .iter()
            .filter(|c| {
                !c.conditional
                    || self.entries[c.handler as usize]
                        .matchers
                        .iter()
                        .any(|m| matches!(m, Compiled::Predicate(p) if p(&mcx)))
            })
            .count()
    }

    /// Parses, routes and handles one message right here, without the queue (benchmarks).
    pub(crate) async fn dispatch_inline(&self, channel: &str, payload: bytes::Bytes) -> usize {
        let received = Instant::now();
        let route = self.router.route(channel);
        route.received.increment(1);
        let Ok(parsed) = envelope::parse(&payload, &self.config.limits) else {
            return 0;
        };
        if parsed.is_own(&self.config.worker_id) {
            return 0;
        }
        if route.candidates.is_empty() {
            return 0;
        }
        let delivery = Arc::new(Delivery::new(channel.into(), parsed, payload));
        let ran = self.run_candidates(&delivery, &route).await;
        self.counters
            .metrics
            .dispatch_duration
            .record(received.elapsed());
        ran
    }

    fn predicates_match(&self, entry: &Entry, delivery: &Delivery) -> bool {
        let mcx = MatchContext {
            channel: &delivery.channel,
            message: &delivery.message,
        };
        entry.matchers.iter().any(|m| {
            let Compiled::Predicate(predicate) = m else {
                return false;
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| predicate(&mcx))) {
                Ok(matched) => matched,
                Err(panic) => {
                    Counters::inc(&self.counters.predicate_panics);
                    entry.metrics().predicate_panics.increment(1);
                    tracing::error!(
                        handler = %entry.info.name,
                        channel = %delivery.channel,
                        worker_id = %self.config.worker_id,
                        panic = %panic_message(panic.as_ref()),
                        "subscriber predicate panicked; counted as no match"
                    );
                    false
                }
            }
        })
    }

    /// Runs a plugin's internal subscriber: not counted, logged only when it fails.
    async fn run_internal(&self, entry: &Entry, cx: Context) {
        let channel = cx.delivery.channel.clone();
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| entry.call.call(cx))) {
            Ok(future) => AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .map_err(|panic| panic_message(panic.as_ref())),
            Err(panic) => Err(panic_message(panic.as_ref())),
        };
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(HandlerFailure::Rejected(e) | HandlerFailure::Failed(e))) => error_chain(&*e),
            Ok(Err(HandlerFailure::Skipped(_))) => return,
            Err(panic) => panic,
        };
        tracing::error!(
            subscriber = %entry.info.name,
            channel = %channel,
            worker_id = %self.config.worker_id,
            %error,
            "internal subscriber failed; the application's handlers still run"
        );
    }

    async fn run_handler(
        &self,
        index: u32,
        entry: &Entry,
        cx: Context,
        channel: &Arc<str>,
    ) -> Outcome {
        let channel_key = channel;
        let channel: &str = channel;
        Counters::inc(&self.counters.handler_runs);
        let metrics = entry.metrics();
        metrics.runs.increment(1);
        let info = &entry.info;
        let span = tracing::info_span!(
            "switchboard.handler",
            handler = &*info.name,
            channel,
            priority = info.priority,
        );
        let started = Instant::now();
        let timeout = entry.timeout.unwrap_or(self.config.handler_timeout);
        // A plain `fn` handler runs inside `call`, an `async` one when its future is polled: the
        // span covers both.
        let called = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| entry.call.call(cx)))
        };
        let outcome = match called {
            Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
            Ok(future) => {
                let future = AssertUnwindSafe(future).catch_unwind().instrument(span);
                match tokio::time::timeout(timeout, future).await {
                    Err(_) => Outcome::TimedOut(timeout),
                    Ok(Err(panic)) => Outcome::Panicked(panic_message(panic.as_ref())),
                    Ok(Ok(Err(HandlerFailure::Rejected(e)))) => Outcome::Rejected(error_chain(&*e)),
                    Ok(Ok(Err(HandlerFailure::Failed(e)))) => Outcome::Failed(error_chain(&*e)),
                    Ok(Ok(Err(HandlerFailure::Skipped(skip)))) => {
                        Outcome::Skipped(skip.reason().to_owned())
                    }
                    Ok(Ok(Ok(()))) => Outcome::Completed,
                }
            }
        };
        let elapsed = started.elapsed();
        metrics.duration.record(elapsed);
        match &outcome {
            Outcome::Completed => tracing::debug!(
                handler = %info.name,
                channel,
                worker_id = %self.config.worker_id,
                elapsed = ?elapsed,
                "subscriber handler completed"
            ),
            Outcome::Failed(error) => {
                Counters::inc(&self.counters.handler_errors);
                metrics.errors.increment(1);
                tracing::error!(
                    handler = %info.name,
                    channel,
                    worker_id = %self.config.worker_id,
                    description = %info.description,
                    %error,
                    "subscriber handler failed; the next handler still runs"
                );
            }
            Outcome::Rejected(reason) => {
                Counters::inc(&self.counters.handler_rejections);
                metrics.rejections.increment(1);
                if let Some(suppressed) = self.invalid_log.allow((index, channel_key)) {
                    tracing::warn!(
                        handler = %info.name,
                        channel,
                        worker_id = %self.config.worker_id,
                        description = %info.description,
                        %reason,
                        suppressed,
                        "subscriber handler skipped: an argument was rejected (at most one such warning per handler and channel per interval; `suppressed` counts the ones held back since the last)"
                    );
                }
            }
            Outcome::Skipped(reason) => {
                Counters::inc(&self.counters.handler_skips);
                metrics.skips.increment(1);
                tracing::debug!(
                    handler = %info.name,
                    channel,
                    worker_id = %self.config.worker_id,
                    %reason,
                    "subscriber handler skipped by a layer"
                );
            }
            Outcome::Panicked(panic) => {
                Counters::inc(&self.counters.handler_panics);
                metrics.panics.increment(1);
                tracing::error!(
                    handler = %info.name,
                    channel,
                    worker_id = %self.config.worker_id,
                    description = %info.description,
                    %panic,
                    "subscriber handler panicked; the next handler still runs"
                );
            }
            Outcome::TimedOut(after) => {
                Counters::inc(&self.counters.handler_timeouts);
                metrics.timeouts.increment(1);
                tracing::error!(
                    handler = %info.name,
                    channel,
                    worker_id = %self.config.worker_id,
                    description = %info.description,
                    timeout = ?after,
                    "subscriber handler timed out and was cancelled; the next handler still runs"
                );
            }
        }
        outcome
    }
}

/// A panic's message (`&str` or `String` payloads), for logs and outcomes. Not public API: the
/// WebSocket server reports its route handlers' panics with it too.
#[doc(hidden)]
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// The error's text followed by its sources', each left out when the text already ends with it
/// (an error that prints its source, as many do, would otherwise say it twice).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    text
}
