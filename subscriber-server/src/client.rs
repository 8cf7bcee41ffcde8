//! Clients: who they are ([`Client`], [`User`]) and, for the clients of this worker, the bounded
//! send queue a connection's writer drains.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::frame::{ClientId, Frame};

/// The id of an authenticated user: the token's `sub` claim. A numeric `sub` (`"42"`) is a JSON
/// number on the wire, as in the reference framework; any other is a string. Two ids are equal
/// when their text is, so `42` and `"42"` name the same user.
///
/// ```
/// use switchboard::UserId;
///
/// assert_eq!(UserId::new("42").to_string(), "42");
/// assert_eq!(serde_json::to_string(&UserId::new("42")).unwrap(), "42");
/// assert_eq!(serde_json::to_string(&UserId::new("ann")).unwrap(), "\"ann\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(Arc<str>);

impl UserId {
    /// A user id from its text.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a number, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        self.0
            .parse::<i64>()
            .ok()
            .filter(|n| n.to_string() == *self.0)
    }

    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) if !s.is_empty() => Some(Self::new(s.as_str())),
            Value::Number(n) => Some(Self::new(n.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_i64() {
            Some(n) => s.serialize_i64(n),
            None => s.serialize_str(&self.0),
        }
    }
}

/// An authenticated user: its id and every claim of its token. On the wire (in `clientConnected`
/// and `clientJoinedRoom`) it is `{"userId": ..., "payload": {claims}}`, as in the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    id: UserId,
    claims: Value,
}

impl User {
    /// A user with this id and these claims.
    pub fn new(id: UserId, claims: Value) -> Self {
        Self { id, claims }
    }

    /// The user's id.
    pub fn id(&self) -> &UserId {
        &self.id
    }

    /// Every claim of the user's token (a JSON object).
    pub fn claims(&self) -> &Value {
        &self.claims
    }

    /// One claim, if present.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// Reads the reference's `{userId, payload}` shape; `None` for `null` or anything without a
    /// usable id.
    pub(crate) fn from_wire(value: &Value) -> Option<Self> {
        let id = UserId::from_value(value.get("userId")?)?;
        let claims = value.get("payload").cloned().unwrap_or(Value::Null);
        Some(Self { id, claims })
    }
}

impl Serialize for User {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "userId")]
            user_id: &'a UserId,
            payload: &'a Value,
        }
        Wire {
            user_id: &self.id,
            payload: &self.claims,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for User {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Self::from_wire(&value)
            .ok_or_else(|| serde::de::Error::custom("not a {userId, payload} user"))
    }
}

/// A connected client: its id and, when it presented a valid token, its user. Cheap to clone.
///
/// It is an argument of client route handlers, and what lifecycle hooks and broadcast predicates
/// see.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) id: ClientId,
    pub(crate) user: Option<Arc<User>>,
}

impl Client {
    pub(crate) fn new(id: ClientId, user: Option<Arc<User>>) -> Self {
        Self { id, user }
    }

    /// The client's id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The authenticated user, if the client presented a token.
    pub fn user(&self) -> Option<&User> {
        self.user.as_deref()
    }

    /// The authenticated user's id.
    pub fn user_id(&self) -> Option<&UserId> {
        self.user.as_ref().map(|u| &u.id)
    }

    /// The token's claims, if the client presented one.
    pub fn claims(&self) -> Option<&Value> {
        self.user.as_ref().map(|u| &u.claims)
    }

    /// Whether the client presented a valid token.
    pub fn is_authenticated(&self) -> bool {
        self.user.is_some()
    }
}

/// Why a client was disconnected, as the `on_disconnect` hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client closed the connection (with this close code, if it sent one).
    ClientClosed(Option<u16>),
    /// The connection failed (the I/O or protocol error).
    ConnectionLost(String),
    /// The client's send queue was full: it did not read fast enough (close code 1013).
    SlowConsumer,
    /// The client sent a message larger than the limit (close code 1009).
    MessageTooBig,
    /// The client stopped answering pings.
    HeartbeatTimeout,
    /// The client sent no message within the idle timeout.
    Idle,
    /// The server asked for it (`disconnect_client`).
    Kicked,
    /// The server is shutting down (close code 1001).
    Shutdown,
}

