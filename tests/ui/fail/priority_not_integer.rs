use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", priority = "high")]
fn word() {}

#[websocket_subscriber(channel = "a", priority = 1.5)]
fn float() {}

#[websocket_subscriber(channel = "a", priority = "10")]
fn quoted() {}

const HIGH: i32 = 10;

#[websocket_subscriber(channel = "a", priority = HIGH)]
fn constant() {}

fn main() {}
