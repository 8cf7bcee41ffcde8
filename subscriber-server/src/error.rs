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
    /// `inspector(path)` was given a path that cannot be served.
    #[error("cannot serve the inspector at {path:?}: {reason}")]
    InvalidInspectorPath {
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

/// An error a client route handler wants its client to see: a stable, machine-readable code and a
/// message for people. The client gets
/// `{"type":"error","action":"message","data":{"error":<message>,"code":<code>}}`.
///
/// Any other error a route returns is not shown: the client gets
/// `{"error":"Internal error","code":"internal_error","id":<id>}` and the server logs the error
/// with the same `error_id`, so that a user's report leads to the log line.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::ClientError;
///
/// #[websocket_route(type = "rooms", action = "describe")]
/// async fn describe(Data(room): Data<String>, ws: WebSocket) -> Result<Vec<String>, ClientError> {
///     let members = ws.room_members(&room);
///     if members.is_empty() {
///         return Err(ClientError::new("room_not_found", format!("No room named {room}")));
///     }
///     Ok(members.into_iter().map(|id| id.to_string()).collect())
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    code: std::borrow::Cow<'static, str>,
    message: String,
}

impl ClientError {
    /// An error with a stable `code` (`"room_not_found"`) and a `message` for the client.
    pub fn new(
        code: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
