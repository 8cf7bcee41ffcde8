//! [`Plugin`]: the one hook through which crates on top of the core (the WebSocket server, test
//! kits) take part in an application: at `build()` they add state, internal subscribers and
//! listen channels; they are told when the application starts, begins to stop, and stops.
//!
//! A plugin is an ordinary value on the [`Builder`](crate::Builder): its own builder methods
//! (an extension trait on `Builder`) find it with [`Builder::plugin_mut`](crate::Builder::plugin_mut)
//! and configure it. Internal subscribers are ordinary subscribers: routed and dispatched like the
//! application's, they run before every application handler of a message, in the message's
//! channel lane (so in arrival order), and are left out of the handler table, of
//! [`handlers()`](crate::Switchboard::handlers) and of the handler counters.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::error::BuildError;
use crate::handler::context::{Resources, StateMap};
use crate::handler::extract::Requirements;
use crate::handler::subscriber::InlineSubscriber;
use crate::publish::Publisher;

/// An extension of the application. See the [module](self) documentation.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use switchboard::plugin::{Plugin, PluginContext};
/// use switchboard::prelude::*;
///
/// /// Counts the messages of one channel, and lets handlers read the count as state.
/// #[derive(Default)]
/// struct Tally(Arc<AtomicUsize>);
///
/// impl Plugin for Tally {
///     fn name(&self) -> &'static str {
///         "tally"
///     }
///     fn build(&mut self, cx: &mut PluginContext<'_>) -> Result<(), switchboard::BuildError> {
///         let count = self.0.clone();
///         cx.state(self.0.clone());
///         cx.subscriber(Subscriber::channels(["orders"]).name("tally").handle(move || {
///             count.fetch_add(1, Ordering::Relaxed);
///         }));
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let running = Switchboard::builder()
///     .without_linked_handlers()
///     .plugin(Tally::default())
///     .build()?
///     .start()
///     .await?;
/// running.publisher().publish_including_sender("orders", &serde_json::json!({"id": 1})).await?;
/// running.wait_idle().await;
/// let count: Arc<AtomicUsize> = running.resources().state().unwrap();
/// assert_eq!(count.load(Ordering::Relaxed), 1);
/// assert!(running.handlers().is_empty()); // internal subscribers are not the application's
/// running.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub trait Plugin: Any + Send + 'static {
    /// A short name for logs and errors (`"websocket"`).
    fn name(&self) -> &'static str;

    /// Called once by [`Builder::build`](crate::Builder::build), before the registry is built:
    /// add state, internal subscribers and listen channels, check the plugin's own configuration.
    ///
    /// # Errors
    /// A [`BuildError`] (for the plugin's own errors, [`BuildError::plugin`]); `build()` then fails
    /// with it.
    fn build(&mut self, cx: &mut PluginContext<'_>) -> Result<(), BuildError>;

    /// Called by [`Switchboard::start`](crate::Switchboard::start) once the broker subscription is
    /// active. `stop` is cancelled when the application stops.
    fn start(&mut self, resources: &Arc<Resources>, stop: CancellationToken) {
        let _ = (resources, stop);
    }

    /// Shutdown began: stop taking new work (the broker subscription and the dispatch of messages
    /// already received stop next).
    fn stopping(&mut self) {}

    /// Dispatch has stopped: finish what is running by `deadline`.
    fn stop(&mut self, deadline: Instant) -> BoxFuture<'_, ()> {
        let _ = deadline;
        Box::pin(async {})
    }

    /// The application was dropped without [`shutdown`](crate::Running::shutdown): stop at once.
    fn abort(&mut self) {}
}

/// What a [`Plugin`] can see and add while the application is built.
pub struct PluginContext<'a> {
    pub(crate) states: &'a mut StateMap,
    pub(crate) subscribers: &'a mut Vec<InlineSubscriber>,
    pub(crate) listen: &'a mut BTreeSet<String>,
    pub(crate) checks: &'a mut Vec<(String, Option<crate::Location>, Requirements)>,
    pub(crate) publisher: &'a Publisher,
    pub(crate) worker_id: &'a Arc<str>,
    pub(crate) handler_timeout: Duration,
    pub(crate) include_linked: bool,
    pub(crate) framework_channels: bool,
    pub(crate) eager_metrics: &'a mut bool,
}

