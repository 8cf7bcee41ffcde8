use switchboard::prelude::*;

#[websocket_subscriber(match = regex("("))]
fn unclosed() {}

#[websocket_subscriber(match = regex("^$"))]
fn only_empty() {}

fn main() {}
