use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", timeout = "5 seconds")]
fn spelled_out() {}

#[websocket_subscriber(channel = "a", timeout = "0s")]
fn zero() {}

#[websocket_subscriber(channel = "a", timeout = 5)]
fn no_unit() {}

#[websocket_subscriber(channel = "a", timeout = "-1s")]
fn negative() {}

#[websocket_subscriber(channel = "a", timeout = "5h")]
async fn hours() {}

#[websocket_subscriber(channel = "a", timeout = "1.5s")]
async fn fraction() {}

#[websocket_subscriber(channel = "a", timeout = "1s", timeout = "2s")]
async fn repeated() {}

#[websocket_route(type = "chat", action = "unit", timeout = "5")]
fn route_no_unit() {}

#[websocket_route(type = "chat", action = "const", timeout = TIMEOUT)]
async fn route_const() {}

#[websocket_route(type = "chat", action = "repeated", timeout = "1s", timeout = "2s")]
async fn route_repeated() {}

const TIMEOUT: &str = "5s";

fn main() {}
