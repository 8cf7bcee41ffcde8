use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", priority = 3000000000)]
fn too_high() {}

#[websocket_subscriber(channel = "a", priority = -2147483649)]
fn too_low() {}

#[websocket_subscriber(channel = "a", priority = 5u8)]
fn suffix() {}

fn main() {}
