//! Handler arguments: the [`FromContext`] trait and the extractors of the core. Plugins add
//! their own (the WebSocket server adds `WebSocket` for every handler, and `Client` and `Data<T>`
//! for its client routes).

use std::any::TypeId;
use std::convert::Infallible;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::BoxError;
use crate::handler::context::HandlerContext;
use crate::handler::context::{Context, MessageContext};
use crate::message::envelope::Envelope;
use crate::publish::Publisher;

/// A type that can be a handler argument, built from what the handler is called with: the
/// [`Context`] of a message for subscriber handlers (the default `Cx`), or a plugin's context (the
/// WebSocket server's `RouteContext` for client routes).
///
/// [`State<T>`] and [`Publisher`] (and the server's `WebSocket`) work with every
/// [`HandlerContext`]; [`Channel`], [`Message<T>`], [`Raw`], [`Envelope`] and [`Context`] need a
/// message. Implement it to write your own extractor; declare in
/// [`requirements`](Self::requirements) what it needs so that `build()` can check it.
///
/// ```
/// use switchboard::{Context, FromContext};
///
/// /// The tenant, read from the channel name `tenant:<id>:...`.
/// struct Tenant(String);
///
/// impl FromContext for Tenant {
///     type Rejection = &'static str;
///     fn from_context(cx: &Context) -> Result<Self, Self::Rejection> {
///         let id = cx.channel().strip_prefix("tenant:").and_then(|rest| rest.split(':').next());
///         id.map(|id| Tenant(id.to_owned())).ok_or("channel is not a tenant channel")
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an argument that a handler called with `{Cx}` can take",
    label = "not an extractor for `{Cx}`",
    note = "a subscriber handler (`Context`) takes `Channel`, `Message<T>`, `Raw`, `Envelope`, `State<T>`, `Publisher`, `WebSocket` or `Context`; a client route (`RouteContext`) takes `Client`, `Data<T>`, `State<T>`, `Publisher`, `WebSocket` or `RouteContext`; or implement `switchboard::FromContext` for your type"
)]
pub trait FromContext<Cx = Context>: Sized {
    /// Why extraction failed; the handler is then skipped for that message and the reason logged.
    type Rejection: Into<BoxError>;

    /// Builds the argument from the message's context.
    ///
    /// # Errors
    /// The rejection when the argument cannot be built for this message.
    fn from_context(cx: &Cx) -> Result<Self, Self::Rejection>;

    /// Declares what this extractor needs from the application (checked at `build()`).
    fn requirements(_requirements: &mut Requirements) {}

