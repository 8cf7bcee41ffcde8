//! The server under pressure: a burst reaches every healthy client; a peer that floods pings,
//! never sends its request, or asks for a long route cannot hurt the server or the client's other
//! frames; Redis being unreachable never slows a connect or a room join. (Its own test binary, so
//! its load does not disturb the other server tests.)

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use switchboard::broker::RedisBroker;
use switchboard::prelude::*;
use switchboard::testing::MockRedis;
use switchboard::DisconnectReason;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// 200 clients reading as fast as they can; 2,000 frames sent at once (queued for every client
/// before any writer runs): every client gets every frame, in order, and nobody is cut. With the
/// old bound of 1,024 queued frames per client, every client was closed with 1013 in this burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_client_in_order() {
    const CLIENTS: usize = 200;
    const FRAMES: usize = 2_000;
    let (builder, _gone) =
        observed(base().websocket(WebSocketConfig::default().ping_interval(None)));
    let server = Server::start(builder).await;
    let mut readers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = server.client().await;
        readers.push(tokio::spawn(async move {
            for expected in 0..FRAMES {
                let frame = client.next_json().await;
                assert_eq!(frame["data"]["n"], expected, "frames lost or out of order");
            }
            client
        }));
    }
    // At once: queued for every client without yielding, faster than any writer drains.
    let ws = server.ws();
    for n in 0..FRAMES {
        ws.broadcast_to_all_clients(Outgoing::new("burst", "n", json!({ "n": n })));
    }
    for reader in readers {
        let client = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every frame within a minute")
            .expect("the reader got every frame in order");
        client.close().await;
    }
    assert_eq!(
        server.running.websocket().stats().slow_consumer_disconnects,
        0
    );
    server.running.shutdown().await;
}

/// A client that sends pings and never reads: its pongs cannot leave, the server's write buffer
/// stays within its bound, and the client is cut (1013, counted as a slow consumer) once its pongs
/// make no progress for the stall timeout. The other clients are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_never_reads_gets_the_client_cut() {
    let (builder, mut gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .ping_interval(None)
                .write_buffer_size(8 * 1024)
                .max_queued_bytes(64 * 1024)
                .stall_timeout(Duration::from_millis(500)),
        ),
    );
    let server = Server::start(builder).await;
    let mut bystander = server.client().await;
    let flooder = server.client().await;
    let flooder_id = flooder.id().clone();
    let (mut sink, _never_read) = flooder.stream.split();
    let flood = tokio::spawn(async move {
        let payload = vec![7_u8; 125];
        for _ in 0..400_000 {
            if sink
                .send(WsMessage::Ping(payload.clone().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (id, reason) = next_disconnect(&mut gone).await;
    assert_eq!(id, flooder_id);
    assert_eq!(reason, DisconnectReason::SlowConsumer);
    assert_eq!(
        server.running.websocket().stats().slow_consumer_disconnects,
        1
    );
    flood.abort();
    // The other client still gets its frames.
    server
        .ws()
        .broadcast_to_client(bystander.id(), Outgoing::new("still", "here", 1));
    assert_eq!(bystander.next_json().await["action"], "here");
    server.running.shutdown().await;
}

/// A socket that connects and never sends its HTTP request is closed after the header-read
/// timeout; while such sockets hold every handshake place, a real client waits for a place and
/// then connects.
#[tokio::test]
async fn connections_that_never_send_their_request_are_closed() {
    let (builder, _gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .header_read_timeout(Duration::from_millis(300))
                .max_pending_handshakes(4),
        ),
    );
    let server = Server::start(builder).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let client = server.client().await;
    assert!(client.id.is_some());
    for mut socket in silent {
        let mut buf = [0_u8; 64];
        let read = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("the silent socket is closed by the server");
        // Closed, with at most an HTTP error response (never a handshake).
        if let Ok(n) = read {
            assert!(
                n == 0
                    || std::str::from_utf8(&buf[..n])
                        .unwrap_or("")
                        .starts_with("HTTP/1.1 4"),
                "unexpected bytes"
            );
        }
    }
    client.close().await;
    server.running.shutdown().await;
}

/// A route handler that takes long does not stop the client's other frames: a quick route, a
/// room join and an unknown route are answered while it runs, then its own reply comes.
#[tokio::test]
async fn a_long_route_handler_does_not_stop_the_other_frames() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let (builder, _gone) = observed(
        base()
            .route("slow", "wait", move || {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    json!({"slow": true})
                }
            })
            .route("fast", "ping", || async { json!({"pong": true}) }),
    );
    let server = Server::start(builder).await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "slow", "action": "wait"}))
        .await;
    client
        .send_json(json!({"type": "fast", "action": "ping"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "fast", "action": "ping", "response": {"pong": true}})
    );
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": "r"}}))
        .await;
    assert_eq!(client.next_json().await["action"], "joinRoom");
    client
        .send_json(json!({"type": "no", "action": "such"}))
        .await;
    assert_eq!(client.next_json().await["type"], "error");
    release.notify_one();
    assert_eq!(
        client.next_json().await,
        json!({"type": "slow", "action": "wait", "response": {"slow": true}})
    );
    client.close().await;
    server.running.shutdown().await;
}

/// Redis stops answering (every publish then waits for its 2 s timeout): a new client is still
/// greeted, and its room join answered, far sooner than that; the announcements go out in the
/// background.
#[tokio::test]
async fn connect_and_join_do_not_wait_for_an_unreachable_redis() {
    let redis = MockRedis::start().await;
    let broker = RedisBroker::from_url(&redis.url())
        .unwrap()
        .publish_timeout(Duration::from_secs(2));
    let (builder, _gone) = observed(base().broker(broker));
    let server = Server::start(builder).await;
    redis.stall_connections();
    let started = Instant::now();
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": "r"}}))
        .await;
    assert_eq!(client.next_json().await["action"], "joinRoom");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "connect and join took {took:?}: they waited for Redis"
    );
    assert_eq!(server.ws().room_members("r"), [client.id().clone()]);
    client.close().await;
    drop(redis);
}

/// A client that stops reading while its budget is far from spent: once its socket takes nothing
/// for the stall timeout, it is cut (1013, counted), whatever room is left in its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_makes_no_write_progress_is_cut_after_the_stall_timeout() {
    let (builder, mut gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .ping_interval(None)
                .max_queued_bytes(512 * 1024 * 1024)
                .stall_timeout(Duration::from_millis(500)),
        ),
    );
    let server = Server::start(builder).await;
    let stalled = server.client().await;
    let stalled_id = stalled.id().clone();
    let ws = server.ws();
    let frame = Outgoing::new("big", "frame", "x".repeat(4096));
    // Far more than the kernel's socket buffers hold, never read.
    let writer = tokio::spawn(async move {
        for _ in 0..20_000 {
            if !ws.broadcast_to_client(&stalled_id, frame.clone()) {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let (_, reason) = next_disconnect(&mut gone).await;
    assert_eq!(reason, DisconnectReason::SlowConsumer);
    assert_eq!(
        server.running.websocket().stats().slow_consumer_disconnects,
        1
    );
    writer.abort();
    drop(stalled);
    server.running.shutdown().await;
}
