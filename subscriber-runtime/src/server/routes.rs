//! Client routes: a client frame `{type, action, data}` runs the handler registered for
//! `type:action`, whose return value is the reply `{type, action, response}`.
//!
//! Routes come from the builder (`.route("hello", "greet", handler)`) and from a `const`
//! [`RouteRegistration`] per attributed route, collected at link time through `inventory` (or a
//! `linkme` slice under the `linkme` feature), exactly like subscriber registrations.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::client::Client;
use super::WebSocket;
use crate::context::{Shared, StateMap};
use crate::error::{BuildError, Location};
use crate::extract::{MissingState, State};
use crate::handler::{Async, Blocking, BoxError};
use crate::publish::Publisher;
use crate::registration::Requirements;

/// Routes the server answers itself (`system:joinRoom`, `system:leaveRoom`).
pub(crate) const SYSTEM_ROUTES: [(&str, &str); 2] =
    [("system", "joinRoom"), ("system", "leaveRoom")];

/// Everything a route handler can see: the client, the message's type, action and data, and the
/// application (state, publisher, WebSocket server). Cheap to clone.
#[derive(Clone)]
pub struct RouteContext {
    pub(crate) client: Client,
    pub(crate) kind: Arc<str>,
    pub(crate) action: Arc<str>,
    pub(crate) data: Arc<Value>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for RouteContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteContext")
            .field("client", &self.client.id)
            .field("type", &self.kind)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl RouteContext {
    /// The client that sent the message.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The message's `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The message's `action`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The message's `data` (`null` when it had none).
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The state of type `T` the application provided, if any.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.shared.states.get::<T>()
    }

    /// Publishes through the application's broker.
    pub fn publisher(&self) -> Publisher {
        self.shared.publisher.clone()
    }

    /// The WebSocket server handle.
    pub fn websocket(&self) -> WebSocket {
        self.shared.websocket.clone()
    }
}

/// A type that can be a client route handler argument, built from the [`RouteContext`].
///
/// Implemented by [`Client`], [`Data<T>`], [`WebSocket`], [`State<T>`], [`Publisher`] and
/// [`RouteContext`]; implement it for your own extractors.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a client route handler argument",
    label = "not a route extractor",
    note = "every argument of a client route handler must implement `switchboard::FromRoute`: use `Client`, `Data<T>`, `WebSocket`, `State<T>`, `Publisher` or `RouteContext`"
)]
pub trait FromRoute: Sized {
    /// Why extraction failed; the client then gets an error frame with this text.
    type Rejection: Into<BoxError>;

    /// Builds the argument.
    ///
    /// # Errors
    /// The rejection when the argument cannot be built for this message.
    fn from_route(cx: &RouteContext) -> Result<Self, Self::Rejection>;

    /// Declares what this extractor needs from the application (checked at `build()`).
    fn requirements(_requirements: &mut Requirements) {}
}

impl FromRoute for RouteContext {
    type Rejection = Infallible;
    fn from_route(cx: &RouteContext) -> Result<Self, Infallible> {
        Ok(cx.clone())
    }
}

impl FromRoute for Client {
    type Rejection = Infallible;
    fn from_route(cx: &RouteContext) -> Result<Self, Infallible> {
        Ok(cx.client.clone())
    }
}

impl FromRoute for WebSocket {
    type Rejection = Infallible;
    fn from_route(cx: &RouteContext) -> Result<Self, Infallible> {
        Ok(cx.websocket())
    }
}

impl FromRoute for Publisher {
    type Rejection = Infallible;
    fn from_route(cx: &RouteContext) -> Result<Self, Infallible> {
        Ok(cx.publisher())
    }
}

impl<T: Clone + Send + Sync + 'static> FromRoute for State<T> {
    type Rejection = MissingState;
    fn from_route(cx: &RouteContext) -> Result<Self, MissingState> {
        cx.state::<T>()
            .map(State)
            .ok_or_else(|| MissingState::of::<T>())
    }
    fn requirements(requirements: &mut Requirements) {
        requirements.require_state::<T>();
    }
}

/// The `data` of a client message, deserialized into `T` (by default the JSON value itself).
///
/// Data that does not deserialize into `T` is answered with an error frame
/// (`Invalid data for <type>:<action>: <serde error>`), and the handler does not run.
///
/// ```
/// use serde::Deserialize;
/// use switchboard::{Client, Data};
///
/// #[derive(Deserialize)]
/// struct Greet { name: String }
///
/// async fn greet(client: Client, Data(greet): Data<Greet>) -> Result<String, std::convert::Infallible> {
///     Ok(format!("hello {} from {}", greet.name, client.id()))
/// }
/// # let _ = switchboard::Switchboard::builder().route("hello", "greet", greet);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Data<T = Value>(pub T);

