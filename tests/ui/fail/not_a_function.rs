use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
struct Handler;

#[websocket_subscriber(channel = "a")]
pub enum Kind {
    A,
}

fn main() {}
