use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", channels = ["b", "c"])]
fn both() {}

fn main() {}
