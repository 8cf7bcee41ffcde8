//! The built application ([`Switchboard`]) and the started one ([`Running`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::plugin::{Plugin, Plugins};
use super::Builder;
use crate::broker::{Broker, Inbox, Subscriptions};
use crate::dispatch::registry::HandlerInfo;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::handler::context::Resources;
use crate::observe::stats::{Counters, InFlight, Stats};
use crate::publish::Publisher;

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
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) shared: Arc<Resources>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) subscriptions: Subscriptions,
    pub(super) counters: Arc<Counters>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) worker_id: Arc<str>,
    pub(super) queue_capacity: usize,
    pub(super) shutdown_grace: Duration,
    pub(super) plugins: Plugins,
    pub(super) once_claim_idle: Duration,
}

impl fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switchboard")
            .field("worker_id", &self.worker_id)
            .field("broker", &self.broker.kind())
            .field("handlers", &self.dispatcher.entries.len())
            .field("subscriptions", &self.subscriptions)
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

impl Switchboard {
    /// A builder with the defaults: in-process broker, every linked handler, 30 s handler timeout.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The application's handlers, in the order they run (priority, then name, then module
    /// path). Plugins' internal subscribers are not listed.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.dispatcher
            .entries
            .iter()
            .filter(|e| !e.internal)
            .map(crate::dispatch::registry::Entry::handler_info)
            .collect()
    }

    /// What every handler shares: the state (plugins' included) and the publisher.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.shared
    }

    /// The plugin of type `P`, if the application has one.
    pub fn plugin<P: Plugin>(&self) -> Option<&P> {
        self.plugins.get::<P>()
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
    pub async fn start(mut self) -> Result<Running, Error> {
        if !self.shared.publisher.durable().is_empty() && !self.broker.has_streams() {
            return Err(crate::BrokerError::Config(format!(
                "this application has durable channels or run-once handlers, which need a broker with streams; the {} broker has none: use the Redis broker (REDIS_URL) or the in-process one",
                self.broker.kind()
            ))
            .into());
        }
        let shutdown = CancellationToken::new();
        let resync = Arc::new(crate::broker::durable::Resync::default());
        let (inbox, rx) = Inbox::new(
            self.queue_capacity,
            self.counters.clone(),
            self.in_flight.clone(),
            resync.clone(),
            self.shared.publisher.durable().clone(),
        );
        // Where each exact durable channel's stream is now, before subscribing: whatever is
        // published from here on is either received live or read by the catch-up below.
        durable_baselines(
            &self.shared,
            &self.subscriptions,
            &self.dispatcher,
            self.broker.clone(),
        )
        .await;
        let dispatch = tokio::spawn(self.dispatcher.clone().run(
            rx,
            resync.clone(),
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
        // What was published between the baselines and the subscription.
        resync.everything();
        // Run-once handlers: a consumer per handler and channel, in the handler's group.
        for (index, channel) in self.dispatcher.once_channels() {
            let handler = &self.dispatcher.entries[index as usize].info.name;
            let group = crate::dispatch::group_name(handler);
            let consumer = match self
                .broker
                .group_consumer(&channel, &group, &self.worker_id)
            {
                Ok(mut consumer) => match consumer.prepare().await {
                    Ok(()) => consumer,
                    Err(e) => {
                        shutdown.cancel();
                        return Err(e.into());
                    }
                },
                Err(e) => {
                    shutdown.cancel();
                    return Err(e.into());
                }
            };
            self.dispatcher.spawn_once(
                index,
                channel,
                consumer,
                self.once_claim_idle,
                shutdown.child_token(),
            );
        }
        for plugin in &mut self.plugins.0 {
            plugin.start(&self.shared, shutdown.child_token());
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

    /// What every handler shares: the state (plugins' included) and the publisher.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.app.shared
    }

    /// The plugin of type `P`, if the application has one.
    pub fn plugin<P: Plugin>(&self) -> Option<&P> {
        self.app.plugins.get::<P>()
    }

    /// The runtime's counters.
    pub fn stats(&self) -> Stats {
        self.app.counters.snapshot()
    }

    /// Waits until every message received so far has been handled.
    pub async fn wait_idle(&self) {
        self.app.in_flight.wait_idle().await;
    }

    /// Shuts down gracefully: the plugins stop taking new work (the WebSocket server stops
    /// accepting connections), the worker stops receiving messages, waits for running handlers
    /// (up to the grace period), then the plugins finish (the server closes every client socket
    /// with 1001).
    pub async fn shutdown(mut self) {
        let deadline = std::time::Instant::now() + self.app.shutdown_grace;
        for plugin in &mut self.app.plugins.0 {
            plugin.stopping();
        }
        self.shutdown.cancel();
        if let Some(dispatch) = self.dispatch.take() {
            if let Err(error) = dispatch.await {
                tracing::error!(%error, "dispatch task ended abnormally");
            }
        }
        for plugin in &mut self.app.plugins.0 {
            plugin.stop(deadline).await;
        }
        tracing::info!(worker_id = %self.app.worker_id, "switchboard stopped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            for plugin in &mut self.app.plugins.0 {
                plugin.abort();
            }
        }
        self.shutdown.cancel();
    }
}

impl Resources {
    /// The application's handlers, in the order they run, as
    /// [`Switchboard::handlers`] lists them: for a plugin that shows them (the WebSocket server's
    /// inspector). Empty before `build()` has finished.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        let Some(dispatcher) = self.dispatcher.get().and_then(std::sync::Weak::upgrade) else {
            return Vec::new();
        };
        let Ok(dispatcher) = dispatcher.downcast::<Dispatcher>() else {
            return Vec::new();
        };
        dispatcher
            .entries
            .iter()
            .filter(|e| !e.internal)
            .map(crate::dispatch::registry::Entry::handler_info)
            .collect()
    }
}

/// Reads the newest position of every exact durable channel this worker handles into the
/// dispatcher's cursors.
async fn durable_baselines(
    shared: &Resources,
    subscriptions: &Subscriptions,
    dispatcher: &Dispatcher,
    broker: Arc<dyn Broker>,
) {
    for channel in shared.publisher.durable().exact() {
        if !subscriptions.matches(&channel) || !dispatcher.routes(&channel) {
            continue;
        }
        match broker.read_stream(&channel, u64::MAX, 1).await {
            Ok(read) => {
                let channel: Arc<str> = Arc::from(channel);
                dispatcher.cursors.set(
                    &channel,
                    crate::dispatch::Cursor {
                        epoch: read.epoch,
                        offset: read.last,
                    },
                );
            }
            Err(error) => tracing::warn!(
                channel = %channel,
                %error,
                "could not read a durable channel's position at start: the worker starts from its first live message"
            ),
        }
    }
}
