//! The public test kit on the server: in-process clients that push frames and assert replies and
//! pushes, and test workers on one bus that see each other's clients.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::prelude::*;
use switchboard::testing::TestApp;

fn app() -> switchboard::Builder {
    Switchboard::builder().without_linked_handlers().route(
        "echo",
        "say",
        |Data(text): Data<String>, ws: WebSocket| async move {
            ws.broadcast_to_all_clients(Outgoing::new("echo", "heard", &text));
            json!({"said": text})
        },
    )
}

#[tokio::test]
async fn a_test_client_pushes_frames_and_asserts_replies_pushes_and_errors() {
    let app = TestApp::start(app()).await.unwrap();
    let mut speaker = app.connect_client();
    let mut listener = app.connect_client();
    speaker.push("echo", "say", "hi").await;
    assert_eq!(
        speaker.assert_reply("echo", "say").await,
        json!({"said": "hi"})
    );
    assert_eq!(listener.assert_push("echo", "heard").await, "hi");
    listener.refute_push("echo", "say").await;
    // What a client sees of bad input: the reference's error frames.
    speaker.push_text("not json").await;
    assert_eq!(
        speaker.assert_push("error", "message").await["error"],
        "Failed to parse JSON"
    );
    speaker.push("nobody", "home", json!(null)).await;
    assert_eq!(
        speaker.assert_push("error", "message").await["error"],
        "Unknown route: nobody:home"
    );
    // Rooms through the system actions.
    listener
        .push("system", "joinRoom", json!({"roomName": "lobby"}))
        .await;
    assert_eq!(
        listener.assert_reply("system", "joinRoom").await["success"],
        true
    );
    assert_eq!(
        app.running().websocket().room_members("lobby"),
        [listener.id().clone()]
    );
}

#[tokio::test]
#[should_panic(expected = "expected a push echo:heard")]
async fn assert_push_fails_when_the_frame_never_comes() {
    let app = TestApp::start(app()).await.unwrap();
    let mut client = app.connect_client();
    client.assert_push("echo", "heard").await;
}

#[tokio::test]
#[should_panic(expected = "expected no echo:heard frame")]
async fn refute_push_fails_when_the_frame_comes() {
    let app = TestApp::start(app()).await.unwrap();
    let mut speaker = app.connect_client();
    speaker.push("echo", "say", "hi").await;
    speaker.refute_push("echo", "heard").await;
}

#[tokio::test]
async fn test_workers_on_one_bus_see_each_other_s_clients_and_send_to_them() {
    let a = TestApp::start(app()).await.unwrap();
    let b = TestApp::start_on(a.bus(), app()).await.unwrap();
    let mut on_a = a.connect_client();
    let ws_b = b.running().websocket();
    let start = Instant::now();
    while !ws_b.is_connected(on_a.id()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b never listed a's client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ws_b
        .send_to_client(on_a.id(), Outgoing::new("dm", "hello", 1))
        .await
        .unwrap());
    assert_eq!(on_a.assert_push("dm", "hello").await, 1);
    // The send went through a's worker channel, which b published on.
    let direct = format!("switchboard.worker.{}", a.worker_id());
    assert_eq!(b.published_on(&direct).len(), 1);
}

/// A burst larger than a feed message carries (256 changes) reaches the other workers through a
/// read of the table.
#[tokio::test]
async fn a_burst_of_connects_reaches_the_other_worker() {
    let a = TestApp::start(app()).await.unwrap();
    let b = TestApp::start_on(a.bus(), app()).await.unwrap();
    // On this single-threaded runtime the 300 connects happen before the writer runs: one batch.
    let clients: Vec<_> = (0..300).map(|_| a.connect_client()).collect();
    let ws_b = b.running().websocket();
    let start = Instant::now();
    while ws_b.cluster_client_count() != 300 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b lists {} of 300",
            ws_b.cluster_client_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(clients);
    while ws_b.cluster_client_count() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b still lists clients"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Workers of one application on one Redis (the server at `REDIS_URL`, else the kit's mock): what
/// crosses workers is seen right after `settle`, with no sleep and no polling.
#[tokio::test]
async fn a_test_cluster_sees_across_workers_right_after_settle() {
    use switchboard::testing::TestCluster;
    let cluster = TestCluster::start(3, |_| {
        app()
            .subscriber(Subscriber::channels(["orders"]).name("audit").handle(
                |Message(m): Message, publisher: Publisher| async move {
                    // A message that triggers another one, on every worker.
                    if m["id"] == 1 {
                        publisher
                            .publish_including_sender("orders:audited", &json!({"id": 1}))
                            .await?;
                    }
                    Ok::<_, switchboard::BoxError>(())
                },
            ))
            .subscriber(
                Subscriber::channels(["orders:audited"])
                    .name("audited")
                    .handle(|| async {}),
            )
    })
    .await
    .unwrap();

    // An outsider's message runs on every worker, and what it triggered too (3 × 3 `audited`).
    let dispatches = cluster.publish("orders", &json!({"id": 1})).await.unwrap();
    assert_eq!(dispatches.len(), 3);
    for d in &dispatches {
        let mut handlers = d.handlers();
        handlers.sort_unstable();
        assert_eq!(
            handlers,
            ["audit", "audited", "audited", "audited"],
            "{d:?}"
        );
    }

    // A client of worker 0 joins a room: worker 2 sees it at once after `settle`.
    let mut ada = cluster.worker(0).connect_client();
    ada.push("system", "joinRoom", json!({"roomName": "lobby"}))
        .await;
    assert_eq!(
        ada.assert_reply("system", "joinRoom").await["success"],
        true
    );
    cluster.settle().await;
    let far = cluster.worker(2).running().websocket();
    assert!(far.is_connected(ada.id()));
    assert_eq!(far.room_members("lobby"), [ada.id().clone()]);

    // Sends from another worker reach it once.
    assert!(far
        .send_to_client(ada.id(), Outgoing::new("direct", "hello", 1))
        .await
        .unwrap());
    far.broadcast_to_room_everywhere("lobby", Outgoing::new("room", "hello", 2))
        .await
        .unwrap();
    cluster.settle().await;
    assert_eq!(ada.assert_push("direct", "hello").await, json!(1));
    assert_eq!(ada.assert_push("room", "hello").await, json!(2));
    ada.refute_push("direct", "hello").await;

    // It leaves: gone everywhere after `settle`.
    drop(ada);
    cluster.settle().await;
    for worker in cluster.workers() {
        assert_eq!(worker.running().websocket().cluster_client_count(), 0);
    }
    cluster.shutdown().await;
}
