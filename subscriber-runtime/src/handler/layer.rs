//! Middleware for handlers, on tower's [`Layer`] and [`Service`].
//!
//! Every handler (a subscriber, or a plugin's kind such as the WebSocket server's client routes)
//! is a [`HandlerService`]: a cheap-to-clone `Service<Cx>` whose response is the context's
//! [`Output`](crate::HandlerContext::Output) and whose error is a [`HandlerFailure`]. A
//! [`HandlerLayer`] wraps it; any tower layer whose service answers the same request fits, tower's
//! own included ([`TimeoutLayer`](https://docs.rs/tower/latest/tower/timeout/struct.TimeoutLayer.html),
//! [`ConcurrencyLimitLayer`](https://docs.rs/tower/latest/tower/limit/struct.ConcurrencyLimitLayer.html),
//! [`RetryLayer`](https://docs.rs/tower/latest/tower/retry/struct.RetryLayer.html) with
//! [`Backoff`]).
//!
//! Layers are given for the whole application ([`Builder::layer`](crate::Builder::layer)), for a
//! group of handlers ([`Builder::layer_for`](crate::Builder::layer_for)), and per handler (the
//! attribute's `layer = ...` key, [`Subscriber::layer`](crate::Subscriber::layer)). A message
//! meets them in that order: the application's first (outermost), the handler's own last, then
//! the handler. Within one list, the first layer given is the outermost, as with tower's
//! `ServiceBuilder`. The handler's timeout covers the whole stack, retries included.
//!
//! The reference framework's handler utilities are here as layers: [`Backoff`] (retry with
//! exponential backoff, jitter and a maximum number of attempts), [`RateLimitLayer`],
//! [`ThrottleLayer`] and [`DebounceLayer`], each per [`Key`] (the channel, a payload property, or
//! anything you compute). Matching on a payload property is a matcher:
//! [`Matcher::property`](crate::Matcher::property).
//!
//! A layer that decides not to call the handler answers [`HandlerFailure::Skipped`]: the run is
//! counted as skipped ([`Stats::handler_skips`](crate::Stats::handler_skips)), logged at DEBUG,
//! and the next handler still runs; a client route answers the client with the skip's code.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::layer::{Backoff, Key, RateLimitLayer};
//! use switchboard::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! let app = Switchboard::builder()
//!     .without_linked_handlers()
//!     // Every handler: at most 4 runs at a time.
//!     .layer(tower::limit::ConcurrencyLimitLayer::new(4))
//!     .subscriber(
//!         Subscriber::channels(["orders"])
//!             .name("store_order")
//!             // Up to 3 attempts, 10 ms then 20 ms apart (plus up to 10% jitter)...
//!             .layer(tower::retry::RetryLayer::new(Backoff::new(3, Duration::from_millis(10))))
//!             // ...and at most 100 messages per second per customer.
//!             .layer(RateLimitLayer::new(100, Duration::from_secs(1)).per(Key::property("customer")))
//!             .handle(|Message(order): Message| async move {
//!                 tracing::info!(%order, "stored");
//!             }),
//!     )
//!     .build()?;
//! # drop(app); Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use serde_json::Value;
use tower::{Layer, Service};

use crate::error::BoxError;
use crate::handler::context::HandlerContext;
use crate::handler::{DynHandler, HandlerFailure, HandlerFuture};

/// A handler as a tower [`Service`]: what every [`HandlerLayer`] wraps. Cloning it is cheap (one
/// reference count), and it is always ready.
pub struct HandlerService<Cx: HandlerContext> {
    inner: Arc<dyn Erased<Cx>>,
}

impl<Cx: HandlerContext> Clone for HandlerService<Cx> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<Cx: HandlerContext> fmt::Debug for HandlerService<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<Cx: HandlerContext> Service<Cx> for HandlerService<Cx> {
    type Response = Cx::Output;
    type Error = HandlerFailure;
    type Future = HandlerFuture<Cx::Output>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), HandlerFailure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, cx: Cx) -> Self::Future {
        self.inner.call(cx)
    }
}

