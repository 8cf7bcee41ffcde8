//! [`WebSocketServer`]: the server as a [`Plugin`] of the application. At `build()` it makes the
//! [`WebSocket`] handle (provided to handlers as state, taken as an extractor), checks the client
//! routes, installs the Prometheus recorder when asked, and adds the cluster mirror as an internal
//! subscriber; it stops accepting when shutdown begins and closes every socket (1001) at the end.
//!
//! Linking this crate is enough: it submits itself as a default plugin, so every application of
//! the binary gets the server unless the builder leaves it out
//! (`.without_plugin::<WebSocketServer>()`).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use subscriber_runtime::plugin::{Plugin, PluginContext};
use subscriber_runtime::{BuildError, Context, Matcher, Resources, Subscriber};
use tokio_util::sync::CancellationToken;

use crate::config::WebSocketConfig;
use crate::hooks::Hooks;
use crate::metrics::Endpoint;
use crate::routes::{InlineRoute, RouteContext, RouteSelector, RouteTable};
use crate::stats::Counters;
use crate::{mirror, WebSocket};
use subscriber_runtime::layer::HandlerLayer;

/// The plugin's name, in logs and in [`BuildError::Plugin`].
pub(crate) const NAME: &str = "websocket";

/// The WebSocket server as a plugin: what the builder's server methods
/// ([`ServerBuilderExt`](crate::ServerBuilderExt)) configure. At `build()` it provides the
/// [`WebSocket`] handle as state, checks the client routes, installs the Prometheus recorder when
/// asked, and adds the cluster mirror as an internal subscriber; it stops accepting when shutdown
/// begins and closes every socket (1001) at the end. Linking this crate adds it to every
/// application; leave it out with `.without_plugin::<WebSocketServer>()`.
#[derive(Default)]
pub struct WebSocketServer {
    pub(crate) config: WebSocketConfig,
    pub(crate) routes: Vec<InlineRoute>,
    pub(crate) route_layers: Vec<(Option<RouteSelector>, HandlerLayer<RouteContext>)>,
    pub(crate) hooks: Hooks,
    pub(crate) prometheus: Option<String>,
    /// The inspector, when the application asked for it.
    pub(crate) inspector: Option<Arc<crate::inspector::Inspector>>,
    /// The globs of the durable rooms.
    pub(crate) durable_rooms: Vec<String>,
    handle: Option<WebSocket>,
    /// The presence announcer's task, and what tells it to finish.
    announcer: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    /// The presence writer's task, and what tells it to finish.
    presence: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .field("prometheus", &self.prometheus)
            .finish_non_exhaustive()
    }
}

impl WebSocketServer {
    /// The server's handle, once the application is built.
    pub fn handle(&self) -> Option<&WebSocket> {
        self.handle.as_ref()
    }
}

/// What the handle is made of, besides the application's.
pub(crate) struct ServerSetup {
    pub(crate) config: WebSocketConfig,
    pub(crate) hooks: Hooks,
    pub(crate) metrics: Endpoint,
    pub(crate) inspector: Option<Arc<crate::inspector::Inspector>>,
    pub(crate) durable_rooms: Vec<String>,
}

