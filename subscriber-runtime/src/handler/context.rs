//! [`Context`]: everything a handler can see about one message and the application.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::message::envelope::Envelope;
use crate::publish::Publisher;

/// The application's shared state, keyed by type.
#[derive(Default)]
pub(crate) struct StateMap {
    map: HashMap<TypeId, (Box<dyn Any + Send + Sync>, &'static str)>,
}

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(
            TypeId::of::<T>(),
            (Box::new(value), std::any::type_name::<T>()),
        );
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|(v, _)| v.downcast_ref::<T>())
            .cloned()
    }

    pub(crate) fn get_ref<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|(v, _)| v.downcast_ref::<T>())
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.map.contains_key(&id)
    }

    pub(crate) fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.map.values().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.type_names()).finish()
    }
}

/// What every handler of an application shares, whatever calls it (a broker message, or a
/// plugin such as the WebSocket server's client routes): the state the application provided and
/// the publisher. Cheap to reach from any [`HandlerContext`](crate::HandlerContext).
#[derive(Debug)]
pub struct Resources {
    pub(crate) states: StateMap,
    pub(crate) publisher: Publisher,
    pub(crate) counters: Arc<crate::observe::stats::Counters>,
    /// The dispatcher, once built (weak: it holds these resources), for
    /// [`handlers`](Self::handlers); typed in the application layer.
    pub(crate) dispatcher: OnceLock<std::sync::Weak<dyn std::any::Any + Send + Sync>>,
}

impl Resources {
    /// The runtime's counters now (as [`Running::stats`](crate::Running::stats)): a plugin reads
    /// [`Stats::reconnects`](crate::Stats::reconnects) to learn that the broker's subscription
    /// came back.
    pub fn stats(&self) -> crate::Stats {
        self.counters.snapshot()
    }

    /// The state of type `T` the application (or a plugin) provided, if any.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.states.get::<T>()
    }

    /// The state of type `T`, borrowed.
    pub fn state_ref<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.states.get_ref::<T>()
    }

    /// Publishes through the application's broker.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}

/// One received message after envelope handling.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) channel: Arc<str>,
    /// The parsed payload with the envelope fields removed.
    pub(crate) message: Value,
    /// The payload as received.
    pub(crate) raw: Bytes,
    /// Whether envelope fields were removed (then `raw` still holds them).
    pub(crate) stripped: bool,
    pub(crate) raw_stripped: OnceLock<Bytes>,
    pub(crate) worker_id: Option<Arc<str>>,
    pub(crate) include_sender: bool,
    pub(crate) received_at: SystemTime,
    /// Its place in its durable channel's stream.
    pub(crate) position: Option<crate::broker::Position>,
    /// Whether it was read from the stream (a gap, a reconnect) rather than received live.
    pub(crate) recovered: bool,
}

impl Delivery {
    /// A message received now on `channel`, from its parsed payload.
    pub(crate) fn new(
        channel: Arc<str>,
        parsed: crate::message::envelope::Parsed,
        raw: Bytes,
    ) -> Self {
        Self {
            channel,
            message: parsed.message,
            raw,
            stripped: parsed.stripped,
            raw_stripped: OnceLock::new(),
            worker_id: parsed.worker_id,
            include_sender: parsed.include_sender,
            received_at: SystemTime::now(),
            position: None,
            recovered: false,
        }
    }
}

/// Everything a subscriber handler can see: the message (channel, payload, envelope) and the
/// application's [`Resources`] (state, publisher, and what plugins such as the WebSocket server
/// provide). Cheap to clone.
///
/// Usually you take only the pieces you need as arguments ([`Channel`](crate::handler::extract::Channel),
/// [`Message`](crate::handler::extract::Message), ...); take `Context` when you need several of them or want
/// to decide at run time.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[websocket_subscriber(channel = "audit")]
/// async fn audit(cx: Context) -> HandlerResult {
///     tracing::info!(channel = cx.channel(), message = %cx.message(), "audit");
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) shared: Arc<Resources>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("channel", &self.delivery.channel)
            .field("message", &self.delivery.message)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The channel the message arrived on (without any namespace prefix).
    pub fn channel(&self) -> &str {
        &self.delivery.channel
    }

    /// The parsed payload, with the envelope fields (`workerId`, `includeSender`) removed.
    pub fn message(&self) -> &Value {
        &self.delivery.message
    }

    /// Deserializes the payload into `T`.
    ///
    /// # Errors
    /// The serde error when the payload does not have the shape of `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.delivery.message)
    }

    /// The payload bytes without the envelope fields: the bytes as published when the payload had
    /// none, the publisher's bytes less its leading envelope fields when they came first (as
    /// [`Publisher`] writes them), else the parsed payload serialized again, once.
    pub fn raw(&self) -> Bytes {
        let delivery = &self.delivery;
        if !delivery.stripped {
            return delivery.raw.clone();
        }
        delivery
            .raw_stripped
            .get_or_init(|| {
                crate::message::envelope::stripped_payload(&delivery.raw, &delivery.message)
            })
            .clone()
    }

    /// Where the message came from and when it arrived.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            worker_id: self.delivery.worker_id.clone(),
            include_sender: self.delivery.include_sender,
            received_at: self.delivery.received_at,
        }
    }

    /// The message's place in its [durable](crate::Builder::durable) channel's stream, and
    /// whether it was recovered from it; `None` for a message of an ordinary channel.
    pub fn stream_position(&self) -> Option<crate::handler::extract::StreamPosition> {
        let position = self.delivery.position.as_ref()?;
        Some(crate::handler::extract::StreamPosition {
            epoch: position.epoch.clone(),
            offset: position.offset,
            recovered: self.delivery.recovered,
        })
    }

    /// The state of type `T` the application provided, if any.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.shared.states.get::<T>()
    }

    /// Publishes through the application's broker.
    pub fn publisher(&self) -> Publisher {
        self.shared.publisher.clone()
    }

    /// What every handler of the application shares: state and the publisher.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.shared
    }
}

/// What a handler is called with: a [`Context`] for subscriber handlers, or a plugin's own
/// context (the WebSocket server's `RouteContext` for client routes). It decides what the
/// handler's return value becomes ([`Finish`](crate::Finish)), and gives every shared extractor
/// ([`State`](crate::State), [`Publisher`](crate::Publisher), ...) the application's
/// [`Resources`].
pub trait HandlerContext: Clone + Send + Sync + 'static {
    /// What one call produces once the handler's return value is converted: `()` for a
    /// subscriber; the reply for a client route.
    type Output: Send + 'static;

    /// The application's shared resources.
    fn resources(&self) -> &Arc<Resources>;
}

impl HandlerContext for Context {
    type Output = ();

    fn resources(&self) -> &Arc<Resources> {
        &self.shared
    }
}

/// A [`HandlerContext`] that carries a broker message: what [`Channel`](crate::Channel),
/// [`Message<T>`](crate::Message), [`Raw`](crate::Raw), [`Envelope`] and [`Context`] are
/// extracted from. Implemented by [`Context`].
pub trait MessageContext: HandlerContext {
    /// The message's context.
    fn message_context(&self) -> &Context;
}

impl MessageContext for Context {
    fn message_context(&self) -> &Context {
        self
    }
}
