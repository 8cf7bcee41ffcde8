//! The `#[websocket_subscriber]` and `#[websocket_route]` attributes of Switchboard. Use them
//! through the `switchboard` crate, whose documentation of `switchboard::websocket_subscriber` and
//! `switchboard::websocket_route` is the user guide.
//!
//! # How it works
//!
//! The attribute keeps the function exactly as written and appends one `const _: () = { ... };`
//! block next to it. The block holds:
//!
//! - a non-generic wrapper `fn(Context) -> HandlerFuture` that extracts every argument with
//!   `<T as FromContext<Context>>::__extract` (spanned at the argument's type, so a type that is
//!   not an extractor is reported there, once), calls the function and maps its result with
//!   `<R as IntoHandlerResult>::into_handler_result` (spanned at the return type); an `async`
//!   function is awaited, a plain one runs on the blocking pool (`__private::run_blocking`) in a
//!   closure that takes the extracted arguments, boxed as `dyn FnOnce + Send` at the function's
//!   name; the boxed future's coercion to `Send` is spanned at the function's name too;
//! - a `fn(&mut Requirements)` that declares what the extractors need (state types); it skips,
//!   through autoref specialization, a type that is not an extractor, which the wrapper already
//!   reports (so the user sees that error once);
//! - one `fn() -> HandlerLayer<Context>` per `layer = ...` expression, which erases it with
//!   `IntoHandlerLayer::<Context>::into_handler_layer` (spanned over the expression, so a value
//!   that is not a layer is reported there); `timeout = "5s"` is validated here and becomes
//!   `Some(Duration::from_millis(5000))`;
//! - a `const` check per channel constant (`channel = event::FOO`) that panics, at the constant,
//!   when it is invalid, so that it fails at compile time;
//! - the `Registration` descriptor, submitted through `__private::register!`, which picks
//!   `inventory` or a `linkme` distributed slice.
//!
//! `#[websocket_route]` generates the same shape for the WebSocket server's routes: a
//! `fn(RouteContext) -> RouteFuture` whose arguments are `FromContext<RouteContext>` and whose
//! result goes through `IntoReply`, and a `RouteRegistration` submitted through
//! `__private::register_route!`.
//!
//! Generated code names `<crate>::__private::...`, where `<crate>` is `::switchboard` or the
//! `crate = "..."` override, and checks every bound through a trait-qualified path at the user's
//! token rather than through a helper function with bounds, so that no error names a file of the
//! runtime.
//!
//! # Errors
//!
//! Every mistake the macro can see (keys, values, channel names, regexes, globs, route types and
//! actions, the shape of the function) becomes a `compile_error!` spanned at the offending token;
//! several are reported at once. The function is still emitted unchanged, so no "cannot find
//! function" errors follow. Type errors (an argument that is not an extractor, a wrong return type,
//! a predicate with the wrong signature, an invalid channel constant) are left to rustc, with spans
//! chosen so they point at the user's tokens.
//!
//! # Debugging
//!
//! Use `cargo expand` (the `cargo-expand` tool) to see what an attribute expands to.
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod args;
mod check;
mod expand;
mod route_args;
mod route_expand;

// Marks a function as a subscriber handler, registered at link time. Documented where it is
// re-exported, `switchboard::websocket_subscriber` (the keys, examples that compile against the
// facade): rustdoc shows an inlined re-export's docs followed by the item's own, so docs here
// would be printed twice there.
#[allow(missing_docs)]
#[proc_macro_attribute]
pub fn websocket_subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand::<args::Args>(args.into(), item.into()).into()
}

// Marks a function as a client route handler for the frames `{"type": ..., "action": ...}`.
// Documented where it is re-exported, `switchboard::websocket_route` (see above).
#[allow(missing_docs)]
#[proc_macro_attribute]
pub fn websocket_route(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand::<route_args::RouteArgs>(args.into(), item.into()).into()
}

/// Which attribute is being expanded: the wording of its errors and the runtime items its code
/// names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// `#[websocket_subscriber]`.
    Subscriber,
    /// `#[websocket_route]`.
    Route,
}

impl Kind {
    /// The attribute's name.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Kind::Subscriber => "websocket_subscriber",
            Kind::Route => "websocket_route",
        }
    }

    /// What the function becomes, after "a".
    pub(crate) fn handler(self) -> &'static str {
        match self {
            Kind::Subscriber => "subscriber handler",
            Kind::Route => "route handler",
        }
    }

    /// A few extractor types, for error messages.
    pub(crate) fn extractor_examples(self) -> &'static str {
        match self {
            Kind::Subscriber => "`Message<MyPayload>`, `Channel` or `State<MyState>`",
            Kind::Route => "`Data<MyPayload>`, `Client` or `State<MyState>`",
        }
    }

    /// What the function may return, for error messages.
    pub(crate) fn return_types(self) -> &'static str {
        match self {
            Kind::Subscriber => "`()` or `Result<(), E>`",
            Kind::Route => "`()`, `Result<T, E>`, `Reply<T>` or a `serde_json::Value`",
        }
    }

    /// The ready-made result type with a `Send + Sync` error, for error messages.
    pub(crate) fn boxed_result(self) -> &'static str {
        match self {
            Kind::Subscriber => "`switchboard::HandlerResult`",
            Kind::Route => "`Result<T, switchboard::BoxError>`",
        }
    }
}

/// Collects errors so that several are reported at once (`syn::Error::combine`).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds one (possibly combined) error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Adds the error of `result`, if any, and returns its value.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Moves all errors of `other` into `self`.
    pub(crate) fn append(&mut self, other: Errors) {
        if let Some(error) = other.0 {
            self.push(error);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The errors as `compile_error!` invocations (nothing when there are none).
    pub(crate) fn to_compile_errors(&self) -> proc_macro2::TokenStream {
        self.0
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }

    /// All errors, combined.
    #[cfg(test)]
    pub(crate) fn into_result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
