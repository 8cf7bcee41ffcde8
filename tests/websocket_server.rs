//! The WebSocket server against real tokio-tungstenite clients on 127.0.0.1:0: auth, rooms,
//! local and cluster sends, client routes, error frames, limits, timeouts and shutdown.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use support::*;
use switchboard::prelude::*;
use switchboard::{DisconnectReason, JwtSecret, MemoryBroker, ServerStats};
use tokio::sync::mpsc;

fn with_secret(builder: switchboard::Builder) -> switchboard::Builder {
    builder.websocket(WebSocketConfig::default().jwt_secret(JwtSecret::raw(SECRET)))
}

/// Asserts that `client` receives `expected` next, and nothing before it: used after a send that
/// must not have reached the client, followed by a marker that reaches everyone.
async fn next_is(client: &mut support::SocketClient, expected: &Value) {
    let got = client.next_json().await;
    assert_eq!(
        &got, expected,
        "client received something it should not have"
    );
}

fn marker(n: u32) -> Outgoing {
    Outgoing::new("test", "marker", json!(n))
}

fn marker_json(n: u32) -> Value {
    json!({"type": "test", "action": "marker", "data": n})
}

#[tokio::test]
async fn authenticated_client_gets_the_auth_frame() {
    let (builder, _) = observed(with_secret(base()));
    let server = Server::start(builder).await;
    let (client, auth) = server
        .client_with_token(&token(json!({"sub": "42", "role": "admin"})))
        .await;
    assert_eq!(
        auth,
        json!({"type": "auth", "action": "authenticated", "data": {"userId": 42, "message": "Authentication successful"}})
    );
    let info = server.ws().client(client.id()).unwrap();
    assert!(info.local);
    let user = info.user.unwrap();
    assert_eq!(user.id().as_str(), "42");
    assert_eq!(user.claim("role"), Some(&json!("admin")));

    let (_, auth) = server
        .client_with_token(&token(json!({"sub": "ann"})))
        .await;
    assert_eq!(
        auth["data"]["userId"], "ann",
        "a non-numeric subject stays a string"
    );

    // Anonymous clients are allowed and get no auth frame (the first frame is the welcome).
    let anonymous = server.client().await;
    assert!(server.ws().client(anonymous.id()).unwrap().user.is_none());
}

#[tokio::test]
async fn base64url_secret_as_in_the_reference() {
    // "test-secret" in base64url.
    let builder = base().websocket(
        WebSocketConfig::default().jwt_secret(JwtSecret::base64url("dGVzdC1zZWNyZXQ").unwrap()),
    );
    let (builder, _) = observed(builder);
    let server = Server::start(builder).await;
    let (_, auth) = server.client_with_token(&token(json!({"sub": 7}))).await;
    assert_eq!(auth["data"]["userId"], 7);
}

async fn status_of(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected connection error: {other}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let server = Server::start(with_secret(base())).await;
    let expired = token(json!({"sub": "1", "exp": now_secs() - 60}));
    let not_yet = token(json!({"sub": "1", "nbf": now_secs() + 600}));
    let wrongly_signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "1"}),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    for bad in ["garbage", "a.b.c", &expired, &not_yet, &wrongly_signed] {
        assert_eq!(status_of(&server.url(Some(bad))).await, 401, "token {bad}");
    }
    assert_eq!(
        status_of(&server.url(Some(&token(json!({"sub": "1"}))))).await,
        101
    );
    assert_eq!(
        status_of(&server.url(None)).await,
        101,
        "no token: anonymous"
    );
    assert_eq!(server.running.websocket().stats().auth_rejections, 5);

    // Only `/ws`, exactly.
    for path in ["/wsx", "/ws/", "/", "/websocket"] {
        assert_eq!(
            status_of(&format!("ws://{}{path}", server.addr)).await,
            404,
            "path {path}"
        );
    }

    // Auth required: no token is refused too.
    let server = Server::start(
        base().websocket(
            WebSocketConfig::default()
                .jwt_secret(JwtSecret::raw(SECRET))
                .require_auth(true),
        ),
    )
    .await;
    assert_eq!(status_of(&server.url(None)).await, 401);
    assert_eq!(
        status_of(&server.url(Some(&token(json!({"sub": "1"}))))).await,
        101
    );

    // No secret configured: a presented token cannot be verified.
    let server = Server::start(base()).await;
    assert_eq!(
        status_of(&server.url(Some(&token(json!({"sub": "1"}))))).await,
        401
    );
}

