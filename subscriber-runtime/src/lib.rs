//! The runtime of Switchboard: registration, registry, routing, dispatch, brokers, the WebSocket
//! handle and test support.
//!
//! Use it through the `switchboard` crate, which re-exports everything here together with the
//! `#[websocket_subscriber]` attribute.
#![deny(missing_docs)]
#![allow(
    clippy::result_large_err,
    reason = "`BuildError` is returned once, at startup, never on a hot path; its variants carry the names and locations a user needs to fix the handler"
)]

mod app;
pub mod broker;
mod context;
mod dispatch;
pub mod envelope;
mod error;
pub mod event;
mod extract;
mod handler;
mod matcher;
mod publish;
mod registration;
mod registry;
mod routing;
mod server;
mod stats;
mod subscriber;
mod telemetry;
pub mod testing;

pub use app::{Builder, Running, Switchboard};
pub use broker::{Broker, MemoryBroker};
pub use context::Context;
pub use dispatch::Outcome;
pub use envelope::PayloadLimits;
pub use error::{BrokerError, BuildError, Error, Location, PublishError};
pub use extract::{
    Channel, Envelope, FromContext, Message, MessageRejection, MissingState, Raw, State,
};
pub use handler::{Async, Blocking, BoxError, Handler, HandlerResult, IntoHandlerResult};
pub use matcher::{MatchContext, Matcher};
pub use publish::Publisher;
pub use registration::{Requirements, BACKEND};
pub use registry::{HandlerInfo, HandlerSource};
pub use server::{
    Client, ClientId, ClientInfo, ClientMessage, Data, DataRejection, DisconnectReason, Frame,
    FromRoute, IntoReply, InvalidClientId, InvalidSecret, JwtSecret, Outgoing, Reply, RoomError,
    RoomPolicy, RouteContext, RouteHandler, User, UserId, WebSocket, WebSocketConfig, WS_PATH,
};
pub use stats::Stats;
pub use subscriber::{InlineSubscriber, Subscriber};

/// Not public API: hooks for the project's benchmarks.
#[doc(hidden)]
pub mod __bench {
    /// Parses a payload and handles its envelope as the dispatcher does; true when accepted.
    pub fn parse_envelope(payload: &[u8]) -> bool {
        crate::envelope::parse(
            payload,
            &crate::envelope::PayloadLimits {
                max_bytes: usize::MAX,
                max_depth: 128,
            },
        )
        .is_ok()
    }
}

/// Not public API: used by the code `#[websocket_subscriber]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::__switchboard_register as register;
    pub use crate::__switchboard_register_route as register_route;
    pub use crate::context::Context;
    pub use crate::extract::FromContext;
    pub use crate::handler::{boxed, extract, finish, HandlerFailure, HandlerFuture};
    pub use crate::matcher::MatchContext;
    #[cfg(feature = "linkme")]
    pub use crate::registration::REGISTRATIONS;
    pub use crate::registration::{assert_channel, MatcherSpec, Registration, Requirements};
    pub use crate::server::routes::FromRoute;
    #[cfg(feature = "linkme")]
    pub use crate::server::routes::ROUTES;
    pub use crate::server::routes::{
        boxed as boxed_route, extract as extract_route, finish as finish_route, RouteContext,
        RouteFailure, RouteFuture, RouteRegistration,
    };
    pub use core::result::Result::{Err, Ok};
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use linkme;
}
