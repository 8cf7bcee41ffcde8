//! The test kit of Switchboard (`switchboard::testing`, feature `testing`): run handlers on the
//! in-process broker, publish a message, wait until every handler it triggered has finished, and
//! inspect what ran and what was published; test WebSocket clients without a network
//! ([`TestClient`]) and over a real socket ([`TestServer`], [`SocketClient`]); several workers on
//! one Redis ([`TestCluster`]); [`MockRedis`], a Redis server on loopback; and [`FaultProxy`],
//! which cuts TCP connections on demand or on a schedule.
//!
//! It is a crate of its own so that none of it is compiled into an application's production
//! build: depend on `switchboard` with the `testing` feature in `[dev-dependencies]`.
//!
//! ```
//! use switchboard::prelude::*;
//! use switchboard::testing::TestApp;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::Error> {
//! let app = TestApp::start(
//!     Switchboard::builder()
//!         .without_linked_handlers()
//!         .subscriber(Subscriber::channels(["orders"]).name("echo").handle(
//!             |Message(m): Message, publisher: Publisher| async move {
//!                 publisher.publish("orders:seen", &m).await
//!             },
//!         )),
//! )
//! .await?;
//! let dispatch = app.publish("orders", &serde_json::json!({"id": 1})).await?;
//! assert_eq!(dispatch.handlers(), ["echo"]);
//! assert_eq!(app.published()[0].channel, "orders:seen");
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::sync::{Arc, Mutex};
#[cfg(feature = "server")]
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use subscriber_runtime::broker::{Broker, Inbox, MemoryBroker, Subscriptions};
pub use subscriber_runtime::Outcome;
use subscriber_runtime::{BrokerError, Builder, DispatchEvent, Error, Publisher, Running, Stats};
#[cfg(feature = "server")]
use subscriber_server::{ClientId, LocalReceiver, ServerRunningExt, WebSocket};

mod barrier;
mod cluster;
mod mock_redis;
mod proxy;
mod redis;
#[cfg(feature = "server")]
mod socket;
pub use cluster::TestCluster;
pub use mock_redis::MockRedis;
pub use proxy::FaultProxy;
pub use redis::TestRedis;
#[cfg(feature = "server")]
pub use socket::{Ending, SocketClient, TestServer, SOCKET_TIMEOUT};

/// A message an application published, as recorded by [`TestApp::published`].
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The channel.
    pub channel: String,
    /// The payload, parsed (envelope fields included), or the raw text as a JSON string when it
    /// is not JSON.
    pub message: Value,
}

/// One handler run, as recorded by the harness.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerRun {
    /// The handler's name.
    pub handler: String,
    /// The channel of the message.
    pub channel: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// What happened to the messages of one [`TestApp::publish`] (and to any message its handlers
/// published in turn, on this worker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dispatch {
    /// Handler runs, in the order they ran.
    pub runs: Vec<HandlerRun>,
    /// Payloads refused (not JSON, too large, too deep), with the reason.
    pub invalid: Vec<String>,
    /// Messages skipped because this worker published them without `includeSender`.
    pub skipped_own: usize,
}

impl Dispatch {
    /// The names of the handlers that ran, in order.
    pub fn handlers(&self) -> Vec<&str> {
        self.runs.iter().map(|r| r.handler.as_str()).collect()
    }

    /// How the named handler's (first) run ended, if it ran.
    pub fn outcome(&self, handler: &str) -> Option<&Outcome> {
        self.runs
            .iter()
            .find(|r| r.handler == handler)
            .map(|r| &r.outcome)
    }
}

/// A broker wrapper that records what the application publishes.
#[derive(Clone)]
struct Recording {
    inner: Arc<dyn Broker>,
    log: Arc<Mutex<Vec<Published>>>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("inner", &self.inner.kind())
            .finish_non_exhaustive()
    }
}