#[tokio::test]
async fn join_leave_and_room_broadcast() {
    let (builder, _) = observed(base());
    let server = Server::start(builder).await;
    let ws = server.ws();
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;

    for client in [&mut a, &mut b] {
        client
            .send_json(
                json!({"type": "system", "action": "joinRoom", "data": {"roomName": "support"}}),
            )
            .await;
        let reply = client.next_json().await;
        assert_eq!(reply["type"], "system");
        assert_eq!(reply["action"], "joinRoom");
        assert_eq!(reply["response"]["success"], true);
        assert_eq!(
            reply["response"]["message"],
            "Successfully joined room: support"
        );
        assert_eq!(reply["response"]["data"]["roomName"], "support");
        // The reply comes after the join happened.
        assert!(ws.rooms_of(client.id()).contains(&"support".to_owned()));
    }
    let mut members = ws.room_members("support");
    members.sort();
    let mut expected = vec![a.id().clone(), b.id().clone()];
    expected.sort();
    assert_eq!(members, expected);

    // Members get it, the excluded member and non-members do not.
    let sent = ws.broadcast_to_room_except(
        "support",
        Outgoing::new("chat", "message", json!({"text": "hi"})),
        a.id(),
    );
    assert_eq!(sent, 1);
    assert_eq!(ws.broadcast_to_room("support", marker(1)), 2);
    ws.broadcast_to_all_clients(marker(2));
    assert_eq!(
        b.next_json().await,
        json!({"type": "chat", "action": "message", "data": {"text": "hi"}})
    );
    next_is(&mut b, &marker_json(1)).await;
    next_is(&mut b, &marker_json(2)).await;
    next_is(&mut a, &marker_json(1)).await;
    next_is(&mut a, &marker_json(2)).await;
    next_is(&mut c, &marker_json(2)).await;

    // Missing room name.
    c.send_json(json!({"type": "system", "action": "joinRoom", "data": {}}))
        .await;
    let reply = c.next_json().await;
    assert_eq!(reply["response"]["success"], false);
    assert_eq!(reply["response"]["error"], "Room name is required");

    // Leave: the push, then the reply; the room is removed when its last member leaves.
    for client in [&mut a, &mut b] {
        client
            .send_json(
                json!({"type": "system", "action": "leaveRoom", "data": {"roomName": "support"}}),
            )
            .await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "user", "action": "leftRoom", "data": {"roomName": "support"}})
        );
        let reply = client.next_json().await;
        assert_eq!(reply["action"], "leaveRoom");
        assert_eq!(reply["response"]["success"], true);
        assert_eq!(
            reply["response"]["message"],
            "Successfully left room: support"
        );
    }
    assert!(
        ws.rooms().is_empty(),
        "the last member leaving removes the room"
    );
    assert_eq!(ws.broadcast_to_room("support", marker(3)), 0);

    // Leaving a room one is not in says so.
    a.send_json(json!({"type": "system", "action": "leaveRoom", "data": {"roomName": "support"}}))
        .await;
    let reply = a.next_json().await;
    assert_eq!(reply["response"]["success"], false);

    // The server API joins and leaves too.
    assert!(ws.join_room(c.id(), "vip").await.unwrap());
    assert!(
        !ws.join_room(c.id(), "vip").await.unwrap(),
        "already a member"
    );
    assert_eq!(ws.broadcast_to_room("vip", marker(4)), 1);
    next_is(&mut c, &marker_json(4)).await;
    assert!(ws.leave_room(c.id(), "vip").await.unwrap());
    assert!(matches!(
        ws.join_room(
            &client_id_from_str("0123456789abcdef0123456789abcdef"),
            "vip"
        )
        .await,
        Err(switchboard::RoomError::NotLocal(_))
    ));

    // A disconnected client leaves its rooms.
    ws.join_room(a.id(), "gone").await.unwrap();
    a.close().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ws.rooms().contains(&"gone".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room not cleaned up"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn join(client: &mut support::SocketClient, room: &str) {
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": room}}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["response"]["success"], true, "{reply}");
}