impl DisconnectReason {
    /// The close code the server sends for this reason (`None` when the server sends no close
    /// frame itself).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::ClientClosed(_) | Self::ConnectionLost(_) => None,
            Self::SlowConsumer => Some(1013),
            Self::MessageTooBig => Some(1009),
            Self::HeartbeatTimeout | Self::Shutdown => Some(1001),
            Self::Idle | Self::Kicked => Some(1000),
        }
    }

    pub(crate) fn close_text(&self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow consumer",
            Self::MessageTooBig => "message too big",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::Shutdown => "server shutting down",
            Self::Idle => "inactive",
            Self::Kicked => "disconnected by the server",
            Self::ClientClosed(_) | Self::ConnectionLost(_) => "",
        }
    }

    /// Whether the frames still queued are sent before the close frame.
    pub(crate) fn drains(&self) -> bool {
        matches!(self, Self::Shutdown | Self::Idle | Self::Kicked)
    }

    /// Whether the writer abandons a blocked write at once.
    pub(crate) fn urgent(&self) -> bool {
        !self.drains()
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientClosed(Some(code)) => write!(f, "closed by the client ({code})"),
            Self::ClientClosed(None) => f.write_str("closed by the client"),
            Self::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            other => f.write_str(other.close_text()),
        }
    }
}

/// The result of queueing a frame for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The queue was full: the client is now being disconnected as a slow consumer.
    Slow,
    /// The client is already closing.
    Closed,
}

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Frame>,
    /// Frames queued or taken by the writer but not yet flushed to the socket.
    messages: usize,
    bytes: usize,
    close: Option<DisconnectReason>,
}

/// A client connected to this worker: its identity and its bounded send queue.
pub(crate) struct Conn {
    pub(crate) client: Client,
    outbox: Mutex<Outbox>,
    wake: Notify,
    pub(crate) closing: CancellationToken,
    /// Milliseconds since the server's epoch of the last message received.
    last_activity: AtomicU64,
    limits: QueueLimits,
    /// Free places for this client's route handlers, which run beside its reader.
    pub(crate) route_slots: tokio::sync::Semaphore,
    /// The client sent a ping: the writer must get its pong out (a flush) within the stall
    /// timeout, so that a client that floods pings and never reads is found.
    flush_requested: std::sync::atomic::AtomicBool,
    /// The durable rooms this client rejoined with a position: where it is in each, and the
    /// live frames held while it catches up (see `rooms_durable.rs`).
    pub(crate) durable_rooms:
        Mutex<std::collections::HashMap<String, crate::rooms_durable::RoomCursor>>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("client", &self.client.id)
            .finish_non_exhaustive()
    }
}

/// What a queued frame counts against the send budget besides its bytes: its place in the queue
/// (the frame's handle) and the writer's batch.
pub(crate) const FRAME_OVERHEAD: usize = 64;

/// What a frame counts against its client's send budget.
pub(crate) fn budget_cost(frame: &Frame) -> usize {
    frame.len() + FRAME_OVERHEAD
}

/// Queue limits of one client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    /// Route handlers of this client that may run at once.
    pub(crate) routes: usize,
}