impl Broker for Recording {
    fn publish(&self, channel: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let message = serde_json::from_slice(&payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()));
        lock(&self.log).push(Published {
            channel: channel.to_owned(),
            message,
        });
        self.inner.publish(channel, payload)
    }

    fn subscribe(
        &self,
        subscriptions: Subscriptions,
        inbox: Inbox,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.subscribe(subscriptions, inbox, shutdown)
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn has_streams(&self) -> bool {
        self.inner.has_streams()
    }

    fn presence(&self) -> Option<Arc<dyn subscriber_runtime::broker::PresenceStore>> {
        self.inner.presence()
    }

    fn publish_durable(
        &self,
        channel: &str,
        payload: Bytes,
        retention: subscriber_runtime::broker::Retention,
    ) -> BoxFuture<'_, Result<subscriber_runtime::broker::Position, BrokerError>> {
        let message = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        lock(&self.log).push(Published {
            channel: channel.to_owned(),
            message,
        });
        self.inner.publish_durable(channel, payload, retention)
    }

    fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<subscriber_runtime::broker::StreamRead, BrokerError>> {
        self.inner.read_stream(channel, after, limit)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A started application on the in-process broker, for tests.
pub struct TestApp {
    running: Running,
    /// The in-process bus, when the application runs on one.
    bus: Option<MemoryBroker>,
    broker: Arc<dyn Broker>,
    events: Arc<Mutex<Vec<DispatchEvent>>>,
    published: Arc<Mutex<Vec<Published>>>,
    outsider: Publisher,
    barrier: Arc<barrier::Seen>,
}

impl fmt::Debug for TestApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestApp")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl TestApp {
    /// Builds and starts `builder` on a new in-process bus.
    ///
    /// # Errors
    /// What `build()` or `start()` returns.
    pub async fn start(builder: Builder) -> Result<Self, Error> {
        Self::start_on(MemoryBroker::new(), builder).await
    }

    /// Builds and starts `builder` on the given bus, so several test workers can share it.
    ///
    /// # Errors
    /// What `build()` or `start()` returns.
    pub async fn start_on(bus: MemoryBroker, builder: Builder) -> Result<Self, Error> {
        Self::start_with(Arc::new(bus.clone()), Some(bus), builder).await
    }

    /// Builds and starts `builder` on any broker (a `RedisBroker`, say): [`settle`](Self::settle)
    /// then waits for what is on its way through the broker with a barrier message, not a sleep.
    /// [`TestCluster`] starts several workers this way.
    ///
    /// # Errors
    /// What `build()` or `start()` returns.
    pub async fn start_with_broker(
        broker: impl Broker + Clone,
        builder: Builder,
    ) -> Result<Self, Error> {
        Self::start_with(Arc::new(broker), None, builder).await
    }

    async fn start_with(
        broker: Arc<dyn Broker>,
        bus: Option<MemoryBroker>,
        builder: Builder,
    ) -> Result<Self, Error> {
        let events: Arc<Mutex<Vec<DispatchEvent>>> = Arc::default();
        let published: Arc<Mutex<Vec<Published>>> = Arc::default();
        let sink = events.clone();
        let seen = Arc::new(barrier::Seen::default());
        let builder = builder
            .broker(Recording {
                inner: broker.clone(),
                log: published.clone(),
            })
            .plugin(barrier::BarrierPlugin(seen.clone()))
            .observe(move |event| lock(&sink).push(event.clone()));
        let running = builder.build()?.start().await?;
        let outsider = Publisher::new(broker.clone(), "testing-harness".into());
        Ok(Self {
            running,
            bus,
            broker,
            events,
            published,
            outsider,
            barrier: seen,
        })
    }

    /// Publishes `message` on `channel` as another worker would, and waits until every handler
    /// it triggered has finished.
    ///
    /// # Errors
    /// An invalid channel or a message that is not a JSON object.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<Dispatch, Error> {
        self.outsider.publish(channel, message).await?;
        Ok(self.settle().await)
    }

    /// Publishes a payload unchanged (no envelope), and waits until it has been handled.
    pub async fn publish_raw(&self, channel: &str, payload: impl Into<Bytes>) -> Dispatch {
        match &self.bus {
            Some(bus) => {
                bus.publish_now(channel, payload.into());
            }
            None => {
                if let Err(error) = self.broker.publish(channel, payload.into()).await {
                    panic!("publishing on `{channel}` failed: {error}");
                }
            }
        }
        self.settle().await
    }

    /// Publishes as this worker itself would (`workerId` = this worker's id), and waits.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_as_self<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
        include_sender: bool,
    ) -> Result<Dispatch, Error> {
        let me = Publisher::new(self.broker.clone(), self.worker_id().into());
        if include_sender {
            me.publish_including_sender(channel, message).await?;
        } else {
            me.publish(channel, message).await?;
        }
        Ok(self.settle().await)
    }

    /// Waits until everything received so far is handled, and returns what happened since the
    /// last call.
    pub async fn settle(&self) -> Dispatch {
        if self.bus.is_none() {
            // Through a real broker, what was published may still be on its way: a barrier
            // message published now arrives after it.
            let token = barrier::token();
            barrier::publish(&self.outsider, token).await;
            self.barrier.wait(token, self.worker_id()).await;
        }
        self.settle_local().await
    }

    /// Waits until this worker is idle, and returns what happened since the last call.
    async fn settle_local(&self) -> Dispatch {
        self.running.wait_idle().await;
        let mut dispatch = Dispatch::default();
        for event in lock(&self.events).drain(..) {
            match event {
                DispatchEvent::Ran {
                    handler,
                    channel,
                    outcome,
                    ..
                } => dispatch.runs.push(HandlerRun {
                    handler,
                    channel: channel.to_string(),
                    outcome,
                }),
                DispatchEvent::Invalid { reason, .. } => dispatch.invalid.push(reason),
                DispatchEvent::SkippedOwn { .. } => dispatch.skipped_own += 1,
                _ => {}
            }
        }
        dispatch
    }

    /// Everything this application's handlers (or its publisher) published, in order.
    pub fn published(&self) -> Vec<Published> {
        lock(&self.published).clone()
    }

    /// The messages published on `channel` so far, in order (see [`published`](Self::published)).
    pub fn published_on(&self, channel: &str) -> Vec<Value> {
        lock(&self.published)
            .iter()
            .filter(|p| p.channel == channel)
            .map(|p| p.message.clone())
            .collect()
    }

    /// Asserts that something was published on `channel` and returns the last such message
    /// (envelope fields included).
    ///
    /// ```
    /// # use switchboard::prelude::*;
    /// # use switchboard::testing::TestApp;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), switchboard::Error> {
    /// let app = TestApp::start(Switchboard::builder().without_linked_handlers().subscriber(
    ///     Subscriber::channels(["orders"]).name("ack").handle(
    ///         |Message(m): Message, publisher: Publisher| async move {
    ///             publisher.publish("orders:ack", &serde_json::json!({"id": m["id"]})).await
    ///         },
    ///     ),
    /// ))
    /// .await?;
    /// app.publish("orders", &serde_json::json!({"id": 7})).await?;
    /// assert_eq!(app.assert_published("orders:ack")["id"], 7);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    /// When nothing was published on `channel`, listing what was.
    #[track_caller]
    pub fn assert_published(&self, channel: &str) -> Value {
        match self.published_on(channel).pop() {
            Some(message) => message,
            None => panic!(
                "nothing was published on `{channel}`; published: {:?}",
                lock(&self.published)
                    .iter()
                    .map(|p| p.channel.as_str())
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Connects a test WebSocket client to this worker.
    #[cfg(feature = "server")]
    pub fn connect_client(&self) -> TestClient {
        let websocket = self.running.websocket();
        let (id, rx) = websocket.attach_local(1024);
        TestClient {
            id,
            rx,
            websocket,
            resources: self.running.resources().clone(),
        }
    }

    /// The shared bus, to start more workers on it.
    ///
    /// # Panics
    /// When the application runs on another broker ([`start_with_broker`](Self::start_with_broker)).
    pub fn bus(&self) -> MemoryBroker {
        self.bus
            .clone()
            .expect("this TestApp runs on another broker than the in-process bus")
    }

    /// The running application.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// This worker's instance id.
    pub fn worker_id(&self) -> &str {
        self.running.worker_id()
    }

    /// The runtime's counters.
    pub fn stats(&self) -> Stats {
        self.running.stats()
    }

    /// Shuts the application down gracefully.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// A WebSocket client connected to a [`TestApp`]'s worker, without a network.
#[cfg(feature = "server")]
#[derive(Debug)]
pub struct TestClient {
    id: ClientId,
    rx: LocalReceiver,
    websocket: WebSocket,
    resources: Arc<subscriber_runtime::Resources>,
}

/// How long [`TestClient::assert_push`] and [`TestClient::assert_reply`] wait for their frame.
#[cfg(feature = "server")]
pub const ASSERT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`TestClient::refute_push`] watches for the frame it must not see.
#[cfg(feature = "server")]
pub const REFUTE_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(feature = "server")]
impl Drop for TestClient {
    fn drop(&mut self) {
        self.websocket.detach_local(&self.id);
    }
}

#[cfg(feature = "server")]
impl TestClient {
    /// The client's id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The next frame, parsed, or `None` if none arrives within `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        let frame = tokio::time::timeout(timeout, self.rx.recv()).await.ok()??;
        Some(serde_json::from_str(frame.as_str()).expect("frames are JSON"))
    }

    /// Every frame already received, parsed. A local send (`broadcast_*`) is queued before it
    /// returns, so its frame is here at once.
    pub fn received(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(frame) = self.rx.try_recv() {
            out.push(serde_json::from_str(frame.as_str()).expect("frames are JSON"));
        }
        out
    }

    /// Sends the frame `{"type": kind, "action": action, "data": data}` as this client, as if it
    /// had come over its socket: the `on_message` hooks run, `system` actions are answered, a
    /// client route's handler starts. Its reply comes back like any frame
    /// ([`assert_reply`](Self::assert_reply)).
    ///
    /// ```
    /// # use switchboard::prelude::*;
    /// # use switchboard::testing::TestApp;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), switchboard::Error> {
    /// let app = TestApp::start(Switchboard::builder().without_linked_handlers().route(
    ///     "hello", "greet",
    ///     |Data(name): Data<String>| async move { serde_json::json!({"hi": name}) },
    /// ))
    /// .await?;
    /// let mut client = app.connect_client();
    /// client.push("hello", "greet", serde_json::json!("Ada")).await;
    /// assert_eq!(client.assert_reply("hello", "greet").await["hi"], "Ada");
    /// client.push("system", "joinRoom", serde_json::json!({"roomName": "lobby"})).await;
    /// assert_eq!(client.assert_reply("system", "joinRoom").await["success"], true);
    /// client.refute_push("hello", "greet").await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn push(&mut self, kind: &str, action: &str, data: impl Serialize) {
        let frame = serde_json::json!({
            "type": kind,
            "action": action,
            "data": serde_json::to_value(data).unwrap_or(Value::Null),
        });
        self.push_text(&frame.to_string()).await;
    }

    /// Sends any text as this client (a malformed frame, for a test of the error frames).
    pub async fn push_text(&mut self, text: &str) {
        let pushed = self
            .websocket
            .push_local(&self.resources, &self.id, text)
            .await;
        assert!(pushed, "the test client {} is not connected", self.id);
    }

    /// Waits (up to [`ASSERT_TIMEOUT`]) for the frame `{"type": kind, "action": action, ...}`
    /// and returns its `data`. Frames before it are skipped.
    ///
    /// # Panics
    /// When no such frame arrives in time, listing the frames that did.
    pub async fn assert_push(&mut self, kind: &str, action: &str) -> Value {
        let frame = self.expect(kind, action, "a push").await;
        frame.get("data").cloned().unwrap_or(Value::Null)
    }

    /// Waits (up to [`ASSERT_TIMEOUT`]) for the reply `{"type": kind, "action": action,
    /// "response": ...}` to a pushed frame and returns its `response`. Frames before it are
    /// skipped.
    ///
    /// # Panics
    /// When no such reply arrives in time, listing the frames that did.
    pub async fn assert_reply(&mut self, kind: &str, action: &str) -> Value {
        let frame = self.expect(kind, action, "a reply").await;
        match frame.get("response") {
            Some(response) => response.clone(),
            None => panic!("expected a reply to {kind}:{action}, got the push {frame}"),
        }
    }

    /// Asserts that no frame `{"type": kind, "action": action, ...}` arrives within
    /// [`REFUTE_TIMEOUT`] (frames already received count). Other frames are consumed.
    ///
    /// # Panics
    /// When such a frame arrives.
    pub async fn refute_push(&mut self, kind: &str, action: &str) {
        let deadline = tokio::time::Instant::now() + REFUTE_TIMEOUT;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            let frame: Value = serde_json::from_str(frame.as_str()).expect("frames are JSON");
            assert!(
                !(frame["type"] == kind && frame["action"] == action),
                "expected no {kind}:{action} frame, got {frame}"
            );
        }
    }

    async fn expect(&mut self, kind: &str, action: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + ASSERT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(frame)) => {
                    let frame: Value =
                        serde_json::from_str(frame.as_str()).expect("frames are JSON");
                    if frame["type"] == kind && frame["action"] == action {
                        return frame;
                    }
                    seen.push(frame);
                }
                Ok(None) => panic!("expected {what} {kind}:{action}, but the client was closed; frames: {seen:?}"),
                Err(_) => panic!(
                    "expected {what} {kind}:{action} within {ASSERT_TIMEOUT:?}; frames received: {seen:?}"
                ),
            }
        }
    }
}
