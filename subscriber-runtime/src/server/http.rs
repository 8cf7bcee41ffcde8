//! The HTTP side: the `/ws` route (auth before the upgrade), serving it standalone, and the
//! builder and application methods of the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State as AxumState, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use serde::Deserialize;
use tokio::net::{TcpListener, ToSocketAddrs};

use super::client::{Client, DisconnectReason};
use super::config::WebSocketConfig;
use super::routes::{InlineRoute, RouteHandler};
use super::{connection, ClientMessage, WebSocket};
use crate::app::{Builder, Running, Switchboard};
use crate::context::Shared;
use crate::error::Error;
use crate::stats::Counters;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The `/ws` router of an application, with its Prometheus endpoint if it has one.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new().route(WS_PATH, get(upgrade));
    shared
        .websocket
        .inner
        .metrics
        .mount(router)
        .with_state(shared)
}

async fn upgrade(
    AxumState(shared): AxumState<Arc<Shared>>,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let inner = &shared.websocket.inner;
    if inner.accept_stop.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let user = match inner.verifier.verify(query.token.as_deref()) {
        Ok(user) => user,
        Err(error) => {
            Counters::inc(&inner.counters.auth_rejections);
            inner.counters.metrics.auth_rejections.increment(1);
            tracing::info!(worker_id = %inner.worker_id, %error, "WebSocket connection refused (401)");
            return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
        }
    };
    let config = &inner.config;
    upgrade
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection::run(shared, socket, user))
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn termination() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        () = term => tracing::info!("SIGTERM received: shutting down"),
    }
}

impl Builder {
    /// Configures the WebSocket server (auth, rooms, limits, heartbeats, timeouts).
    pub fn websocket(mut self, config: WebSocketConfig) -> Self {
        self.server.config = config;
        self
    }

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
    pub fn route<H, M>(
        mut self,
        kind: impl Into<String>,
        action: impl Into<String>,
        handler: H,
    ) -> Self
    where
        H: RouteHandler<M>,
    {
        self.server
            .routes
            .push(InlineRoute::new(kind.into(), action.into(), handler));
        self
    }

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
    pub fn on_connect(
        mut self,
        hook: impl Fn(&Client, &WebSocket) + Send + Sync + 'static,
    ) -> Self {
        self.server.hooks.connect.push(Arc::new(hook));
        self
    }

    /// Called for every client of this worker once it is disconnected, with the reason.
    pub fn on_disconnect(
        mut self,
        hook: impl Fn(&Client, &WebSocket, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self {
        self.server.hooks.disconnect.push(Arc::new(hook));
        self
    }

    /// Called for every well-formed client message, before it is routed.
    pub fn on_message(
        mut self,
        hook: impl Fn(&Client, &ClientMessage<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.server.hooks.message.push(Arc::new(hook));
        self
    }

    /// Called whenever a client of this worker is sent an error frame, with the error text.
    pub fn on_error(mut self, hook: impl Fn(&Client, &str) + Send + Sync + 'static) -> Self {
        self.server.hooks.error.push(Arc::new(hook));
        self
    }
}

impl Switchboard {
    /// Starts the application and serves the WebSocket endpoint `ws://<addr>/ws` until SIGINT or
    /// SIGTERM, then shuts down gracefully: stops accepting, lets running handlers finish within
    /// the grace period, closes every socket with 1001 and unsubscribes.
    ///
    /// # Errors
    /// Binding the address, or starting the application.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> Result<(), Error> {
        self.serve_with_shutdown(addr, termination()).await
    }

    /// As [`serve`](Self::serve), but shuts down when `signal` resolves.
    ///
    /// # Errors
    /// Binding the address, or starting the application.
    pub async fn serve_with_shutdown(
        self,
        addr: impl ToSocketAddrs,
        signal: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let listener = TcpListener::bind(addr).await?;
        self.serve_listener(listener, signal).await
    }

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
    pub async fn serve_listener(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let running = self.start().await?;
        running.listen(listener)?;
        signal.await;
        running.shutdown().await;
        Ok(())
    }
}

impl Running {
    /// An axum router serving the WebSocket endpoint at `/ws` and, when the builder asked for
    /// it, the [Prometheus endpoint](Builder::prometheus) (any other path is 404), to mount into
    /// your own application with `merge`. Call [`shutdown`](Self::shutdown) to close the
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
    pub fn router(&self) -> Router {
        router(self.shared().clone())
    }

    /// Serves the WebSocket endpoint on `listener` in the background until
    /// [`shutdown`](Self::shutdown); returns the local address.
    ///
    /// # Errors
    /// The listener's address cannot be read.
    pub fn listen(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let websocket = self.websocket();
        let stop = websocket.inner.accept_stop.clone();
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let worker_id = websocket.worker_id().to_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, worker_id, "WebSocket listener failed");
            }
        });
        websocket
            .inner
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
        tracing::info!(worker_id = %websocket.worker_id(), %addr, "WebSocket server listening on ws://{addr}{WS_PATH}");
        if let Some(path) = websocket.inner.metrics.path() {
            tracing::info!(worker_id = %websocket.worker_id(), %addr, "Prometheus metrics at http://{addr}{path}");
        }
        Ok(addr)
    }
}
