use std::time::Duration;
use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", layer = 42)]
fn number() {}

#[websocket_subscriber(
    channel = "a",
    layer = [
        switchboard::tower::limit::ConcurrencyLimitLayer::new(2),
        Duration::from_secs(1),
    ]
)]
async fn duration_in_array() {}

#[websocket_route(type = "chat", action = "send", layer = std::time::Duration::from_secs(1))]
async fn route_duration() {}

fn main() {}
