use switchboard::prelude::*;

#[websocket_route(type = "system", action = "joinRoom")]
fn join(_: Client) {}

#[websocket_route(type = "system", action = "leaveRoom")]
async fn leave(_: Client) {}

fn main() {}