impl<Cx: HandlerContext> HandlerService<Cx> {
    /// The handler itself, with no layer.
    pub(crate) fn from_handler(handler: DynHandler<Cx>) -> Self {
        Self {
            inner: Arc::new(Base(handler)),
        }
    }

    /// Runs the handler (and its layers) for one call.
    pub(crate) fn run(&self, cx: Cx) -> HandlerFuture<Cx::Output> {
        self.inner.call(cx)
    }

    /// Wraps any service answering `Cx`, erasing its type.
    fn erase<S>(service: S) -> Self
    where
        S: Service<Cx, Response = Cx::Output> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self {
            inner: Arc::new(Layered(service)),
        }
    }
}

trait Erased<Cx: HandlerContext>: Send + Sync {
    fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output>;
}

struct Base<Cx: HandlerContext>(DynHandler<Cx>);

impl<Cx: HandlerContext> Erased<Cx> for Base<Cx> {
    fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output> {
        (self.0)(cx)
    }
}

struct Layered<S>(S);

impl<S, Cx> Erased<Cx> for Layered<S>
where
    Cx: HandlerContext,
    S: Service<Cx, Response = Cx::Output> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output> {
        // tower's contract: `poll_ready` before each `call`, on a service of one's own. Most
        // services are ready at once: then the call's future is all there is to box.
        let mut service = self.0.clone();
        let mut task = TaskContext::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Ok(())) = service.poll_ready(&mut task) {
            return Box::pin(futures_util::TryFutureExt::map_err(
                service.call(cx),
                into_failure,
            ));
        }
        Box::pin(async move {
            std::future::poll_fn(|task| service.poll_ready(task))
                .await
                .map_err(into_failure)?;
            service.call(cx).await.map_err(into_failure)
        })
    }
}

/// Turns a layer's error back into a [`HandlerFailure`]: one that went through a layer as a
/// `BoxError` (a [`HandlerFailure`] or a [`Skipped`]) comes back as it was.
fn into_failure(error: impl Into<BoxError>) -> HandlerFailure {
    let error: BoxError = error.into();
    match error.downcast::<HandlerFailure>() {
        Ok(failure) => *failure,
        Err(error) => match error.downcast::<Skipped>() {
            Ok(skipped) => HandlerFailure::Skipped(*skipped),
            Err(error) => HandlerFailure::Failed(error),
        },
    }
}

/// A tower layer for handlers called with `Cx`, its type erased: what the builder, the attribute's
/// `layer = ...` key and [`Subscriber::layer`](crate::Subscriber::layer) keep.
pub struct HandlerLayer<Cx: HandlerContext = crate::Context> {
    apply: Arc<dyn Fn(HandlerService<Cx>) -> HandlerService<Cx> + Send + Sync>,
}

impl<Cx: HandlerContext> Clone for HandlerLayer<Cx> {
    fn clone(&self) -> Self {
        Self {
            apply: self.apply.clone(),
        }
    }
}

impl<Cx: HandlerContext> fmt::Debug for HandlerLayer<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerLayer").finish_non_exhaustive()
    }
}

impl<Cx: HandlerContext> HandlerLayer<Cx> {
    /// Erases a tower layer whose service answers `Cx` with the handler's output; its error
    /// converts into a `BoxError` (a [`HandlerFailure`] or [`Skipped`] that went through it comes
    /// back as it was; any other error counts as the handler's).
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<HandlerService<Cx>> + Send + Sync + 'static,
        L::Service: Service<Cx, Response = Cx::Output> + Clone + Send + Sync + 'static,
        <L::Service as Service<Cx>>::Error: Into<BoxError>,
        <L::Service as Service<Cx>>::Future: Send + 'static,
    {
        Self {
            apply: Arc::new(move |inner| HandlerService::erase(layer.layer(inner))),
        }
    }

