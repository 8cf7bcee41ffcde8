//! The core of Switchboard: envelope, matchers, brokers, publishing, the handler framework
//! (context, extractors, handlers), registration, registry, routing, dispatch and the
//! application, with the [`plugin`] hook through which the WebSocket server (crate
//! `subscriber-server`) and the test kit (`subscriber-testkit`) take part. It knows nothing of
//! WebSockets, HTTP or JWT.
//!
//! Use it through the `switchboard` crate, which re-exports everything here together with the
//! attributes.
#![deny(missing_docs)]
#![allow(
    clippy::result_large_err,
    reason = "`BuildError` is returned once, at startup, never on a hot path; its variants carry the names and locations a user needs to fix the handler"
)]

// The layers, bottom up, in the order a message meets them: what a message is and how it is
// matched; the brokers that carry it; the handler framework; dispatch (registry, routing, running
// the handlers); the application that puts it together. Each layer imports only from the layers
// below it (`error` and `observe` are below them all).
mod app;
pub mod broker;
mod dispatch;
mod error;
mod handler;
mod message;
mod observe;
mod publish;

pub use app::plugin;
pub use app::{Builder, Running, Switchboard};
pub use broker::{Broker, MemoryBroker};
pub use dispatch::registry::{HandlerInfo, HandlerSource};
pub use dispatch::{DispatchEvent, Outcome};
pub use error::{BoxError, BrokerError, BuildError, Error, Location, PublishError};
pub use handler::context::{Context, HandlerContext, MessageContext, Resources};
pub use handler::extract::{
    Channel, FromContext, Message, MessageRejection, MissingState, NotDurable, Raw, Requirements,
    State, StreamPosition,
};
pub use handler::layer;
pub use handler::registration::BACKEND;
pub use handler::subscriber::{InlineSubscriber, Subscriber};
pub use handler::{
    Async, Blocking, Finish, Handler, HandlerFailure, HandlerResult, IntoHandlerResult,
};
pub use message::envelope::{Envelope, PayloadLimits};
pub use message::matcher::{MatchContext, Matcher};
pub use message::{envelope, event};
pub use observe::stats::{RateLimit, Stats};
pub use observe::telemetry;
pub use publish::Publisher;

/// The tower crate, re-exported so that an application names tower's layers
/// (`switchboard::tower::timeout::TimeoutLayer`) in the very version Switchboard uses (see
/// [`layer`]).
pub use tower;

/// Not public API: hooks for the project's benchmarks.
#[doc(hidden)]
pub mod __bench {
    /// Parses a payload and handles its envelope as the dispatcher does; true when accepted.
    pub fn parse_envelope(payload: &[u8]) -> bool {
        crate::message::envelope::parse(
            payload,
            &crate::message::envelope::PayloadLimits {
                max_bytes: usize::MAX,
                max_depth: 128,
            },
        )
        .is_ok()
    }
}

/// Not public API: used by the code `#[websocket_subscriber]` generates, and by the crates on top
/// of the core.
#[doc(hidden)]
pub mod __private {
    pub use crate::__switchboard_register as register;
    pub use crate::app::DefaultPlugin;
    pub use crate::dispatch::panic_message;
    pub use crate::handler::blocking::run_blocking;
    pub use crate::handler::context::{Context, HandlerContext};
    pub use crate::handler::extract::FromContext;
    pub use crate::handler::extract::Requirements;
    pub use crate::handler::layer::{layered, HandlerLayer, IntoHandlerLayer};
    #[cfg(feature = "linkme")]
    pub use crate::handler::registration::REGISTRATIONS;
    pub use crate::handler::registration::{
        channel_problem, MatcherSpec, Registration, CHANNEL_EMPTY, CHANNEL_OK, CHANNEL_WHITESPACE,
    };
    pub use crate::handler::{erase, DynHandler, HandlerFailure, HandlerFuture, IntoHandlerResult};
    pub use crate::message::matcher::MatchContext;
    pub use core::result::Result::{Err, Ok};
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use linkme;
}
