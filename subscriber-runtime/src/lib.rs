//! The runtime of Switchboard: registration, registry, routing, dispatch, brokers, the WebSocket
//! handle and test support.
//!
//! Use it through the `switchboard` crate, which re-exports everything here together with the
//! `#[websocket_subscriber]` attribute.
#![deny(missing_docs)]

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
pub use server::{ClientId, Frame, Outgoing, WebSocket};
pub use stats::Stats;
pub use subscriber::{InlineSubscriber, Subscriber};

/// Not public API: used by the code `#[websocket_subscriber]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::Context;
    pub use crate::extract::FromContext;
    pub use crate::handler::{boxed, extract, finish, HandlerFailure, HandlerFuture};
    pub use crate::matcher::MatchContext;
    pub use crate::registration::{assert_channel, MatcherSpec, Registration, Requirements};
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use linkme;
    #[cfg(feature = "linkme")]
    pub use crate::registration::REGISTRATIONS;
    pub use core::result::Result::{Err, Ok};
    pub use crate::__switchboard_register as register;
}
