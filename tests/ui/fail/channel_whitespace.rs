use switchboard::prelude::*;

#[websocket_subscriber(channel = "job done")]
fn space() {}

#[websocket_subscriber(channels = ["ok", "tab\there"])]
fn tab() {}

fn main() {}
