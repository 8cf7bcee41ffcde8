//! Presence across the cluster: every worker's view of the clients, users and rooms comes from the
//! presence store (Redis: the real server when `REDIS_URL` is set, the mock otherwise), so it is
//! right after churn, after a worker is killed, for a worker started later, after a Redis outage,
//! and for concurrent joins; sends to one client or one user reach it once wherever it is; the
//! per-user connection limit holds across workers.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::json;
use support::{observed, token, Server, ServerExt, SocketClient, Welcomed, DEADLINE, SECRET};
use switchboard::broker::RedisBroker;
use switchboard::prelude::*;
use switchboard::testing::MockRedis;
use switchboard::{Builder, ClientId, JwtSecret};

/// A Redis for one test: `REDIS_URL`'s server, or a mock.
struct Bus {
    url: String,
    namespace: String,
    mock: Option<MockRedis>,
}

impl Bus {
    async fn new() -> Self {
        let (url, mock) = match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => (url, None),
            _ => {
                let mock = MockRedis::start().await;
                (mock.url(), Some(mock))
            }
        };
        Self::on(url, mock)
    }

    fn on(url: String, mock: Option<MockRedis>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let namespace = format!(
            "presence-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            url,
            namespace,
            mock,
        }
    }

    fn worker(&self, config: WebSocketConfig) -> Builder {
        let broker = RedisBroker::from_url(&self.url)
            .expect("a valid Redis URL")
            .namespace(&self.namespace)
            .publish_timeout(Duration::from_millis(500));
        observed(support::base().broker(broker).websocket(config)).0
    }
}

/// Logs at `info` (the presence writer's and reader's decisions), shown for a failing test.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,subscriber_server=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default().jwt_secret(JwtSecret::raw(SECRET))
}

/// Waits until `done` holds, checking every 20 ms; panics with `what` after `within`. Returns how
/// long it took.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The actions of the frames a client reads before the `test/marker` frame.
async fn read_until_marker(client: &mut SocketClient) -> Vec<String> {
    let mut frames = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["action"] == "marker" {
            return frames;
        }
        frames.push(frame["action"].as_str().unwrap_or_default().to_owned());
    }
}

async fn join(client: &mut SocketClient, room: &str) {
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": room}}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["response"]["success"], true, "{reply}");
}

