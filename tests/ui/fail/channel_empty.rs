use switchboard::prelude::*;

#[websocket_subscriber(channel = "")]
fn handler() {}

fn main() {}
