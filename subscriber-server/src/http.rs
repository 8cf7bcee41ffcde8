//! The HTTP side: the `/ws` route (auth before the upgrade), the Prometheus endpoint, and serving
//! them on a listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State as AxumState, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use subscriber_runtime::RateLimit;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::Service as _;

use subscriber_runtime::Resources;

use crate::connection;
use crate::frame::ClientId;
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
    let mut router = Router::new().route(WS_PATH, get(upgrade));
    if let Some(inspector) = &websocket.inner.inspector {
        router = router.route(
            &inspector.path,
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    crate::inspector::Inspector::page(),
                )
            }),
        );
    }
    let router = websocket.inner.metrics.mount(router);
    router.with_state(Arc::new(Serving {
        websocket,
        resources,
    }))
}

/// Serves `router` on `listener` in the background until the server stops accepting; returns the
/// local address.
///
/// Its own accept loop, rather than `axum::serve`: a connection must send its HTTP request within
/// the header-read timeout, at most `max_pending_handshakes` accepted connections may be waiting to
/// do so (past it the loop stops accepting until one finishes), and an accept error (such as
/// `EMFILE`, out of file descriptors) backs off instead of spinning.
pub(crate) fn listen(
    websocket: &WebSocket,
    router: Router,
    listener: TcpListener,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let config = &websocket.inner.config;
    let accept = Accept {
        listener,
        router,
        stop: websocket.inner.accept_stop.clone(),
        header_read_timeout: config.header_read_timeout,
        pending: Arc::new(Semaphore::new(config.max_pending_handshakes)),
        worker_id: websocket.inner.worker_id.clone(),
    };
    let task = tokio::spawn(accept.run());
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

/// The accept loop of one listener.
struct Accept {
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    header_read_timeout: Duration,
    pending: Arc<Semaphore>,
    worker_id: Arc<str>,
}

impl Accept {
    async fn run(self) {
        let warning = RateLimit::new(Duration::from_secs(10));
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // A place for one more connection still in its handshake, first: past the bound the
            // kernel's backlog holds the others.
            let permit = tokio::select! {
                permit = self.pending.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = self.stop.cancelled() => return,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.stop.cancelled() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    tcp
                }
                Err(error) => {
                    if let Some(suppressed) = warning.allow() {
                        tracing::warn!(
                            worker_id = %self.worker_id,
                            %error,
                            suppressed,
                            retry_in = ?backoff,
                            "cannot accept a connection (out of file descriptors? raise `ulimit -n`); backing off"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            tokio::spawn(serve_connection(
                tcp,
                self.router.clone(),
                permit,
                self.header_read_timeout,
                self.stop.clone(),
            ));
        }
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves one HTTP/1 connection: its handshake place is given back once its request has arrived.
async fn serve_connection(
    tcp: TcpStream,
    router: Router,
    permit: OwnedSemaphorePermit,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let permit = Arc::new(Mutex::new(Some(permit)));
    let service = service_fn(move |request: Request<Incoming>| {
        drop(
            permit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let mut router = router.clone();
        async move { router.call(request.map(Body::new)).await }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connection = http
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
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
    let id = ClientId::generate();
    if shared
        .websocket
        .admit(&id, user.as_ref().map(crate::client::User::id))
        .await
        .is_err()
    {
        Counters::inc(&inner.counters.user_limit_rejections);
        inner.counters.metrics.user_limit_rejections.increment(1);
        tracing::info!(
            worker_id = %inner.worker_id,
            user_id = user.as_ref().map(|u| tracing::field::display(u.id())),
            limit = inner.config.max_connections_per_user,
            "WebSocket connection refused (429): the user is at its connection limit"
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections for this user",
        )
            .into_response();
    }
    let config = &inner.config;
    let released = shared.clone();
    let failed_user = user.clone();
    let failed_id = id.clone();
    upgrade
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        // Bounds what tungstenite holds on its side: a client that sends pings and never reads
        // fills it with pongs, and is then cut instead of growing the server.
        .max_write_buffer_size(
            config
                .write_buffer_size
                .saturating_add(config.max_queued_bytes.max(config.max_message_size)),
        )
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_failed_upgrade(move |error| {
            tracing::debug!(%error, "WebSocket upgrade failed");
            released.websocket.release(&failed_id, failed_user.as_ref());
        })
        .on_upgrade(move |socket| connection::run(shared, socket, id, user))
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