#[tokio::test]
async fn multi_room_policy() {
    let (builder, _) = observed(base());
    let server = Server::start(builder).await;
    let mut a = server.client().await;
    join(&mut a, "r1").await;
    join(&mut a, "r2").await;
    assert_eq!(server.ws().rooms_of(a.id()), ["r1", "r2"]);
    assert_eq!(server.ws().rooms(), ["r1", "r2"]);
}

#[tokio::test]
async fn single_room_policy() {
    let (builder, _) =
        observed(base().websocket(WebSocketConfig::default().room_policy(RoomPolicy::Single)));
    let server = Server::start(builder).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    join(&mut a, "r1").await;
    join(&mut b, "r1").await;
    join(&mut a, "r2").await;
    assert_eq!(server.ws().rooms_of(a.id()), ["r2"]);
    assert_eq!(server.ws().room_members("r1"), [b.id().clone()]);
    assert_eq!(server.ws().broadcast_to_room("r1", marker(1)), 1);
    next_is(&mut b, &marker_json(1)).await;
}

#[tokio::test]
async fn broadcast_to_users_and_to_one_client() {
    let (builder, _) = observed(with_secret(base()));
    let server = Server::start(builder).await;
    let ws = server.ws();
    let (mut u7, _) = server.client_with_token(&token(json!({"sub": "7"}))).await;
    let (mut ann, _) = server
        .client_with_token(&token(json!({"sub": "ann"})))
        .await;
    let mut anonymous = server.client().await;

    assert_eq!(ws.broadcast_to_users([7], Outgoing::new("dm", "x", 1)), 1);
    assert_eq!(
        ws.broadcast_to_users(["ann", "nobody"], Outgoing::new("dm", "x", 2)),
        1
    );
    assert_eq!(
        ws.broadcast_to_users(Vec::<String>::new(), Outgoing::new("dm", "x", 3)),
        0
    );
    assert!(ws.broadcast_to_client(anonymous.id(), Outgoing::new("dm", "x", 4)));
    assert!(!ws.broadcast_to_client(
        &client_id_from_str("ffffffffffffffffffffffffffffffff"),
        marker(0)
    ));
    // Only clients with an `admin` claim.
    let (mut admin, _) = server
        .client_with_token(&token(json!({"sub": "8", "role": "admin"})))
        .await;
    let admins = ws.broadcast_to_all_clients_where(Outgoing::new("dm", "x", 5), |c| {
        c.claims().is_some_and(|claims| claims["role"] == "admin")
    });
    assert_eq!(admins, 1);
    assert_eq!(ws.broadcast_to_all_clients_except(marker(9), admin.id()), 3);
    ws.broadcast_to_client(admin.id(), marker(9));

    next_is(&mut u7, &json!({"type": "dm", "action": "x", "data": 1})).await;
    next_is(&mut u7, &marker_json(9)).await;
    next_is(&mut ann, &json!({"type": "dm", "action": "x", "data": 2})).await;
    next_is(&mut ann, &marker_json(9)).await;
    next_is(
        &mut anonymous,
        &json!({"type": "dm", "action": "x", "data": 4}),
    )
    .await;
    next_is(&mut anonymous, &marker_json(9)).await;
    next_is(&mut admin, &json!({"type": "dm", "action": "x", "data": 5})).await;
    next_is(&mut admin, &marker_json(9)).await;
}

