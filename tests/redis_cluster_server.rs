//! The WebSocket server on the Redis Cluster broker: presence (its keys in the slot of the feed's
//! partition, each write and its feed message one transaction), sends to another worker's client,
//! and room broadcasts everywhere, between two workers on a real cluster.
//!
//! Runs on the cluster at `SWITCHBOARD_TEST_CLUSTER_URLS` when it is set (CI starts one), else
//! starts its own; SKIPPED without `redis-server`, unless `SWITCHBOARD_REQUIRE_CLUSTER=1`.

#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use std::time::{Duration, Instant};

use redis_cluster::{slot_of, RedisCluster};
use switchboard::broker::RedisClusterBroker;
use switchboard::prelude::*;
use switchboard::testing::TestApp;

const WAIT: Duration = Duration::from_secs(15);

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_a_cluster_share_presence_sends_and_rooms() {
    let (urls, _own) = match std::env::var("SWITCHBOARD_TEST_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => {
            (urls.split(',').map(str::to_owned).collect::<Vec<_>>(), None)
        }
        _ => match RedisCluster::start(3, 0).await {
            Some(own) => (own.urls(), Some(own)),
            None => {
                eprintln!("SKIPPED: redis-server or redis-cli not found (set SWITCHBOARD_REQUIRE_CLUSTER=1 to fail instead)");
                return;
            }
        },
    };
    let namespace = format!("server-{}", std::process::id());
    let broker = RedisClusterBroker::from_urls(&urls)
        .unwrap()
        .namespace(namespace.clone());
    let builder = || Switchboard::builder().without_linked_handlers();
    let a = TestApp::start_with_broker(broker.clone(), builder())
        .await
        .unwrap();
    let b = TestApp::start_with_broker(broker.clone(), builder())
        .await
        .unwrap();
    let (ws_a, ws_b) = (a.running().websocket(), b.running().websocket());

    // Presence: each worker lists the other's clients.
    let mut on_a = a.connect_client();
    let mut on_b = b.connect_client();
    eventually("b lists a's client", || ws_b.is_connected(on_a.id())).await;
    eventually("a lists b's client", || ws_a.is_connected(on_b.id())).await;
    assert_eq!(ws_a.cluster_client_count(), 2);

    // The presence keys share the slot of the feed's partition.
    let feed_slot = slot_of(broker.partition_channel("switchboard.presence").as_bytes());
    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let mut connection = client.get_async_connection().await.unwrap();
    let workers_key = format!("{namespace}:sb.presence{{");
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(feed_slot)
        .arg(100)
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&workers_key) && k.ends_with(":workers")),
        "the workers' set is in the feed's slot {feed_slot}: {keys:?}"
    );

    // A send to a client of the other worker, through its worker channel.
    assert!(ws_b
        .send_to_client(on_a.id(), Outgoing::new("dm", "hello", 1))
        .await
        .unwrap());
    assert_eq!(on_a.assert_push("dm", "hello").await, 1);

    // A room with members on both workers, broadcast from one.
    assert!(ws_a.join_room(on_a.id(), "lobby").await.unwrap());
    assert!(ws_b.join_room(on_b.id(), "lobby").await.unwrap());
    eventually("both see two members", || {
        ws_a.room_members("lobby").len() == 2 && ws_b.room_members("lobby").len() == 2
    })
    .await;
    ws_a.broadcast_to_room_everywhere(
        "lobby",
        serde_json::json!({"type": "news", "action": "flash", "data": 7}),
    )
    .await
    .unwrap();
    on_a.assert_push("news", "flash").await;
    on_b.assert_push("news", "flash").await;

    // A client that leaves is gone from the other worker too.
    let gone = on_b.id().clone();
    drop(on_b);
    eventually("a forgets b's client", || !ws_a.is_connected(&gone)).await;
    a.shutdown().await;
    b.shutdown().await;
}
