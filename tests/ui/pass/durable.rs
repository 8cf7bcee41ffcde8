//! `durable` on exact channels, patterns and regexes; `StreamPosition` as an argument.
#![deny(warnings)]

use switchboard::prelude::*;

#[websocket_subscriber(channel = "payments", durable)]
async fn payments(Message(m): Message, at: StreamPosition) -> HandlerResult {
    let _ = (m, at.epoch, at.offset, at.recovered);
    Ok(())
}

#[websocket_subscriber(match = [pattern("orders:*"), regex("^audit:[0-9]+$")], durable, priority = 3)]
fn orders(cx: Context) {
    let _ = cx.stream_position().map(|at| at.offset);
}

#[websocket_subscriber(channels = ["invoices", "refunds"], once, timeout = "10s")]
async fn charge(Message(m): Message, at: StreamPosition) -> HandlerResult {
    let _ = (m, at);
    Ok(())
}

fn main() {
    let app = Switchboard::builder()
        .only(["payments", "orders", "charge"])
        .build()
        .expect("durable handlers build");
    assert_eq!(app.handlers().len(), 3);
}
