use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
fn plain(_: Channel, _x: u32) {}

#[websocket_subscriber(channel = "a")]
async fn optional(Message(_m): Message, _maybe: Option<Channel>) {}

#[websocket_subscriber(channel = "a")]
fn reference(_cx: &Context) {}

fn main() {}
