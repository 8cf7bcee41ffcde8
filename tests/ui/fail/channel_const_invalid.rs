use switchboard::prelude::*;

const BAD: &str = "has space";
const EMPTY: &str = "";

#[websocket_subscriber(channel = BAD)]
fn with_space() {}

#[websocket_subscriber(channels = ["fine", EMPTY])]
fn empty() {}

fn main() {}