    /// Extracts, boxing the rejection. Not public API: generated code names it through the
    /// argument's type, so that a type that is not an extractor is reported once, at the type.
    ///
    /// # Errors
    /// The rejection, boxed.
    #[doc(hidden)]
    fn __extract(cx: &Cx) -> Result<Self, BoxError> {
        Self::from_context(cx).map_err(Into::into)
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext> FromContext<Cx> for Context {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(cx.message_context().clone())
    }
}

/// The channel the message arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel(pub Arc<str>);

impl Deref for Channel {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Channel {
    /// The channel's name.
    ///
    /// ```
    /// use switchboard::Channel;
    ///
    /// let channel = Channel("orders:created".into());
    /// assert_eq!(channel.as_str(), "orders:created");
    /// assert!(channel == "orders:created");
    /// assert!(channel.starts_with("orders:"));
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Channel {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Channel {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext> FromContext<Cx> for Channel {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(Channel(cx.message_context().delivery.channel.clone()))
    }
}

/// The message payload deserialized into `T` (by default the JSON value itself).
///
/// A payload that does not deserialize into `T` is a rejection: it is logged with the handler's
/// name and the serde error, this handler is skipped, and the message's other handlers still run.
///
/// ```
/// use serde::Deserialize;
/// use switchboard::prelude::*;
///
/// #[derive(Deserialize)]
/// struct JobDone { id: u64 }
///
/// #[websocket_subscriber(channel = "queueJobCompleted")]
/// async fn on_job(Message(job): Message<JobDone>) {
///     tracing::info!(job = job.id, "done");
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message<T = Value>(pub T);

impl<T> Deref for Message<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Message<T> {
    /// The payload.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl Message<Value> {
    /// The JSON payload, e.g. to embed it in an outgoing frame.
    pub fn json(&self) -> &Value {
        &self.0
    }
}

/// The payload did not deserialize into the type a handler asked for.
#[derive(Debug, thiserror::Error)]
#[error("the payload does not deserialize into `{type_name}`: {source}")]
pub struct MessageRejection {
    type_name: &'static str,
    #[source]
    source: serde_json::Error,
}

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext, T: DeserializeOwned> FromContext<Cx> for Message<T> {
    type Rejection = MessageRejection;
    fn from_context(cx: &Cx) -> Result<Self, MessageRejection> {
        T::deserialize(&cx.message_context().delivery.message)
            .map(Message)
            .map_err(|source| MessageRejection {
                type_name: std::any::type_name::<T>(),
                source,
            })
    }
}

/// The payload bytes, as published (without the envelope fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Bytes);

impl Deref for Raw {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext> FromContext<Cx> for Raw {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(Raw(cx.message_context().raw()))
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext> FromContext<Cx> for Envelope {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(cx.message_context().envelope())
    }
}

/// A message's place in its [durable](crate::Builder::durable) channel's stream: the stream's
/// `epoch`, the message's `offset` in it, and whether it was `recovered` (read from the stream
/// after a gap or a reconnect) rather than received live.
///
/// Durable delivery is **at-least-once** per worker: within one run of a worker each offset is
/// handled once (a live copy of a message already read from the stream is skipped), but a
/// handler whose effects must happen once across restarts should remember the last
/// `(epoch, offset)` it stored (in the same transaction as its effect) and skip what is not
/// newer. As an argument, it rejects a message of an ordinary channel (the handler is then
/// skipped); a handler for both takes [`Context`] and reads
/// [`Context::stream_position`].
///
/// ```
/// use switchboard::prelude::*;
///
/// #[websocket_subscriber(channel = "payments", durable)]
/// async fn record(Message(payment): Message, at: StreamPosition) -> HandlerResult {
///     // Store `payment` with `(at.epoch, at.offset)` as its unique key: a replay then changes
///     // nothing.
///     tracing::info!(epoch = %at.epoch, offset = at.offset, recovered = at.recovered, %payment);
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The stream's epoch: a new one each time the stream starts again from nothing.
    pub epoch: Arc<str>,
    /// The message's offset in the stream, from 1, without holes.
    pub offset: u64,
    /// Whether the message was read from the stream (a gap, a reconnect) rather than received
    /// live.
    pub recovered: bool,
}

/// The message did not come from a durable channel, so it has no [`StreamPosition`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the message did not come from a durable channel, so it has no stream position (take `Context` and read `stream_position()` to accept both)")]
pub struct NotDurable;

#[diagnostic::do_not_recommend]
impl<Cx: MessageContext> FromContext<Cx> for StreamPosition {
    type Rejection = NotDurable;
    fn from_context(cx: &Cx) -> Result<Self, NotDurable> {
        cx.message_context().stream_position().ok_or(NotDurable)
    }
}

/// Shared state the application provided with `.state(value)`: a database pool, a job queue,
/// a configuration, anything `Clone + Send + Sync + 'static`.
///
/// A handler that takes `State<T>` when the application provided no `T` is refused by `build()`
/// with an error naming the handler and the type.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Clone)]
/// struct Greeting(&'static str);
///
/// #[websocket_subscriber(channel = "hello")]
/// fn greet(State(greeting): State<Greeting>) {
///     tracing::info!("{}", greeting.0);
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The application provided no state of the type a handler asked for.
#[derive(Debug, thiserror::Error)]
#[error("no state of type `{0}` was provided: add `.state(value)` to the builder")]
pub struct MissingState(&'static str);

impl MissingState {
    /// No state of type `T`.
    pub fn of<T>() -> Self {
        Self(std::any::type_name::<T>())
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: HandlerContext, T: Clone + Send + Sync + 'static> FromContext<Cx> for State<T> {
    type Rejection = MissingState;
    fn from_context(cx: &Cx) -> Result<Self, MissingState> {
        cx.resources()
            .state::<T>()
            .map(State)
            .ok_or(MissingState(std::any::type_name::<T>()))
    }
    fn requirements(requirements: &mut Requirements) {
        requirements.require_state::<T>();
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: HandlerContext> FromContext<Cx> for Publisher {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(cx.resources().publisher().clone())
    }
}

/// What a handler's arguments need from the application, gathered at `build()` so that a missing
/// piece is a startup error instead of a failure at dispatch time.
#[derive(Debug, Default, Clone)]
pub struct Requirements {
    pub(crate) states: Vec<(TypeId, &'static str)>,
    /// Types a plugin provides, each with what to do when it is missing.
    pub(crate) provided: Vec<(TypeId, &'static str, &'static str)>,
}

impl Requirements {
    /// Checks that `states` has every state type required; `handler` names who required it.
    pub(crate) fn check(
        &self,
        handler: &str,
        defined_at: Option<&crate::error::Location>,
        states: &crate::handler::context::StateMap,
    ) -> Result<(), crate::error::BuildError> {
        let defined_at = || defined_at.filter(|l| l.line > 0).cloned().map(Box::new);
        for (id, type_name) in &self.states {
            if !states.contains(*id) {
                return Err(crate::error::BuildError::MissingState {
                    handler: handler.to_owned(),
                    type_name,
                    defined_at: defined_at(),
                });
            }
        }
        for (id, type_name, fix) in &self.provided {
            if !states.contains(*id) {
                return Err(crate::error::BuildError::MissingProvided {
                    handler: handler.to_owned(),
                    type_name,
                    fix,
                    defined_at: defined_at(),
                });
            }
        }
        Ok(())
    }

    /// Declares that the handler needs a `T` that a plugin provides (as the WebSocket server
    /// provides `WebSocket`); `fix` says what to do when the application has none, for the error
    /// of `build()`.
    pub fn require_provided<T: 'static>(&mut self, fix: &'static str) {
        let id = TypeId::of::<T>();
        if !self.provided.iter().any(|(t, _, _)| *t == id) {
            self.provided.push((id, std::any::type_name::<T>(), fix));
        }
    }

    /// Declares that the handler needs state of type `T` (see [`State`](crate::handler::extract::State)).
    pub fn require_state<T: 'static>(&mut self) {
        let id = TypeId::of::<T>();
        if !self.states.iter().any(|(t, _)| *t == id) {
            self.states.push((id, std::any::type_name::<T>()));
        }
    }
}
