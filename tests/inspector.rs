//! The inspector's data over the WebSocket: who may subscribe, what a snapshot holds, and the
//! paths it refuses. (Its page in a browser: `tests/browser.rs`.)

mod support;

use serde_json::{json, Value};
use support::{token, SECRET};
use switchboard::prelude::*;
use switchboard::testing::{SocketClient, TestApp, TestServer};
use switchboard::JwtSecret;

fn app() -> switchboard::Builder {
    Switchboard::builder()
        .without_linked_handlers()
        .inspector("/inspector")
        .subscriber(
            Subscriber::channels(["orders"])
                .name("audit")
                .priority(3)
                .handle(|Message(m): Message| async move {
                    if m["bad"] == true {
                        return Err("bad order".into());
                    }
                    Ok::<_, switchboard::BoxError>(())
                }),
        )
        .route("hello", "greet", || async { json!({"hi": true}) })
}

#[tokio::test]
async fn a_subscriber_gets_a_snapshot_of_handlers_routes_rates_rooms_and_errors() {
    let app = TestApp::start(app()).await.unwrap();
    app.publish("orders", &json!({"id": 1})).await.unwrap();
    app.publish("orders", &json!({"bad": true})).await.unwrap();
    let mut client = app.connect_client();
    client
        .push("system", "joinRoom", json!({"roomName": "lobby"}))
        .await;
    client.assert_reply("system", "joinRoom").await;
    client.push("inspector", "subscribe", Value::Null).await;
    assert_eq!(
        client.assert_reply("inspector", "subscribe").await,
        json!({"success": true})
    );
    let snapshot = client.assert_push("inspector", "snapshot").await;
    assert_eq!(snapshot["workerId"], app.worker_id());
    let audit = &snapshot["handlers"][0];
    assert_eq!(audit["name"], "audit");
    assert_eq!(audit["priority"], 3);
    assert_eq!(audit["matchers"], json!(["\"orders\""]));
    assert_eq!(audit["stats"]["runs"], 2);
    assert_eq!(audit["stats"]["errors"], 1);
    assert_eq!(snapshot["routes"][0]["route"], "hello:greet");
    let orders = snapshot["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "orders")
        .expect("the orders channel");
    assert_eq!(orders["total"], 2);
    assert_eq!(snapshot["rooms"][0]["room"], "lobby");
    assert_eq!(
        snapshot["rooms"][0]["members"],
        json!([client.id().as_str()])
    );
    assert_eq!(snapshot["workers"][0]["clients"], 1);
    assert_eq!(snapshot["errors"][0]["handler"], "audit");
    assert_eq!(snapshot["errors"][0]["error"], "bad order");
    // Then one every second.
    let next = client.next_frame(std::time::Duration::from_secs(3)).await;
    assert_eq!(next.expect("a second snapshot")["action"], "snapshot");
}

#[tokio::test]
async fn with_a_jwt_secret_only_an_authenticated_client_may_subscribe() {
    let server = TestServer::start(
        app().websocket(WebSocketConfig::default().jwt_secret(JwtSecret::raw(SECRET))),
    )
    .await
    .unwrap();
    let mut anonymous = SocketClient::connect(&server.url(None)).await;
    anonymous
        .send_json(json!({"type": "inspector", "action": "subscribe"}))
        .await;
    let refused = anonymous.next_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["data"]["code"], "unauthorized", "{refused}");

    let exp = support::now_secs() + 600;
    let mut admin =
        SocketClient::connect(&server.url(Some(&token(json!({"sub": "ada", "exp": exp}))))).await;
    admin
        .send_json(json!({"type": "inspector", "action": "subscribe"}))
        .await;
    let mut seen = Vec::new();
    loop {
        let frame = admin.next_json().await;
        if frame["action"] == "snapshot" {
            assert_eq!(frame["data"]["handlers"][0]["name"], "audit");
            break;
        }
        seen.push(frame);
        assert!(seen.len() < 5, "no snapshot: {seen:?}");
    }
}

#[tokio::test]
async fn without_the_inspector_the_frame_is_an_unknown_route_and_bad_paths_fail_the_build() {
    let app = TestApp::start(Switchboard::builder().without_linked_handlers())
        .await
        .unwrap();
    let mut client = app.connect_client();
    client.push("inspector", "subscribe", Value::Null).await;
    assert_eq!(
        client.assert_push("error", "message").await["code"],
        "unknown_route"
    );
    for path in ["inspector", "/ws", "/in spector"] {
        let error = Switchboard::builder()
            .without_linked_handlers()
            .inspector(path)
            .build()
            .unwrap_err();
        let server_error = error.to_string();
        assert!(
            server_error.contains("cannot serve the inspector"),
            "{path}: {server_error}"
        );
    }
}
