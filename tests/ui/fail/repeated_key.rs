use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", priority = 1, priority = 2)]
fn priority_twice() {}

#[websocket_subscriber(match = "a", match = "b")]
fn match_twice() {}

fn main() {}
