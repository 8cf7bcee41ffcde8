use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", layer = "timeout")]
fn string_layer() {}

#[websocket_subscriber(channel = "a", layer = [])]
fn empty_layers() {}

#[websocket_subscriber(
    channel = "a",
    layer = [switchboard::tower::limit::ConcurrencyLimitLayer::new(1), "retry"]
)]
async fn string_in_array() {}

#[websocket_subscriber(channel = "a", layer = switchboard::tower::limit::ConcurrencyLimitLayer::new(1), layer = [])]
async fn repeated() {}

#[websocket_route(type = "chat", action = "string", layer = "timeout")]
fn route_string_layer() {}

#[websocket_route(type = "chat", action = "empty", layer = [])]
async fn route_empty_layers() {}

fn main() {}
