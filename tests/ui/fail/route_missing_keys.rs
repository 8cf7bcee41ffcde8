use switchboard::prelude::*;

#[websocket_route(action = "send")]
fn no_type() {}

#[websocket_route(type = "chat")]
fn no_action() {}

#[websocket_route]
fn neither() {}

// A misspelled key is reported as such, not as a missing one.
#[websocket_route(typ = "chat", action = "send")]
fn misspelled() {}

fn main() {}
