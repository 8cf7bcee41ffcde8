//! Handlers registered with `#[websocket_subscriber]`: discovery (here and in another crate),
//! ordering together with inline subscribers, and extractors through the attribute.

use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use serde_json::json;
use switchboard::prelude::*;
use switchboard::testing::{Outcome, TestApp};
use switchboard::{BuildError, Error, HandlerSource};

// Link the crate whose handlers must be discovered too.
use switchboard_test_handlers as _;

/// What the `order` handlers ran, for the one test that publishes on `order` (tests run in
/// parallel, so each test observes its own log).
fn log() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

/// What the state handler saw.
fn state_log() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

/// What the predicate handler saw.
fn predicate_log() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

/// Every handler this test binary links, here and in `switchboard-test-handlers`.
const EXPECTED: [&str; 9] = [
    "attr_high",
    "attr_tie_b",
    "attr_tie_a",
    "attr_low",
    "attr_typed",
    "attr_needs_db",
    "attr_predicate",
    "remote_audit",
    "remote_audit_tap",
];

/// Runs first on `order`.
#[websocket_subscriber(channel = "order", priority = 100)]
async fn attr_high(channel: Channel) {
    log().lock().unwrap().push(format!("attr_high@{channel}"));
}

/// Same priority as `attr_tie_a`: the name breaks the tie.
#[websocket_subscriber(channel = "order", priority = 5, name = "attr_tie_b")]
fn tie_b() {
    log().lock().unwrap().push("attr_tie_b".into());
}

#[websocket_subscriber(channel = "order", priority = 5)]
fn attr_tie_a() {
    log().lock().unwrap().push("attr_tie_a".into());
}

