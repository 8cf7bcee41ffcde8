//! [`WebSocketConfig`]: authentication, rooms, limits, heartbeats and timeouts of the server.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;

/// How many rooms a client may be in at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomPolicy {
    /// Any number of rooms (the reference framework's default).
    #[default]
    Multiple,
    /// One room: joining a room first leaves the one the client was in.
    Single,
}

/// The HS256 secret that signs client tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(pub(crate) Vec<u8>);

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

/// A JWT secret given as base64url text did not decode.
#[derive(Debug, thiserror::Error)]
#[error("the JWT secret is not valid base64url (the reference framework's format for `auth.jwtSecretKey`): {0}")]
pub struct InvalidSecret(base64::DecodeError);

impl JwtSecret {
    /// The secret's raw bytes, as they are.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret as base64url text (padding optional): the reference framework's format, where
    /// the configured key is a JWK `k` value.
    ///
    /// ```
    /// use switchboard::JwtSecret;
    ///
    /// assert_eq!(JwtSecret::base64url("c2VjcmV0").unwrap(), JwtSecret::raw("secret"));
    /// assert!(JwtSecret::base64url("not base64!").is_err());
    /// ```
    ///
    /// # Errors
    /// [`InvalidSecret`] when the text is not base64url.
    pub fn base64url(text: &str) -> Result<Self, InvalidSecret> {
        let text = text.trim().trim_end_matches('=');
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map(Self)
            .map_err(InvalidSecret)
    }
}

/// Configuration of the WebSocket server. Every setting has a default; change what you need.
///
/// ```
/// use std::time::Duration;
/// use switchboard::{JwtSecret, RoomPolicy, WebSocketConfig};
///
/// let config = WebSocketConfig::default()
///     .jwt_secret(JwtSecret::raw("change me"))
///     .room_policy(RoomPolicy::Single)
///     .max_message_size(32 * 1024)
///     .idle_timeout(Some(Duration::from_secs(300)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct WebSocketConfig {
    pub(crate) jwt_secret: Option<JwtSecret>,
    pub(crate) require_auth: bool,
    pub(crate) room_policy: RoomPolicy,
    pub(crate) max_message_size: usize,
    pub(crate) max_queued_messages: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) stall_timeout: Duration,
    pub(crate) max_concurrent_routes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_pending_handshakes: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) max_connections_per_user: Option<usize>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            require_auth: false,
            room_policy: RoomPolicy::Multiple,
            max_message_size: 64 * 1024,
            max_queued_messages: usize::MAX,
            max_queued_bytes: 1024 * 1024,
            stall_timeout: Duration::from_secs(10),
            max_concurrent_routes: 8,
            header_read_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            read_buffer_size: 1024,
            write_buffer_size: 64 * 1024,
            presence_ttl: Duration::from_secs(10),
            max_connections_per_user: None,
        }
    }
}

impl WebSocketConfig {
    /// The HS256 secret that client tokens (`?token=<JWT>`) are verified with. Without one, a
    /// client that presents a token is refused (401), and clients without a token connect
    /// anonymously.
    pub fn jwt_secret(mut self, secret: JwtSecret) -> Self {
        self.jwt_secret = Some(secret);
        self
    }

    /// Refuses (401) clients that present no token (default: they connect anonymously).
    pub fn require_auth(mut self, on: bool) -> Self {
        self.require_auth = on;
        self
    }

    /// Single- or multi-room membership (default [`RoomPolicy::Multiple`]).
    pub fn room_policy(mut self, policy: RoomPolicy) -> Self {
        self.room_policy = policy;
        self
    }

    /// Largest message (and frame) a client may send, in bytes (default 64 KiB). A client that
    /// sends a larger one is disconnected with close code 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// An optional cap on the frames waiting to be written to one client (default: none; the
    /// byte budget, [`max_queued_bytes`](Self::max_queued_bytes), bounds them). A client over it is
    /// disconnected with close code 1013 (counted as a slow consumer).
    pub fn max_queued_messages(mut self, n: usize) -> Self {
        self.max_queued_messages = n.max(1);
        self
    }

