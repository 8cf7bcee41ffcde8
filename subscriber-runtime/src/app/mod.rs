//! The application: [`Switchboard::builder`] collects handlers, state and options; `build()`
//! validates everything; `start()` subscribes and starts dispatching.

pub mod plugin;
mod switchboard;

pub use switchboard::{Running, Switchboard};

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::durable::DurableRule;
use crate::broker::{Broker, MemoryBroker, Retention, Subscriptions};
use crate::dispatch::registry::HandlerInfo;
use crate::dispatch::registry::{self, RegistryOptions};
use crate::dispatch::{DispatchConfig, DispatchEvent, Dispatcher, Observer};
use crate::error::{BuildError, Error};
use crate::handler::context::{Context, Resources, StateMap};
use crate::handler::subscriber::InlineSubscriber;
use crate::message::envelope::PayloadLimits;
use crate::message::matcher::{Compiled, Matcher, MatcherKind};
use crate::observe::stats::{Counters, InFlight};
use crate::publish::Publisher;
use plugin::{Plugin, PluginContext, Plugins};

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
    invalid_log_interval: Duration,
    listen: BTreeSet<String>,
    framework_channels: bool,
    observers: Vec<Observer>,
    plugins: Plugins,
    durable: Vec<(Matcher, Retention)>,
    once_claim_idle: Duration,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("broker", &self.broker.as_ref().map(|b| b.kind()))
            .field("states", &self.states)
            .field("inline", &self.inline)
            .field("worker_id", &self.worker_id)
            .field("plugins", &self.plugins)
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
            invalid_log_interval: Duration::from_secs(10),
            listen: BTreeSet::new(),
            framework_channels: true,
            observers: Vec::new(),
            plugins: linked_plugins(),
            durable: Vec::new(),
            once_claim_idle: Duration::from_secs(60),
        }
    }
}

/// A plugin that every application of a binary gets unless it leaves it out: submitted at link
/// time by a crate whose plugin an application should not have to ask for (the WebSocket server
/// submits itself, so that linking it is enough to serve clients). Not public API.
#[doc(hidden)]
pub struct DefaultPlugin {
    /// Makes the plugin with its defaults.
    pub make: fn() -> Box<dyn Plugin>,
}

impl fmt::Debug for DefaultPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DefaultPlugin")
    }
}

inventory::collect!(DefaultPlugin);

fn linked_plugins() -> Plugins {
    Plugins(
        inventory::iter::<DefaultPlugin>
            .into_iter()
            .map(|p| (p.make)())
            .collect(),
    )
}

/// The PEM of `REDIS_TLS_CA_FILE`.
fn read_ca_file(path: &str) -> Result<Vec<u8>, crate::BrokerError> {
    let path = path.trim();
    if !cfg!(feature = "tls") {
        return Err(crate::BrokerError::Config(format!(
            "REDIS_TLS_CA_FILE={path:?} is set, but TLS needs the `tls` feature (of switchboard, or subscriber-runtime); enable it, or unset REDIS_TLS_CA_FILE"
        )));
    }
    std::fs::read(path).map_err(|e| {
        crate::BrokerError::Config(format!(
            "REDIS_TLS_CA_FILE={path:?} cannot be read: {e} (give the path of a PEM file of the CA certificates that signed the Redis servers' certificates)"
        ))
    })
}