#[tokio::test]
async fn send_message_to_all_reaches_every_worker_without_envelope_fields() {
    let bus = MemoryBroker::new();
    let (builder_a, _) = observed(base().broker(bus.clone()));
    let (builder_b, _) = observed(base().broker(bus.clone()));
    let a = Server::start(builder_a).await;
    let b = Server::start(builder_b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;

    a.ws()
        .send_message_to_all(Outgoing::new(
            "news",
            "flash",
            json!({"text": "hello cluster"}),
        ))
        .await
        .unwrap();
    let expected = "{\"type\":\"news\",\"action\":\"flash\",\"data\":{\"text\":\"hello cluster\"}}";
    assert_eq!(
        on_a.next_text().await,
        expected,
        "the sender's own clients are included"
    );
    assert_eq!(on_b.next_text().await, expected);

    // Every worker knows the cluster's clients.
    a.running.wait_idle().await;
    b.running.wait_idle().await;
    assert_eq!(a.ws().cluster_client_count(), 2);
    assert_eq!(b.ws().cluster_client_count(), 2);
    let remote = b.ws().client(on_a.id()).unwrap();
    assert!(!remote.local);
    assert_eq!(remote.worker_id, a.running.worker_id());

    // Rooms are mirrored; a cluster-wide room broadcast reaches members on every worker.
    join(&mut on_a, "lobby").await;
    join(&mut on_b, "lobby").await;
    a.running.wait_idle().await;
    b.running.wait_idle().await;
    assert_eq!(b.ws().room_members("lobby").len(), 2);
    b.ws()
        .broadcast_to_room_everywhere_except("lobby", marker(1), on_b.id())
        .await
        .unwrap();
    b.ws()
        .broadcast_to_room_everywhere("lobby", marker(2))
        .await
        .unwrap();
    next_is(&mut on_a, &marker_json(1)).await;
    next_is(&mut on_a, &marker_json(2)).await;
    next_is(&mut on_b, &marker_json(2)).await;

    // A leave is mirrored with the `room` key, and a disconnect everywhere.
    on_a.send_json(json!({"type": "system", "action": "leaveRoom", "data": {"roomName": "lobby"}}))
        .await;
    on_a.next_json().await;
    on_a.next_json().await;
    b.running.wait_idle().await;
    assert_eq!(b.ws().room_members("lobby"), [on_b.id().clone()]);

    // disconnectClient closes a client wherever it is connected.
    b.ws().disconnect_client(on_a.id()).await.unwrap();
    assert_eq!(
        on_a.ending().await,
        Ending::Close(Some(1000), "disconnected by the server".into())
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while b.ws().is_connected(on_a.id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clientDisconnected not mirrored"
        );
        b.running.wait_idle().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn subscriber_handlers_broadcast_through_the_websocket_extractor() {
    let (builder, _) = observed(base().subscriber(
        Subscriber::channels(["jobs:done"]).name("relay").handle(
            |Message(m): Message, ws: WebSocket| {
                ws.broadcast_to_all_clients(Outgoing::new("jobs", "completed", m));
            },
        ),
    ));
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    server
        .running
        .publisher()
        .publish_including_sender("jobs:done", &json!({"id": 9}))
        .await
        .unwrap();
    assert_eq!(
        client.next_json().await,
        json!({"type": "jobs", "action": "completed", "data": {"id": 9}}),
        "no envelope field reaches the client"
    );
}

#[derive(Debug, Deserialize)]
struct Greet {
    name: String,
}

#[tokio::test]
async fn client_routes_with_typed_data_and_replies() {
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (m, e) = (messages.clone(), errors.clone());
    #[derive(Clone)]
    struct Greeting(&'static str);
    let (builder, _) = observed(
        base()
            .state(Greeting("hello"))
            .route(
                "hello",
                "greet",
                |client: Client, Data(g): Data<Greet>, State(greeting): State<Greeting>| async move {
                    Ok::<_, std::convert::Infallible>(json!({
                        "text": format!("{} {}", greeting.0, g.name),
                        "clientId": client.id(),
                    }))
                },
            )
            .route("hello", "fail", || async { Err::<(), _>("the handler failed") })
            .route("hello", "quiet", |ws: WebSocket, client: Client| {
                ws.broadcast_to_client(client.id(), marker(5));
            })
            .route("hello", "panic", || -> Value { panic!("boom") })
            .on_message(move |_, msg| m.lock().unwrap().push(format!("{}:{}", msg.kind(), msg.action())))
            .on_error(move |_, error| e.lock().unwrap().push(error.to_owned())),
    );
    let server = Server::start(builder).await;
    let mut client = server.client().await;

    client
        .send_json(json!({"type": "hello", "action": "greet", "data": {"name": "Ada"}}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "hello", "action": "greet", "response": {"text": "hello Ada", "clientId": client.id()}})
    );

    client
        .send_json(json!({"type": "hello", "action": "greet", "data": {"nom": "Ada"}}))
        .await;
    let error = client.next_json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["action"], "message");
    assert!(
        error["data"]["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid data for hello:greet"),
        "{error}"
    );

    client
        .send_json(json!({"type": "hello", "action": "fail"}))
        .await;
    // The handler's own error is not shown: a generic error with the id of the log line.
    let error = client.next_json().await;
    assert_eq!(error["data"]["error"], "Internal error", "{error}");
    assert_eq!(error["data"]["code"], "internal_error", "{error}");
    assert_eq!(
        error["data"]["id"].as_str().map(str::len),
        Some(32),
        "{error}"
    );

    // `()` means no reply: the marker sent by the handler is the next frame.
    client
        .send_json(json!({"type": "hello", "action": "quiet"}))
        .await;
    next_is(&mut client, &marker_json(5)).await;

    client
        .send_json(json!({"type": "hello", "action": "panic"}))
        .await;
    // A panic is not shown either.
    let error = client.next_json().await;
    assert_eq!(error["data"]["error"], "Internal error", "{error}");
    assert_eq!(error["data"]["code"], "internal_error", "{error}");
    assert!(error["data"]["id"].is_string(), "{error}");

    client
        .send_json(json!({"type": "hello", "action": "nope"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "error", "action": "message", "data": {"error": "Unknown route: hello:nope", "code": "unknown_route"}})
    );

    assert_eq!(
        *messages.lock().unwrap(),
        [
            "hello:greet",
            "hello:greet",
            "hello:fail",
            "hello:quiet",
            "hello:panic",
            "hello:nope"
        ]
    );
    assert_eq!(errors.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn route_build_errors() {
    let err = base()
        .route("a", "b", || ())
        .route("a", "b", || ())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("a:b"), "{err}");
    let err = base()
        .route("system", "joinRoom", || ())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("system:joinRoom"), "{err}");
    #[derive(Clone)]
    struct Db;
    let err = base()
        .route("a", "b", |State(_): State<Db>| ())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("route a:b"), "{err}");
}

#[tokio::test]
async fn malformed_client_frames_get_the_reference_error_frames() {
    let (builder, _) = observed(base());
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    let cases = [
        ("not json", "Failed to parse JSON", "invalid_json"),
        ("null", "Invalid WebSocket message", "invalid_message"),
        (
            "{\"action\":\"x\"}",
            "Missing WebSocket message type",
            "missing_type",
        ),
        (
            "{\"type\":\"\",\"action\":\"x\"}",
            "Missing WebSocket message type",
            "missing_type",
        ),
        ("[1,2]", "Missing WebSocket message type", "missing_type"),
        (
            "{\"type\":\"x\"}",
            "Missing WebSocket message action",
            "missing_action",
        ),
    ];
    // The reference's error frames, with a stable code besides the text.
    for (text, error, code) in cases {
        client.send_text(text).await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "error", "action": "message", "data": {"error": error, "code": code}}),
            "for {text}"
        );
    }
    let stats: ServerStats = server.running.websocket().stats();
    assert_eq!(stats.client_errors, 6);
    assert_eq!(stats.client_messages, 6);
}

