//! The server's methods on the core's types, as extension traits (all in `switchboard::prelude`):
//! configure the server on the [`Builder`], serve a built [`Switchboard`], mount or listen with a
//! [`Running`] application.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use subscriber_runtime::layer::IntoHandlerLayer;
use subscriber_runtime::{Builder, Error, Handler, Running, Switchboard};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::client::{Client, DisconnectReason};
use crate::config::WebSocketConfig;
use crate::hooks::ClientMessage;
use crate::http;
use crate::plugin::WebSocketServer;
use crate::routes::{InlineRoute, RouteContext};
use crate::WebSocket;

/// The WebSocket server's builder methods.
pub trait ServerBuilderExt: Sized {
    /// Configures the WebSocket server (auth, rooms, limits, heartbeats, timeouts).
    fn websocket(self, config: WebSocketConfig) -> Self;

    /// Adds a client route: a client frame `{"type": kind, "action": action, "data": ...}` runs
    /// `handler`, whose return value is sent back as `{"type", "action", "response"}`.
    ///
    /// ```
    /// use serde::Deserialize;
    /// use switchboard::prelude::*;
    ///
    /// #[derive(Deserialize)]
    /// struct Greet { name: String }
    ///
    /// let builder = Switchboard::builder().route("hello", "greet", |client: Client, Data(g): Data<Greet>| async move {
    ///     Ok::<_, std::convert::Infallible>(serde_json::json!({"greeting": format!("hi {}", g.name), "you": client.id()}))
    /// });
    /// # let _ = builder;
    /// ```
    fn route<H, M>(self, kind: impl Into<String>, action: impl Into<String>, handler: H) -> Self
    where
        H: Handler<M, RouteContext>;

    /// Wraps every client route handler in a tower layer (see [`layer`](subscriber_runtime::layer)),
    /// as [`Builder::layer`] does for subscribers: the first one given is the outermost, group
    /// layers ([`route_layer_for`](Self::route_layer_for)) and each route's own (its attribute's
    /// `layer = ...`) come inside, and the route's timeout covers them all. A layer that skips
    /// the handler (rate limited, throttled) answers the client with an error frame carrying the
    /// skip's code.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::layer::{Key, RateLimitLayer};
    /// use switchboard::prelude::*;
    ///
    /// // Each client may send 20 frames per second to the routes, whatever the route.
    /// let builder = Switchboard::builder().route_layer(
    ///     RateLimitLayer::new(20, Duration::from_secs(1))
    ///         .per(Key::by(|cx: &RouteContext| cx.client().id().to_string())),
    /// );
    /// # let _ = builder;
    /// ```
    fn route_layer<L>(self, layer: L) -> Self
    where
        L: IntoHandlerLayer<RouteContext>;

    /// Wraps the client routes `select` picks (it sees `type:action`) in a tower layer, after the
    /// [`route_layer`](Self::route_layer)s.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// // At most 2 `report:*` handlers at a time on this worker.
    /// let builder = Switchboard::builder().route_layer_for(
    ///     |route| route.starts_with("report:"),
    ///     switchboard::tower::limit::ConcurrencyLimitLayer::new(2),
    /// );
    /// # let _ = builder;
    /// ```
    fn route_layer_for<L>(
        self,
        select: impl Fn(&str) -> bool + Send + Sync + 'static,
        layer: L,
    ) -> Self
    where
        L: IntoHandlerLayer<RouteContext>;

