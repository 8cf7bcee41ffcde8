//! What a client sees of a route's error: a code and message the handler chose
//! ([`ClientError`]), or a generic message with an id that matches the server's log line; and
//! client routes in tower layers (for all routes, a group, and one route).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::layer::{Key, RateLimitLayer};
use switchboard::prelude::*;
use switchboard::testing::TestApp;
use switchboard::ClientError;

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn builder() -> switchboard::Builder {
    Switchboard::builder()
        .without_linked_handlers()
        .route("rooms", "describe", |Data(room): Data<String>| async move {
            if room == "secret" {
                // An error the client is not shown: it may hold anything.
                return Err::<Value, _>(switchboard::BoxError::from(
                    "connection to db-7.internal:5432 refused",
                ));
            }
            Err(ClientError::new("room_not_found", format!("No room named {room}")).into())
        })
        .route("rooms", "count", |Data(n): Data<u64>| async move {
            json!({"n": n})
        })
        .route("rooms", "panic", || async {
            if true {
                panic!("the database driver panicked");
            }
        })
}

// One thread, so that the route tasks log into this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_client_sees_the_code_the_handler_chose_or_a_generic_error_with_the_log_lines_id() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .finish(),
    );
    let app = TestApp::start(builder()).await.unwrap();
    let mut client = app.connect_client();

    client.push("rooms", "describe", "lobby").await;
    assert_eq!(
        client.assert_push("error", "message").await,
        json!({"error": "No room named lobby", "code": "room_not_found"})
    );

    client.push("rooms", "describe", "secret").await;
    let shown = client.assert_push("error", "message").await;
    assert_eq!(shown["error"], "Internal error");
    assert_eq!(shown["code"], "internal_error");
    let id = shown["id"].as_str().expect("an id").to_owned();
    assert_eq!(id.len(), 32);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("error_id={id}")))
        .unwrap_or_else(|| panic!("no log line with error_id={id}: {text}"));
    assert!(line.contains("db-7.internal:5432 refused"), "{line}");
    assert!(!shown.to_string().contains("db-7"), "{shown}");

    client.push("rooms", "panic", json!(null)).await;
    let shown = client.assert_push("error", "message").await;
    assert_eq!(shown["code"], "internal_error");
    let id = shown["id"].as_str().unwrap();
    assert!(logs.text().lines().any(
        |l| l.contains(&format!("error_id={id}")) && l.contains("the database driver panicked")
    ));

    // Data of the wrong shape: the framework's own message, with its code.
    client.push("rooms", "count", "three").await;
    let shown = client.assert_push("error", "message").await;
    assert_eq!(shown["code"], "invalid_data");
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid data for rooms:count:"),
        "{shown}"
    );
    // Protocol errors keep the reference's text, with a code.
    client.push("rooms", "nope", json!(null)).await;
    assert_eq!(
        client.assert_push("error", "message").await,
        json!({"error": "Unknown route: rooms:nope", "code": "unknown_route"})
    );
    client.push_text("{not json").await;
    assert_eq!(
        client.assert_push("error", "message").await,
        json!({"error": "Failed to parse JSON", "code": "invalid_json"})
    );
}

#[tokio::test]
async fn a_route_that_outlives_its_timeout_answers_timeout_with_an_id() {
    let app = TestApp::start(
        Switchboard::builder()
            .without_linked_handlers()
            .handler_timeout(Duration::from_millis(50))
            .route("slow", "op", || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
            // A plain fn route runs on the blocking pool and times out the same way.
            .route("slow", "blocking", || {
                std::thread::sleep(Duration::from_millis(500));
            }),
    )
    .await
    .unwrap();
    let mut client = app.connect_client();
    for action in ["op", "blocking"] {
        client.push("slow", action, json!(null)).await;
        let shown = client.assert_push("error", "message").await;
        assert_eq!(shown["code"], "timeout", "{action}");
        assert_eq!(shown["error"], "Request timed out");
        assert!(shown["id"].is_string());
    }
}

#[tokio::test]
async fn route_layers_apply_to_all_routes_or_a_group_and_a_skip_answers_its_code() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let app = TestApp::start(
        Switchboard::builder()
            .without_linked_handlers()
            // Per client: 2 frames a minute to the routes `report:*` picks.
            .route_layer_for(
                |route| route.starts_with("report:"),
                RateLimitLayer::new(2, Duration::from_secs(60))
                    .per(Key::by(|cx: &RouteContext| cx.client().id().to_string())),
            )
            .route_layer(switchboard::tower::limit::ConcurrencyLimitLayer::new(8))
            .route("report", "make", move |client: Client| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(client.id().to_string());
                    json!({"ok": true})
                }
            })
            .route("chat", "say", || async { json!({"ok": true}) }),
    )
    .await
    .unwrap();
    let mut ada = app.connect_client();
    let mut bob = app.connect_client();
    for _ in 0..2 {
        ada.push("report", "make", json!(null)).await;
        assert_eq!(
            ada.assert_reply("report", "make").await,
            json!({"ok": true})
        );
    }
    ada.push("report", "make", json!(null)).await;
    let shown = ada.assert_push("error", "message").await;
    assert_eq!(shown["code"], "rate_limited");
    assert!(shown["error"].as_str().unwrap().contains("at most 2 calls"));
    // Another client has its own budget; another route is not limited.
    bob.push("report", "make", json!(null)).await;
    assert_eq!(
        bob.assert_reply("report", "make").await,
        json!({"ok": true})
    );
    for _ in 0..5 {
        ada.push("chat", "say", json!(null)).await;
        assert_eq!(ada.assert_reply("chat", "say").await, json!({"ok": true}));
    }
    assert_eq!(order.lock().unwrap().len(), 3);
}