    /// Wraps a service.
    pub(crate) fn apply(&self, service: HandlerService<Cx>) -> HandlerService<Cx> {
        (self.apply)(service)
    }
}

/// Wraps `service` in `layers`, the first one outermost.
pub(crate) fn stack<Cx: HandlerContext>(
    service: HandlerService<Cx>,
    layers: &[HandlerLayer<Cx>],
) -> HandlerService<Cx> {
    layers
        .iter()
        .rev()
        .fold(service, |service, layer| layer.apply(service))
}

/// Not public API: a plugin's handler wrapped in `layers` (the first one outermost), for the
/// plugin's own registry (the WebSocket server's client routes).
#[doc(hidden)]
pub fn layered<Cx: HandlerContext>(
    handler: DynHandler<Cx>,
    layers: &[HandlerLayer<Cx>],
) -> DynHandler<Cx> {
    if layers.is_empty() {
        return handler;
    }
    let service = stack(HandlerService::from_handler(handler), layers);
    Arc::new(move |cx| service.run(cx))
}

/// What the attribute's `layer = ...` key, [`Builder::layer`](crate::Builder::layer) and
/// [`Subscriber::layer`](crate::Subscriber::layer) accept: any tower [`Layer`] over
/// [`HandlerService<Cx>`] whose service is `Clone + Send + Sync`, answers `Cx` with the handler's
/// output, and fails with an error that converts into a `BoxError`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a layer for these handlers",
    label = "not a tower `Layer` over `HandlerService`",
    note = "`layer = ...` takes a tower `Layer` whose service is `Clone + Send + Sync` and answers the handler's context (for example `tower::limit::ConcurrencyLimitLayer::new(4)` or `switchboard::layer::ThrottleLayer::new(..)`), or an array of them"
)]
pub trait IntoHandlerLayer<Cx: HandlerContext> {
    /// The erased layer.
    fn into_handler_layer(self) -> HandlerLayer<Cx>;
}

#[diagnostic::do_not_recommend]
impl<Cx, L> IntoHandlerLayer<Cx> for L
where
    Cx: HandlerContext,
    L: Layer<HandlerService<Cx>> + Send + Sync + 'static,
    L::Service: Service<Cx, Response = Cx::Output> + Clone + Send + Sync + 'static,
    <L::Service as Service<Cx>>::Error: Into<BoxError>,
    <L::Service as Service<Cx>>::Future: Send + 'static,
{
    fn into_handler_layer(self) -> HandlerLayer<Cx> {
        HandlerLayer::new(self)
    }
}

/// A layer decided not to call the handler (rate limited, throttled, debounced): not an error.
/// The run is counted as skipped; a client route answers the client with [`code`](Self::code) and
/// [`reason`](Self::reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Skipped {
    code: &'static str,
    reason: String,
}

impl Skipped {
    /// A skip with a stable machine-readable code (`"rate_limited"`) and a reason for people.
    pub fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Why the handler was skipped.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What a message or a call has that a keyed layer can be keyed by: the channel (for a client
/// route, `type:action`) and the payload (for a client route, its `data`).
pub trait Keyed {
    /// The channel.
    fn channel(&self) -> Cow<'_, str>;
    /// The payload.
    fn payload(&self) -> &Value;
}

impl Keyed for crate::Context {
    fn channel(&self) -> Cow<'_, str> {
        Cow::Borrowed(crate::Context::channel(self))
    }
    fn payload(&self) -> &Value {
        self.message()
    }
}

type KeyFn<Cx> = Arc<dyn Fn(&Cx) -> u64 + Send + Sync>;

/// What a keyed layer ([`RateLimitLayer`], [`ThrottleLayer`], [`DebounceLayer`]) keeps a separate
/// budget for.
pub struct Key<Cx = crate::Context> {
    hash: KeyFn<Cx>,
    what: &'static str,
}

impl<Cx> Clone for Key<Cx> {
    fn clone(&self) -> Self {
        Self {
            hash: self.hash.clone(),
            what: self.what,
        }
    }
}

impl<Cx> fmt::Debug for Key<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
}