#[tokio::test]
async fn message_error_from_another_worker_reaches_the_local_client() {
    let bus = MemoryBroker::new();
    let (builder, _) = observed(base().broker(bus.clone()));
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    let other = base().broker(bus).build().unwrap().start().await.unwrap();
    other
        .publisher()
        .publish(
            "messageError",
            &json!({"clientId": client.id(), "error": "remote failure"}),
        )
        .await
        .unwrap();
    assert_eq!(
        client.next_json().await,
        json!({"type": "error", "action": "message", "data": {"error": "remote failure"}})
    );
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let (builder, mut gone) =
        observed(base().websocket(WebSocketConfig::default().max_message_size(1024)));
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    client.send_text(&"x".repeat(900)).await; // under the limit: just a parse error
    assert_eq!(
        client.next_json().await["data"]["error"],
        "Failed to parse JSON"
    );
    client.send_text(&"x".repeat(4096)).await;
    assert_eq!(
        client.ending().await,
        Ending::Close(Some(1009), "message too big".into())
    );
    let (id, reason) = next_disconnect(&mut gone).await;
    assert_eq!(&id, client.id());
    assert_eq!(reason, DisconnectReason::MessageTooBig);
    assert_eq!(
        server
            .running
            .websocket()
            .stats()
            .oversized_message_disconnects,
        1
    );
}

