//! # Switchboard
//!
//! React to messages that travel between worker processes over Redis pub/sub with plain
//! functions placed next to the feature that emits them: no central list of handlers, and the
//! compiler catching the mistakes.
//!
//! ```
//! use serde::Deserialize;
//! use switchboard::prelude::*;
//!
//! /// Ask for an invoice when a background job finishes (with the `server` feature, a handler
//! /// also takes `ws: WebSocket` to tell the browsers).
//! #[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED, priority = 10)]
//! async fn job_notifications(Message(job): Message, publisher: Publisher) -> HandlerResult {
//!     publisher.publish("invoices:requested", &job).await?;
//!     Ok(())
//! }
//!
//! #[derive(Deserialize)]
//! struct PageView { path: String }
//!
//! /// Count page views; runs for every `analytics:*` channel.
//! #[websocket_subscriber(match = regex("^analytics:"))]
//! fn analytics_sink(Message(view): Message<PageView>, channel: Channel) {
//!     tracing::info!(%channel, path = %view.path, "page view");
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::Error> {
//! let app = Switchboard::builder()   // the in-process broker by default
//!     .subscriber(Subscriber::channels(["*"]).name("debugTap").priority(-100).handle(
//!         |cx: Context| async move { tracing::debug!(channel = cx.channel(), "tap") },
//!     ))
//!     .build()?;                       // collect, validate, sort; logs the handler table
//! # let names: Vec<String> = app.handlers().iter().map(|h| h.name().to_owned()).collect();
//! # assert!(names.contains(&"job_notifications".to_owned()));
//! let running = app.start().await?;  // subscribe and dispatch
//! running.publisher().publish_including_sender("analytics:pageview", &serde_json::json!({"path": "/"})).await?;
//! running.wait_idle().await;
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## The model
//!
//! - **Registration.** `#[websocket_subscriber]` keeps your function as written and adds one
//!   `const` descriptor (name, description, matchers, priority, location, a function pointer),
//!   collected at link time through `inventory` (default) or a `linkme` distributed slice (the
//!   `linkme` feature). Building it runs no code before `main`.
//! - **Registry.** [`Builder::build`] collects every linked handler and the inline
//!   [`Subscriber`]s, refuses duplicate names and missing [`State`] types with a typed error,
//!   sorts by priority (higher first; ties by name, then module path — never by link order) and
//!   logs one table of every handler.
//! - **Routing.** Exact channels, `"*"`, `regex("...")`, globs `pattern("...")` and predicates;
//!   a handler runs when any of its matchers matches, at most once per message. The channel-based
//!   part is computed once per distinct channel and cached.
//! - **Dispatch.** A message's handlers run one after another, highest priority first. An error,
//!   a panic or a timeout is logged with the handler's name and the next handler still runs.
//!   Messages of one channel are handled in arrival order; channels run concurrently.
//! - **Envelope.** Each worker has an instance id; a message it published itself is skipped unless
//!   it says `includeSender: true`; `workerId` and `includeSender` never reach handlers.
//! - **Delivery** is at-most-once, like Redis pub/sub: what is published while a worker is away,
//!   or dropped because its queue is full, is lost to it (and counted in [`Stats`]).
//! - **Observability.** Counters and histograms through the `metrics` facade (messages per
//!   channel, handler runs, errors, panics, timeouts, dispatch latency, drops, reconnects,
//!   clients), optionally served to Prometheus by `ServerBuilderExt::prometheus` (the
//!   `prometheus` feature, on by default); `switchboard.message` and `switchboard.handler` tracing
//!   spans around each message and each handler run.
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `server` | yes | the WebSocket server (crate `subscriber-server`): `WebSocket`, client routes, `serve`, `router`. Without it, a pure worker: no axum, hyper, tungstenite or jsonwebtoken |
//! | `prometheus` | yes | `prometheus(path)`: a Prometheus endpoint on the WebSocket server |
//! | `testing` | no | the test kit (crate `subscriber-testkit`) as `switchboard::testing`; for `[dev-dependencies]` |
//! | `linkme` | no | register through `linkme` distributed slices instead of `inventory` |
//! | `tls` | no | `rediss://` URLs for the Redis broker |
//!
//! See `testing` (feature `testing`) to test handlers with plain `cargo test`.
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

#[doc(inline)]
pub use subscriber_runtime::*;

/// The JSON library handlers' messages and frames are made of, re-exported so that an application
/// uses the very version Switchboard does (`switchboard::serde_json::json!`) without declaring it.
pub use serde_json;

#[cfg(feature = "server")]
#[doc(inline)]
pub use subscriber_server::{
    Client, ClientError, ClientId, ClientInfo, ClientMessage, Data, DataRejection,
    DisconnectReason, Frame, FrameContext, IntoReply, InvalidClientId, InvalidSecret, JwtSecret,
    Outgoing, Reply, RoomError, RoomPolicy, RouteContext, ServerAppExt, ServerBuilderExt,
    ServerError, ServerRunningExt, ServerStats, User, UserId, WebSocket, WebSocketConfig,
    WebSocketServer, WS_PATH,
};

/// The test kit: run an application on the in-process broker, publish and wait for its handlers,
/// test WebSocket clients, and a mock Redis server (feature `testing`, for `[dev-dependencies]`).
#[cfg(feature = "testing")]
pub mod testing {
    #[doc(inline)]
    pub use subscriber_testkit::*;
}

/// Marks a function as a subscriber handler, registered at link time.
///
/// ```
/// use switchboard::prelude::*;
///
/// /// Relays system status updates.
/// #[websocket_subscriber(channel = "custom", priority = 5)]
/// async fn status_relay(Message(m): Message, ws: WebSocket) -> HandlerResult {
///     ws.broadcast_to_all_clients(Outgoing::new("system", "statusUpdate", m));
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// # Keys
///
/// | key | value | default |
/// |---|---|---|
/// | `channel` | a string literal or a path to a `&str` constant; `"*"` is every channel | |
/// | `channels` | an array of those | |
/// | `match` | a matcher or an array of matchers: `"exact"`, `regex("...")`, `pattern("glob*")`, a path to `fn(&MatchContext) -> bool` | |
/// | `priority` | an `i32`; higher runs first | `0` |
/// | `timeout` | a string: a positive whole number followed by `ms`, `s` or `m` (`"250ms"`, `"5s"`, `"2m"`; no hours, no fractions); a run that takes longer, its layers included, is cancelled and counted as timed out; [`Builder::handler_timeout_for`] overrides it | [`Builder::handler_timeout`] (30 s) |
/// | `durable` | a flag: the handler's channels (exact, glob or regex) are [durable](Builder::durable), with the default [`Retention`](broker::Retention) unless the builder gives one | not durable |
/// | `once` | a flag: the handler runs on one worker per message (exact channels only; they become durable), see [`Subscriber::once`] | every worker |
/// | `layer` | a tower layer expression (`switchboard::tower::limit::ConcurrencyLimitLayer::new(4)`, `my_layers::audit()`), or an array of them, the first one outermost; evaluated when the application is built | none |
/// | `name` | a string | the function's name |
/// | `description` | a string | the doc comment |
/// | `crate` | a string path to this crate when renamed | `"::switchboard"` |
///
/// At least one of `channel`, `channels` and `match` is required. Every argument must be an
/// extractor ([`FromContext`]); the function may be `async` or not (a plain `fn` runs on tokio's
/// blocking pool, so it may block, and times out like an `async` one) and returns `()` or
/// `Result<(), E>` with `E: Into<BoxError>`. Layers and their order: [`layer`].
#[cfg(feature = "server")]
pub use subscriber_macros::websocket_subscriber;

/// Marks a function as a subscriber handler, registered at link time.
///
/// ```
/// use switchboard::prelude::*;
///
/// /// Audits orders.
/// #[websocket_subscriber(channel = "orders", priority = 5)]
/// async fn audit(Message(m): Message) -> HandlerResult {
///     tracing::info!(%m, "order");
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The keys are documented with the `server` feature on (the default); every argument must be an
/// extractor ([`FromContext`]).
#[cfg(not(feature = "server"))]
pub use subscriber_macros::websocket_subscriber;

/// Marks a function as the client route handler of the frames `{"type": ..., "action": ...}`,
/// registered at link time like a subscriber; the reply `{type, action, response}` carries what it
/// returns.
///
/// ```
/// use serde::Deserialize;
/// use switchboard::prelude::*;
///
/// #[derive(Deserialize)]
/// struct Greet { name: String }
///
/// /// Greets the client by name.
/// #[websocket_route(type = "hello", action = "greet")]
/// async fn greet(client: Client, Data(greet): Data<Greet>) -> Reply<String> {
///     Reply(format!("hello {} from {}", greet.name, client.id()))
/// }
/// # fn main() {}
/// ```
///
/// # Keys
///
/// | key | value | default |
/// |---|---|---|
/// | `type` | a string literal: the frame's `type` (required) | |
/// | `action` | a string literal: the frame's `action` (required) | |
/// | `timeout` | a string: a positive whole number followed by `ms`, `s` or `m` (`"250ms"`, `"5s"`, `"2m"`; no hours, no fractions); a run that takes longer, its layers included, is cancelled | [`Builder::handler_timeout`] (30 s) |
/// | `layer` | a tower layer expression over [`RouteContext`] handlers (`switchboard::tower::limit::ConcurrencyLimitLayer::new(4)`), or an array of them, the first one outermost; evaluated when the application is built | none |
/// | `name` | a string | the function's name |
/// | `description` | a string | the doc comment |
/// | `crate` | a string path to this crate when renamed | `"::switchboard"` |
///
/// `type` and `action` must be non-empty, without whitespace or control characters, and
/// `system:joinRoom` / `system:leaveRoom` are reserved (the server answers them). Every argument
/// must be an extractor for [`RouteContext`] ([`FromContext<RouteContext>`](FromContext):
/// [`Client`], [`Data<T>`], [`WebSocket`], [`State<T>`], [`Publisher`], [`RouteContext`]); the
/// function may be `async` or not (a plain `fn` runs on the blocking pool) and returns an
/// [`IntoReply`]: `()`, `Result<T, E>`, [`Reply<T>`] or a `serde_json::Value`; an error reaches
/// the client only as a [`ClientError`] (anything else is `Internal error` with the log line's id). Routes are collected by [`Builder::build`] unless the
/// builder leaves linked handlers out, and a route given twice is a build error.
#[cfg(feature = "server")]
pub use subscriber_macros::websocket_route;

/// The items most handlers need: `use switchboard::prelude::*;`.
pub mod prelude {
    pub use crate::event;
    pub use crate::websocket_subscriber;
    #[cfg(feature = "server")]
    pub use crate::{
        websocket_route, Client, ClientError, Data, Outgoing, Reply, RoomPolicy, RouteContext,
        ServerAppExt as _, ServerBuilderExt as _, ServerRunningExt as _, WebSocket,
        WebSocketConfig,
    };
    pub use crate::{
        Builder, Channel, Context, Envelope, HandlerResult, MatchContext, Matcher, Message,
        Publisher, Raw, State, StreamPosition, Subscriber, Switchboard,
    };
}

/// Not public API: used by the code the attributes generate.
#[doc(hidden)]
pub mod __private {
    pub use subscriber_runtime::__private::*;
    #[cfg(feature = "server")]
    pub use subscriber_server::__private::*;
}
