//! Error types.

use std::fmt;

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
            write!(f, "{} (inline subscriber)", self.module_path)
        } else {
            write!(f, "{}:{} ({})", self.file, self.line, self.module_path)
        }
    }
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
    #[error("subscriber handler `{handler}` takes `State<{type_name}>`, but no state of that type was provided: add `.state(value)` with a `{type_name}` to the builder")]
    MissingState {
        /// The handler's name.
        handler: String,
        /// The missing type.
        type_name: &'static str,
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
    /// An inline subscriber was given an empty name.
    #[error("an inline subscriber has an empty name: give it one with `.name(\"...\")`")]
    EmptyName,
    /// Two client routes have the same `type:action`.
    #[error("two client routes are registered for `{route}`: one at {first}, one at {second}; remove one of them")]
    DuplicateRoute {
        /// The `type:action`.
        route: String,
        /// The first route.
        first: Location,
        /// The second route.
        second: Location,
    },
    /// [`Builder::prometheus`](crate::Builder) was given a path that cannot be served.
    #[error("cannot serve Prometheus metrics at {path:?}: {reason}")]
    InvalidMetricsPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// [`Builder::prometheus`](crate::Builder) cannot install its recorder: another global
    /// `metrics` recorder is already installed in this process.
    #[error("cannot install the Prometheus recorder: another global `metrics` recorder is already installed; leave out `.prometheus(...)` to emit into that recorder, and serve it yourself")]
    MetricsRecorderInstalled,
    /// A client route cannot be registered.
    #[error("client route `{route}` cannot be registered: {reason}")]
    InvalidRoute {
        /// The `type:action`.
        route: String,
        /// What is wrong.
        reason: String,
    },
}

/// A broker could not do what was asked.
#[derive(Debug, thiserror::Error)]
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