impl<T> Deref for Data<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A client message's data did not deserialize into the type a route handler asked for.
#[derive(Debug, thiserror::Error)]
#[error("Invalid data for {route}: {source}")]
pub struct DataRejection {
    route: String,
    #[source]
    source: serde_json::Error,
}

impl<T: DeserializeOwned> FromRoute for Data<T> {
    type Rejection = DataRejection;
    fn from_route(cx: &RouteContext) -> Result<Self, DataRejection> {
        T::deserialize(&*cx.data)
            .map(Data)
            .map_err(|source| DataRejection {
                route: format!("{}:{}", cx.kind, cx.action),
                source,
            })
    }
}

/// What a route handler returns. The reply `{type, action, response}` carries the value; `null`
/// (including `()` and `Ok(())`) means no reply, and an `Err` is sent to the client as an error
/// frame with the error's text.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid client route return type",
    note = "a client route handler returns `()`, a `serde_json::Value`, `Reply<T>` or `Result<T, E>` where `T: Serialize` and `E` converts into `Box<dyn Error + Send + Sync>`"
)]
pub trait IntoReply {
    /// The response value (`None`: no reply), or the error to report.
    ///
    /// # Errors
    /// The handler's error, or a serialization failure.
    fn into_reply(self) -> Result<Option<Value>, BoxError>;
}

impl IntoReply for () {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        Ok(None)
    }
}

impl IntoReply for Value {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        Ok(Some(self).filter(|v| !v.is_null()))
    }
}

/// A reply from an infallible route handler: `Reply(value)` is answered with `value` as
/// `response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T>(pub T);

impl<T: Serialize> IntoReply for Reply<T> {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        serde_json::to_value(self.0)?.into_reply()
    }
}

impl<T: Serialize, E: Into<BoxError>> IntoReply for Result<T, E> {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        match self {
            Ok(value) => serde_json::to_value(value)?.into_reply(),
            Err(e) => Err(e.into()),
        }
    }
}

/// Why one route run did not produce a reply. Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub enum RouteFailure {
    /// An argument could not be extracted.
    Rejected(BoxError),
    /// The handler returned an error.
    Failed(BoxError),
}

/// The future of one route run. Not public API.
#[doc(hidden)]
pub type RouteFuture =
    Pin<Box<dyn Future<Output = Result<Option<Value>, RouteFailure>> + Send + 'static>>;

/// A function or closure usable as a client route handler: up to 8 [`FromRoute`] arguments, and
/// a return value (or a future of one) that implements [`IntoReply`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid client route handler",
    note = "a route handler is a function or closure whose arguments are all route extractors (`Client`, `Data<T>`, `WebSocket`, `State<T>`, `Publisher`, `RouteContext`) and which returns `()`, `Result<T, E>`, a `serde_json::Value`, `Reply<T>`, or a future of one of them"
)]
pub trait RouteHandler<M>: Send + Sync + 'static {
    /// Runs the handler for one message.
    #[doc(hidden)]
    fn call(&self, cx: RouteContext) -> RouteFuture;
    /// Declares what the arguments need.
    #[doc(hidden)]
    fn requirements(requirements: &mut Requirements);
}

macro_rules! extract_or_reject_route {
    ($cx:ident, $ty:ident) => {
        match <$ty as FromRoute>::from_route(&$cx) {
            Ok(value) => value,
            Err(rejection) => {
                return Box::pin(std::future::ready(Err(RouteFailure::Rejected(
                    rejection.into(),
                ))))
            }
        }
    };
}

