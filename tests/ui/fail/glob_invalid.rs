use switchboard::prelude::*;

#[websocket_subscriber(match = pattern("a[b"))]
fn unclosed_bracket() {}

#[websocket_subscriber(match = [pattern("ok:*"), pattern("trailing\\")])]
fn trailing_backslash() {}

fn main() {}