fn hash_of(value: impl Hash) -> u64 {
    KEY_HASHER.hash_one(value)
}

static KEY_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

impl<Cx: Keyed + 'static> Key<Cx> {
    /// One budget per channel (the default).
    pub fn channel() -> Self {
        Self {
            hash: Arc::new(|cx: &Cx| hash_of(&*cx.channel())),
            what: "per channel",
        }
    }

    /// One budget per value of a payload property, by a dotted path (`"user.id"`, `"items.0"`);
    /// messages without it share one budget.
    pub fn property(path: &'static str) -> Self {
        Self {
            hash: Arc::new(move |cx: &Cx| {
                match crate::message::matcher::property(cx.payload(), path) {
                    Some(Value::String(s)) => hash_of(s),
                    Some(other) => hash_of(other.to_string()),
                    None => 0,
                }
            }),
            what: "per payload property",
        }
    }
}

impl<Cx: 'static> Key<Cx> {
    /// One budget for every call.
    pub fn global() -> Self {
        Self {
            hash: Arc::new(|_| 0),
            what: "global",
        }
    }

    /// One budget per value `f` computes (for a client route: the client's id, say).
    pub fn by<K: Hash>(f: impl Fn(&Cx) -> K + Send + Sync + 'static) -> Self {
        Self {
            hash: Arc::new(move |cx| hash_of(f(cx))),
            what: "per computed key",
        }
    }
}

/// Per-key state, bounded: when it holds `MAX_KEYS` keys, the entries no longer in use go.
struct Keys<T> {
    map: Mutex<HashMap<u64, T>>,
}

const MAX_KEYS: usize = 10_000;

impl<T> Keys<T> {
    fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the key's state (no user code runs under the lock).
    fn with<R>(
        &self,
        key: u64,
        new: impl FnOnce() -> T,
        stale: impl Fn(&T) -> bool,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            map.retain(|_, state| !stale(state));
        }
        f(map.entry(key).or_insert_with(new))
    }
}

/// Lets at most `max` calls per key through within any window of `window` (a sliding window, as
/// the reference's `rateLimitMiddleware`); the others are [`Skipped`] with code `"rate_limited"`,
/// and are not counted against the budget.
///
/// ```
/// use std::time::Duration;
/// use switchboard::layer::{Key, RateLimitLayer};
///
/// // 10 messages per second and channel; then 5 per second per user id.
/// // (The handlers' context is inferred where the layer is used; alone, name it.)
/// let per_channel: RateLimitLayer = RateLimitLayer::new(10, Duration::from_secs(1));
/// let per_user: RateLimitLayer =
///     RateLimitLayer::new(5, Duration::from_secs(1)).per(Key::property("userId"));
/// # let _ = (per_channel, per_user);
/// ```
pub struct RateLimitLayer<Cx = crate::Context> {
    max: usize,
    window: Duration,
    key: Key<Cx>,
}

impl<Cx> fmt::Debug for RateLimitLayer<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("max", &self.max)
            .field("window", &self.window)
            .field("key", &self.key)
            .finish()
    }
}

impl<Cx: Keyed + 'static> RateLimitLayer<Cx> {
    /// At most `max` calls per `window`, per channel.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            key: Key::channel(),
        }
    }
}

impl<Cx> RateLimitLayer<Cx> {
    /// Keeps the budget per `key` instead.
    #[must_use]
    pub fn per(mut self, key: Key<Cx>) -> Self {
        self.key = key;
        self
    }
}

impl<S, Cx> Layer<S> for RateLimitLayer<Cx> {
    type Service = Limit<S, Cx>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            key: self.key.clone(),
            state: Arc::new(Keys::new()),
            policy: RateWindow {
                max: self.max,
                window: self.window,
            },
        }
    }
}