#[tokio::test]
async fn idle_clients_are_disconnected_and_active_ones_are_not() {
    let (builder, mut gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .idle_timeout(Some(Duration::from_millis(1500)))
                .ping_interval(Some(Duration::from_millis(100))),
        ),
    );
    let server = Server::start(builder).await;
    let mut idle = server.client().await;
    let mut active = server.client().await;
    // The active client sends a message every 250 ms (pongs do not count as activity).
    let active_id = active.id().clone();
    let keep_alive = tokio::spawn(async move {
        loop {
            active.send_json(json!({"type": "x", "action": "y"})).await;
            let _ = active.next_json().await; // the unknown-route error frame
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    assert_eq!(
        idle.ending().await,
        Ending::Close(Some(1000), "inactive".into())
    );
    let (id, reason) = next_disconnect(&mut gone).await;
    assert_eq!((&id, reason), (idle.id(), DisconnectReason::Idle));
    assert!(server.ws().is_local(&active_id), "the active client stays");
    keep_alive.abort();
    assert_eq!(server.running.websocket().stats().idle_disconnects, 1);
}

#[tokio::test]
async fn clients_that_stop_answering_pings_are_disconnected() {
    let (builder, mut gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .ping_interval(Some(Duration::from_millis(200)))
                .pong_timeout(Duration::from_millis(800)),
        ),
    );
    let server = Server::start(builder).await;
    let deaf = server.client().await; // never reads again, so never answers a ping
    let mut live = server.client().await;
    let live_id = live.id().clone();
    let reader = tokio::spawn(async move { live.ending().await });
    let (id, reason) = next_disconnect(&mut gone).await;
    assert_eq!(
        (&id, reason),
        (deaf.id(), DisconnectReason::HeartbeatTimeout)
    );
    assert!(
        server.ws().is_local(&live_id),
        "a client that answers pings stays"
    );
    assert_eq!(server.running.websocket().stats().heartbeat_timeouts, 1);
    reader.abort();
}

#[tokio::test]
async fn lifecycle_hooks_are_called() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (l1, l2) = (log.clone(), log.clone());
    let builder = base()
        .on_connect(move |client, _| l1.lock().unwrap().push(format!("connect {}", client.id())))
        .on_disconnect(move |client, _, reason| {
            l2.lock()
                .unwrap()
                .push(format!("disconnect {} {reason}", client.id()));
        });
    let (builder, mut gone) = observed(builder);
    let server = Server::start(builder).await;
    let client = server.client().await;
    let id = client.id().clone();
    client.close().await;
    next_disconnect(&mut gone).await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            format!("connect {id}"),
            format!("disconnect {id} closed by the client (1000)")
        ]
    );
    let stats = server.running.websocket().stats();
    assert_eq!(
        (stats.clients_connected, stats.clients_disconnected),
        (1, 1)
    );
}

