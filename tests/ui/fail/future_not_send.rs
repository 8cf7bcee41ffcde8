use std::rc::Rc;
use switchboard::prelude::*;

async fn tick() {}

#[websocket_subscriber(channel = "a")]
async fn holds_rc(_: Channel) {
    let counter = Rc::new(1);
    tick().await;
    drop(counter);
}

fn main() {}