macro_rules! impl_route_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        #[diagnostic::do_not_recommend]
        impl<F, Fut, R, $($ty,)*> RouteHandler<(Async, $($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            $($ty: FromRoute + Send + 'static,)*
        {
            fn call(&self, cx: RouteContext) -> RouteFuture {
                $(let $ty = extract_or_reject_route!(cx, $ty);)*
                drop(cx);
                let fut = (self)($($ty),*);
                Box::pin(async move { fut.await.into_reply().map_err(RouteFailure::Failed) })
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromRoute>::requirements(requirements);)*
            }
        }

        #[allow(non_snake_case, unused_variables)]
        #[diagnostic::do_not_recommend]
        impl<F, R, $($ty,)*> RouteHandler<(Blocking, $($ty,)*)> for F
        where
            F: Fn($($ty),*) -> R + Send + Sync + 'static,
            R: IntoReply,
            $($ty: FromRoute + Send + 'static,)*
        {
            fn call(&self, cx: RouteContext) -> RouteFuture {
                $(let $ty = extract_or_reject_route!(cx, $ty);)*
                drop(cx);
                let result = (self)($($ty),*).into_reply().map_err(RouteFailure::Failed);
                Box::pin(std::future::ready(result))
            }
            fn requirements(requirements: &mut Requirements) {
                $(<$ty as FromRoute>::requirements(requirements);)*
            }
        }
    };
}

impl_route_handler!();
impl_route_handler!(T1);
impl_route_handler!(T1, T2);
impl_route_handler!(T1, T2, T3);
impl_route_handler!(T1, T2, T3, T4);
impl_route_handler!(T1, T2, T3, T4, T5);
impl_route_handler!(T1, T2, T3, T4, T5, T6);
impl_route_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_route_handler!(T1, T2, T3, T4, T5, T6, T7, T8);

/// Runs one route extractor for generated code, mapping its rejection. Not public API.
#[doc(hidden)]
pub fn extract<T: FromRoute>(cx: &RouteContext) -> Result<T, RouteFailure> {
    T::from_route(cx).map_err(|rejection| RouteFailure::Rejected(rejection.into()))
}

/// Maps a route handler's return value for generated code. Not public API.
#[doc(hidden)]
pub fn finish<R: IntoReply>(result: R) -> Result<Option<Value>, RouteFailure> {
    result.into_reply().map_err(RouteFailure::Failed)
}

/// Boxes a generated route future. Not public API.
#[doc(hidden)]
pub fn boxed<F>(future: F) -> RouteFuture
where
    F: Future<Output = Result<Option<Value>, RouteFailure>> + Send + 'static,
{
    Box::pin(future)
}

/// One attributed client route, as a macro describes it: plain `const` data, so registration does
/// no work before `main`. Not public API: written by `#[websocket_route]`.
#[doc(hidden)]
pub struct RouteRegistration {
    /// The message `type`.
    pub kind: &'static str,
    /// The message `action`.
    pub action: &'static str,
    /// The handler's name (the function's name).
    pub name: &'static str,
    /// Its description (the doc comment).
    pub description: &'static str,
    /// `module_path!()`.
    pub module_path: &'static str,
    /// `file!()`.
    pub file: &'static str,
    /// `line!()`.
    pub line: u32,
    /// Builds the handler's future for one message.
    pub handler: fn(RouteContext) -> RouteFuture,
    /// Declares what the handler's extractors need.
    pub requirements: fn(&mut Requirements),
}

impl fmt::Debug for RouteRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRegistration")
            .field("type", &self.kind)
            .field("action", &self.action)
            .field("name", &self.name)
            .field("module_path", &self.module_path)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

#[cfg(not(feature = "linkme"))]
inventory::collect!(RouteRegistration);

/// The slice that `linkme` fills with every route registration.
#[cfg(feature = "linkme")]
#[doc(hidden)]
#[linkme::distributed_slice]
pub static ROUTES: [RouteRegistration];

/// Every route registration linked into this binary, in no particular order.
pub(crate) fn linked() -> Vec<&'static RouteRegistration> {
    #[cfg(not(feature = "linkme"))]
    {
        inventory::iter::<RouteRegistration>.into_iter().collect()
    }
    #[cfg(feature = "linkme")]
    {
        ROUTES.iter().collect()
    }
}

/// Registers one route descriptor with the active backend. Not public API: used by generated
/// code.
#[cfg(not(feature = "linkme"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __switchboard_register_route {
    ($ident:ident, $registration:expr) => {
        $crate::__private::inventory::submit! { $registration }
    };
}

/// Registers one route descriptor with the active backend. Not public API: used by generated
/// code.
#[cfg(feature = "linkme")]
#[doc(hidden)]
#[macro_export]
macro_rules! __switchboard_register_route {
    ($ident:ident, $registration:expr) => {
        #[$crate::__private::linkme::distributed_slice($crate::__private::ROUTES)]
        #[linkme(crate = $crate::__private::linkme)]
        static $ident: $crate::__private::RouteRegistration = $registration;
    };
}

