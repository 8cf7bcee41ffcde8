use std::future::Future;
use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
fn returns_future() -> impl Future<Output = ()> {
    async {}
}

fn main() {}
