//! The application: [`Switchboard::builder`] collects handlers, state and options; `build()`
//! validates everything; `start()` subscribes and starts dispatching.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Inbox, MemoryBroker, Subscriptions};
use crate::context::{Shared, StateMap};
use crate::dispatch::{DispatchConfig, Dispatcher, Observer};
use crate::envelope::PayloadLimits;
use crate::error::Error;
use crate::matcher::Compiled;
use crate::publish::Publisher;
use crate::registry::{self, HandlerInfo, RegistryOptions};
use crate::server::WebSocket;
use crate::stats::{Counters, InFlight, Stats};
use crate::subscriber::InlineSubscriber;

/// Configures and builds a Switchboard application. Start with [`Switchboard::builder`].
#[must_use = "a builder does nothing until `build()` is called"]
pub struct Builder {
    broker: Option<Arc<dyn Broker>>,
    states: StateMap,
    inline: Vec<InlineSubscriber>,
    options: RegistryOptions,
    worker_id: Option<String>,
    limits: PayloadLimits,
    handler_timeout: Duration,
    max_concurrent_channels: usize,
    queue_capacity: usize,
    shutdown_grace: Duration,
    listen: BTreeSet<String>,
    framework_channels: bool,
    /// The path of the Prometheus endpoint, when asked for.
    pub(crate) prometheus: Option<String>,
    pub(crate) observer: Option<Observer>,
    pub(crate) server: crate::server::ServerSetup,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("broker", &self.broker.as_ref().map(|b| b.kind()))
            .field("states", &self.states)
            .field("inline", &self.inline)
            .field("worker_id", &self.worker_id)
            .field("prometheus", &self.prometheus)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            broker: None,
            states: StateMap::default(),
            inline: Vec::new(),
            options: RegistryOptions::default(),
            worker_id: None,
            limits: PayloadLimits::default(),
            handler_timeout: Duration::from_secs(30),
            max_concurrent_channels: 64,
            queue_capacity: 10_000,
            shutdown_grace: Duration::from_secs(10),
            listen: BTreeSet::new(),
            framework_channels: true,
            prometheus: None,
            observer: None,
            server: crate::server::ServerSetup::default(),
        }
    }
}