/// Lets the first call per key through, then at most one per `interval` (the reference's
/// `withThrottle`); the others are [`Skipped`] with code `"throttled"`.
///
/// ```
/// use std::time::Duration;
/// use switchboard::layer::ThrottleLayer;
///
/// let at_most_twice_a_second: ThrottleLayer = ThrottleLayer::new(Duration::from_millis(500));
/// # let _ = at_most_twice_a_second;
/// ```
pub struct ThrottleLayer<Cx = crate::Context> {
    interval: Duration,
    key: Key<Cx>,
}

impl<Cx> fmt::Debug for ThrottleLayer<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("interval", &self.interval)
            .field("key", &self.key)
            .finish()
    }
}

impl<Cx: Keyed + 'static> ThrottleLayer<Cx> {
    /// At most one call per `interval`, per channel.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            key: Key::channel(),
        }
    }
}

impl<Cx> ThrottleLayer<Cx> {
    /// Throttles per `key` instead.
    #[must_use]
    pub fn per(mut self, key: Key<Cx>) -> Self {
        self.key = key;
        self
    }
}

impl<S, Cx> Layer<S> for ThrottleLayer<Cx> {
    type Service = Limit<S, Cx>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            key: self.key.clone(),
            state: Arc::new(Keys::new()),
            policy: RateWindow {
                max: 1,
                window: self.interval,
            },
        }
    }
}

/// The admission rule of [`RateLimitLayer`] and [`ThrottleLayer`]: at most `max` admitted calls
/// in any `window`.
#[derive(Debug, Clone, Copy)]
struct RateWindow {
    max: usize,
    window: Duration,
}

impl RateWindow {
    fn admit(&self, times: &mut VecDeque<Instant>, now: Instant) -> bool {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.max {
            return false;
        }
        times.push_back(now);
        true
    }

    fn skipped(&self) -> Skipped {
        if self.max == 1 {
            Skipped::new(
                "throttled",
                format!("throttled: at most one call per {:?}", self.window),
            )
        } else {
            Skipped::new(
                "rate_limited",
                format!(
                    "rate limited: at most {} calls per {:?}",
                    self.max, self.window
                ),
            )
        }
    }
}

/// The service of [`RateLimitLayer`] and [`ThrottleLayer`].
pub struct Limit<S, Cx> {
    inner: S,
    key: Key<Cx>,
    state: Arc<Keys<VecDeque<Instant>>>,
    policy: RateWindow,
}

impl<S: Clone, Cx> Clone for Limit<S, Cx> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            state: self.state.clone(),
            policy: self.policy,
        }
    }
}

impl<S, Cx> fmt::Debug for Limit<S, Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("policy", &self.policy)
            .field("key", &self.key)
            .finish()
    }
}

impl<S, Cx> Service<Cx> for Limit<S, Cx>
where
    S: Service<Cx>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, task: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(task).map_err(Into::into)
    }

    fn call(&mut self, cx: Cx) -> Self::Future {
        let key = (self.key.hash)(&cx);
        let now = Instant::now();
        let window = self.policy.window;
        let admitted = self.state.with(
            key,
            VecDeque::new,
            |times| {
                times
                    .back()
                    .is_none_or(|t| now.duration_since(*t) >= window)
            },
            |times| self.policy.admit(times, now),
        );
        if !admitted {
            let skipped: BoxError = Box::new(self.policy.skipped());
            return Box::pin(std::future::ready(Err(skipped)));
        }
        Box::pin(self.inner.call(cx).map(|r| r.map_err(Into::into)))
    }
}

