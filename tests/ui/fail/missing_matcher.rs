use switchboard::prelude::*;

#[websocket_subscriber(priority = 1)]
fn no_channel() {}

#[websocket_subscriber]
fn no_arguments() {}

fn main() {}