    /// The send budget of one client: the bytes waiting to be written to it, each frame counted
    /// with a fixed overhead of 64 bytes for its place in the queue (default 1 MiB, which absorbs
    /// a burst of about 4,000 frames of 200 bytes). A client briefly behind stays within it and is
    /// never cut; a client over it is disconnected with close code 1013 (counted as a slow
    /// consumer, logged once). One frame is always accepted into an empty queue, whatever its
    /// size. The same bound caps the connection's write buffer, pongs included.
    ///
    /// It is also the memory bound: a client's queue holds at most this much, so 10,000 clients
    /// hold at most 10,000 × the budget (10 GiB at the default) when every frame is different.
    /// A broadcast frame is serialized once and shared by every queue that holds it, so a burst
    /// of broadcasts costs its bytes once plus the overhead per client: 2,000 frames queued for
    /// 10,000 clients take about 640 MB of queue places, not 10,000 copies.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes.max(1);
        self
    }

    /// How many route handlers of one client may run at once (default 8). They run beside the
    /// connection's reader, so a long handler never stops the client's other frames from being
    /// read (pongs, system actions, other routes); when all are busy, the reader waits for one to
    /// finish. Replies are sent in the order the handlers finish, not the order the frames came
    /// in: give each request something to match its reply by (`data.requestId`, ...) when you
    /// need to. System actions (`joinRoom`, `leaveRoom`) and error frames are answered at once.
    pub fn max_concurrent_routes(mut self, n: usize) -> Self {
        self.max_concurrent_routes = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How long a new connection may take to send its HTTP request (the WebSocket handshake)
    /// before it is closed (default 10 s). A socket that connects and never speaks holds a file
    /// descriptor only this long.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many accepted connections may be waiting to finish their HTTP request at once
    /// (default 1,024). Past it, the server stops accepting until one finishes or times out, so
    /// that connections which never speak cannot take every file descriptor. Keep it below the
    /// process's file-descriptor limit (`ulimit -n`), which must also cover every open
    /// connection: N clients need N descriptors plus this bound plus a few dozen.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How long a client may make no write progress (no frame taken by the socket) while frames
    /// wait for it before it is disconnected as stalled, with close code 1013 (default 10 s). A
    /// client that reads, however slowly, keeps its connection as long as it stays within its
    /// [send budget](Self::max_queued_bytes).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often the server pings each client (default 30 s; `None`: never). A client that sends
    /// nothing (not even a pong) for this interval plus the [`pong_timeout`](Self::pong_timeout)
    /// is disconnected.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// How long a client may take to answer a ping (default 10 s).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Disconnects a client that sent no message for this long (default `None`: never). Pongs do
    /// not count as activity; every text or binary message does.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.filter(|d| !d.is_zero());
        self
    }

    /// How long closing a socket may take (sending the close frame, waiting for the client's
    /// answer) before the connection is dropped (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Read buffer of each connection, in bytes (default 1 KiB). It is allocated with the
    /// connection (tungstenite does not allocate it lazily), so it is most of what an idle
    /// connection costs; a larger message still arrives whole (the buffer grows to hold it), in
    /// reads of at most this size. Raise it when clients often send messages of many KiB.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes.max(256);
        self
    }

    /// Bytes a connection gathers before writing to the socket within one batch (default 64 KiB).
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.write_buffer_size = bytes;
        self
    }

    /// How long a worker's clients stay listed by the other workers after its last heartbeat
    /// (default 10 s, at least 1 s). A worker renews its presence every quarter of this; one that
    /// crashes or loses Redis disappears from every other worker's view at most this long after
    /// its last renewal.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// At most this many connections per authenticated user, across the whole cluster (default:
    /// no limit). A connection over the limit is refused before the upgrade with `429 Too Many
    /// Requests`. The count is kept in the broker's presence store, so it is exact across workers;
    /// while that store cannot be reached, each worker enforces the limit on its own clients only
    /// (and logs it). Anonymous clients are not counted.
    pub fn max_connections_per_user(mut self, limit: Option<usize>) -> Self {
        self.max_connections_per_user = limit;
        self
    }
}
