use switchboard::prelude::*;

const NUMBER: u32 = 5;

#[websocket_subscriber(channel = NUMBER)]
fn number() {}

fn main() {}
