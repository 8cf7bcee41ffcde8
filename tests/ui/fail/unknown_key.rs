use switchboard::prelude::*;

#[websocket_subscriber(chanel = "x")]
fn typo() {}

#[websocket_subscriber(channel = "x", retries = 5)]
fn unsupported() {}

fn main() {}
