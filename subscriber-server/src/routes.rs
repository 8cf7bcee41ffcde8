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
use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use subscriber_runtime::__private::{DynHandler, HandlerFuture};
use subscriber_runtime::layer::HandlerLayer;
use subscriber_runtime::plugin::PluginContext;
use subscriber_runtime::{
    BoxError, Finish, FromContext, Handler, HandlerContext, Location, Publisher, Requirements,
    Resources,
};

use crate::client::Client;
use crate::error::ServerError;
use crate::WebSocket;

/// Routes the server answers itself (`system:joinRoom`, `system:leaveRoom`).
pub(crate) const SYSTEM_ROUTES: [(&str, &str); 2] =
    [("system", "joinRoom"), ("system", "leaveRoom")];

/// Everything a client route handler can see: the client, the message's type, action and data,
/// and the application's [`Resources`] (state, publisher, the WebSocket server). Cheap to clone.
///
/// It is the [`HandlerContext`] of client routes: route handlers take extractors
/// ([`FromContext<RouteContext>`](FromContext)) and return an [`IntoReply`].
#[derive(Clone)]
pub struct RouteContext {
    pub(crate) client: Client,
    pub(crate) kind: Arc<str>,
    pub(crate) action: Arc<str>,
    pub(crate) data: Arc<Value>,
    pub(crate) resources: Arc<Resources>,
}

impl HandlerContext for RouteContext {
    type Output = Option<Value>;

    fn resources(&self) -> &Arc<Resources> {
        &self.resources
    }
}

/// A [`HandlerContext`] that carries a client frame: what [`Client`], [`Data<T>`] and
/// [`RouteContext`] are extracted from. Implemented by [`RouteContext`].
pub trait FrameContext: HandlerContext {
    /// The frame's context.
    fn route_context(&self) -> &RouteContext;
}

impl subscriber_runtime::layer::Keyed for RouteContext {
    /// `type:action`.
    fn channel(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(format!("{}:{}", self.kind, self.action))
    }

    /// The frame's `data`.
    fn payload(&self) -> &Value {
        &self.data
    }
}

impl FrameContext for RouteContext {
    fn route_context(&self) -> &RouteContext {
        self
    }
}

impl<R: IntoReply> Finish<R> for RouteContext {
    fn finish(value: R) -> Result<Option<Value>, BoxError> {
        value.into_reply()
    }
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
        self.resources.state::<T>()
    }

    /// Publishes through the application's broker.
    pub fn publisher(&self) -> Publisher {
        self.resources.publisher().clone()
    }

    /// The WebSocket server handle.
    pub fn websocket(&self) -> WebSocket {
        WebSocket::of(&self.resources)
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: FrameContext> FromContext<Cx> for RouteContext {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(cx.route_context().clone())
    }
}

#[diagnostic::do_not_recommend]
impl<Cx: FrameContext> FromContext<Cx> for Client {
    type Rejection = Infallible;
    fn from_context(cx: &Cx) -> Result<Self, Infallible> {
        Ok(cx.route_context().client.clone())
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
/// # use switchboard::ServerBuilderExt as _;
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

#[diagnostic::do_not_recommend]
impl<Cx: FrameContext, T: DeserializeOwned> FromContext<Cx> for Data<T> {
    type Rejection = DataRejection;
    fn from_context(cx: &Cx) -> Result<Self, DataRejection> {
        let cx = cx.route_context();
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

#[diagnostic::do_not_recommend]
impl IntoReply for () {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        Ok(None)
    }
}

#[diagnostic::do_not_recommend]
impl IntoReply for Value {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        Ok(Some(self).filter(|v| !v.is_null()))
    }
}

/// A reply from an infallible route handler: `Reply(value)` is answered with `value` as
/// `response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T>(pub T);

#[diagnostic::do_not_recommend]
impl<T: Serialize> IntoReply for Reply<T> {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        serde_json::to_value(self.0)?.into_reply()
    }
}

#[diagnostic::do_not_recommend]
impl<T: Serialize, E: Into<BoxError>> IntoReply for Result<T, E> {
    fn into_reply(self) -> Result<Option<Value>, BoxError> {
        match self {
            Ok(value) => serde_json::to_value(value)?.into_reply(),
            Err(e) => Err(e.into()),
        }
    }
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
    pub handler: fn(RouteContext) -> HandlerFuture<Option<Value>>,
    /// Declares what the handler's extractors need.
    pub requirements: fn(&mut Requirements),
    /// The `timeout = "..."` key, when given.
    pub timeout: Option<std::time::Duration>,
    /// The `layer = ...` key: makes each layer, the first one outermost.
    pub layers: &'static [fn() -> subscriber_runtime::layer::HandlerLayer<RouteContext>],
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

#[derive(Clone)]
enum RouteCall {
    Static(fn(RouteContext) -> HandlerFuture<Option<Value>>),
    Dyn(DynHandler<RouteContext>),
}

/// A route given to the builder with `.route(type, action, handler)`.
pub(crate) struct InlineRoute {
    kind: String,
    action: String,
    call: DynHandler<RouteContext>,
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
        H: Handler<M, RouteContext>,
    {
        let (call, requirements) = subscriber_runtime::__private::erase(handler);
        Self {
            kind,
            action,
            call,
            requirements,
        }
    }
}

/// Picks the client routes a group layer applies to, by `type:action`.
pub(crate) type RouteSelector = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One route, ready to run.
#[derive(Clone)]
pub(crate) struct RouteEntry {
    pub(crate) name: Cow<'static, str>,
    pub(crate) description: &'static str,
    pub(crate) location: Location,
    /// Its own timeout (the attribute's `timeout = "..."`), else the application's.
    pub(crate) timeout: Option<std::time::Duration>,
    call: RouteCall,
}

impl RouteEntry {
    pub(crate) fn call(&self, cx: RouteContext) -> HandlerFuture<Option<Value>> {
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

    /// The startup table of the client routes: one line each (route, handler, file:line,
    /// description), sorted by route.
    pub(crate) fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut table = String::new();
        for (route, entry) in self.rows() {
            let _ = write!(
                table,
                "\n  {:<32} {:<28} {}",
                route, entry.name, entry.location
            );
            if !entry.description.is_empty() {
                let _ = write!(table, "  -- {}", entry.description);
            }
        }
        table
    }