#[tokio::test]
async fn the_router_mounts_into_a_user_app() {
    let running = base().build().unwrap().start().await.unwrap();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .merge(running.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut client = support::SocketClient::connect(&format!("ws://{addr}/ws")).await;
    client.send_text("null").await;
    assert_eq!(
        client.next_json().await["data"]["error"],
        "Invalid WebSocket message"
    );
    assert_eq!(running.websocket().client_count(), 1);
    let ending = tokio::spawn(async move { client.ending().await });
    running.shutdown().await;
    assert_eq!(
        ending.await.unwrap(),
        Ending::Close(Some(1001), "server shutting down".into())
    );
    server.abort();
}

#[tokio::test]
async fn shutdown_waits_for_a_running_handler_then_closes_with_1001() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let (builder, _) = observed(
        base()
            .shutdown_grace(DEADLINE)
            .route("slow", "work", move || {
                let started = started_tx.clone();
                let gate = gate.clone();
                async move {
                    started.send(()).unwrap();
                    let _permit = gate.acquire().await.unwrap();
                    Ok::<_, std::convert::Infallible>("done")
                }
            }),
    );
    let server = Server::start(builder).await;
    let addr = server.addr;
    let mut busy = server.client().await;
    let mut idle = server.client().await;
    busy.send_json(json!({"type": "slow", "action": "work"}))
        .await;
    tokio::time::timeout(DEADLINE, started.recv())
        .await
        .unwrap()
        .unwrap();

    let shutdown = tokio::spawn(server.running.shutdown());
    // Wait until the server stopped accepting: shutdown has begun.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Err(_) => break,
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // The idle client is closed at once; the busy one waits for its handler.
    assert_eq!(
        idle.ending().await,
        Ending::Close(Some(1001), "server shutting down".into())
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the running handler"
    );
    release.add_permits(1);
    assert_eq!(
        busy.next_json().await,
        json!({"type": "slow", "action": "work", "response": "done"}),
        "the handler's reply is sent before the socket closes"
    );
    assert_eq!(
        busy.ending().await,
        Ending::Close(Some(1001), "server shutting down".into())
    );
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn in_process_test_clients_still_work() {
    let app = switchboard::testing::TestApp::start(base()).await.unwrap();
    let mut client = app.connect_client();
    app.running()
        .websocket()
        .broadcast_to_all_clients(marker(1));
    assert_eq!(client.next_frame(DEADLINE).await.unwrap(), marker_json(1));
    app.publish_as_self(
        "sendMessageToAll",
        &json!({"type": "a", "action": "b", "data": 1}),
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        client.received(),
        [json!({"type": "a", "action": "b", "data": 1})],
        "no envelope field"
    );
}

/// What `#[websocket_route]` will generate: a `const` descriptor registered at link time.
fn linked_ping(cx: switchboard::__private::RouteContext) -> switchboard::__private::RouteFuture {
    use switchboard::__private::{FromContext, HandlerFailure, IntoReply};
    Box::pin(async move {
        let client = Client::from_context(&cx).map_err(|e| HandlerFailure::Rejected(e.into()))?;
        let Data(n): Data<u32> =
            Data::from_context(&cx).map_err(|e| HandlerFailure::Rejected(e.into()))?;
        Ok::<_, std::convert::Infallible>(json!({"pong": n + 1, "clientId": client.id()}))
            .into_reply()
            .map_err(HandlerFailure::Failed)
    })
}

switchboard::__private::register_route!(
    LINKED_PING,
    switchboard::__private::RouteRegistration {
        kind: "linked",
        action: "ping",
        name: "linked_ping",
        description: "answers pings",
        module_path: module_path!(),
        file: file!(),
        line: line!(),
        handler: linked_ping,
        requirements: |_| {},
        timeout: None,
        layers: &[],
    }
);

#[tokio::test]
async fn linked_routes_are_collected_unless_left_out() {
    let (builder, _) = observed(Switchboard::builder().only(Vec::<String>::new()));
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "linked", "action": "ping", "data": 41}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "linked", "action": "ping", "response": {"pong": 42, "clientId": client.id()}})
    );

    let (builder, _) = observed(base());
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "linked", "action": "ping", "data": 41}))
        .await;
    assert_eq!(
        client.next_json().await["data"]["error"],
        "Unknown route: linked:ping"
    );
}

/// A port already taken: `serve` fails with an error that names the address.
#[tokio::test]
async fn a_bind_error_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let app = base().build().unwrap();
    let error = app
        .serve_with_shutdown(addr, async {})
        .await
        .expect_err("the port is taken");
    let switchboard::Error::Io(error) = error else {
        panic!("expected an I/O error, got {error}");
    };
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        error
            .to_string()
            .contains(&format!("cannot listen on {addr}")),
        "{error}"
    );
}

/// Without the WebSocket server (`without_plugin`), a handler that takes `WebSocket` is refused
/// at `build()` with an error that says what to do; without such a handler the application
/// builds, subscribes to nothing for the server, and has no server handle.
#[tokio::test]
async fn without_the_server_a_websocket_handler_is_a_build_error() {
    let error = base()
        .without_plugin::<switchboard::WebSocketServer>()
        .subscriber(
            Subscriber::channels(["a"])
                .name("needs_ws")
                .handle(|_ws: WebSocket| {}),
        )
        .build()
        .expect_err("no server, no WebSocket");
    let switchboard::Error::Build(switchboard::BuildError::MissingProvided {
        handler, fix, ..
    }) = &error
    else {
        panic!("expected MissingProvided, got {error}");
    };
    assert_eq!(handler, "needs_ws");
    assert!(fix.contains("without_plugin"), "{error}");

    let running = base()
        .without_plugin::<switchboard::WebSocketServer>()
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(running.plugin::<switchboard::WebSocketServer>().is_none());
    assert!(running
        .resources()
        .state::<switchboard::WebSocket>()
        .is_none());
    running.shutdown().await;
}
