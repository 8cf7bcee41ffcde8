use switchboard::prelude::*;

#[websocket_route(type = "chat", action = "send")]
struct NotAFunction;

#[websocket_route(type = "chat", action = "generic")]
fn generic<T: Send>(_: Client) {}

#[websocket_route(type = "chat", action = "where")]
fn with_where()
where
    String: Clone,
{
}

#[websocket_route(type = "chat", action = "implTrait")]
fn impl_trait(_: impl Send) -> impl Send {}

struct Service;

impl Service {
    #[websocket_route(type = "chat", action = "method")]
    async fn method(&self, _: Client) {}
}

#[websocket_route(type = "chat", action = "unsafe")]
unsafe fn not_safe() {}

fn main() {}
