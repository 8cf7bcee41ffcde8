//! The server's build errors, reported by `build()` as
//! [`BuildError::Plugin`](subscriber_runtime::BuildError::Plugin) (downcast them with
//! [`BuildError::plugin_error`](subscriber_runtime::BuildError::plugin_error)).

use subscriber_runtime::Location;

/// Why the WebSocket server could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Two client routes have the same `type:action`.
    #[error("two client routes are registered for `{route}`: one at {first}, one at {second}; remove one of them")]
    DuplicateRoute {
        /// The `type:action`.
        route: String,
        /// The first route.
        first: Box<Location>,
        /// The second route.
        second: Box<Location>,
    },
    /// A client route cannot be registered.
    #[error("client route `{route}` cannot be registered: {reason}")]
    InvalidRoute {
        /// The `type:action`.
        route: String,
        /// What is wrong.
        reason: String,
    },
    /// `prometheus(path)` was given a path that cannot be served.
    #[error("cannot serve Prometheus metrics at {path:?}: {reason}")]
    InvalidMetricsPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `prometheus(path)` cannot install its recorder: another global `metrics` recorder is
    /// already installed in this process.
    #[error("cannot install the Prometheus recorder: another global `metrics` recorder is already installed; leave out `.prometheus(...)` to emit into that recorder, and serve it yourself")]
    MetricsRecorderInstalled,
}