impl Builder {
    /// Uses this broker (default: a new in-process [`MemoryBroker`]).
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// Picks the broker from the environment:
    /// - a [`RedisClusterBroker`](crate::broker::RedisClusterBroker) on the seed nodes of
    ///   `REDIS_CLUSTER_URLS` (URLs separated by commas or spaces) when it is set and not empty,
    ///   with `REDIS_CLUSTER_PARTITIONS` partitions when that is set;
    /// - else a [`RedisBroker`](crate::broker::RedisBroker) on `REDIS_URL` when it is set and not
    ///   empty;
    /// - else the in-process [`MemoryBroker`].
    ///
    /// Either Redis broker is namespaced with `REDIS_NAMESPACE` when that is set and not empty.
    /// With `rediss://` URLs (the `tls` feature), `REDIS_TLS_CA_FILE` is the path of a PEM file of
    /// the CA certificates to trust instead of the platform's (see
    /// `RedisBroker::tls_root_certificates`, feature `tls`).
    ///
    /// # Errors
    /// [`Error::Broker`] with [`BrokerError::Config`](crate::BrokerError::Config) when
    /// `REDIS_URL` or `REDIS_CLUSTER_URLS` holds an invalid URL, `REDIS_CLUSTER_PARTITIONS` is
    /// not a number, or `REDIS_TLS_CA_FILE` cannot be read, holds no certificate, is set for
    /// `redis://` URLs or without the `tls` feature. A number of partitions outside 1 to 1024 is
    /// the same error when the application starts.
    pub fn broker_from_env(self) -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let namespace = var("REDIS_NAMESPACE");
        let ca_file = var("REDIS_TLS_CA_FILE");
        if let Some(urls) = var("REDIS_CLUSTER_URLS") {
            let urls = urls.split([',', ' ', '\n', '\t']).filter(|u| !u.is_empty());
            let mut broker = crate::broker::RedisClusterBroker::from_urls(urls)?;
            if let Some(count) = var("REDIS_CLUSTER_PARTITIONS") {
                let count = count.trim().parse::<usize>().map_err(|_| {
                    crate::BrokerError::Config(format!(
                        "REDIS_CLUSTER_PARTITIONS={count:?} is not a number: give the number of partitions, e.g. 128"
                    ))
                })?;
                broker = broker.partitions(count);
            }
            if let Some(namespace) = namespace {
                broker = broker.namespace(namespace.trim());
            }
            if let Some(path) = ca_file {
                let _pem = read_ca_file(&path)?;
                #[cfg(feature = "tls")]
                {
                    broker = broker.tls_root_certificates(_pem)?;
                }
            }
            return Ok(self.broker(broker));
        }
        match var("REDIS_URL") {
            Some(url) => {
                let mut broker = crate::broker::RedisBroker::from_url(&url)?;
                if let Some(namespace) = namespace {
                    broker = broker.namespace(namespace.trim());
                }
                if let Some(path) = ca_file {
                    let _pem = read_ca_file(&path)?;
                    #[cfg(feature = "tls")]
                    {
                        broker = broker.tls_root_certificates(_pem)?;
                    }
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

    /// Adds a [`Plugin`], or replaces the plugin of the same type.
    pub fn plugin<P: Plugin>(mut self, plugin: P) -> Self {
        match self.plugins.get_mut::<P>() {
            Some(existing) => *existing = plugin,
            None => self.plugins.0.push(Box::new(plugin)),
        }
        self
    }

    /// The plugin of type `P`, added with its defaults if the builder has none: how a plugin's
    /// own builder methods (an extension trait) configure it.
    pub fn plugin_mut<P: Plugin + Default>(&mut self) -> &mut P {
        if self.plugins.get::<P>().is_none() {
            self.plugins.0.push(Box::new(P::default()));
        }
        self.plugins
            .get_mut::<P>()
            .expect("the plugin was just added")
    }

    /// Leaves out the plugin of type `P` (for example the WebSocket server that linking it adds by
    /// default).
    pub fn without_plugin<P: Plugin>(mut self) -> Self {
        self.plugins
            .0
            .retain(|p| !(&**p as &dyn std::any::Any).is::<P>());
        self
    }

    /// Calls `observer` with every [`DispatchEvent`]: each handler run and its outcome, each
    /// refused payload, each own message skipped. For test kits and inspectors; it runs on the
    /// dispatch path, so keep it quick.
    pub fn observe(mut self, observer: impl Fn(&DispatchEvent) + Send + Sync + 'static) -> Self {
        self.observers.push(Arc::new(observer));
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

    /// Time the named handler may take per message, instead of the default (and of its
    /// attribute's `timeout = "..."`).
    pub fn handler_timeout_for(mut self, name: impl Into<String>, timeout: Duration) -> Self {
        self.options.timeouts.insert(name.into(), timeout);
        self
    }

    /// Wraps every subscriber handler in a tower layer (see [`layer`](crate::layer)). The
    /// application's layers are the outermost, the first one given outside the others; group
    /// layers ([`layer_for`](Self::layer_for)) and each handler's own come inside them. The
    /// handler's timeout covers them all.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// // At most 8 runs of each handler at a time, across all channels.
    /// let builder = Switchboard::builder().layer(switchboard::tower::limit::ConcurrencyLimitLayer::new(8));
    /// # let _ = builder;
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: crate::layer::IntoHandlerLayer<Context>,
    {
        self.options.layers.push((None, layer.into_handler_layer()));
        self
    }

    /// Wraps the subscriber handlers that `select` picks (by name, module, matchers...) in a
    /// tower layer, in the order of [`layer`](Self::layer) calls and after them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::layer::Backoff;
    /// use switchboard::prelude::*;
    ///
    /// // Retry the handlers of the `billing` module, up to 3 attempts.
    /// let builder = Switchboard::builder().layer_for(
    ///     |h| h.location().module_path.contains("::billing"),
    ///     switchboard::tower::retry::RetryLayer::new(Backoff::new(3, Duration::from_millis(20))),
    /// );
    /// # let _ = builder;
    /// ```
    pub fn layer_for<L>(
        mut self,
        select: impl Fn(&HandlerInfo) -> bool + Send + Sync + 'static,
        layer: L,
    ) -> Self
    where
        L: crate::layer::IntoHandlerLayer<Context>,
    {
        self.options
            .layers
            .push((Some(Arc::new(select)), layer.into_handler_layer()));
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

    /// At most one warning per this interval (default 10 s) about invalid input on one channel: a
    /// payload that is not JSON (or too large, too deep), or an argument a handler rejected (per
    /// handler and channel). Each one is counted ([`Stats`](crate::Stats)) whatever the interval;
    /// the warning says how many were held back.
    pub fn invalid_input_log_interval(mut self, interval: Duration) -> Self {
        self.invalid_log_interval = interval;
        self
    }

    /// How long shutdown waits for running handlers (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Makes the channels `matcher` selects (an exact channel, [`Matcher::pattern`] or
    /// [`Matcher::regex`]) **durable**, keeping `retention` of their history. Handlers marked
    /// `durable` (the attribute key, [`Subscriber::durable`](crate::Subscriber::durable)) make
    /// their own channels durable with the default [`Retention`]; a rule given here for the same
    /// channel wins.
    ///
    /// A publish on a durable channel appends the message to the channel's stream and publishes
    /// it live with its position (epoch, offset), atomically (on Redis, one script). Each worker
    /// keeps the last offset it handled per channel; a gap (it was disconnected, or its queue was
    /// full) is read from the stream and handled first, in order; after a reconnect everything
    /// after the last offset is read. Handlers see the position with
    /// [`StreamPosition`](crate::StreamPosition).
    ///
    /// Delivery is then **at-least-once** and in order per channel, within the retention: each
    /// offset runs once per worker run (a live copy of a message already read from the stream is
    /// skipped); a handler with effects that must not repeat across restarts stores the last
    /// `(epoch, offset)` with them. What the stream no longer holds when a worker comes to read it
    /// is counted in [`Stats::durable_lost`](crate::Stats::durable_lost). A worker learns a
    /// pattern's channel from its first message; for exact channels it knows the offset at start.
    ///
    /// Every worker that publishes on the channel must have the same rule (workers of one binary
    /// do); a message published on it some other way is delivered live, at-most-once. The
    /// in-process broker keeps the streams in memory, so a message its full queue dropped is read
    /// again as on Redis.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::broker::Retention;
    /// use switchboard::{Matcher, Switchboard};
    ///
    /// let builder = Switchboard::builder()
    ///     .durable("payments", Retention::new().messages(10_000))
    ///     .durable(Matcher::pattern("orders:*"), Retention::new().age(Duration::from_secs(600)));
    /// # let _ = builder;
    /// ```
    pub fn durable(mut self, matcher: impl Into<Matcher>, retention: Retention) -> Self {
        self.durable.push((matcher.into(), retention));
        self
    }

    /// How long a message taken by a run-once handler's worker may stay unacknowledged before
    /// another worker takes it over (default 60 s): the time after which a worker that died (or
    /// hangs) mid-message is given up on. Keep it above the handlers' timeout, or a slow run
    /// is taken over while it still runs (and the message handled twice). See
    /// [`Subscriber::once`](crate::Subscriber::once).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::Switchboard;
    ///
    /// let builder = Switchboard::builder()
    ///     .handler_timeout(Duration::from_secs(5))
    ///     .once_claim_idle(Duration::from_secs(10));
    /// # let _ = builder;
    /// ```
    pub fn once_claim_idle(mut self, idle: Duration) -> Self {
        self.once_claim_idle = idle.max(Duration::from_millis(1));
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

    /// Whether to subscribe to the framework's own channels ([`event::ALL`](crate::message::event::ALL));
    /// on by default, since the WebSocket server uses them.
    pub fn framework_channels(mut self, on: bool) -> Self {
        self.framework_channels = on;
        self
    }

    /// Builds the plugins (which add state, internal subscribers and listen channels), then
    /// collects every handler, validates them (duplicate names, missing state, bad matchers),
    /// sorts them, and logs the handler table.
    ///
    /// It also resolves the handles of every metric (see the README, "Metrics") from the global
    /// `metrics` recorder installed at this point: one a plugin installs here (the WebSocket
    /// server's `prometheus`), or your own, installed before `build()`. Without a recorder,
    /// metrics cost next to nothing and go nowhere.
    ///
    /// # Errors
    /// [`Error::Build`] naming the handler and what to fix.
    pub fn build(mut self) -> Result<Switchboard, Error> {
        for name in &self.listen {
            subscriber_patterns::validate_channel(name).map_err(|e| {
                BuildError::InvalidMatcher {
                    handler: "<listen>".to_owned(),
                    matcher: format!("{name:?}"),
                    reason: e.to_string(),
                }
            })?;
        }
        let worker_id: Arc<str> = self
            .worker_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
            .into();
        let broker = self.broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()));
        let publisher = Publisher::new(broker.clone(), worker_id.clone());

        // Plugins first: they add state, internal subscribers and listen channels.
        let mut internal = Vec::new();
        let mut checks = Vec::new();
        let mut eager_metrics = false;
        let mut plugin_listen = BTreeSet::new();
        for plugin in &mut self.plugins.0 {
            plugin.build(&mut PluginContext {
                states: &mut self.states,
                subscribers: &mut internal,
                listen: &mut plugin_listen,
                checks: &mut checks,
                publisher: &publisher,
                worker_id: &worker_id,
                handler_timeout: self.handler_timeout,
                include_linked: !self.options.without_linked,
                framework_channels: self.framework_channels,
                eager_metrics: &mut eager_metrics,
            })?;
        }
        for (handler, location, requirements) in &checks {
            requirements.check(handler, location.as_ref(), &self.states)?;
        }
        self.listen.extend(plugin_listen);
        let mut entries = registry::build_internal(internal)?;
        entries.extend(registry::build(self.inline, &self.states, self.options)?);
        // Once everything is valid, each handler's metric handles from the recorder a plugin
        // installed, so that each handler's series exist (at 0) from the first scrape. Otherwise
        // handles are resolved on each handler's first run.
        if eager_metrics {
            for e in entries.iter().filter(|e| !e.internal) {
                e.metrics();
            }
        }
        let counters = Arc::new(Counters::resolved());

        // What to subscribe to, borrowed from the handlers: only the channels that no pattern
        // covers are copied, by `Subscriptions`.
        let mut channels: Vec<&str> = self.listen.iter().map(String::as_str).collect();
        if self.framework_channels {
            channels.extend(crate::message::event::ALL.iter().copied());
        }
        // These keep their own name as a metric label (handlers' exact channels do too, through
        // the router's exact map).
        let named: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let mut patterns: Vec<&str> = Vec::new();
        for e in entries.iter().filter(|e| !e.once) {
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
        let rules = durable_rules(self.durable, &entries)?;
        if !rules.is_empty() {
            if let Some(kind) = ["memory", "redis"]
                .iter()
                .all(|k| *k != broker.kind())
                .then(|| broker.kind())
            {
                tracing::warn!(
                    broker = kind,
                    "durable channels need a broker with streams (memory, redis): publishing on them will fail"
                );
            }
            tracing::info!(
                worker_id = %worker_id,
                durable = %rules.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>().join(", "),
                "durable channels"
            );
        }
        publisher.durable().set(rules);
        if let Some(e) = entries.iter().find(|e| e.once) {
            let timeout = e.timeout.unwrap_or(self.handler_timeout);
            if self.once_claim_idle <= timeout {
                tracing::warn!(
                    handler = %e.info.name,
                    claim_idle = ?self.once_claim_idle,
                    timeout = ?timeout,
                    "once_claim_idle is not above the run-once handler's timeout: a slow run may be taken over by another worker while it still runs"
                );
            }
        }

        let in_flight = Arc::new(InFlight::default());
        let shared = Arc::new(Resources {
            states: self.states,
            publisher,
            counters: counters.clone(),
            dispatcher: std::sync::OnceLock::new(),
        });
        let config = DispatchConfig {
            limits: self.limits,
            handler_timeout: self.handler_timeout,
            max_concurrent_channels: self.max_concurrent_channels,
            max_pending: self.queue_capacity,
            worker_id: worker_id.clone(),
            invalid_log_interval: self.invalid_log_interval,
        };
        let dispatcher = Dispatcher::new(
            entries,
            named,
            shared.clone(),
            config,
            counters.clone(),
            in_flight.clone(),
            self.observers,
        );
        let dispatcher = Arc::new(dispatcher);
        let weak: std::sync::Weak<dyn std::any::Any + Send + Sync> =
            Arc::downgrade(&dispatcher) as _;
        let _ = shared.dispatcher.set(weak);
        Ok(Switchboard {
            dispatcher,
            shared,
            broker,
            subscriptions,
            counters,
            in_flight,
            worker_id,
            queue_capacity: self.queue_capacity,
            shutdown_grace: self.shutdown_grace,
            plugins: self.plugins,
            once_claim_idle: self.once_claim_idle,
        })
    }
}

/// The durable rules: the builder's first (their retention wins), then each durable handler's
/// channels, patterns and regexes with the default retention.
fn durable_rules(
    given: Vec<(Matcher, Retention)>,
    entries: &[registry::Entry],
) -> Result<Vec<(DurableRule, Retention)>, BuildError> {
    let invalid = |what: String, reason: &str| BuildError::InvalidDurable {
        what,
        reason: reason.to_owned(),
    };
    const EVERY: &str =
        "`\"*\"` would keep a stream for every channel: name the channels, a pattern or a regex";
    const PREDICATE: &str =
        "a predicate names no channel whose messages could be kept: give a channel, a pattern or a regex";
    let mut rules = Vec::new();
    for (matcher, retention) in given {
        let what = format!("`durable({matcher:?})`");
        let rule = match matcher.0 {
            MatcherKind::Channel(c) if &*c == subscriber_patterns::ANY_CHANNEL => {
                return Err(invalid(what, EVERY))
            }
            MatcherKind::Channel(c) => {
                subscriber_patterns::validate_channel(&c)
                    .map_err(|e| invalid(what.clone(), &e.to_string()))?;
                DurableRule::Channel(c.to_string())
            }
            MatcherKind::Pattern(p) => {
                subscriber_patterns::validate_channel(&p)
                    .map_err(|e| invalid(what.clone(), &e.to_string()))?;
                DurableRule::Pattern(p.to_string())
            }
            MatcherKind::Regex(r) => DurableRule::Regex(
                regex::Regex::new(&r).map_err(|e| invalid(what.clone(), &e.to_string()))?,
            ),
            MatcherKind::Predicate(_) => return Err(invalid(what, PREDICATE)),
        };
        rules.push((rule, retention));
    }
    for entry in entries.iter().filter(|e| e.durable || e.once) {
        if entry.once {
            let mut named = false;
            for matcher in &entry.matchers {
                match matcher {
                    Compiled::Channel(c) if &**c != subscriber_patterns::ANY_CHANNEL => {
                        named = true;
                    }
                    Compiled::Predicate(_) => {}
                    _ => {
                        return Err(invalid(
                            format!(
                                "handler `{}` ({}), which runs once,",
                                entry.info.name,
                                entry.info.location()
                            ),
                            "a run-once handler reads each of its channels' streams in a consumer group: give it exact channels (not `\"*\"`, a pattern or a regex)",
                        ))
                    }
                }
            }
            if !named {
                return Err(invalid(entry.info.name.to_string(), PREDICATE));
            }
        }
        let what = format!("handler `{}` ({})", entry.info.name, entry.info.location());
        let mut named = false;
        for matcher in &entry.matchers {
            let rule = match matcher {
                Compiled::Any => return Err(invalid(what, EVERY)),
                Compiled::Channel(c) => DurableRule::Channel(c.to_string()),
                Compiled::Pattern(p) => DurableRule::Pattern(p.to_string()),
                Compiled::Regex(src, _) => DurableRule::Regex(
                    regex::Regex::new(src).map_err(|e| invalid(what.clone(), &e.to_string()))?,
                ),
                Compiled::Predicate(_) => continue,
            };
            named = true;
            rules.push((rule, Retention::default()));
        }
        if !named {
            return Err(invalid(what, PREDICATE));
        }
    }
    Ok(rules)
}
