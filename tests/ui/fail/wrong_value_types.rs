use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", description = 5)]
fn number_description() {}

#[websocket_subscriber(channel = "a", name = handler)]
fn path_name() {}

#[websocket_subscriber(channel = 5)]
fn number_channel() {}

#[websocket_subscriber(channel = ["a", "b"])]
fn array_channel() {}

#[websocket_subscriber(channels = "a")]
fn string_channels() {}

#[websocket_subscriber(channel = regex("^a"))]
fn regex_channel() {}

fn main() {}