impl fmt::Debug for PluginContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext")
            .field("worker_id", self.worker_id)
            .field("states", self.states)
            .finish_non_exhaustive()
    }
}

impl PluginContext<'_> {
    /// This worker's instance id.
    pub fn worker_id(&self) -> &Arc<str> {
        self.worker_id
    }

    /// A publisher on the application's broker.
    pub fn publisher(&self) -> &Publisher {
        self.publisher
    }

    /// The broker's shared [presence store](crate::broker::presence), if it has one (both
    /// built-in brokers do).
    pub fn presence(&self) -> Option<Arc<dyn crate::broker::PresenceStore>> {
        self.publisher.broker().presence()
    }

    /// The application's default handler timeout.
    pub fn handler_timeout(&self) -> Duration {
        self.handler_timeout
    }

    /// Whether the application includes what is linked into the binary (false after
    /// [`Builder::without_linked_handlers`](crate::Builder::without_linked_handlers)): a plugin
    /// with link-time registrations of its own honours it.
    pub fn includes_linked(&self) -> bool {
        self.include_linked
    }

    /// Whether the application subscribes to the framework's channels
    /// ([`Builder::framework_channels`](crate::Builder::framework_channels), on by default): a
    /// plugin that listens to them (the WebSocket server's cluster mirror) stays off them
    /// otherwise.
    pub fn framework_channels(&self) -> bool {
        self.framework_channels
    }

    /// Provides state to every handler (as [`State<T>`](crate::State), or through an extractor
    /// of the plugin's), like [`Builder::state`](crate::Builder::state).
    pub fn state<T: Send + Sync + 'static>(&mut self, value: T) {
        self.states.insert(value);
    }

    /// Adds an internal subscriber: it runs before every application handler of a message and is
    /// not listed among the application's handlers.
    pub fn subscriber(&mut self, subscriber: InlineSubscriber) {
        self.subscribers.push(subscriber);
    }

    /// Also subscribes to these channels, as [`Builder::listen`](crate::Builder::listen).
    pub fn listen<I, S>(&mut self, channels: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.listen.extend(channels.into_iter().map(Into::into));
    }

    /// Checks, once every plugin has added its state, that `handler` (a name for the error, such as
    /// `"route hello:greet"`) finds everything its extractors require.
    pub fn require(&mut self, handler: impl Into<String>, requirements: Requirements) {
        self.checks.push((handler.into(), None, requirements));
    }

    /// As [`require`](Self::require), for a handler defined at `location` (named in the error).
    pub fn require_at(
        &mut self,
        handler: impl Into<String>,
        location: crate::Location,
        requirements: Requirements,
    ) {
        self.checks
            .push((handler.into(), Some(location), requirements));
    }

    /// Resolves every handler's metric handles at `build()` (so that their series exist from the
    /// first scrape) instead of on each handler's first run: for a plugin that installed a metrics
    /// recorder in [`build`](Plugin::build).
    pub fn resolve_metrics_at_build(&mut self) {
        *self.eager_metrics = true;
    }
}

/// The plugins of an application, in the order they were added.
#[derive(Default)]
pub(crate) struct Plugins(pub(crate) Vec<Box<dyn Plugin>>);

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}

impl Plugins {
    pub(crate) fn get_mut<P: Plugin>(&mut self) -> Option<&mut P> {
        self.0
            .iter_mut()
            .find_map(|p| (&mut **p as &mut dyn Any).downcast_mut::<P>())
    }

    pub(crate) fn get<P: Plugin>(&self) -> Option<&P> {
        self.0
            .iter()
            .find_map(|p| (&**p as &dyn Any).downcast_ref::<P>())
    }
}
