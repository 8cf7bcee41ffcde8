//! `#[websocket_route]` end to end: attributed routes, registered at link time, answering a real
//! tokio-tungstenite client on 127.0.0.1:0.

mod support;

use serde::Deserialize;
use serde_json::{json, Value};
use support::*;
use switchboard::prelude::*;
use switchboard::{BoxError, ServerError};

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

/// Adds two numbers.
#[websocket_route(type = "math", action = "add")]
async fn add(client: Client, Data(add): Data<Add>) -> Result<Value, BoxError> {
    Ok(json!({ "sum": add.a + add.b, "clientId": client.id() }))
}

#[websocket_route(type = "math", action = "negate", name = "negateNumber")]
fn negate(Data(n): Data<i64>) -> Reply<i64> {
    Reply(-n)
}

#[derive(Clone)]
struct Unit(&'static str);

#[websocket_route(type = "math", action = "unit")]
fn unit(State(unit): State<Unit>) -> Reply<&'static str> {
    Reply(unit.0)
}

#[websocket_route(type = "math", action = "divide")]
async fn divide(Data([a, b]): Data<[i64; 2]>) -> Result<i64, ClientError> {
    a.checked_div(b)
        .ok_or_else(|| ClientError::new("division_by_zero", "division by zero"))
}

/// Linked routes only (no linked subscriber handlers), with the state `unit` needs.
fn app() -> switchboard::Builder {
    Switchboard::builder()
        .only(Vec::<String>::new())
        .state(Unit("m"))
}

#[tokio::test]
async fn attributed_routes_answer_a_websocket_client() {
    let (builder, _) = observed(app());
    let server = Server::start(builder).await;
    let mut client = server.client().await;

    client
        .send_json(json!({"type": "math", "action": "add", "data": {"a": 40, "b": 2}}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "math", "action": "add", "response": {"sum": 42, "clientId": client.id()}})
    );

    // A plain (non-async) function.
    client
        .send_json(json!({"type": "math", "action": "negate", "data": 7}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "math", "action": "negate", "response": -7})
    );

    client
        .send_json(json!({"type": "math", "action": "unit"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "math", "action": "unit", "response": "m"})
    );

    // Data that does not deserialize into `Data<T>`: an error frame, and the handler does not run.
    client
        .send_json(json!({"type": "math", "action": "add", "data": {"a": "forty"}}))
        .await;
    let error = client.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert!(
        error["data"]["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid data for math:add"),
        "{error}"
    );

    // The handler's error is sent as an error frame.
    client
        .send_json(json!({"type": "math", "action": "divide", "data": [1, 0]}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "error", "action": "message", "data": {"error": "division by zero", "code": "division_by_zero"}})
    );
    client
        .send_json(json!({"type": "math", "action": "divide", "data": [84, 2]}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "math", "action": "divide", "response": 42})
    );
}

#[tokio::test]
async fn attributed_routes_are_left_out_with_linked_handlers() {
    let (builder, _) = observed(base());
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "math", "action": "add", "data": {"a": 1, "b": 2}}))
        .await;
    assert_eq!(
        client.next_json().await["data"]["error"],
        "Unknown route: math:add"
    );
}

#[test]
fn attributed_routes_are_in_the_registry() {
    // The same `type:action` given inline collides with the linked route, whose location is the
    // attributed function's.
    for action in ["add", "negate", "unit", "divide"] {
        let error = app()
            .route("math", action, || ())
            .build()
            .expect_err("a duplicate route is refused");
        let switchboard::Error::Build(build) = &error else {
            panic!("expected a build error, got {error}");
        };
        let Some(ServerError::DuplicateRoute { route, first, .. }) = build.plugin_error() else {
            panic!("expected a duplicate route, got {error}");
        };
        assert_eq!(*route, format!("math:{action}"));
        assert_eq!(first.module_path, module_path!());
        assert!(first.file.ends_with("route_attribute.rs"), "{first}");
        assert!(first.line > 0, "{first}");
    }

    // `State<Unit>` is declared as a requirement of the route.
    let error = Switchboard::builder()
        .only(Vec::<String>::new())
        .build()
        .expect_err("missing state is refused");
    assert!(error.to_string().contains("math:unit"), "{error}");
    assert!(error.to_string().contains("Unit"), "{error}");
}

#[test]
fn a_route_without_its_state_fails_the_build_naming_its_file_and_line() {
    let err = Switchboard::builder()
        .only(Vec::<String>::new())
        .build()
        .expect_err("`math:unit` takes `State<Unit>`, which is not provided");
    let text = err.to_string();
    assert!(
        text.contains("handler `route math:unit` (defined at tests/route_attribute.rs:"),
        "{text}"
    );
    assert!(text.contains("add `.state(value)`"), "{text}");
}
