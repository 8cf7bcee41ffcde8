//! Error types.

use std::fmt;

/// A boxed error that any handler error converts into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a handler was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The module path (`my_app::jobs`), or `"<inline>"` for builder subscribers.
    pub module_path: String,
    /// The source file, when known.
    pub file: String,
    /// The line, when known (0 otherwise).
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{} (given to the builder)", self.module_path)
        } else {
            write!(f, "{}:{} ({})", self.file, self.line, self.module_path)
        }
    }
}

/// ` (defined at <location>)`, or nothing.
fn at(location: Option<&Location>) -> String {
    location.map_or_else(String::new, |l| format!(" (defined at {l})"))
}

/// Why `build()` refused the set of handlers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two handlers have the same name.
    #[error("two subscriber handlers are named `{name}`: one at {first}, one at {second}; give one of them another name with `name = \"...\"`")]
    DuplicateName {
        /// The shared name.
        name: String,
        /// The first handler.
        first: Box<Location>,
        /// The second handler.
        second: Box<Location>,
    },
    /// A handler takes `State<T>` but no `T` was provided.
    #[error("handler `{handler}`{} takes `State<{type_name}>`, but no state of that type was provided: add `.state(value)` with a `{type_name}` to the builder", at(.defined_at.as_deref()))]
    MissingState {
        /// The handler's name.
        handler: String,
        /// The missing type.
        type_name: &'static str,
        /// Where the handler is defined, when known.
        defined_at: Option<Box<Location>>,
    },
    /// A handler takes something a plugin provides, and the application has no such plugin.
    #[error(
        "handler `{handler}`{} takes `{type_name}`, which the application does not provide: {fix}", at(.defined_at.as_deref())
    )]
    MissingProvided {
        /// The handler's name.
        handler: String,
        /// The missing type.
        type_name: &'static str,
        /// What to do.
        fix: &'static str,
        /// Where the handler is defined, when known.
        defined_at: Option<Box<Location>>,
    },
    /// A matcher is malformed.
    #[error("subscriber handler `{handler}` has an invalid matcher {matcher}: {reason}")]
    InvalidMatcher {
        /// The handler's name.
        handler: String,
        /// The matcher as written.
        matcher: String,
        /// What is wrong.
        reason: String,
    },
    /// An inline subscriber was given no channel and no matcher.
    #[error("subscriber `{handler}` has no channel and no matcher, so it could never run: give it channels or matchers")]
    NoMatchers {
        /// The handler's name.
        handler: String,
    },
    /// `only([...])` named a handler that is not registered.
    #[error("no subscriber handler is named `{name}`; registered handlers: {known}")]
    UnknownHandler {
        /// The requested name.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// A durable channel was given as something that names no channel (`"*"`, a predicate), or
    /// malformed.
    #[error("{what} cannot be durable: {reason}")]
    InvalidDurable {
        /// The handler (or the builder's `durable(...)`) and its matcher.
        what: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// An inline subscriber was given an empty name.
    #[error("an inline subscriber has an empty name: give it one with `.name(\"...\")`")]
    EmptyName,
    /// A plugin refused to build (the WebSocket server's errors, for example); its own error is
    /// the source, and [`BuildError::plugin_error`] downcasts it.
    #[error("{plugin}: {source}")]
    Plugin {
        /// The plugin's name.
        plugin: &'static str,
        /// Its error.
        #[source]
        source: BoxError,
    },
}

impl BuildError {
    /// A plugin's own build error.
    pub fn plugin(plugin: &'static str, error: impl Into<BoxError>) -> Self {
        Self::Plugin {
            plugin,
            source: error.into(),
        }
    }

    /// The plugin error of type `E` this is, if it is one.
    pub fn plugin_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Plugin { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A broker could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker's server cannot be reached right now.
    #[error("the broker is unreachable: {0}")]
    Unreachable(String),
    /// The operation timed out.
    #[error("the broker did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The broker's configuration is wrong (bad URL, ...).
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// Any other broker failure.
    #[error("broker error: {0}")]
    Other(String),
}

/// Publishing a message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel name is not valid.
    #[error("cannot publish: {0}")]
    InvalidChannel(#[from] subscriber_patterns::PatternError),
    /// The message did not serialize to a JSON object, which the envelope needs.
    #[error("cannot publish on `{channel}`: the message must serialize to a JSON object (use `publish_raw` to send other payloads unchanged)")]
    NotAnObject {
        /// The channel.
        channel: String,
    },
    /// Serializing the message failed.
    #[error("cannot publish on `{channel}`: serializing the message failed: {source}")]
    Serialize {
        /// The channel.
        channel: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Any error of the Switchboard runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The handler set is invalid.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An I/O error (binding the server socket, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
