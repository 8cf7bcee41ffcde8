//! The HTTP side: the `/ws` route (auth before the upgrade), the Prometheus endpoint, and serving
//! them on a listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State as AxumState, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;

use subscriber_runtime::Resources;

use crate::connection;
use crate::stats::Counters;
use crate::WebSocket;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// What a connection needs: the server and the application's resources (for its route
/// contexts).
pub(crate) struct Serving {
    pub(crate) websocket: WebSocket,
    pub(crate) resources: Arc<Resources>,
}

/// The `/ws` router of an application, with its Prometheus endpoint if it has one.
pub(crate) fn router(websocket: WebSocket, resources: Arc<Resources>) -> Router {
    let router = Router::new().route(WS_PATH, get(upgrade));
    let router = websocket.inner.metrics.mount(router);
    router.with_state(Arc::new(Serving {
        websocket,
        resources,
    }))
}

/// Serves `router` on `listener` in the background until the server stops accepting; returns the
/// local address.
pub(crate) fn listen(
    websocket: &WebSocket,
    router: Router,
    listener: TcpListener,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let stop = websocket.inner.accept_stop.clone();
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let serve =
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await });
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

async fn upgrade(
    AxumState(shared): AxumState<Arc<Serving>>,
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
pub(crate) async fn termination() {
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
