//! The handler framework shared by every kind of handler: subscriber handlers (called with a
//! [`Context`] for each broker message) and the kinds plugins add (the WebSocket server's client
//! routes are called with its `RouteContext`). One extractor trait ([`FromContext`]), one
//! [`Handler`] trait, arities generated once.

pub(crate) mod blocking;
pub(crate) mod context;
pub(crate) mod extract;
pub mod layer;
pub(crate) mod registration;
pub(crate) mod subscriber;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::BoxError;
use crate::handler::context::{Context, HandlerContext};
use crate::handler::extract::FromContext;
use crate::handler::extract::Requirements;

/// The usual return type of a subscriber handler: `Ok(())`, or any error that converts into
/// [`BoxError`].
pub type HandlerResult<E = BoxError> = Result<(), E>;

/// How a [`HandlerContext`] turns a handler's return value `R` into its
/// [`Output`](HandlerContext::Output). Subscribers accept [`IntoHandlerResult`]; the WebSocket
/// server's routes accept its `IntoReply`.
pub trait Finish<R>: HandlerContext {
    /// Converts the handler's return value.
    ///
    /// # Errors
    /// The handler's own error.
    fn finish(value: R) -> Result<Self::Output, BoxError>;
}

impl<R: IntoHandlerResult> Finish<R> for Context {
    fn finish(value: R) -> Result<(), BoxError> {
        value.into_handler_result()
    }
}

/// Why one handler did not complete for one call: the error of a
/// [`HandlerService`](crate::layer::HandlerService), what layers see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerFailure {
    /// An argument could not be extracted (e.g. the payload does not deserialize into `T`).
    #[error("{0}")]
    Rejected(BoxError),
    /// The handler (or a layer) returned an error.
    #[error("{0}")]
    Failed(BoxError),
    /// A layer decided not to call the handler.
    #[error("{0}")]
    Skipped(crate::layer::Skipped),
}

/// The future that runs one handler for one call; `O` is the context's
/// [`Output`](HandlerContext::Output).
#[doc(hidden)]
pub type HandlerFuture<O = ()> =
    Pin<Box<dyn Future<Output = Result<O, HandlerFailure>> + Send + 'static>>;

/// Types a subscriber handler may return: `()` or `Result<(), E>` where `E` converts into
/// [`BoxError`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid subscriber handler return type",
    label = "return `()` or `Result<(), E>` here",
    note = "a subscriber handler returns `()` or `Result<(), E>` where `E` converts into `Box<dyn Error + Send + Sync>` (for example `switchboard::HandlerResult`)"
)]
pub trait IntoHandlerResult {
    /// Converts into the framework's result.
    ///
    /// # Errors
    /// The handler's error.
    fn into_handler_result(self) -> Result<(), BoxError>;
}

#[diagnostic::do_not_recommend]
impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[diagnostic::do_not_recommend]
impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Marker for handlers that are `async` closures or functions. See [`Handler`].
#[derive(Debug)]
pub enum Async {}

/// Marker for handlers that are plain (synchronous) closures or functions. See [`Handler`].
///
/// A plain handler runs on tokio's blocking pool, never on an async worker thread, so that it may
/// block (a synchronous driver, a sleep) without stalling other handlers, and its timeout applies
/// as to an `async` one: when it expires, the call ends as timed out and the result that comes
/// later is discarded and counted ([`Stats::late_results`](crate::Stats::late_results)). The
/// hand-over costs a few microseconds: a handler that never blocks is cheaper as an `async fn`. A
/// plain closure must be `Clone` (it is moved to the blocking thread).
#[derive(Debug)]
pub enum Blocking {}

/// A function or closure usable as a handler called with `Cx`: it takes up to 12 extractor
/// arguments (each [`FromContext<Cx>`](FromContext)) and returns what `Cx` accepts ([`Finish`]),
/// or a future of it. For subscribers (`Cx` = [`Context`]): `()` or `Result<(), E>`.
///
/// The type parameter `M` only keeps the implementations apart (async vs. plain, and the argument
/// types); you never name it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid handler called with `{Cx}`",
    note = "a handler is a function or closure whose arguments are all extractors (`FromContext<{Cx}>`) and which returns what `{Cx}` accepts (for a subscriber: `()` or `Result<(), E>`), or a future of it"
)]
pub trait Handler<M, Cx: HandlerContext = Context>: Send + Sync + 'static {
    /// Runs the handler for one call.
    #[doc(hidden)]
    fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output>;
    /// Declares what the arguments need.
    #[doc(hidden)]
    fn requirements(requirements: &mut Requirements);
}

/// Extracts one argument or returns the rejection as a ready future.
macro_rules! extract_or_reject {
    ($cx:ident, $ty:ident) => {
        match <$ty as FromContext<Cx>>::from_context(&$cx) {
            Ok(value) => value,
            Err(rejection) => {
                return Box::pin(std::future::ready(Err(HandlerFailure::Rejected(
                    rejection.into(),
                ))))
            }
        }
    };
}

macro_rules! impl_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        #[diagnostic::do_not_recommend]
        impl<F, Fut, R, Cx, $($ty,)*> Handler<(Async, $($ty,)*), Cx> for F
        where
            F: Fn($($ty),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            Cx: Finish<R>,
            $($ty: FromContext<Cx> + Send + 'static,)*
        {
            fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output> {
                $(let $ty = extract_or_reject!(cx, $ty);)*
                drop(cx);
                let fut = (self)($($ty),*);
                Box::pin(async move { Cx::finish(fut.await).map_err(HandlerFailure::Failed) })
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromContext<Cx>>::requirements(requirements);)*
            }
        }

        #[allow(non_snake_case, unused_variables)]
        #[diagnostic::do_not_recommend]
        impl<F, R, Cx, $($ty,)*> Handler<(Blocking, $($ty,)*), Cx> for F
        where
            F: Fn($($ty),*) -> R + Clone + Send + Sync + 'static,
            Cx: Finish<R>,
            $($ty: FromContext<Cx> + Send + 'static,)*
        {
            fn call(&self, cx: Cx) -> HandlerFuture<Cx::Output> {
                $(let $ty = extract_or_reject!(cx, $ty);)*
                let resources = cx.resources().clone();
                drop(cx);
                let f = self.clone();
                Box::pin(blocking::run_blocking(resources, move || Cx::finish(f($($ty),*))))
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromContext<Cx>>::requirements(requirements);)*
            }
        }
    };
}

impl_handler!();
impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);
impl_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12);

/// A handler with its types erased: what registries keep.
#[doc(hidden)]
pub type DynHandler<Cx> =
    Arc<dyn Fn(Cx) -> HandlerFuture<<Cx as HandlerContext>::Output> + Send + Sync>;

/// Erases a handler's types, returning it with what its arguments need. Not public API: for
/// plugins' builders.
#[doc(hidden)]
pub fn erase<H, M, Cx>(handler: H) -> (DynHandler<Cx>, Requirements)
where
    H: Handler<M, Cx>,
    Cx: HandlerContext,
{
    let mut requirements = Requirements::default();
    H::requirements(&mut requirements);
    let handler = Arc::new(handler);
    (Arc::new(move |cx| handler.call(cx)), requirements)
}
