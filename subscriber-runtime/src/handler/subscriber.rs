//! Inline subscribers: handlers given to the builder as closures.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::handler::context::Context;
use crate::handler::extract::Requirements;
use crate::handler::layer::{HandlerLayer, IntoHandlerLayer};
use crate::handler::{Handler, HandlerFuture};
use crate::message::matcher::{MatchContext, Matcher};

pub(crate) type DynCall = Arc<dyn Fn(Context) -> HandlerFuture + Send + Sync>;

/// An inline subscriber handler, given to the builder with `.subscriber(...)`. It goes through the
/// same registry as attributed handlers: validated, checked for duplicate names and missing state,
/// and sorted together with them by priority.
///
/// ```
/// use switchboard::prelude::*;
///
/// let tap = Subscriber::channels(["*"])
///     .name("debugTap")
///     .description("logs raw traffic while debugging")
///     .priority(-100)
///     .handle(|cx: Context| async move {
///         tracing::debug!(channel = cx.channel(), message = %cx.message(), "subscriber");
///     });
/// # let _ = tap;
/// ```
#[must_use = "a subscriber does nothing until it is given a handler and added to the builder"]
pub struct Subscriber {
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) name: Option<String>,
    pub(crate) description: String,
    pub(crate) priority: i32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) layers: Vec<HandlerLayer>,
    pub(crate) durable: bool,
    pub(crate) once: bool,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("matchers", &self.matchers)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber for exact channels; `"*"` means every channel the worker receives.
    pub fn channels<I, S>(channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::matching(channels.into_iter().map(|c| Matcher::channel(c)))
    }

    /// A subscriber selected by matchers (any of them).
    pub fn matching<I, M>(matchers: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Matcher>,
    {
        Self {
            matchers: matchers.into_iter().map(Into::into).collect(),
            name: None,
            description: String::new(),
            priority: 0,
            timeout: None,
            layers: Vec::new(),
            durable: false,
            once: false,
        }
    }

    /// A subscriber selected by a predicate over the channel and the payload.
    pub fn when(predicate: impl Fn(&MatchContext<'_>) -> bool + Send + Sync + 'static) -> Self {
        Self::matching([Matcher::predicate(predicate)])
    }

    /// Adds a matcher.
    pub fn or(mut self, matcher: impl Into<Matcher>) -> Self {
        self.matchers.push(matcher.into());
        self
    }

    /// The name shown in logs and the startup table (required, unique).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A description for logs and the startup table.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The priority: higher runs first (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// A timeout for this handler, instead of the application's default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes this subscriber's channels (exact, glob or regex) [durable](crate::Builder::durable),
    /// with the default [`Retention`](crate::broker::Retention) unless the builder gives one, as
    /// the attribute's `durable` key does. `build()` refuses it for `"*"` and for a subscriber
    /// with predicates only.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Runs this handler on **one** worker per message (the attribute's `once` key): its
    /// channels (exact channels only) are durable, and every worker reads their streams in one
    /// consumer group per handler, so each message goes to one of them; a message a worker took
    /// and did not finish (it died) is taken over by another after
    /// [`once_claim_idle`](crate::Builder::once_claim_idle). See the README, "Run-once handlers".
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Wraps this handler in a tower layer (see [`layer`](crate::layer)); called again, the
    /// first layer given is the outermost. The application's layers are outside them all.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::layer::ThrottleLayer;
    /// use switchboard::prelude::*;
    ///
    /// let presence = Subscriber::channels(["cursor"])
    ///     .name("cursorPositions")
    ///     .layer(ThrottleLayer::new(Duration::from_millis(50)))
    ///     .handle(|Message(m): Message| async move { tracing::trace!(%m, "cursor") });
    /// # let _ = presence;
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: IntoHandlerLayer<Context>,
    {
        self.layers.push(layer.into_handler_layer());
        self
    }

    /// Sets the handler: an `async` or plain closure or function whose arguments are extractors.
    pub fn handle<H, M>(self, handler: H) -> InlineSubscriber
    where
        H: Handler<M>,
    {
        let mut requirements = Requirements::default();
        H::requirements(&mut requirements);
        let handler = Arc::new(handler);
        InlineSubscriber {
            spec: self,
            call: Arc::new(move |cx| handler.call(cx)),
            requirements,
        }
    }
}

/// A [`Subscriber`] with its handler, ready for the builder's `.subscriber(...)`.
pub struct InlineSubscriber {
    pub(crate) spec: Subscriber,
    pub(crate) call: DynCall,
    pub(crate) requirements: Requirements,
}

impl fmt::Debug for InlineSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}