impl Conn {
    pub(crate) fn new(client: Client, now_ms: u64, limits: QueueLimits) -> Self {
        Self {
            limits,
            client,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            last_activity: AtomicU64::new(now_ms),
            route_slots: tokio::sync::Semaphore::new(limits.routes),
            flush_requested: std::sync::atomic::AtomicBool::new(false),
            durable_rooms: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame without waiting. A client over its send budget is closed as a slow consumer.
    pub(crate) fn push(&self, frame: &Frame) -> Pushed {
        let limits = self.limits;
        let len = budget_cost(frame);
        let mut out = self.lock();
        if out.close.is_some() {
            return Pushed::Closed;
        }
        if out.messages >= limits.messages || (out.bytes > 0 && out.bytes + len > limits.bytes) {
            out.close = Some(DisconnectReason::SlowConsumer);
            out.queue = VecDeque::new();
            drop(out);
            self.closing.cancel();
            return Pushed::Slow;
        }
        out.queue.push_back(frame.clone());
        out.messages += 1;
        out.bytes += len;
        let first = out.queue.len() == 1;
        drop(out);
        if first {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// Starts closing the client for `reason`; false when it was already closing.
    pub(crate) fn close(&self, reason: DisconnectReason) -> bool {
        let mut out = self.lock();
        if out.close.is_some() {
            return false;
        }
        if reason.urgent() {
            out.queue = VecDeque::new();
        }
        out.close = Some(reason);
        drop(out);
        self.closing.cancel();
        true
    }

    /// Why the client is closing, if it is.
    pub(crate) fn close_reason(&self) -> Option<DisconnectReason> {
        self.lock().close.clone()
    }

    pub(crate) fn is_closing_urgently(&self) -> bool {
        self.lock()
            .close
            .as_ref()
            .is_some_and(DisconnectReason::urgent)
    }

    /// Moves every queued frame into `batch` (which must be empty); they still count against the
    /// limits until [`release`](Self::release).
    pub(crate) fn take(&self, batch: &mut VecDeque<Frame>) {
        let mut out = self.lock();
        std::mem::swap(&mut out.queue, batch);
    }

    /// The writer flushed `messages` frames of `bytes` bytes.
    pub(crate) fn release(&self, messages: usize, bytes: usize) {
        let mut out = self.lock();
        out.messages = out.messages.saturating_sub(messages);
        out.bytes = out.bytes.saturating_sub(bytes);
    }

    /// Asks the writer to flush (the pong of a ping the client sent).
    pub(crate) fn request_flush(&self) {
        if !self.flush_requested.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether a flush was asked for since the last call.
    pub(crate) fn take_flush_request(&self) -> bool {
        self.flush_requested.swap(false, Ordering::AcqRel)
    }

    /// Waits until a frame may be queued (after an empty queue got one).
    pub(crate) async fn queued(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_activity.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// Takes one frame (for in-process test clients).
    pub(crate) fn pop(&self) -> Option<Frame> {
        let mut out = self.lock();
        let frame = out.queue.pop_front()?;
        out.messages = out.messages.saturating_sub(1);
        out.bytes = out.bytes.saturating_sub(budget_cost(&frame));
        Some(frame)
    }
}

/// The receiving end of an in-process client (see the test kit's `TestApp::connect_client`).
/// Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct LocalReceiver {
    pub(crate) conn: Arc<Conn>,
}

/// Nothing is queued right now (or the client is closed).
#[doc(hidden)]
#[derive(Debug)]
pub struct Empty;

impl LocalReceiver {
    /// The next frame; `None` once the client is closed and its queue empty.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.conn.pop() {
                return Some(frame);
            }
            if self.conn.closing.is_cancelled() {
                return None;
            }
            tokio::select! {
                () = self.conn.queued() => {}
                () = self.conn.closing.cancelled() => {}
            }
        }
    }

    /// A frame already queued.
    ///
    /// # Errors
    /// [`Empty`] when none is.
    pub fn try_recv(&mut self) -> Result<Frame, Empty> {
        self.conn.pop().ok_or(Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(messages: usize, bytes: usize) -> Conn {
        Conn::new(
            Client::new(ClientId::generate(), None),
            0,
            QueueLimits {
                messages,
                bytes,
                routes: 1,
            },
        )
    }

    #[test]
    fn queue_limits_close_a_slow_consumer() {
        let c = conn(2, 1000);
        let f = Frame::text("x".repeat(10));
        assert_eq!(c.push(&f), Pushed::Queued);
        assert_eq!(c.push(&f), Pushed::Queued);
        assert_eq!(c.push(&f), Pushed::Slow);
        assert_eq!(c.push(&f), Pushed::Closed);
        assert_eq!(c.close_reason(), Some(DisconnectReason::SlowConsumer));
        assert!(c.closing.is_cancelled());
        assert!(c.pop().is_none(), "a slow consumer's queue is dropped");
    }

    #[test]
    fn byte_limit_and_release() {
        let c = conn(100, 25);
        let big = Frame::text("y".repeat(40));
        assert_eq!(
            c.push(&big),
            Pushed::Queued,
            "one frame always fits an empty queue"
        );
        let mut batch = VecDeque::new();
        c.take(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            c.push(&Frame::text("z")),
            Pushed::Slow,
            "taken but unflushed bytes count"
        );
        let c = conn(100, 25);
        c.push(&big);
        let mut batch = VecDeque::new();
        c.take(&mut batch);
        // The writer releases what it counted: the bytes and the overhead of each frame.
        c.release(1, 40 + FRAME_OVERHEAD);
        assert_eq!(c.push(&Frame::text("z")), Pushed::Queued);
    }

    #[test]
    fn the_budget_counts_each_frame_with_its_overhead() {
        let budget = 4 * (10 + FRAME_OVERHEAD);
        let c = conn(usize::MAX, budget);
        let frame = Frame::text("x".repeat(10));
        for _ in 0..4 {
            assert_eq!(c.push(&frame), Pushed::Queued);
        }
        assert_eq!(
            c.push(&frame),
            Pushed::Slow,
            "the fifth frame is over the budget"
        );
    }

    #[test]
    fn user_ids_and_wire_shape() {
        let u = User::new(UserId::new("42"), serde_json::json!({"sub": "42"}));
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"userId": 42, "payload": {"sub": "42"}})
        );
        assert_eq!(User::from_wire(&serde_json::to_value(&u).unwrap()), Some(u));
        assert_eq!(UserId::new("042").as_i64(), None);
        assert!(User::from_wire(&Value::Null).is_none());
    }
}