#[websocket_subscriber(channels = ["order"], priority = -100)]
async fn attr_low() -> HandlerResult {
    log().lock().unwrap().push("attr_low".into());
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Job {
    id: u64,
}

#[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED)]
async fn attr_typed(Message(job): Message<Job>, ws: WebSocket) {
    ws.broadcast_to_all_clients(Outgoing::new("jobs", "completed", json!({ "id": job.id })));
}

#[derive(Clone)]
struct Db(&'static str);

#[websocket_subscriber(channel = "db")]
fn attr_needs_db(State(db): State<Db>) {
    state_log().lock().unwrap().push(format!("db={}", db.0));
}

fn is_support_room(m: &MatchContext<'_>) -> bool {
    m.channel() == event::CUSTOM && m.message()["room"] == "support"
}

#[websocket_subscriber(match = [is_support_room, regex("^support:"), "support-exact"])]
fn attr_predicate(channel: Channel) {
    predicate_log()
        .lock()
        .unwrap()
        .push(format!("attr_predicate@{channel}"));
}

#[tokio::test]
async fn discovery_across_crates_finds_exactly_the_expected_handlers() {
    let app = Switchboard::builder().state(Db("main")).build().unwrap();
    let mut names: Vec<String> = app.handlers().iter().map(|h| h.name().to_owned()).collect();
    names.sort();
    let mut expected: Vec<String> = EXPECTED.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(names, expected, "backend: {}", switchboard::BACKEND);
    let remote = app
        .handlers()
        .into_iter()
        .find(|h| h.name() == "remote_audit")
        .unwrap();
    assert_eq!(remote.location().module_path, "switchboard_test_handlers");
    assert_eq!(
        remote.description(),
        "Records audit events (defined in another crate)."
    );
    assert_eq!(remote.source(), HandlerSource::Attribute);
    assert!(remote.location().file.ends_with("lib.rs"));
}

#[tokio::test]
async fn attributed_and_inline_handlers_interleave_by_priority() {
    let app = TestApp::start(
        Switchboard::builder()
            .only([
                "attr_high",
                "attr_tie_a",
                "attr_tie_b",
                "attr_low",
                "inline_mid",
                "inline_top",
            ])
            .subscriber(
                Subscriber::channels(["order"])
                    .name("inline_mid")
                    .priority(0)
                    .handle(|| {
                        log().lock().unwrap().push("inline_mid".into());
                    }),
            )
            .subscriber(
                Subscriber::channels(["order"])
                    .name("inline_top")
                    .priority(1000)
                    .handle(|| {
                        log().lock().unwrap().push("inline_top".into());
                    }),
            ),
    )
    .await
    .unwrap();
    log().lock().unwrap().clear();
    let d = app.publish("order", &json!({})).await.unwrap();
    let order = [
        "inline_top",
        "attr_high",
        "attr_tie_a",
        "attr_tie_b",
        "inline_mid",
        "attr_low",
    ];
    assert_eq!(d.handlers(), order);
    let logged = log().lock().unwrap().clone();
    assert_eq!(
        logged,
        [
            "inline_top",
            "attr_high@order",
            "attr_tie_a",
            "attr_tie_b",
            "inline_mid",
            "attr_low"
        ]
    );
}

#[tokio::test]
async fn attribute_extractors_and_rejections() {
    let app = TestApp::start(Switchboard::builder().only(["attr_typed"]))
        .await
        .unwrap();
    let mut client = app.connect_client();
    let d = app
        .publish(event::QUEUE_JOB_COMPLETED, &json!({"id": 9}))
        .await
        .unwrap();
    assert_eq!(d.outcome("attr_typed"), Some(&Outcome::Completed));
    let frame = client
        .next_frame(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        frame,
        json!({"type": "jobs", "action": "completed", "data": {"id": 9}})
    );
    let d = app
        .publish(event::QUEUE_JOB_COMPLETED, &json!({"id": "nine"}))
        .await
        .unwrap();
    assert!(matches!(d.outcome("attr_typed"), Some(Outcome::Rejected(r)) if r.contains("Job")));
}

#[tokio::test]
async fn attribute_state_and_missing_state() {
    let err = Switchboard::builder()
        .only(["attr_needs_db"])
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Build(BuildError::MissingState { ref handler, .. }) if handler == "attr_needs_db"
    ));
    // The error says where the handler is.
    let text = err.to_string();
    assert!(
        text.contains("defined at tests/attribute.rs:"),
        "the error names the handler's file and line: {text}"
    );
    let app = TestApp::start(
        Switchboard::builder()
            .only(["attr_needs_db"])
            .state(Db("pool")),
    )
    .await
    .unwrap();
    app.publish("db", &json!({})).await.unwrap();
    assert_eq!(*state_log().lock().unwrap(), ["db=pool"]);
}

#[tokio::test]
async fn attribute_matcher_array_with_predicate() {
    let app = TestApp::start(Switchboard::builder().only(["attr_predicate"]))
        .await
        .unwrap();
    for (channel, message, runs) in [
        ("custom", json!({"room": "support"}), true),
        ("custom", json!({"room": "sales"}), false),
        ("support:tickets", json!({}), true),
        ("support-exact", json!({}), true),
        ("other", json!({}), false),
    ] {
        let d = app.publish(channel, &message).await.unwrap();
        assert_eq!(
            d.handlers() == ["attr_predicate"],
            runs,
            "{channel} {message}"
        );
    }
    assert_eq!(
        *predicate_log().lock().unwrap(),
        [
            "attr_predicate@custom",
            "attr_predicate@support:tickets",
            "attr_predicate@support-exact"
        ]
    );
}

#[tokio::test]
async fn handlers_from_another_crate_run() {
    let app = TestApp::start(Switchboard::builder().only(["remote_audit", "remote_audit_tap"]))
        .await
        .unwrap();
    let d = app
        .publish("audit:event", &json!({"actor": "ada"}))
        .await
        .unwrap();
    // remote_audit publishes `audit:recorded` including the sender, which the tap sees too.
    assert_eq!(
        d.handlers(),
        ["remote_audit", "remote_audit_tap", "remote_audit_tap"]
    );
    assert_eq!(app.published()[0].channel, "audit:recorded");
}