/// A client that connects, joins a room and leaves: gracefully when `graceful`, otherwise by
/// dropping its TCP connection without a close frame.
async fn churn_one(url: &str, room: &str, graceful: bool) {
    let mut client = SocketClient::connect(url).await.welcomed().await;
    join(&mut client, room).await;
    if graceful {
        client.close().await;
    } else {
        drop(client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_2000_clients_over_two_workers_leaves_no_ghosts() {
    let bus = Bus::new().await;
    // An ordinary slow subscriber on `clientJoinedRoom` (it once made every leave arrive first).
    let slow = |builder: Builder| {
        builder.subscriber(
            Subscriber::channels([switchboard::event::CLIENT_JOINED_ROOM])
                .name("slow_join_audit")
                .handle(|| async { tokio::time::sleep(Duration::from_millis(5)).await }),
        )
    };
    let a = Server::start(slow(bus.worker(config()))).await;
    let b = Server::start(slow(bus.worker(config()))).await;
    let mut tasks = Vec::new();
    for (n, server) in [&a, &b].into_iter().enumerate() {
        let url = server.url(None);
        tasks.push(tokio::spawn(async move {
            // 1,000 clients per worker, 50 at a time.
            for batch in 0..20 {
                let mut clients = Vec::new();
                for i in 0..50 {
                    let graceful = (batch + i + n) % 2 == 0;
                    clients.push(churn_one(&url, "churn", graceful));
                }
                futures_util::future::join_all(clients).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for (name, server) in [("a", &a), ("b", &b)] {
        let ws = server.ws();
        eventually(
            &format!("worker {name} lists no client and no room"),
            DEADLINE,
            || ws.cluster_client_count() == 0 && ws.rooms().is_empty(),
        )
        .await;
    }
    // And nothing late brings a ghost back: a fresh client on each worker is the only one listed.
    let _c = a.client().await;
    let _d = b.client().await;
    for server in [&a, &b] {
        let ws = server.ws();
        eventually("both fresh clients listed", DEADLINE, || {
            ws.cluster_client_count() == 2
        })
        .await;
        assert!(ws.room_members("churn").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_clients_disappear_within_the_presence_ttl() {
    let bus = Bus::new().await;
    let a = Server::start(bus.worker(config())).await;
    // The other worker is the hello-world example, in its own process.
    let mut child = support::hello_world_command()
        .env("REDIS_URL", &bus.url)
        .env("REDIS_NAMESPACE", &bus.namespace)
        .spawn()
        .expect("the hello_world example starts");
    let url = support::announced_url(child.stdout.take().unwrap()).await;
    let ws_url = format!(
        "{}/ws",
        url.replacen("http://", "ws://", 1).trim_end_matches('/')
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(SocketClient::connect(&ws_url).await);
    }
    let ws = a.ws();
    eventually(
        "the other process's 20 clients are listed",
        DEADLINE,
        || ws.cluster_client_count() == 20,
    )
    .await;
    child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = child.wait();
    eventually(
        "the killed worker's clients are gone",
        Duration::from_secs(12),
        || ws.cluster_client_count() == 0,
    )
    .await;
    let took = killed.elapsed();
    eprintln!("a killed worker's 20 clients disappeared after {took:?}");
    assert!(
        took <= Duration::from_secs(10),
        "the clients of a killed worker were still listed {took:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_later_sees_every_client_and_room_at_once() {
    let bus = Bus::new().await;
    let a = Server::start(bus.worker(config())).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = a.client().await;
        if i < 5 {
            join(&mut client, "late").await;
        }
        clients.push(client);
    }
    let started = Instant::now();
    let b = Server::start(bus.worker(config())).await;
    let ws = b.ws();
    eventually(
        "the later worker lists the 20 clients and the room",
        Duration::from_secs(5),
        || ws.cluster_client_count() == 20 && ws.room_members("late").len() == 5,
    )
    .await;
    eprintln!(
        "a later worker saw the cluster {:?} after it started",
        started.elapsed()
    );
    let mut expected: Vec<_> = clients[..5].iter().map(|c| c.id().clone()).collect();
    expected.sort();
    let mut members = ws.room_members("late");
    members.sort();
    assert_eq!(members, expected);
    assert_eq!(ws.rooms(), ["late"]);
    let info = ws.client(clients[0].id()).expect("listed");
    assert_eq!(info.worker_id, a.ws().worker_id());
    assert!(!info.local);
    assert!(info.connected_at > 0);
}

/// A Redis that can go away: a real `redis-server` child when one is installed, the mock
/// otherwise.
enum Outage {
    Real(RedisServer),
    Mock,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_left_during_a_redis_outage_are_gone_soon_after_it() {
    init_tracing();
    let (bus, mut outage) = match RedisServer::find_binary() {
        Some(binary) => {
            let server = RedisServer::start(binary, redis_server::free_port()).await;
            (Bus::on(server.url(), None), Outage::Real(server))
        }
        None => {
            let mock = MockRedis::start().await;
            (Bus::on(mock.url(), Some(mock)), Outage::Mock)
        }
    };
    let a = Server::start(bus.worker(config())).await;
    let b = Server::start(bus.worker(config())).await;
    let mut staying = Vec::new();
    let mut leaving = Vec::new();
    for i in 0..15 {
        let mut client = a.client().await;
        join(&mut client, "outage").await;
        if i < 10 {
            leaving.push(client);
        } else {
            staying.push(client);
        }
    }
    let ws = b.ws();
    eventually("15 clients listed before the outage", DEADLINE, || {
        ws.cluster_client_count() == 15
    })
    .await;
    // Redis goes away for 3 s; 10 clients leave meanwhile.
    match &mut outage {
        Outage::Real(server) => server.stop(),
        Outage::Mock => {
            let mock = bus.mock.as_ref().unwrap();
            mock.refuse_connections_for(Duration::from_secs(3));
            mock.drop_connections();
        }
    }
    for client in leaving {
        client.close().await;
    }
    eventually("the 10 left worker a", DEADLINE, || {
        a.ws().client_count() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Outage::Real(server) = &mut outage {
        server.spawn().await;
    }
    let back = Instant::now();
    eventually(
        "worker b lists exactly the 5 clients that stayed",
        Duration::from_secs(10),
        || ws.cluster_client_count() == 5 && ws.room_members("outage").len() == 5,
    )
    .await;
    eprintln!("views right {:?} after Redis returned", back.elapsed());
    for client in &staying {
        assert!(ws.is_connected(client.id()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_client_and_to_a_user_on_another_worker_arrive_once() {
    let bus = Bus::new().await;
    let a = Server::start(bus.worker(config())).await;
    let b = Server::start(bus.worker(config())).await;
    let (mut on_b, _) = b.client_with_token(&token(json!({"sub": "ann"}))).await;
    let (mut also_on_b, _) = b.client_with_token(&token(json!({"sub": "ann"}))).await;
    let (mut on_a, _) = a.client_with_token(&token(json!({"sub": "ann"}))).await;
    let (mut other, _) = b.client_with_token(&token(json!({"sub": "bob"}))).await;
    let ws = a.ws();
    eventually("worker a lists ann's 3 clients", DEADLINE, || {
        ws.clients_of_user("ann").len() == 3
    })
    .await;
    assert!(ws
        .send_to_client(on_b.id(), Outgoing::new("dm", "one", 1))
        .await
        .unwrap());
    assert_eq!(
        ws.send_to_user("ann", Outgoing::new("dm", "all", 2))
            .await
            .unwrap(),
        3
    );
    // A marker after both, on the same path (the owning worker's channel, one lane there):
    // whatever a client reads before it, it received before the marker.
    for client in [&on_b, &also_on_b, &on_a, &other] {
        assert!(ws
            .send_to_client(client.id(), Outgoing::new("test", "marker", 0))
            .await
            .unwrap());
    }
    assert_eq!(read_until_marker(&mut on_b).await, ["one", "all"]);
    assert_eq!(read_until_marker(&mut also_on_b).await, ["all"]);
    assert_eq!(read_until_marker(&mut on_a).await, ["all"]);
    assert!(read_until_marker(&mut other).await.is_empty());
    // A client nobody lists is reported, not sent to.
    let unknown: ClientId = "00000000-0000-4000-8000-000000000000".parse().unwrap();
    assert!(!ws
        .send_to_client(&unknown, Outgoing::new("dm", "x", 0))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_on_two_workers_give_both_the_true_member_counts() {
    let bus = Bus::new().await;
    let a = Server::start(bus.worker(config())).await;
    let b = Server::start(bus.worker(config())).await;
    let mut joins = Vec::new();
    for (n, server) in [&a, &b].into_iter().enumerate() {
        for i in 0..200 {
            let url = server.url(None);
            joins.push(tokio::spawn(async move {
                let mut client = SocketClient::connect(&url).await.welcomed().await;
                join(&mut client, &format!("room-{}", (i + n) % 10)).await;
                client
            }));
        }
    }
    let mut clients = Vec::new();
    for join in joins {
        clients.push(join.await.unwrap());
    }
    for server in [&a, &b] {
        let ws = server.ws();
        eventually("40 members in each of the 10 rooms", DEADLINE, || {
            (0..10).all(|r| ws.room_members(&format!("room-{r}")).len() == 40)
        })
        .await;
        assert_eq!(ws.rooms().len(), 10);
        assert_eq!(ws.cluster_client_count(), 400);
    }
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_connection_limit_holds_across_workers() {
    let bus = Bus::new().await;
    let limited = || config().max_connections_per_user(Some(3));
    let a = Server::start(bus.worker(limited())).await;
    let b = Server::start(bus.worker(limited())).await;
    let ann = token(json!({"sub": "ann"}));
    // Ten connections of one user at once, five on each worker: exactly three get in.
    let mut attempts = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 {
            a.url(Some(&ann))
        } else {
            b.url(Some(&ann))
        };
        attempts.push(tokio::spawn(async move {
            tokio_tungstenite::connect_async(url).await.map(|(s, _)| s)
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(socket) => admitted.push(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
                refused += 1;
            }
            Err(other) => panic!("unexpected handshake failure: {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (3, 7));
    let rejections = a.ws().stats().user_limit_rejections + b.ws().stats().user_limit_rejections;
    assert_eq!(rejections, 7);
    // Another user is not limited by ann's connections.
    let (_bob, _) = a.client_with_token(&token(json!({"sub": "bob"}))).await;
    // One of ann's connections closes: one more gets in, on either worker.
    drop(admitted.pop());
    let ws = a.ws();
    eventually("ann's closed connection is released", DEADLINE, || {
        ws.clients_of_user("ann").len() == 2
    })
    .await;
    // The release is asynchronous: try until the fourth connection is admitted.
    let url = b.url(Some(&ann));
    let start = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_socket) => break,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "the closed connection was never released"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("unexpected handshake failure: {other}"),
        }
    }
}

/// The presence feed of a worker, written by hand through the store's public trait: changes are
/// applied in order, a gap in the sequence numbers makes the reader read the table again, and a
/// worker that says it stopped is dropped at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_worker_s_feed_is_repaired_from_its_table() {
    use switchboard::broker::presence::{Feed, PresenceChange, PresenceStore};
    use switchboard::MemoryBroker;

    let bus = MemoryBroker::new();
    let a = Server::start(support::base().broker(bus.clone()).websocket(config())).await;
    let ws = a.ws();
    let ttl = Duration::from_secs(30);
    let record = |room: &str| {
        bytes::Bytes::from(
            json!({"user": null, "connectedAt": 1_700_000_000_000_u64, "rooms": [room]})
                .to_string(),
        )
    };
    let feed = |seq: u64, kind: &str, changes: serde_json::Value| Feed {
        channel: "switchboard.presence".to_owned(),
        payload: json!({"workerId": "w2", "w": "w2", "s": seq, "k": kind, "c": changes})
            .to_string()
            .into(),
    };
    let id = |n: u32| format!("00000000-0000-4000-8000-00000000000{n}");
    let listed = |n: u32| ws.is_connected(&id(n).parse().unwrap());

    // A worker's first message makes the others read its table.
    bus.replace(
        "w2",
        vec![(id(1), record("r"))],
        1,
        ttl,
        feed(1, "r", json!([])),
    )
    .await
    .unwrap();
    eventually("w2's first client is listed", DEADLINE, || listed(1)).await;
    assert_eq!(ws.room_members("r").len(), 1);
    // The next change is applied from the feed.
    let put = |n: u32| PresenceChange::Put {
        id: id(n),
        record: record("r"),
    };
    let changes = |n: u32| json!([[id(n), {"user": null, "connectedAt": 1, "rooms": ["r"]}]]);
    bus.write("w2", vec![put(2)], 2, ttl, feed(2, "d", changes(2)))
        .await
        .unwrap();
    eventually("w2's second client is listed", DEADLINE, || listed(2)).await;
    // Change 3's feed message is lost; change 4 reveals the gap and the table is read again.
    let lost = Feed {
        channel: "nobody-listens".to_owned(),
        payload: "{}".into(),
    };
    bus.write("w2", vec![put(3)], 3, ttl, lost).await.unwrap();
    bus.write(
        "w2",
        vec![PresenceChange::Remove { id: id(1) }],
        4,
        ttl,
        feed(4, "d", json!([[id(1), null]])),
    )
    .await
    .unwrap();
    eventually("the table is read again after the gap", DEADLINE, || {
        !listed(1) && listed(2) && listed(3)
    })
    .await;
    assert_eq!(ws.room_members("r").len(), 2);
    // A feed message for a worker without a table lists nothing.
    bus.publish_now(
        "switchboard.presence",
        json!({"workerId": "w3", "w": "w3", "s": 1, "k": "d", "c": changes(5)})
            .to_string()
            .into(),
    );
    // The stopped worker is dropped at once.
    bus.remove("w2", feed(5, "x", json!([]))).await.unwrap();
    eventually("w2's clients are gone", DEADLINE, || {
        ws.cluster_client_count() == 0
    })
    .await;
    assert!(!listed(5));
}

/// `clientJoinedRoom` carries the reference's user shape, and the join's reply the user's id.
#[tokio::test]
async fn client_joined_room_carries_the_reference_s_user_shape() {
    let bus = switchboard::MemoryBroker::new();
    // Another worker hears the announcement (a worker skips its own).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let other = support::base()
        .broker(bus.clone())
        .subscriber(
            Subscriber::channels([switchboard::event::CLIENT_JOINED_ROOM])
                .name("joined")
                .handle(move |Message(m): Message| {
                    let _ = tx.send(m);
                }),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let a = Server::start(observed(support::base().broker(bus).websocket(config())).0).await;
    let (mut client, _) = a
        .client_with_token(&token(json!({"sub": "ann", "email": "ann@example.com"})))
        .await;
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": "r", "userType": "admin"}}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["response"]["data"]["userId"], "ann", "{reply}");
    let announced = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("clientJoinedRoom within the deadline")
        .unwrap();
    let short: String = client.id().as_str().chars().take(8).collect();
    assert_eq!(announced["clientId"], client.id().as_str());
    assert_eq!(announced["roomName"], "r");
    let user = &announced["user"];
    assert_eq!(user["id"], "ann");
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["userType"], "admin");
    assert_eq!(user["username"], format!("user_{short}"));
    assert_eq!(user["payload"]["sub"], "ann");
    assert!(user.get("userId").is_none(), "{user}");
    other.shutdown().await;
}
