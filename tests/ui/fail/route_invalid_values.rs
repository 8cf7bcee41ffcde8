use switchboard::prelude::*;

#[websocket_route(type = "", action = "send")]
fn empty_type() {}

#[websocket_route(type = "chat", action = "send message")]
fn whitespace_action() {}

#[websocket_route(type = "chat\u{7}", action = "send")]
fn control_type() {}

#[websocket_route(type = chat, action = 5)]
fn not_literals() {}

#[websocket_route(type = "chat", action = "send", name = "")]
fn empty_name() {}

fn main() {}