impl Plugin for WebSocketServer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&mut self, cx: &mut PluginContext<'_>) -> Result<(), BuildError> {
        let plugin_error = |e| BuildError::plugin(NAME, e);
        let metrics = match &self.prometheus {
            #[cfg(feature = "prometheus")]
            Some(path) => {
                let endpoint = crate::metrics::prometheus::install(path).map_err(plugin_error)?;
                cx.resolve_metrics_at_build();
                endpoint
            }
            #[cfg(not(feature = "prometheus"))]
            Some(_) => unreachable!("`prometheus` is only available with the `prometheus` feature"),
            None => Endpoint::default(),
        };
        if let Some(inspector) = &self.inspector {
            inspector
                .validate(self.prometheus.as_deref())
                .map_err(plugin_error)?;
        }
        let routes = RouteTable::build(
            std::mem::take(&mut self.routes),
            &std::mem::take(&mut self.route_layers),
            cx,
        )
        .map_err(plugin_error)?;
        let ws = WebSocket::new(
            ServerSetup {
                config: self.config.clone(),
                hooks: std::mem::take(&mut self.hooks),
                metrics,
                inspector: self.inspector.clone(),
                durable_rooms: self.durable_rooms.clone(),
            },
            routes,
            cx.worker_id().clone(),
            cx.publisher().clone(),
            Arc::new(Counters::resolved()),
            cx.handler_timeout(),
            // Off the framework channels, the worker hears nothing of the cluster.
            cx.presence().filter(|_| cx.framework_channels()),
        );
        cx.state(ws.clone());
        // Off the framework channels, the worker hears nothing of the cluster: no mirror.
        if cx.framework_channels() {
            let mirror = ws.clone();
            let channels = mirror::CHANNELS.iter().map(|c| (*c).to_owned()).chain([
                crate::presence::FEED_CHANNEL.to_owned(),
                ws.inner.direct_channel.clone(),
            ]);
            cx.subscriber(
                Subscriber::channels(channels)
                    .name("switchboard.websocket.mirror")
                    .description("the cluster's clients and rooms, and the cluster sends to this worker's clients")
                    .handle(move |cx: Context| mirror.on_framework_message(&cx)),
            );
            if !self.durable_rooms.is_empty() {
                let rooms = ws.clone();
                let patterns = self.durable_rooms.iter().map(|glob| {
                    Matcher::pattern(format!("{}{glob}", crate::rooms_durable::CHANNEL_PREFIX))
                });
                cx.subscriber(
                    Subscriber::matching(patterns)
                        .name("switchboard.websocket.durable_rooms")
                        .description("durable rooms' frames, delivered to this worker's members with their offsets")
                        .handle(move |cx: Context| rooms.on_room_stream(&cx)),
                );
            }
        }
        self.handle = Some(ws);
        Ok(())
    }

    fn start(&mut self, resources: &Arc<Resources>, stop: CancellationToken) {
        if let Some(ws) = &self.handle {
            ws.inner.metrics.spawn_upkeep(stop.clone());
            if let Some(inspector) = &ws.inner.inspector {
                inspector.set_handlers(resources.handlers());
                tokio::spawn(crate::inspector::run(
                    ws.clone(),
                    inspector.clone(),
                    stop.clone(),
                ));
            }
            tokio::spawn(ws.clone().run_presence_reader(resources.clone(), stop));
            let finish_writer = CancellationToken::new();
            self.presence = Some((
                tokio::spawn(ws.clone().run_presence_writer(finish_writer.clone())),
                finish_writer,
            ));
            let finish = CancellationToken::new();
            if let Some(task) = ws
                .inner
                .announcer
                .start(ws.inner.publisher.clone(), finish.clone())
            {
                self.announcer = Some((task, finish));
            }
        }
    }

    fn stopping(&mut self) {
        if let Some(ws) = &self.handle {
            ws.stop_accepting();
        }
    }

    fn stop(&mut self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(ws) = &self.handle {
                ws.close_all(deadline).await;
            }
            // The disconnections of the shutdown are announced too (within a second past the
            // deadline when the broker is slow).
            if let Some((task, finish)) = self.announcer.take() {
                let until = deadline.max(Instant::now()) + std::time::Duration::from_secs(1);
                crate::announce::drain(task, &finish, until).await;
            }
            // Every client is gone: the writer removes this worker's presence table.
            if let Some((task, finish)) = self.presence.take() {
                finish.cancel();
                let until = deadline.max(Instant::now()) + std::time::Duration::from_secs(1);
                if tokio::time::timeout_at(tokio::time::Instant::from_std(until), task)
                    .await
                    .is_err()
                {
                    tracing::warn!("shutdown: this worker's presence table was not removed in time; it expires on its own");
                }
            }
        })
    }

    fn abort(&mut self) {
        if let Some(ws) = &self.handle {
            ws.abort();
        }
        if let Some((task, _)) = self.announcer.take() {
            task.abort();
        }
        if let Some((task, _)) = self.presence.take() {
            task.abort();
        }
    }
}

subscriber_runtime::__private::inventory::submit! {
    subscriber_runtime::__private::DefaultPlugin {
        make: || Box::new(WebSocketServer::default()),
    }
}