impl Builder {
    /// Uses this broker (default: a new in-process [`MemoryBroker`]).
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// Picks the broker from the environment: a
    /// [`RedisBroker`](crate::broker::RedisBroker) on `REDIS_URL` when it is set and not empty
    /// (namespaced with `REDIS_NAMESPACE` when that is set and not empty), otherwise the
    /// in-process [`MemoryBroker`].
    ///
    /// # Errors
    /// [`Error::Broker`] with [`BrokerError::Config`](crate::BrokerError::Config) when
    /// `REDIS_URL` is not a valid Redis URL.
    pub fn broker_from_env(self) -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match var("REDIS_URL") {
            Some(url) => {
                let mut broker = crate::broker::RedisBroker::from_url(&url)?;
                if let Some(namespace) = var("REDIS_NAMESPACE") {
                    broker = broker.namespace(namespace.trim());
                }
                Ok(self.broker(broker))
            }
            None => Ok(self.broker(MemoryBroker::new())),
        }
    }

    /// Provides shared state to handlers that take [`State<T>`](crate::State).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Adds an inline subscriber (see [`Subscriber`](crate::Subscriber)).
    pub fn subscriber(mut self, subscriber: InlineSubscriber) -> Self {
        self.inline.push(subscriber);
        self
    }

    /// Keeps only the named handlers (attributed or inline); an unknown name fails `build()`.
    /// Mostly for tests.
    pub fn only<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.only = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves out every attributed handler linked into the binary: only inline subscribers run.
    pub fn without_linked_handlers(mut self) -> Self {
        self.options.without_linked = true;
        self
    }

    /// This worker's instance id (default: a random 32-hex-digit id). Messages carrying it as
    /// `workerId` are skipped unless they say `includeSender: true`.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Default time a handler may take per message before it is cancelled (default 30 s).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Time the named handler may take per message, instead of the default.
    pub fn handler_timeout_for(mut self, name: impl Into<String>, timeout: Duration) -> Self {
        self.options.timeouts.insert(name.into(), timeout);
        self
    }

    /// How many channels are handled concurrently (default 64). Messages of one channel are always
    /// handled one at a time, in arrival order.
    pub fn max_concurrent_channels(mut self, n: usize) -> Self {
        self.max_concurrent_channels = n;
        self
    }

    /// Capacity of the dispatch queue between the broker and the handlers (default 10 000). When
    /// it is full, new messages are dropped and counted.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Limits on received payloads (size and nesting depth).
    pub fn payload_limits(mut self, limits: PayloadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How long shutdown waits for running handlers (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Also subscribes to these channels, so that predicate and `"*"` handlers see them even when
    /// no handler names them.
    pub fn listen<I, S>(mut self, channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.listen.extend(channels.into_iter().map(Into::into));
        self
    }

    /// Whether to subscribe to the framework's own channels ([`event::ALL`](crate::event::ALL));
    /// on by default, since the WebSocket server uses them.
    pub fn framework_channels(mut self, on: bool) -> Self {
        self.framework_channels = on;
        self
    }

    /// Collects every handler, validates them (duplicate names, missing state, bad matchers),
    /// sorts them, and logs the handler table.
    ///
    /// It also resolves the handles of every metric (see the crate's README, "Metrics") from the
    /// global `metrics` recorder installed at this point: the one
    /// [`prometheus`](Self::prometheus) installs here, or your own, installed before `build()`.
    /// Without a recorder, metrics cost next to nothing and go nowhere.
    ///
    /// # Errors
    /// [`Error::Build`] naming the handler and what to fix.
    pub fn build(mut self) -> Result<Switchboard, Error> {
        for name in &self.listen {
            subscriber_patterns::validate_channel(name).map_err(|e| {
                crate::error::BuildError::InvalidMatcher {
                    handler: "<listen>".to_owned(),
                    matcher: format!("{name:?}"),
                    reason: e.to_string(),
                }
            })?;
        }
        let include_linked_routes = !self.options.without_linked;
        let entries = registry::build(self.inline, &self.states, self.options)?;
        let routes = crate::server::routes::RouteTable::build(
            std::mem::take(&mut self.server.routes),
            &self.states,
            include_linked_routes,
        )?;
        // Once everything else is valid: the recorder first, then every handler's handles from
        // it, so that each handler's series exist (at 0) from the first scrape. Without our
        // recorder, handles are resolved on each handler's first run.
        #[cfg(feature = "prometheus")]
        if let Some(path) = &self.prometheus {
            self.server.metrics = crate::telemetry::prometheus::install(path)?;
            for e in &entries {
                e.metrics();
            }
        }
        let counters = Arc::new(Counters::resolved());
        let worker_id: Arc<str> = self
            .worker_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
            .into();
        let broker = self.broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()));

        // What to subscribe to, borrowed from the handlers: only the channels that no pattern
        // covers are copied, by `Subscriptions`.
        let mut channels: Vec<&str> = self.listen.iter().map(String::as_str).collect();
        if self.framework_channels {
            channels.extend(crate::event::ALL.iter().copied());
        }
        // These keep their own name as a metric label (handlers' exact channels do too, through
        // the router's exact map).
        let named: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let mut patterns: Vec<&str> = Vec::new();
        for e in &entries {
            for m in &e.matchers {
                match m {
                    Compiled::Any => patterns.push(subscriber_patterns::ANY_CHANNEL),
                    Compiled::Channel(c) => channels.push(c),
                    Compiled::Pattern(p) => patterns.push(p),
                    Compiled::Regex(src, sub) => {
                        if !sub.narrowed {
                            tracing::warn!(
                                handler = %e.info.name,
                                regex = %src,
                                "regex has no anchored literal prefix (like `^analytics:`), so the worker subscribes to every channel (`*`) for it"
                            );
                        }
                        patterns.push(&sub.pattern);
                    }
                    Compiled::Predicate(_) => {}
                }
            }
        }
        let subscriptions = Subscriptions::plan(channels, patterns);
        if subscriptions.is_empty() {
            for e in &entries {
                let predicate_only = e
                    .matchers
                    .iter()
                    .all(|m| matches!(m, Compiled::Predicate(_)));
                if predicate_only {
                    tracing::warn!(
                        handler = %e.info.name,
                        "subscriber handler can never fire: it has only predicates and the worker subscribes to no channel; add a channel, or `.listen([...])` on the builder"
                    );
                }
            }
        }
        registry::log_table(&entries, &worker_id);

        let in_flight = Arc::new(InFlight::default());
        let publisher = Publisher::new(broker.clone(), worker_id.clone());
        let websocket = WebSocket::new(
            self.server,
            routes,
            worker_id.clone(),
            publisher.clone(),
            counters.clone(),
            self.handler_timeout,
        );
        let shared = Arc::new(Shared {
            states: self.states,
            publisher,
            websocket,
        });
        let config = DispatchConfig {
            limits: self.limits,
            handler_timeout: self.handler_timeout,
            max_concurrent_channels: self.max_concurrent_channels,
            max_pending: self.queue_capacity,
            worker_id: worker_id.clone(),
        };
        let dispatcher = Dispatcher::new(
            entries,
            named,
            shared.clone(),
            config,
            counters.clone(),
            in_flight.clone(),
            self.observer,
        );
        Ok(Switchboard {
            dispatcher: Arc::new(dispatcher),
            shared,
            broker,
            subscriptions,
            counters,
            in_flight,
            worker_id,
            queue_capacity: self.queue_capacity,
            shutdown_grace: self.shutdown_grace,
        })
    }
}