type DynRoute = Arc<dyn Fn(RouteContext) -> RouteFuture + Send + Sync>;

#[derive(Clone)]
enum RouteCall {
    Static(fn(RouteContext) -> RouteFuture),
    Dyn(DynRoute),
}

/// A route given to the builder with `.route(type, action, handler)`.
pub(crate) struct InlineRoute {
    kind: String,
    action: String,
    call: DynRoute,
    requirements: Requirements,
}

impl fmt::Debug for InlineRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.action)
    }
}

impl InlineRoute {
    pub(crate) fn new<H, M>(kind: String, action: String, handler: H) -> Self
    where
        H: RouteHandler<M>,
    {
        let mut requirements = Requirements::default();
        H::requirements(&mut requirements);
        let handler = Arc::new(handler);
        Self {
            kind,
            action,
            call: Arc::new(move |cx| handler.call(cx)),
            requirements,
        }
    }
}

/// One route, ready to run.
#[derive(Clone)]
pub(crate) struct RouteEntry {
    pub(crate) name: Cow<'static, str>,
    pub(crate) location: Location,
    call: RouteCall,
}

impl RouteEntry {
    pub(crate) fn call(&self, cx: RouteContext) -> RouteFuture {
        match &self.call {
            RouteCall::Static(f) => f(cx),
            RouteCall::Dyn(f) => f(cx),
        }
    }
}

/// Every client route, by type then action.
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: HashMap<Box<str>, HashMap<Box<str>, RouteEntry>>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

impl RouteTable {
    pub(crate) fn get(&self, kind: &str, action: &str) -> Option<&RouteEntry> {
        self.routes.get(kind)?.get(action)
    }

    /// Every `type:action`, sorted.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .routes
            .iter()
            .flat_map(|(k, actions)| actions.keys().map(move |a| format!("{k}:{a}")))
            .collect();
        keys.sort();
        keys
    }

    fn insert(&mut self, kind: &str, action: &str, entry: RouteEntry) -> Result<(), BuildError> {
        let route = format!("{kind}:{action}");
        if kind.is_empty() || action.is_empty() {
            return Err(BuildError::InvalidRoute {
                route,
                reason: "the type and the action must not be empty".to_owned(),
            });
        }
        if SYSTEM_ROUTES.contains(&(kind, action)) {
            return Err(BuildError::InvalidRoute {
                route,
                reason: "the server answers this system route itself".to_owned(),
            });
        }
        let actions = self.routes.entry(kind.into()).or_default();
        if let Some(first) = actions.get(action) {
            return Err(BuildError::DuplicateRoute {
                route,
                first: first.location.clone(),
                second: entry.location,
            });
        }
        actions.insert(action.into(), entry);
        Ok(())
    }

    /// Collects the linked routes (unless left out) and the inline ones, and checks them.
    pub(crate) fn build(
        inline: Vec<InlineRoute>,
        states: &StateMap,
        include_linked: bool,
    ) -> Result<Self, BuildError> {
        let mut table = Self::default();
        let check = |route: String, requirements: &Requirements| {
            for (id, type_name) in &requirements.states {
                if !states.contains(*id) {
                    return Err(BuildError::MissingState {
                        handler: format!("route {route}"),
                        type_name,
                    });
                }
            }
            Ok(())
        };
        if include_linked {
            let mut linked = linked();
            linked.sort_by_key(|r| (r.kind, r.action, r.module_path, r.line));
            for r in linked {
                let mut requirements = Requirements::default();
                (r.requirements)(&mut requirements);
                check(format!("{}:{}", r.kind, r.action), &requirements)?;
                table.insert(
                    r.kind,
                    r.action,
                    RouteEntry {
                        name: Cow::Borrowed(r.name),
                        location: Location {
                            module_path: r.module_path.to_owned(),
                            file: r.file.to_owned(),
                            line: r.line,
                        },
                        call: RouteCall::Static(r.handler),
                    },
                )?;
            }
        }
        for r in inline {
            let route = format!("{}:{}", r.kind, r.action);
            check(route.clone(), &r.requirements)?;
            table.insert(
                &r.kind,
                &r.action,
                RouteEntry {
                    name: Cow::Owned(route),
                    location: Location {
                        module_path: "<inline>".to_owned(),
                        file: String::new(),
                        line: 0,
                    },
                    call: RouteCall::Dyn(r.call),
                },
            )?;
        }
        Ok(table)
    }
}