    /// Every route with its entry, sorted by `type:action`.
    pub(crate) fn rows(&self) -> Vec<(String, &RouteEntry)> {
        let mut rows: Vec<(String, &RouteEntry)> = self
            .routes
            .iter()
            .flat_map(|(k, actions)| actions.iter().map(move |(a, e)| (format!("{k}:{a}"), e)))
            .collect();
        rows.sort_by(|x, y| x.0.cmp(&y.0));
        rows
    }

    fn insert(&mut self, kind: &str, action: &str, entry: RouteEntry) -> Result<(), ServerError> {
        let route = format!("{kind}:{action}");
        if kind.is_empty() || action.is_empty() {
            return Err(ServerError::InvalidRoute {
                route,
                reason: "the type and the action must not be empty".to_owned(),
            });
        }
        if SYSTEM_ROUTES.contains(&(kind, action)) {
            return Err(ServerError::InvalidRoute {
                route,
                reason: "the server answers this system route itself".to_owned(),
            });
        }
        let actions = self.routes.entry(kind.into()).or_default();
        if let Some(first) = actions.get(action) {
            return Err(ServerError::DuplicateRoute {
                route,
                first: Box::new(first.location.clone()),
                second: Box::new(entry.location),
            });
        }
        actions.insert(action.into(), entry);
        Ok(())
    }

    /// Collects the linked routes (unless the application leaves linked handlers out) and the
    /// inline ones; what their extractors require is checked by the core once every plugin has
    /// added its state.
    pub(crate) fn build(
        inline: Vec<InlineRoute>,
        layers: &[(Option<RouteSelector>, HandlerLayer<RouteContext>)],
        cx: &mut PluginContext<'_>,
    ) -> Result<Self, ServerError> {
        // The application's layers that pick `route`, then the route's own.
        let wrap = |route: &str, call: RouteCall, own: Vec<HandlerLayer<RouteContext>>| {
            let mut stack: Vec<HandlerLayer<RouteContext>> = layers
                .iter()
                .filter(|(select, _)| select.as_ref().is_none_or(|select| select(route)))
                .map(|(_, layer)| layer.clone())
                .collect();
            stack.extend(own);
            if stack.is_empty() {
                return call;
            }
            let handler: DynHandler<RouteContext> = match call {
                RouteCall::Static(f) => Arc::new(f),
                RouteCall::Dyn(f) => f,
            };
            RouteCall::Dyn(subscriber_runtime::__private::layered(handler, &stack))
        };
        let mut table = Self::default();
        let include_linked = cx.includes_linked();
        let mut check = |route: String, location: &Location, requirements: &Requirements| {
            cx.require_at(
                format!("route {route}"),
                location.clone(),
                requirements.clone(),
            );
        };
        if include_linked {
            let mut linked = linked();
            linked.sort_by_key(|r| (r.kind, r.action, r.module_path, r.line));
            for r in linked {
                let mut requirements = Requirements::default();
                (r.requirements)(&mut requirements);
                let location = Location {
                    module_path: r.module_path.to_owned(),
                    file: r.file.to_owned(),
                    line: r.line,
                };
                let route = format!("{}:{}", r.kind, r.action);
                check(route.clone(), &location, &requirements);
                let own = r.layers.iter().map(|layer| layer()).collect();
                table.insert(
                    r.kind,
                    r.action,
                    RouteEntry {
                        name: Cow::Borrowed(r.name),
                        description: r.description,
                        location,
                        timeout: r.timeout,
                        call: wrap(&route, RouteCall::Static(r.handler), own),
                    },
                )?;
            }
        }
        for r in inline {
            let route = format!("{}:{}", r.kind, r.action);
            let location = Location {
                module_path: "<inline>".to_owned(),
                file: String::new(),
                line: 0,
            };
            check(route.clone(), &location, &r.requirements);
            let call = wrap(&route, RouteCall::Dyn(r.call), Vec::new());
            table.insert(
                &r.kind,
                &r.action,
                RouteEntry {
                    name: Cow::Owned(route),
                    description: "",
                    location,
                    timeout: None,
                    call,
                },
            )?;
        }
        Ok(table)
    }
}
