//! The const descriptor that `#[websocket_subscriber]` submits at link time, and the two backends
//! (`inventory` by default, a `linkme` distributed slice under the `linkme` feature) that collect it.

use std::fmt;

use crate::handler::context::Context;
use crate::handler::extract::Requirements;
use crate::handler::HandlerFuture;
use crate::message::matcher::MatchContext;

/// One attributed handler, as the macro describes it. Plain `const` data: building it runs no code,
/// so registration does no work before `main`.
#[doc(hidden)]
pub struct Registration {
    /// Handler name (default: the function's name).
    pub name: &'static str,
    /// Description (default: the function's doc comment).
    pub description: &'static str,
    /// The matchers; the handler runs when any of them matches.
    pub matchers: &'static [MatcherSpec],
    /// Higher runs first.
    pub priority: i32,
    /// `module_path!()` of the handler.
    pub module_path: &'static str,
    /// `file!()` of the handler.
    pub file: &'static str,
    /// `line!()` of the attribute.
    pub line: u32,
    /// Builds the handler's future for one message.
    pub handler: fn(Context) -> HandlerFuture,
    /// Declares what the handler's extractors need (state types).
    pub requirements: fn(&mut Requirements),
    /// The `timeout = "..."` key, when given.
    pub timeout: Option<std::time::Duration>,
    /// The `layer = ...` key: makes each layer, the first one outermost.
    pub layers: &'static [fn() -> crate::handler::layer::HandlerLayer],
    /// The `durable` key: the handler's channels are durable.
    pub durable: bool,
    /// The `once` key: the handler runs on one worker per message (its channels are durable).
    pub once: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("matchers", &self.matchers)
            .field("priority", &self.priority)
            .field("module_path", &self.module_path)
            .field("file", &self.file)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// A matcher as written in the attribute.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum MatcherSpec {
    /// An exact channel name; `"*"` means every channel.
    Channel(&'static str),
    /// A regex tested against the channel name.
    Regex(&'static str),
    /// A Redis glob pattern tested against the channel name.
    Pattern(&'static str),
    /// A predicate over the channel and the parsed message.
    Predicate(fn(&MatchContext<'_>) -> bool),
}

impl fmt::Debug for MatcherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(c) => write!(f, "channel({c:?})"),
            Self::Regex(r) => write!(f, "regex({r:?})"),
            Self::Pattern(p) => write!(f, "pattern({p:?})"),
            Self::Predicate(_) => f.write_str("predicate"),
        }
    }
}

/// A channel constant with no problem (see [`channel_problem`]).
#[doc(hidden)]
pub const CHANNEL_OK: u8 = 0;
/// A channel constant that is empty.
#[doc(hidden)]
pub const CHANNEL_EMPTY: u8 = 1;
/// A channel constant with whitespace or a control character.
#[doc(hidden)]
pub const CHANNEL_WHITESPACE: u8 = 2;

/// Checks a channel constant at compile time. The generated code matches on the answer and
/// panics itself, so that the error is reported at the user's constant and names no file of this
/// crate.
#[doc(hidden)]
pub const fn channel_problem(channel: &str) -> u8 {
    match subscriber_patterns::const_channel_problem(channel) {
        None => CHANNEL_OK,
        Some(problem) if problem.len() == "channel name is empty".len() => CHANNEL_EMPTY,
        Some(_) => CHANNEL_WHITESPACE,
    }
}

#[cfg(not(feature = "linkme"))]
inventory::collect!(Registration);

/// The slice that `linkme` fills with every registration.
#[cfg(feature = "linkme")]
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REGISTRATIONS: [Registration];

/// Every registration linked into this binary, in no particular order.
pub(crate) fn linked() -> Vec<&'static Registration> {
    #[cfg(not(feature = "linkme"))]
    {
        inventory::iter::<Registration>.into_iter().collect()
    }
    #[cfg(feature = "linkme")]
    {
        REGISTRATIONS.iter().collect()
    }
}

/// The name of the active registration backend: `"inventory"` or `"linkme"`.
pub const BACKEND: &str = if cfg!(feature = "linkme") {
    "linkme"
} else {
    "inventory"
};

/// Registers one descriptor with the active backend. Not public API: used by generated code.
#[cfg(not(feature = "linkme"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __switchboard_register {
    ($ident:ident, $registration:expr) => {
        $crate::__private::inventory::submit! { $registration }
    };
}

/// Registers one descriptor with the active backend. Not public API: used by generated code.
#[cfg(feature = "linkme")]
#[doc(hidden)]
#[macro_export]
macro_rules! __switchboard_register {
    ($ident:ident, $registration:expr) => {
        #[$crate::__private::linkme::distributed_slice($crate::__private::REGISTRATIONS)]
        #[linkme(crate = $crate::__private::linkme)]
        static $ident: $crate::__private::Registration = $registration;
    };
}
