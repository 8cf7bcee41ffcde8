use switchboard::prelude::*;

#[websocket_subscriber(channel "a")]
fn missing_equals() {}

#[websocket_subscriber("a")]
fn no_key() {}

fn main() {}
