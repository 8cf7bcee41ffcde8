//! `baseline-server`: the hand-written reference server for the fan-out benchmark.
//!
//! It implements the same contract as the framework's `examples/fanout_bench.rs`, with no
//! framework at all, so that the benchmark can tell what the framework costs:
//!
//! * environment: `REDIS_URL` (default `redis://127.0.0.1:6379/`), `WS_PORT` (default 8080,
//!   `0` picks a free port), optional `WS_QUEUE` (frames queued per client, default 256),
//!   `WS_ROOM_WAIT_MS` (how long a broadcast waits for room in a full queue before it cuts that
//!   client, default 1000), `WS_READ_BUF` / `WS_WRITE_BUF` (tungstenite buffer sizes) and
//!   `WORKER_THREADS` (tokio workers, default: one per core);
//! * WebSocket endpoint `ws://127.0.0.1:$WS_PORT/ws` (any other path gets a 404);
//! * every message published on the Redis channel `bench:fanout` is wrapped ONCE into the text
//!   frame `{"type":"bench","action":"tick","data":<payload verbatim>}` and the same
//!   reference-counted buffer is queued to every client through one bounded `mpsc` channel per
//!   client; when a client's queue is full, the broadcast waits a bounded time for room (all full
//!   clients share one deadline) and only then disconnects it (slow consumer);
//! * each connection writes everything queued for it, then flushes once;
//! * prints a line containing `READY` once the listener is bound and the subscription is
//!   active, and stops cleanly on SIGTERM / SIGINT.
//!
//! Per connection the server keeps one task, one channel and one small read buffer, which is
//! what keeps idle memory per connection in the single-digit KiB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The Redis channel the benchmark publishes on.
const CHANNEL: &str = "bench:fanout";
/// Everything of the frame before the payload.
const FRAME_PREFIX: &str = r#"{"type":"bench","action":"tick","data":"#;
/// Everything of the frame after the payload.
const FRAME_SUFFIX: &str = "}";
/// How long a client may take for its opening handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending connections the kernel may queue for `accept`.
const LISTEN_BACKLOG: u32 = 4096;
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Settings read from the environment.
#[derive(Debug, Clone)]
struct Settings {
    redis_url: String,
    port: u16,
    queue: usize,
    room_wait: Duration,
    read_buf: usize,
    write_buf: usize,
    workers: Option<usize>,
}

impl Settings {
    fn from_env() -> Result<Self> {
        Ok(Self {
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned()),
            port: env_num("WS_PORT", 8080)?,
            queue: env_num("WS_QUEUE", 256)?.max(1),
            room_wait: Duration::from_millis(env_num("WS_ROOM_WAIT_MS", 1000)?),
            read_buf: env_num("WS_READ_BUF", 2 * 1024)?.max(256),
            write_buf: env_num("WS_WRITE_BUF", 8 * 1024)?,
            workers: std::env::var("WORKER_THREADS")
                .ok()
                .map(|v| v.parse().context("WORKER_THREADS"))
                .transpose()?,
        })
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buf)
            .write_buffer_size(self.write_buf)
            // Clients of this benchmark send nothing but control frames.
            .max_message_size(Some(64 * 1024))
            .max_frame_size(Some(64 * 1024))
    }
}

/// Reads a numeric environment variable, with a default when it is unset.
fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// The connected clients: the sending half of each one's queue.
#[derive(Debug, Default)]
struct Hub {
    clients: Mutex<HashMap<u64, mpsc::Sender<Utf8Bytes>>>,
    next_id: AtomicU64,
    /// Live connection tasks (handshaken or not), for a clean shutdown.
    tasks: AtomicUsize,
    /// Frames queued to clients.
    queued: AtomicU64,
    /// Clients disconnected because their queue was full.
    dropped_slow: AtomicU64,
}

