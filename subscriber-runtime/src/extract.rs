//! Handler arguments: the [`FromContext`] trait and the extractors.

use std::convert::Infallible;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::Context;
use crate::handler::BoxError;
use crate::publish::Publisher;
use crate::registration::Requirements;
use crate::server::WebSocket;

/// A type that can be a handler argument, built from the [`Context`] of a message.
///
/// Implement it to write your own extractor; declare in [`requirements`](Self::requirements) what
/// it needs so that `build()` can check it.
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
    message = "`{Self}` is not a subscriber handler argument",
    label = "not an extractor",
    note = "every argument of a subscriber handler must implement `switchboard::FromContext`: use `Channel`, `Message<T>`, `Raw`, `State<T>`, `Envelope`, `Publisher`, `WebSocket` or `Context`, or implement `FromContext` for your type"
)]
pub trait FromContext: Sized {
    /// Why extraction failed; the handler is then skipped for that message and the reason logged.
    type Rejection: Into<BoxError>;

    /// Builds the argument from the message's context.
    ///
    /// # Errors
    /// The rejection when the argument cannot be built for this message.
    fn from_context(cx: &Context) -> Result<Self, Self::Rejection>;

    /// Declares what this extractor needs from the application (checked at `build()`).
    fn requirements(_requirements: &mut Requirements) {}
}

impl FromContext for Context {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(cx.clone())
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

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromContext for Channel {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(Channel(cx.delivery.channel.clone()))
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

impl<T: DeserializeOwned> FromContext for Message<T> {
    type Rejection = MessageRejection;
    fn from_context(cx: &Context) -> Result<Self, MessageRejection> {
        T::deserialize(&cx.delivery.message)
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

impl FromContext for Raw {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(Raw(cx.raw()))
    }
}

/// Where a message came from and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub(crate) worker_id: Option<Arc<str>>,
    pub(crate) include_sender: bool,
    pub(crate) received_at: SystemTime,
}

impl Envelope {
    /// The instance id of the worker that published the message, when it said.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id.as_deref()
    }

    /// Whether the publisher asked for its own worker to handle the message too.
    pub fn include_sender(&self) -> bool {
        self.include_sender
    }

    /// When this worker received the message.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }
}

impl FromContext for Envelope {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(cx.envelope())
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
    pub(crate) fn of<T>() -> Self {
        Self(std::any::type_name::<T>())
    }
}

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    type Rejection = MissingState;
    fn from_context(cx: &Context) -> Result<Self, MissingState> {
        cx.state::<T>()
            .map(State)
            .ok_or(MissingState(std::any::type_name::<T>()))
    }
    fn requirements(requirements: &mut Requirements) {
        requirements.require_state::<T>();
    }
}

impl FromContext for Publisher {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(cx.publisher())
    }
}

impl FromContext for WebSocket {
    type Rejection = Infallible;
    fn from_context(cx: &Context) -> Result<Self, Infallible> {
        Ok(cx.websocket())
    }
}