    /// Called for every client of this worker once it is connected (after its auth frame).
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// let builder = Switchboard::builder().on_connect(|client, ws| {
    ///     ws.broadcast_to_client(client.id(), Outgoing::new("hello", "connected", serde_json::json!({"clientId": client.id()})));
    /// });
    /// # let _ = builder;
    /// ```
    fn on_connect(self, hook: impl Fn(&Client, &WebSocket) + Send + Sync + 'static) -> Self;

    /// Called for every client of this worker once it is disconnected, with the reason.
    fn on_disconnect(
        self,
        hook: impl Fn(&Client, &WebSocket, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self;

    /// Called for every well-formed client message, before it is routed.
    fn on_message(self, hook: impl Fn(&Client, &ClientMessage<'_>) + Send + Sync + 'static)
        -> Self;

    /// Called whenever a client of this worker is sent an error frame, with the error text.
    fn on_error(self, hook: impl Fn(&Client, &str) + Send + Sync + 'static) -> Self;

    /// Serves Prometheus metrics at `path` (usually `"/metrics"`) on the same server as the
    /// WebSocket endpoint ([`Running::listen`](ServerRunningExt::listen),
    /// [`serve`](ServerAppExt::serve), [`Running::router`](ServerRunningExt::router)), in the
    /// text format (`text/plain; version=0.0.4`).
    ///
    /// `build()` installs a Prometheus recorder as the process's global
    /// [`metrics`](https://docs.rs/metrics) recorder, before it resolves the metric handles. The
    /// recorder is installed once per process: a second application built with `prometheus` shares
    /// it (and so its series). Metric names, labels and the rule that bounds the `channel` label
    /// are listed in the README's "Metrics" section. Histograms have buckets from 50 µs to 30 s.
    /// A worker's series carry no worker label: Prometheus adds `instance` to each scraped target.
    ///
    /// Already have a recorder (another exporter, or your own Prometheus set-up)? Leave this out
    /// and install yours before `build()`: the runtime emits into whatever global recorder is
    /// installed then.
    ///
    /// Needs the `prometheus` feature (on by default in `switchboard`).
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let running = Switchboard::builder()
    ///     .without_linked_handlers()
    ///     .prometheus("/metrics")
    ///     .subscriber(Subscriber::channels(["orders"]).name("audit").handle(|| {}))
    ///     .build()?
    ///     .start()
    ///     .await?;
    /// let addr = running.listen(tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    /// running.publisher().publish_including_sender("orders", &serde_json::json!({"id": 1})).await?;
    /// running.wait_idle().await;
    ///
    /// // What Prometheus scrapes:
    /// let mut http = tokio::net::TcpStream::connect(addr).await?;
    /// http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    /// let mut response = String::new();
    /// http.read_to_string(&mut response).await?;
    /// assert!(response.contains("content-type: text/plain; version=0.0.4"));
    /// assert!(response.contains(r#"switchboard_messages_received_total{channel="orders"} 1"#));
    /// assert!(response.contains(r#"switchboard_handler_runs_total{handler="audit"} 1"#));
    /// running.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors (at `build()`)
    /// [`ServerError::InvalidMetricsPath`](crate::ServerError::InvalidMetricsPath) when `path` does
    /// not start with `/`, is `/ws`, or has characters other than letters, digits, `/`, `-`, `_`,
    /// `.` and `~`;
    /// [`ServerError::MetricsRecorderInstalled`](crate::ServerError::MetricsRecorderInstalled) when
    /// another global recorder is installed already.
    #[cfg(feature = "prometheus")]
    fn prometheus(self, path: impl Into<String>) -> Self;

    /// Serves the inspector page at `path` (usually `"/inspector"`) on the same server as the
    /// WebSocket endpoint: this worker's handler and route tables (priority, matchers, file:line,
    /// description), message rates per channel, each handler's runs, errors and latency, the
    /// cluster's clients per worker, rooms and their members, and the last errors, refreshed
    /// every second over the WebSocket.
    ///
    /// The page itself holds no data: it connects to the WebSocket endpoint with its own
    /// `?token=` and subscribes with the frame `inspector:subscribe`. When the server has a JWT
    /// secret ([`WebSocketConfig::jwt_secret`]), only an authenticated client may subscribe; give
    /// the page a token (`/inspector?token=...`). Without a secret, anyone who reaches the port
    /// sees it: keep it off in production unless the port is private or a secret is set.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// let builder = Switchboard::builder().inspector("/inspector");
    /// # let _ = builder;
    /// ```
    ///
    /// # Errors (at `build()`)
    /// [`ServerError::InvalidInspectorPath`](crate::ServerError::InvalidInspectorPath) when
    /// `path` does not start with `/`, is `/ws`, or has characters other than letters, digits,
    /// `/`, `-`, `_`, `.` and `~`.
    fn inspector(self, path: impl Into<String>) -> Self;

    /// Makes the rooms whose names match `glob` (a Redis glob: `"support:*"`, or one room's name)
    /// **durable**, keeping `retention` of their history: their cluster-wide broadcasts
    /// ([`WebSocket::broadcast_to_room_everywhere`](crate::WebSocket::broadcast_to_room_everywhere))
    /// go through a durable channel, every frame carries `"stream": {"room", "epoch", "offset"}`,
    /// and a client that reconnects and joins again with the last position it saw
    /// (`"since": {"epoch", "offset"}` in `joinRoom`'s data) first gets every frame it missed, in
    /// order, then the live ones; the reply's data says `recovered: true`. When the history no
    /// longer covers the gap, nothing is replayed and the reply says `recovered: false` with the
    /// room's current `epoch` and `offset`. See the README, "Durable rooms".
    ///
    /// ```
    /// use switchboard::broker::Retention;
    /// use switchboard::prelude::*;
    ///
    /// let builder = Switchboard::builder().durable_rooms("support:*", Retention::new().messages(500));
    /// # let _ = builder;
    /// ```
    fn durable_rooms(self, glob: &str, retention: subscriber_runtime::broker::Retention) -> Self;
}

impl ServerBuilderExt for Builder {
    fn websocket(mut self, config: WebSocketConfig) -> Self {
        self.plugin_mut::<WebSocketServer>().config = config;
        self
    }

    fn route<H, M>(mut self, kind: impl Into<String>, action: impl Into<String>, handler: H) -> Self
    where
        H: Handler<M, RouteContext>,
    {
        self.plugin_mut::<WebSocketServer>()
            .routes
            .push(InlineRoute::new(kind.into(), action.into(), handler));
        self
    }

    fn durable_rooms(self, glob: &str, retention: subscriber_runtime::broker::Retention) -> Self {
        let channel = format!("{}{glob}", crate::rooms_durable::CHANNEL_PREFIX);
        let mut builder = self.durable(subscriber_runtime::Matcher::pattern(channel), retention);
        builder
            .plugin_mut::<WebSocketServer>()
            .durable_rooms
            .push(glob.to_owned());
        builder
    }

    fn inspector(self, path: impl Into<String>) -> Self {
        let inspector = Arc::new(crate::inspector::Inspector::new(path.into()));
        let recorder = inspector.clone();
        let mut builder = self.observe(move |event| recorder.record(event));
        builder.plugin_mut::<WebSocketServer>().inspector = Some(inspector);
        builder
    }

    fn route_layer<L>(mut self, layer: L) -> Self
    where
        L: IntoHandlerLayer<RouteContext>,
    {
        self.plugin_mut::<WebSocketServer>()
            .route_layers
            .push((None, layer.into_handler_layer()));
        self
    }

    fn route_layer_for<L>(
        mut self,
        select: impl Fn(&str) -> bool + Send + Sync + 'static,
        layer: L,
    ) -> Self
    where
        L: IntoHandlerLayer<RouteContext>,
    {
        self.plugin_mut::<WebSocketServer>()
            .route_layers
            .push((Some(Arc::new(select)), layer.into_handler_layer()));
        self
    }

    fn on_connect(mut self, hook: impl Fn(&Client, &WebSocket) + Send + Sync + 'static) -> Self {
        self.plugin_mut::<WebSocketServer>()
            .hooks
            .connect
            .push(Arc::new(hook));
        self
    }

    fn on_disconnect(
        mut self,
        hook: impl Fn(&Client, &WebSocket, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self {
        self.plugin_mut::<WebSocketServer>()
            .hooks
            .disconnect
            .push(Arc::new(hook));
        self
    }

    fn on_message(
        mut self,
        hook: impl Fn(&Client, &ClientMessage<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.plugin_mut::<WebSocketServer>()
            .hooks
            .message
            .push(Arc::new(hook));
        self
    }

    fn on_error(mut self, hook: impl Fn(&Client, &str) + Send + Sync + 'static) -> Self {
        self.plugin_mut::<WebSocketServer>()
            .hooks
            .error
            .push(Arc::new(hook));
        self
    }

    #[cfg(feature = "prometheus")]
    fn prometheus(mut self, path: impl Into<String>) -> Self {
        self.plugin_mut::<WebSocketServer>().prometheus = Some(path.into());
        self
    }
}

/// Serving a built application's WebSocket endpoint.
pub trait ServerAppExt {
    /// Starts the application and serves the WebSocket endpoint `ws://<addr>/ws` until SIGINT or
    /// SIGTERM, then shuts down gracefully: stops accepting, lets running handlers finish within
    /// the grace period, closes every socket with 1001 and unsubscribes.
    ///
    /// # Errors
    /// Binding the address, or starting the application.
    fn serve(
        self,
        addr: impl ToSocketAddrs + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// As [`serve`](Self::serve), but shuts down when `signal` resolves.
    ///
    /// # Errors
    /// Binding the address, or starting the application.
    fn serve_with_shutdown(
        self,
        addr: impl ToSocketAddrs + Send,
        signal: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// As [`serve_with_shutdown`](Self::serve_with_shutdown), on a listener already bound (for
    /// example to port 0).
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), switchboard::Error> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let app = Switchboard::builder().without_linked_handlers().build()?;
    /// app.serve_listener(listener, async {}).await?; // stops at once
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// Starting the application.
    fn serve_listener(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

impl ServerAppExt for Switchboard {
    async fn serve(self, addr: impl ToSocketAddrs + Send) -> Result<(), Error> {
        self.serve_with_shutdown(addr, http::termination()).await
    }

    async fn serve_with_shutdown(
        self,
        addr: impl ToSocketAddrs + Send,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        let listener = TcpListener::bind(&addrs[..]).await.map_err(|error| {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            std::io::Error::new(
                error.kind(),
                format!("cannot listen on {}: {error}", list.join(", ")),
            )
        })?;
        self.serve_listener(listener, signal).await
    }

    async fn serve_listener(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let running = self.start().await?;
        running.listen(listener)?;
        signal.await;
        running.shutdown().await;
        Ok(())
    }
}

/// The WebSocket server of a running application.
pub trait ServerRunningExt {
    /// The WebSocket server handle.
    ///
    /// # Panics
    /// When the application was built without the server
    /// (`.without_plugin::<WebSocketServer>()`).
    fn websocket(&self) -> WebSocket;

    /// An axum router serving the WebSocket endpoint at `/ws` and, when the builder asked for
    /// it, the [Prometheus endpoint](ServerBuilderExt::prometheus) (any other path is 404), to mount into
    /// your own application with `merge`. Call [`shutdown`](subscriber_runtime::Running::shutdown) to close the
    /// sockets gracefully.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), switchboard::Error> {
    /// let running = Switchboard::builder().without_linked_handlers().build()?.start().await?;
    /// let app = axum::Router::new()
    ///     .route("/health", axum::routing::get(|| async { "ok" }))
    ///     .merge(running.router());
    /// # let _ = app;
    /// running.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    fn router(&self) -> Router;

    /// Serves the WebSocket endpoint on `listener` in the background until
    /// [`shutdown`](subscriber_runtime::Running::shutdown); returns the local address.
    ///
    /// # Errors
    /// The listener's address cannot be read.
    fn listen(&self, listener: TcpListener) -> std::io::Result<SocketAddr>;
}

impl ServerRunningExt for Running {
    fn websocket(&self) -> WebSocket {
        WebSocket::of(self.resources())
    }

    fn router(&self) -> Router {
        http::router(self.websocket(), self.resources().clone())
    }

    fn listen(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        http::listen(&self.websocket(), self.router(), listener)
    }
}
