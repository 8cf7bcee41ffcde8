use switchboard::prelude::*;

#[websocket_route(type = "chat", action = "number")]
fn number(_: Client, _n: u32) {}

// A subscriber extractor is not a route extractor.
#[websocket_route(type = "chat", action = "channel")]
async fn channel(_: Data, _channel: Channel) {}

#[websocket_route(type = "chat", action = "optional")]
async fn optional(_maybe: Option<Client>) {}

fn main() {}
