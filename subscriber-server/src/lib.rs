//! The WebSocket server of Switchboard, on top of the core (`subscriber-runtime`) as a
//! [`Plugin`](subscriber_runtime::plugin::Plugin): its clients, the cluster's clients and rooms
//! (mirrored through the broker by an internal subscriber), local and cluster-wide sends, client
//! routes, JWT auth, heartbeats, slow consumers, graceful shutdown and its metrics.
//!
//! - [`WebSocket`] is the handle handlers use: an extractor for subscriber handlers and client
//!   routes alike.
//! - The endpoint is `/ws`, served by [`ServerAppExt::serve`] or mounted with
//!   [`ServerRunningExt::router`].
//! - Every frame is serialized once; each client has a bounded queue (messages and bytes) drained
//!   by its own writer, so a slow client is disconnected (close code 1013) instead of slowing the
//!   others. No lock is held across an `.await`.
//!
//! Use it through the `switchboard` crate (the default feature `server`); linking it adds the
//! server to every application of the binary.
//!
//! A client frame's path: `http.rs` (upgrade, auth) → `connection.rs` (reader: parse, hooks,
//! system actions or `routes.rs`) → the route handler → `send.rs` (the reply queued on the
//! client's `Conn` in `client.rs`) → the connection's writer.
#![deny(missing_docs)]

use subscriber_runtime::{FromContext, HandlerContext, MissingState, Requirements, Resources};

mod announce;
mod auth;
mod client;
mod config;
mod connection;
mod error;
mod ext;
mod frame;
mod handle;
mod hooks;
mod http;
mod inspector;
mod metrics;
mod mirror;
mod plugin;
mod presence;
mod rooms;
mod rooms_durable;
mod routes;
mod send;
mod stats;
mod writer;

pub use client::{Client, DisconnectReason, Empty, LocalReceiver, User, UserId};
pub use config::{InvalidSecret, JwtSecret, RoomPolicy, WebSocketConfig};
pub use error::{ClientError, ServerError};
pub use ext::{ServerAppExt, ServerBuilderExt, ServerRunningExt};
pub use frame::{ClientId, Frame, InvalidClientId, Outgoing};
pub use handle::WebSocket;
pub use hooks::ClientMessage;
pub use http::WS_PATH;
pub use plugin::WebSocketServer;
pub use rooms::{ClientInfo, RoomError};
pub use routes::{Data, DataRejection, FrameContext, IntoReply, Reply, RouteContext};
pub use stats::ServerStats;

impl WebSocket {
    /// The server handle among an application's resources.
    ///
    /// # Panics
    /// When the application was built without the server.
    pub(crate) fn of(resources: &Resources) -> Self {
        resources.state_ref::<WebSocket>().cloned().expect(
            "the application has no WebSocket server: it was built with `.without_plugin::<WebSocketServer>()`",
        )
    }
}

/// `WebSocket` is an argument of every kind of handler: subscribers and client routes.
#[diagnostic::do_not_recommend]
impl<Cx: HandlerContext> FromContext<Cx> for WebSocket {
    type Rejection = MissingState;

    fn from_context(cx: &Cx) -> Result<Self, MissingState> {
        cx.resources()
            .state_ref::<WebSocket>()
            .cloned()
            .ok_or_else(MissingState::of::<WebSocket>)
    }

    fn requirements(requirements: &mut Requirements) {
        requirements.require_provided::<WebSocket>(
            "the WebSocket server was left out (`.without_plugin::<WebSocketServer>()`); keep it, or take `Publisher` to reach other workers",
        );
    }
}

/// Not public API: used by the code `#[websocket_route]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::__switchboard_register_route as register_route;
    pub use crate::routes::IntoReply;
    #[cfg(feature = "linkme")]
    pub use crate::routes::ROUTES;
    pub use crate::routes::{RouteContext, RouteRegistration};
    /// The future of one client route run.
    pub type RouteFuture = subscriber_runtime::__private::HandlerFuture<Option<serde_json::Value>>;
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use linkme;
}
