//! Async and plain functions, every return type, every extractor, patterns in arguments.
#![deny(warnings)]

use serde::Deserialize;
use switchboard::prelude::*;
use switchboard::HandlerResult;

#[derive(Deserialize)]
struct Job {
    id: u64,
}

#[derive(Clone)]
struct Greeting(&'static str);

#[websocket_subscriber(channel = "a")]
async fn async_unit() {}

#[websocket_subscriber(channel = "a")]
fn plain_unit() {}

#[websocket_subscriber(channel = "a")]
async fn async_result(Message(job): Message<Job>) -> HandlerResult {
    assert!(job.id > 0);
    Ok(())
}

#[websocket_subscriber(channel = "a")]
fn plain_io_result(channel: Channel) -> Result<(), std::io::Error> {
    if channel.is_empty() {
        return Err(std::io::Error::other("empty"));
    }
    Ok(())
}

#[websocket_subscriber(channel = "a")]
async fn custom_error() -> Result<(), &'static str> {
    Err("nope")
}

#[websocket_subscriber(channel = "a")]
async fn every_extractor(
    mut channel: Channel,
    Message(value): Message,
    raw: Raw,
    envelope: Envelope,
    State(greeting): State<Greeting>,
    publisher: Publisher,
    ws: WebSocket,
    cx: Context,
) {
    channel.0 = "renamed".into();
    let _ = (value, raw.len(), envelope.include_sender(), greeting.0);
    let _ = (publisher, ws, cx.channel().len(), channel);
}

/// Fourteen arguments: more than inline subscribers accept; the attribute has no limit.
#[websocket_subscriber(channel = "a")]
#[allow(clippy::too_many_arguments)]
fn many_arguments(
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
    _: Channel,
) {
}

#[websocket_subscriber(channel = "a")]
async fn r#type(_: Raw) {}

fn main() {
    // The functions stay ordinary functions.
    plain_unit();
    drop(async_unit());

    // `State<Greeting>` is declared as a requirement: without the state, `build()` refuses.
    let error = Switchboard::builder()
        .build()
        .err()
        .expect("missing state is an error");
    assert!(error.to_string().contains("Greeting"), "{error}");

    let app = Switchboard::builder()
        .state(Greeting("hi"))
        .build()
        .expect("valid handlers");
    let mut names: Vec<String> = app.handlers().iter().map(|h| h.name().to_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "async_result",
            "async_unit",
            "custom_error",
            "every_extractor",
            "many_arguments",
            "plain_io_result",
            "plain_unit",
            "type",
        ]
    );
}