/// Runs the last call of a burst, once no call with the same key came for `quiet` (the
/// reference's `withDebounce`, without its bug: every call settles).
///
/// A debounced call returns at once, [`Skipped`] with code `"debounced"`, so that the message's
/// other handlers and the channel's next messages do not wait; the call that is still the last
/// one `quiet` later then runs on its own task. Its failure is logged; it is not part of the
/// message's handler sequence.
///
/// ```
/// use std::time::Duration;
/// use switchboard::layer::{DebounceLayer, Key};
///
/// // Re-index a document 200 ms after its last edit.
/// let debounce: DebounceLayer =
///     DebounceLayer::new(Duration::from_millis(200)).per(Key::property("documentId"));
/// # let _ = debounce;
/// ```
pub struct DebounceLayer<Cx = crate::Context> {
    quiet: Duration,
    key: Key<Cx>,
}

impl<Cx> fmt::Debug for DebounceLayer<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebounceLayer")
            .field("quiet", &self.quiet)
            .field("key", &self.key)
            .finish()
    }
}

impl<Cx: Keyed + 'static> DebounceLayer<Cx> {
    /// Debounces per channel.
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            key: Key::channel(),
        }
    }
}

impl<Cx> DebounceLayer<Cx> {
    /// Debounces per `key` instead.
    #[must_use]
    pub fn per(mut self, key: Key<Cx>) -> Self {
        self.key = key;
        self
    }
}

impl<S, Cx> Layer<S> for DebounceLayer<Cx> {
    type Service = Debounce<S, Cx>;

    fn layer(&self, inner: S) -> Self::Service {
        Debounce {
            inner,
            key: self.key.clone(),
            quiet: self.quiet,
            generations: Arc::new(Keys::new()),
        }
    }
}

/// The service of [`DebounceLayer`].
pub struct Debounce<S, Cx> {
    inner: S,
    key: Key<Cx>,
    quiet: Duration,
    /// Per key: the generation of its last call, and when it came.
    generations: Arc<Keys<(u64, Instant)>>,
}

impl<S: Clone, Cx> Clone for Debounce<S, Cx> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            quiet: self.quiet,
            generations: self.generations.clone(),
        }
    }
}

impl<S, Cx> fmt::Debug for Debounce<S, Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Debounce")
            .field("quiet", &self.quiet)
            .field("key", &self.key)
            .finish()
    }
}

impl<S, Cx> Service<Cx> for Debounce<S, Cx>
where
    Cx: Send + 'static,
    S: Service<Cx> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::future::Ready<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // The inner service is made ready on the deferred task, when (and if) it runs.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, cx: Cx) -> Self::Future {
        let key = (self.key.hash)(&cx);
        let quiet = self.quiet;
        let now = Instant::now();
        let generation = self.generations.with(
            key,
            || (0, now),
            |(_, at)| now.duration_since(*at) > quiet,
            |state| {
                state.0 += 1;
                state.1 = now;
                state.0
            },
        );
        let generations = self.generations.clone();
        let mut inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(quiet).await;
            let last = generations.with(key, || (0, now), |_| false, |state| state.0);
            if last != generation {
                return; // a later call superseded this one
            }
            let outcome = async {
                std::future::poll_fn(|task| inner.poll_ready(task))
                    .await
                    .map_err(Into::into)?;
                inner.call(cx).await.map_err(Into::into)
            };
            if let Err(error) = outcome.await {
                let error: BoxError = error;
                tracing::error!(%error, "debounced handler failed");
            }
        });
        std::future::ready(Err(Box::new(Skipped::new(
            "debounced",
            "debounced: runs once no call came for the quiet period",
        ))))
    }
}

/// A retry policy for tower's [`RetryLayer`](https://docs.rs/tower/latest/tower/retry/struct.RetryLayer.html):
/// up to `attempts` calls in all, the handler's failures only (never a rejected argument or a
/// skip), waiting an exponential backoff with jitter between them (tower's own
/// `ExponentialBackoff`).
///
/// ```
/// use std::time::Duration;
/// use switchboard::layer::Backoff;
///
/// // 5 attempts: 100 ms, 200 ms, 400 ms, 800 ms apart (each plus up to 10%), at most 5 s apart.
/// let retry = tower::retry::RetryLayer::new(
///     Backoff::new(5, Duration::from_millis(100)).max_delay(Duration::from_secs(5)),
/// );
/// # let _ = retry;
/// ```
#[derive(Clone)]
pub struct Backoff {
    attempts: u32,
    made: u32,
    min: Duration,
    max: Duration,
    jitter: f64,
    backoff: Option<tower::retry::backoff::ExponentialBackoff>,
    retry_if: Option<RetryIf>,
}