impl Hub {
    fn register(&self, tx: mpsc::Sender<Utf8Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, tx);
        id
    }

    fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Utf8Bytes>>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` to every client. A client whose queue is full gets a bounded wait for room
    /// (every full client shares one deadline, `room_wait` from now); one still full then is
    /// dropped (and so disconnected).
    async fn broadcast(&self, frame: &Utf8Bytes, room_wait: Duration) {
        let mut queued = 0_u64;
        let mut full: Vec<(u64, mpsc::Sender<Utf8Bytes>)> = Vec::new();
        self.lock()
            .retain(|id, tx| match tx.try_send(frame.clone()) {
                Ok(()) => {
                    queued += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full.push((*id, tx.clone()));
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        if !full.is_empty() {
            let deadline = tokio::time::Instant::now() + room_wait;
            for (id, tx) in full {
                match tokio::time::timeout_at(deadline, tx.send(frame.clone())).await {
                    Ok(Ok(())) => queued += 1,
                    Ok(Err(_)) => {}
                    Err(_) => {
                        self.unregister(id);
                        self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.queued.fetch_add(queued, Ordering::Relaxed);
    }
}

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = settings.workers {
        builder.worker_threads(n.max(1));
    }
    builder.build()?.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<()> {
    let hub = Arc::new(Hub::default());

    let listener = listen(SocketAddr::from(([127, 0, 0, 1], settings.port)))
        .with_context(|| format!("binding 127.0.0.1:{}", settings.port))?;
    let addr = listener.local_addr()?;

    let client = redis::Client::open(settings.redis_url.as_str()).context("REDIS_URL")?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("connecting to {}", settings.redis_url))?;
    pubsub.subscribe(CHANNEL).await.context("SUBSCRIBE")?;
    let mut messages = pubsub.into_on_message();

    println!(
        "READY ws://{addr}/ws (channel {CHANNEL}, queue {} frames)",
        settings.queue
    );

    let config = settings.ws_config();
    let accept_hub = Arc::clone(&hub);
    let queue = settings.queue;
    let acceptor = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let hub = Arc::clone(&accept_hub);
                    hub.tasks.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        // Errors (resets, broken pipes, bad handshakes) end only that client.
                        let _ = serve(stream, &hub, config, queue).await;
                        hub.tasks.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });

    let broadcast_hub = Arc::clone(&hub);
    let room_wait = settings.room_wait;
    let broadcaster = async move {
        let mut frame = String::new();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
                eprintln!("skipping a payload that is not UTF-8");
                continue;
            };
            frame.reserve_exact(FRAME_PREFIX.len() + payload.len() + FRAME_SUFFIX.len());
            frame.push_str(FRAME_PREFIX);
            frame.push_str(payload);
            frame.push_str(FRAME_SUFFIX);
            // One allocation per message, shared by every client.
            let shared = Utf8Bytes::from(std::mem::take(&mut frame));
            broadcast_hub.broadcast(&shared, room_wait).await;
        }
    };

    let outcome = tokio::select! {
        () = broadcaster => Err(anyhow::anyhow!("the Redis subscription ended")),
        res = shutdown_signal() => res,
    };

    // Shutdown: stop accepting, close every queue (each connection then sends a Close frame),
    // and give the connections a moment to finish.
    acceptor.abort();
    hub.lock().clear();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while hub.tasks.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "baseline-server: stopped; frames queued {}, slow clients dropped {}",
        hub.queued.load(Ordering::Relaxed),
        hub.dropped_slow.load(Ordering::Relaxed)
    );
    outcome
}

/// Binds the listener with a backlog fit for connection bursts (`TcpListener::bind` uses 128,
/// which overflows when a thousand clients connect at once).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        res = tokio::signal::ctrl_c() => res?,
    }
    Ok(())
}

/// Answers 404 for any path but `/ws`.
#[allow(clippy::result_large_err)] // The signature is tungstenite's `Callback`.
fn check_path(req: &Request, resp: Response) -> std::result::Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws" {
        Ok(resp)
    } else {
        let mut err = ErrorResponse::new(Some("not found".to_owned()));
        *err.status_mut() = StatusCode::NOT_FOUND;
        Err(err)
    }
}

/// One connection: handshake, then write queued frames and read (and ignore) client frames
/// until either side closes.
async fn serve(stream: TcpStream, hub: &Hub, config: WebSocketConfig, queue: usize) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)),
    )
    .await
    .context("handshake timed out")??;

    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(queue);
    let id = hub.register(tx);

    let result = async {
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else {
                        // Dropped by the hub: slow consumer or shutdown.
                        let close = CloseFrame {
                            code: CloseCode::Away,
                            reason: Utf8Bytes::from_static("going away"),
                        };
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            ws.send(Message::Close(Some(close))),
                        )
                        .await;
                        return Ok(());
                    };
                    ws.feed(Message::Text(frame)).await?;
                    // Everything else already queued, then one flush.
                    while let Ok(frame) = rx.try_recv() {
                        ws.feed(Message::Text(frame)).await?;
                    }
                    ws.flush().await?;
                }
                incoming = ws.next() => match incoming {
                    // Pings are answered by tungstenite; data frames are ignored.
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                },
            }
        }
    }
    .await;

    hub.unregister(id);
    result
}
