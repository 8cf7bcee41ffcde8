use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
unsafe fn not_safe() {}

#[websocket_subscriber(channel = "a")]
const fn constant() {}

#[websocket_subscriber(channel = "a")]
extern "C" fn foreign() {}

fn main() {}
