use switchboard::prelude::*;

fn by_channel(channel: &str) -> bool {
    channel.starts_with("a")
}

#[websocket_subscriber(match = by_channel)]
fn handler() {}

fn main() {}
