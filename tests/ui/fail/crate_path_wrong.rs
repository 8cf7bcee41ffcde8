use switchboard::prelude::*;

#[websocket_subscriber(crate = "not_switchboard", channel = "a")]
fn missing_crate() {}

#[websocket_subscriber(crate = "not a path", channel = "a")]
fn not_a_path() {}

fn main() {}
