use switchboard::prelude::*;

#[websocket_route(type = "chat", action = "send", channel = "x")]
fn unknown() {}

#[websocket_route(type = "chat", actoin = "send")]
fn misspelled() {}

#[websocket_route(type = "chat", action = "send", type = "other")]
fn repeated() {}

#[websocket_route(type "chat", action = "send")]
fn syntax() {}

fn main() {}