/// A built Switchboard application: its handlers are validated and sorted; [`start`](Self::start)
/// subscribes and starts dispatching.
///
/// ```
/// use switchboard::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let app = Switchboard::builder()
///     .without_linked_handlers()
///     .subscriber(Subscriber::channels(["greetings"]).name("greeter").handle(|Message(m): Message| async move {
///         tracing::info!(%m, "greeting");
///     }))
///     .build()?;
/// assert_eq!(app.handlers()[0].name(), "greeter");
/// let running = app.start().await?;
/// running.publisher().publish_including_sender("greetings", &serde_json::json!({"hi": 1})).await?;
/// running.wait_idle().await;
/// assert_eq!(running.stats().handler_runs, 1);
/// running.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Switchboard {
    dispatcher: Arc<Dispatcher>,
    shared: Arc<Shared>,
    broker: Arc<dyn Broker>,
    subscriptions: Subscriptions,
    counters: Arc<Counters>,
    in_flight: Arc<InFlight>,
    worker_id: Arc<str>,
    queue_capacity: usize,
    shutdown_grace: Duration,
}

impl fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switchboard")
            .field("worker_id", &self.worker_id)
            .field("broker", &self.broker.kind())
            .field("handlers", &self.dispatcher.entries.len())
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl Switchboard {
    /// A builder with the defaults: in-process broker, every linked handler, 30 s handler timeout.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The handlers, in the order they run (priority, then name, then module path).
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.dispatcher
            .entries
            .iter()
            .map(crate::registry::Entry::handler_info)
            .collect()
    }

    /// This worker's instance id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// What this worker subscribes to on the broker.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// Parses, routes and handles one message inline, without a broker or queue; returns how many
    /// handlers ran. Not public API: used by the benchmarks.
    #[doc(hidden)]
    pub async fn __dispatch_inline(&self, channel: &str, payload: bytes::Bytes) -> usize {
        self.dispatcher.dispatch_inline(channel, payload).await
    }

    /// Routes one message without running handlers; returns how many would run. Not public API:
    /// used by the benchmarks.
    #[doc(hidden)]
    pub fn __route_count(&self, channel: &str, message: &serde_json::Value) -> usize {
        self.dispatcher.route_count(channel, message)
    }

    /// Subscribes on the broker and starts dispatching.
    ///
    /// # Errors
    /// [`Error::Broker`] when the subscription cannot be made.
    pub async fn start(self) -> Result<Running, Error> {
        let shutdown = CancellationToken::new();
        let (inbox, rx) = Inbox::new(
            self.queue_capacity,
            self.counters.clone(),
            self.in_flight.clone(),
        );
        self.shared
            .websocket
            .inner
            .metrics
            .spawn_upkeep(shutdown.child_token());
        let dispatch = tokio::spawn(self.dispatcher.clone().run(
            rx,
            shutdown.child_token(),
            self.shutdown_grace,
        ));
        if let Err(e) = self
            .broker
            .subscribe(self.subscriptions.clone(), inbox, shutdown.child_token())
            .await
        {
            shutdown.cancel();
            return Err(e.into());
        }
        tracing::info!(
            worker_id = %self.worker_id,
            broker = self.broker.kind(),
            subscriptions = %self.subscriptions,
            "switchboard started"
        );
        Ok(Running {
            app: self,
            shutdown,
            dispatch: Some(dispatch),
        })
    }

    /// Starts, runs until `signal` resolves, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let running = self.start().await?;
        signal.await;
        running.shutdown().await;
        Ok(())
    }
}

/// A started application. Dropping it stops the subscription; [`shutdown`](Self::shutdown) also
/// waits for running handlers.
pub struct Running {
    app: Switchboard,
    shutdown: CancellationToken,
    dispatch: Option<JoinHandle<()>>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running").field("app", &self.app).finish()
    }
}

impl Running {
    /// The handlers, in the order they run.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.app.handlers()
    }

    /// This worker's instance id.
    pub fn worker_id(&self) -> &str {
        self.app.worker_id()
    }

    /// A publisher on this application's broker.
    pub fn publisher(&self) -> Publisher {
        self.app.shared.publisher.clone()
    }

    /// The WebSocket server handle.
    pub fn websocket(&self) -> WebSocket {
        self.app.shared.websocket.clone()
    }

    /// The runtime's counters.
    pub fn stats(&self) -> Stats {
        self.app.counters.snapshot()
    }

    /// Waits until every message received so far has been handled.
    pub async fn wait_idle(&self) {
        self.app.in_flight.wait_idle().await;
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.app.shared
    }

    /// Shuts down gracefully: stops accepting WebSocket connections and receiving messages, waits
    /// for running subscriber and route handlers (up to the grace period), closes every client
    /// socket with 1001, and unsubscribes.
    pub async fn shutdown(mut self) {
        let deadline = std::time::Instant::now() + self.app.shutdown_grace;
        let websocket = self.app.shared.websocket.clone();
        websocket.stop_accepting();
        self.shutdown.cancel();
        if let Some(dispatch) = self.dispatch.take() {
            if let Err(error) = dispatch.await {
                tracing::error!(%error, "dispatch task ended abnormally");
            }
        }
        websocket.close_all(deadline).await;
        tracing::info!(worker_id = %self.app.worker_id, "switchboard stopped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            self.app.shared.websocket.abort();
        }
        self.shutdown.cancel();
    }
}
