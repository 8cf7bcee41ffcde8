//! `#[websocket_route]`: async and plain functions, every route extractor, every reply type,
//! every key, raw identifiers, and a renamed crate.
#![deny(warnings)]

extern crate switchboard as sb;

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard::prelude::*;
use switchboard::{BoxError, RouteContext, ServerError};

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[derive(Clone)]
struct Greeting(&'static str);

#[websocket_route(type = "pass", action = "asyncUnit")]
async fn async_unit() {}

#[websocket_route(type = "pass", action = "plainUnit")]
fn plain_unit() {}

/// Greets by name.
#[websocket_route(type = "pass", action = "greet")]
async fn greet(client: Client, Data(greet): Data<Greet>) -> Result<String, BoxError> {
    Ok(format!("hello {} from {}", greet.name, client.id()))
}

#[websocket_route(type = "pass", action = "value")]
fn plain_value(Data(value): Data) -> Value {
    json!({ "echo": value })
}

#[websocket_route(type = "pass", action = "reply")]
fn plain_reply(data: Data<u32>) -> Reply<u32> {
    Reply(*data + 1)
}

#[websocket_route(type = "pass", action = "error")]
async fn custom_error() -> Result<(), &'static str> {
    Err("nope")
}

#[websocket_route(
    type = "pass",
    action = "every",
    name = "everyExtractor",
    description = "takes every extractor"
)]
async fn every_extractor(
    client: Client,
    Data(value): Data<Value>,
    ws: WebSocket,
    State(greeting): State<Greeting>,
    publisher: Publisher,
    cx: RouteContext,
) -> Reply<String> {
    let _ = (client.id(), value, ws.client_count(), publisher);
    Reply(format!("{} {}:{}", greeting.0, cx.kind(), cx.action()))
}

#[websocket_route(type = "pass", action = "raw")]
async fn r#type(_: Client) {}

#[sb::websocket_route(crate = "sb", type = "pass", action = "renamed")]
fn through_renamed_crate(_: sb::Client) {}

fn main() {
    // The functions stay ordinary functions.
    plain_unit();
    drop(async_unit());
    assert_eq!(plain_reply(Data(1)), Reply(2));

    // `State<Greeting>` is declared as a requirement: without the state, `build()` refuses.
    let error = Switchboard::builder()
        .build()
        .err()
        .expect("missing state is an error");
    assert!(error.to_string().contains("Greeting"), "{error}");
    assert!(error.to_string().contains("pass:every"), "{error}");

    // Every route is registered: the same `type:action` given inline is a duplicate.
    for action in [
        "asyncUnit",
        "plainUnit",
        "greet",
        "value",
        "reply",
        "error",
        "every",
        "raw",
        "renamed",
    ] {
        let error = Switchboard::builder()
            .state(Greeting("hi"))
            .route("pass", action, || ())
            .build()
            .err()
            .expect("duplicate route");
        let sb::Error::Build(build) = &error else {
            panic!("{error}");
        };
        match build.plugin_error() {
            Some(ServerError::DuplicateRoute { route, first, .. }) => {
                assert_eq!(*route, format!("pass:{action}"));
                assert!(first.file.ends_with("routes.rs"), "{first}");
            }
            _ => panic!("{error}"),
        }
    }
    Switchboard::builder()
        .state(Greeting("hi"))
        .build()
        .expect("valid routes");
}
