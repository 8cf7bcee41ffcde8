//! What a handler returns, and the [`Handler`] trait that turns closures into handlers.

use std::future::Future;
use std::pin::Pin;

use crate::context::Context;
use crate::extract::FromContext;
use crate::registration::Requirements;

/// A boxed error that any handler error converts into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The usual return type of a handler: `Ok(())`, or any error that converts into [`BoxError`].
pub type HandlerResult<E = BoxError> = Result<(), E>;

/// Why one handler did not complete for one message.
#[doc(hidden)]
#[derive(Debug)]
pub enum HandlerFailure {
    /// An argument could not be extracted (e.g. the payload does not deserialize into `T`).
    Rejected(BoxError),
    /// The handler returned an error.
    Failed(BoxError),
}

/// The future that runs one handler for one message.
#[doc(hidden)]
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerFailure>> + Send + 'static>>;

/// Types a handler may return: `()` or `Result<(), E>` where `E` converts into [`BoxError`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid subscriber handler return type",
    label = "return `()` or `Result<(), E>` here",
    note = "a subscriber handler returns `()` or `Result<(), E>` where `E` converts into `Box<dyn Error + Send + Sync>` (for example `switchboard::HandlerResult`)"
)]
pub trait IntoHandlerResult {
    /// Converts into the framework's result.
    fn into_handler_result(self) -> Result<(), BoxError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Marker for handlers that are `async` closures or functions. See [`Handler`].
#[derive(Debug)]
pub enum Async {}

/// Marker for handlers that are plain (synchronous) closures or functions. See [`Handler`].
#[derive(Debug)]
pub enum Blocking {}

/// A function or closure usable as an inline subscriber handler: it takes up to 12 extractor
/// arguments (see [`FromContext`]) and returns `()`, `Result<(), E>`, or a future of either.
///
/// The type parameter `M` only keeps the implementations apart (async vs. plain, and the argument
/// types); you never name it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid subscriber handler",
    note = "a handler is a function or closure whose arguments are all extractors (`Channel`, `Message<T>`, `Raw`, `State<T>`, `Envelope`, `Publisher`, `WebSocket`, `Context`) and which returns `()`, `Result<(), E>` or a future of one of them"
)]
pub trait Handler<M>: Send + Sync + 'static {
    /// Runs the handler for one message.
    #[doc(hidden)]
    fn call(&self, cx: Context) -> HandlerFuture;
    /// Declares what the arguments need.
    #[doc(hidden)]
    fn requirements(requirements: &mut Requirements);
}

/// Extracts one argument or returns the rejection as a ready future.
macro_rules! extract_or_reject {
    ($cx:ident, $ty:ident) => {
        match <$ty as FromContext>::from_context(&$cx) {
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
        impl<F, Fut, R, $($ty,)*> Handler<(Async, $($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHandlerResult,
            $($ty: FromContext + Send + 'static,)*
        {
            fn call(&self, cx: Context) -> HandlerFuture {
                $(let $ty = extract_or_reject!(cx, $ty);)*
                drop(cx);
                let fut = (self)($($ty),*);
                Box::pin(async move { fut.await.into_handler_result().map_err(HandlerFailure::Failed) })
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromContext>::requirements(requirements);)*
            }
        }

        #[allow(non_snake_case, unused_variables)]
        #[diagnostic::do_not_recommend]
        impl<F, R, $($ty,)*> Handler<(Blocking, $($ty,)*)> for F
        where
            F: Fn($($ty),*) -> R + Send + Sync + 'static,
            R: IntoHandlerResult,
            $($ty: FromContext + Send + 'static,)*
        {
            fn call(&self, cx: Context) -> HandlerFuture {
                $(let $ty = extract_or_reject!(cx, $ty);)*
                drop(cx);
                let result = (self)($($ty),*).into_handler_result().map_err(HandlerFailure::Failed);
                Box::pin(std::future::ready(result))
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromContext>::requirements(requirements);)*
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

/// Runs one extractor for generated code, mapping its rejection. Not public API.
#[doc(hidden)]
pub fn extract<T: FromContext>(cx: &Context) -> Result<T, HandlerFailure> {
    T::from_context(cx).map_err(|rejection| HandlerFailure::Rejected(rejection.into()))
}

/// Maps a handler's return value for generated code. Not public API.
#[doc(hidden)]
pub fn finish<R: IntoHandlerResult>(result: R) -> Result<(), HandlerFailure> {
    result.into_handler_result().map_err(HandlerFailure::Failed)
}

/// Boxes a generated handler future. Not public API.
#[doc(hidden)]
pub fn boxed<F>(future: F) -> HandlerFuture
where
    F: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
{
    Box::pin(future)
}
