use switchboard::prelude::*;

#[websocket_subscriber(channels = [])]
fn no_channels() {}

#[websocket_subscriber(match = [])]
fn no_matchers() {}

#[websocket_subscriber(channel = "a", name = "")]
fn empty_name() {}

fn main() {}