type RetryIf = Arc<dyn Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> bool + Send + Sync>;

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("attempts", &self.attempts)
            .field("first_delay", &self.min)
            .field("max_delay", &self.max)
            .field("jitter", &self.jitter)
            .field("retry_if", &self.retry_if.is_some())
            .finish()
    }
}

impl Backoff {
    /// At most `attempts` calls in all (at least 1), the first retry `first_delay` after the
    /// failure, then doubling; 10% jitter; at most 30 s apart.
    pub fn new(attempts: u32, first_delay: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            made: 1,
            min: first_delay,
            max: Duration::from_secs(30).max(first_delay),
            jitter: 0.1,
            backoff: None,
            retry_if: None,
        }
    }

    /// Retries only the errors `retryable` accepts (by default every error the handler returns):
    /// a bad payload will not get better, a lost connection may.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::layer::Backoff;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("invalid event")]
    /// struct InvalidEvent;
    ///
    /// let retry = Backoff::new(3, Duration::from_millis(20)).retry_if(|e| !e.is::<InvalidEvent>());
    /// # let _ = retry;
    /// ```
    #[must_use]
    pub fn retry_if(
        mut self,
        retryable: impl Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> bool
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(retryable));
        self
    }

    fn retries(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
        if error.is::<Skipped>() {
            return false;
        }
        if let Some(failure) = error.downcast_ref::<HandlerFailure>() {
            return self.retries_failure(failure);
        }
        self.retry_if
            .as_ref()
            .is_none_or(|retryable| retryable(error))
    }

    fn retries_failure(&self, failure: &HandlerFailure) -> bool {
        match failure {
            HandlerFailure::Failed(error) => self.retries(&**error),
            _ => false,
        }
    }

    /// The longest wait between two attempts.
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max.max(self.min).max(Duration::from_millis(1));
        self
    }

    /// The jitter: up to this fraction of each wait is added at random (0.0 to 1.0; default 0.1).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    fn next_delay(&mut self) -> Option<tokio::time::Sleep> {
        use tower::retry::backoff::{Backoff as _, MakeBackoff as _};
        if self.made >= self.attempts {
            return None;
        }
        self.made += 1;
        let (min, max, jitter) = (
            self.min,
            self.max.max(Duration::from_millis(1)),
            self.jitter,
        );
        let backoff = self.backoff.get_or_insert_with(|| {
            tower::retry::backoff::ExponentialBackoffMaker::new(
                min.min(max),
                max,
                jitter,
                tower::util::rng::HasherRng::default(),
            )
            .expect("min <= max, max > 0, 0 <= jitter <= 1")
            .make_backoff()
        });
        Some(backoff.next_backoff())
    }
}

impl<Cx: Clone, Res> tower::retry::Policy<Cx, Res, HandlerFailure> for Backoff {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Cx,
        result: &mut Result<Res, HandlerFailure>,
    ) -> Option<Self::Future> {
        match result {
            Err(failure) if self.retries_failure(failure) => self.next_delay(),
            _ => None,
        }
    }

    fn clone_request(&mut self, cx: &Cx) -> Option<Cx> {
        Some(cx.clone())
    }
}

impl<Cx: Clone, Res> tower::retry::Policy<Cx, Res, BoxError> for Backoff {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut Cx, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
        match result {
            Err(error) if self.retries(&**error) => self.next_delay(),
            _ => None,
        }
    }

    fn clone_request(&mut self, cx: &Cx) -> Option<Cx> {
        Some(cx.clone())
    }
}
