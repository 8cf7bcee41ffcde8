//! The kit's fault-injecting TCP proxy between a worker and Redis (the server at `REDIS_URL`, else
//! the mock) and between a WebSocket client and the server: a cut is seen, counted, and recovered
//! from.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::broker::RedisBroker;
use switchboard::prelude::*;
use switchboard::testing::{Ending, FaultProxy, MockRedis, SocketClient, TestServer};

/// The Redis to use: `REDIS_URL`'s, else a mock kept alive by the returned handle.
async fn redis() -> (std::net::SocketAddr, Option<MockRedis>) {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let hostport = url
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned();
            let addr = tokio::net::lookup_host(hostport)
                .await
                .unwrap()
                .next()
                .unwrap();
            (addr, None)
        }
        _ => {
            let mock = MockRedis::start().await;
            (mock.addr(), Some(mock))
        }
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(15), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_worker_behind_a_cut_link_to_redis_reconnects_and_delivers_again() {
    let (redis_addr, _mock) = redis().await;
    let proxy = FaultProxy::start(redis_addr).await.unwrap();
    let namespace = format!("faultproxy-{}", std::process::id());
    let through_proxy = RedisBroker::from_url(&format!("redis://{}", proxy.addr()))
        .unwrap()
        .namespace(namespace.clone());
    let direct = RedisBroker::from_url(&format!("redis://{redis_addr}"))
        .unwrap()
        .namespace(namespace);
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let running = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(through_proxy)
        .subscriber(Subscriber::channels(["ticks"]).name("ticks").handle(
            move |Message(m): Message| {
                let counter = counter.clone();
                async move {
                    counter.fetch_max(m["n"].as_u64().unwrap(), Ordering::SeqCst);
                }
            },
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let outsider = switchboard::Publisher::new(Arc::new(direct), "outsider".into());
    let mut n = 0;
    let publish_until_seen = async |n: &mut u64| {
        *n += 1;
        let target = *n;
        let start = Instant::now();
        // At-most-once: a tick published while the link is down is lost; the next ones arrive.
        while seen.load(Ordering::SeqCst) < target {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "tick {target} never arrived"
            );
            outsider.publish("ticks", &json!({"n": *n})).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if seen.load(Ordering::SeqCst) < target {
                *n += 1;
            }
        }
    };
    publish_until_seen(&mut n).await;
    assert_eq!(running.stats().reconnects, 0);

    // Three outages: each is noticed (the subscription reconnects) and delivery resumes.
    for round in 1..=3 {
        proxy.cut_for(Duration::from_millis(300));
        eventually("the subscription reconnects", || {
            running.stats().reconnects >= round
        })
        .await;
        publish_until_seen(&mut n).await;
    }
    assert_eq!(proxy.cuts(), 3);
    assert!(proxy.accepted() >= 4, "{} connections", proxy.accepted());
    running.shutdown().await;
}

#[tokio::test]
async fn a_websocket_client_behind_a_cut_link_is_disconnected_on_both_sides() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = TestServer::start(
        Switchboard::builder()
            .without_linked_handlers()
            .on_disconnect(move |client, _, reason| {
                let _ = tx.send((client.id().clone(), reason.clone()));
            })
            .route("echo", "say", |Data(text): Data<String>| async move {
                json!({"said": text})
            }),
    )
    .await
    .unwrap();
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let mut client = SocketClient::connect(&format!("ws://{}/ws", proxy.addr())).await;
    client
        .send_json(json!({"type": "echo", "action": "say", "data": "hi"}))
        .await;
    assert_eq!(client.next_json().await["response"]["said"], "hi");
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut();
    assert!(
        matches!(client.ending().await, Ending::Dropped(_)),
        "the client sees its connection die"
    );
    let (_, reason) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the server notices the dead connection")
        .unwrap();
    assert!(
        matches!(reason, switchboard::DisconnectReason::ConnectionLost(_)),
        "{reason}"
    );
    assert_eq!(server.websocket().client_count(), 0);
    // A new connection goes through again.
    let mut again = SocketClient::connect(&format!("ws://{}/ws", proxy.addr())).await;
    again
        .send_json(json!({"type": "echo", "action": "say", "data": "back"}))
        .await;
    assert_eq!(again.next_json().await["response"]["said"], "back");
}
