//! The `#[websocket_subscriber]` attribute of Switchboard. Use it through the `switchboard` crate,
//! whose documentation of `switchboard::websocket_subscriber` is the user guide.
//!
//! # How it works
//!
//! The attribute keeps the function exactly as written and appends one `const _: () = { ... };`
//! block next to it. The block holds:
//!
//! - a non-generic wrapper `fn(Context) -> HandlerFuture` that extracts every argument with
//!   `__private::extract::<T>` (spanned at the argument's type, so a type that is not an extractor
//!   is reported there), calls the function (awaiting it when it is `async`) and maps its result
//!   with `__private::finish::<R>` (spanned at the return type);
//! - a `fn(&mut Requirements)` that declares what the extractors need (state types); it skips,
//!   through autoref specialization, a type that is not an extractor, which the wrapper already
//!   reports (so the user sees that error once);
//! - a `const` assertion per channel constant (`channel = event::FOO`), so that an invalid constant
//!   fails at compile time;
//! - the `Registration` descriptor, submitted through `__private::register!`, which picks
//!   `inventory` or a `linkme` distributed slice.
//!
//! Generated code only names `<crate>::__private::...`, where `<crate>` is `::switchboard` or the
//! `crate = "..."` override.
//!
//! # Errors
//!
//! Every mistake the macro can see (keys, values, channel names, regexes, globs, the shape of the
//! function) becomes a `compile_error!` spanned at the offending token; several are reported at
//! once. The function is still emitted unchanged, so no "cannot find function" errors follow.
//! Type errors (an argument that is not an extractor, a wrong return type, a predicate with the
//! wrong signature, an invalid channel constant) are left to rustc, with spans chosen so they point
//! at the user's tokens.
//!
//! # Debugging
//!
//! Set `SWITCHBOARD_MACROS_DEBUG=1` while compiling to print every expansion to stderr.
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod args;
mod check;
mod expand;

/// Marks a function as a subscriber handler, registered at link time. See
/// `switchboard::websocket_subscriber` for the keys and examples.
///
/// ```text
/// #[websocket_subscriber(channel = "queueJobCompleted", priority = 10)]
/// async fn on_job(Message(job): Message, ws: WebSocket) -> HandlerResult { ... }
/// ```
#[proc_macro_attribute]
pub fn websocket_subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    let output = expand::expand(args.into(), item.into());
    if std::env::var_os("SWITCHBOARD_MACROS_DEBUG").is_some_and(|v| v == "1") {
        // Maintainer aid only: the expansion, as rustc will see it.
        eprintln!("---- #[websocket_subscriber] expansion ----\n{output}\n----");
    }
    output.into()
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
