//! The seed's three use cases end to end, with the examples' own code (the example files are
//! included below, so what runs here is what `cargo run --example ...` runs): two workers with real
//! WebSocket clients, once on the in-process broker and once on Redis (the server at `REDIS_URL`
//! when it is set, else the project's `MockRedis`, so the Redis client path runs either way).

mod support;

#[path = "../examples/room_announcements.rs"]
#[allow(dead_code, unreachable_pub)]
mod room_announcements;

#[path = "../examples/job_notifications.rs"]
#[allow(dead_code, unreachable_pub)]
mod job_notifications;

#[path = "../examples/analytics_sink.rs"]
#[allow(dead_code, unreachable_pub)]
mod analytics_sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use subscriber_jobs::JobBackend;
use support::{observed, Server, ServerExt, SocketClient, TestServer, DEADLINE};
use switchboard::broker::RedisBroker;
use switchboard::prelude::*;
use switchboard::testing::MockRedis;
use switchboard::{Builder, MemoryBroker};

/// The broker the workers of one test share.
enum Bus {
    Memory(MemoryBroker),
    Redis {
        url: String,
        namespace: String,
        _mock: Option<MockRedis>,
    },
}

impl Bus {
    fn memory() -> Self {
        Self::Memory(MemoryBroker::new())
    }

    async fn redis() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let namespace = format!(
            "use-cases-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => Self::Redis {
                url,
                namespace,
                _mock: None,
            },
            _ => {
                let mock = MockRedis::start().await;
                Self::Redis {
                    url: mock.url(),
                    namespace,
                    _mock: Some(mock),
                }
            }
        }
    }

    /// A worker's builder with only the named linked handlers.
    fn worker(&self, handlers: &[&str]) -> Builder {
        let builder = Switchboard::builder().only(handlers.iter().copied());
        match self {
            Self::Memory(bus) => builder.broker(bus.clone()),
            Self::Redis { url, namespace, .. } => builder.broker(
                RedisBroker::from_url(url)
                    .expect("a valid Redis URL")
                    .namespace(namespace),
            ),
        }
    }
}

async fn join(client: &mut SocketClient, room: &str) {
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": room}}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["response"]["success"], true, "{reply}");
}

/// Sends every client of both workers a marker frame: whatever a client reads before it is what
/// it received before the marker, so "received nothing" can be asserted without sleeping.
async fn marker(a: &TestServer, n: u32) -> Value {
    let frame = json!({"type": "test", "action": "marker", "data": n});
    a.ws().send_message_to_all(frame.clone()).await.unwrap();
    frame
}

// ---------------------------------------------------------------------------------------------
// Use case 2: room announcements.

async fn support_announcement_reaches_room_members_on_both_workers(bus: Bus) {
    let handlers = ["roomAnnouncements"];
    let (a, _) = observed(room_announcements::app(bus.worker(&handlers)));
    let (b, _) = observed(room_announcements::app(bus.worker(&handlers)));
    let a = Server::start(a).await;
    let b = Server::start(b).await;
    let mut member_a = a.client().await;
    let mut member_b = b.client().await;
    let mut outsider_a = a.client().await;
    let mut outsider_b = b.client().await;
    join(&mut member_a, room_announcements::SUPPORT_ROOM).await;
    join(&mut member_b, room_announcements::SUPPORT_ROOM).await;
    // An announcement for another room matches no handler.
    a.ws()
        .send_custom_message(json!({"room": "sales", "data": {"text": "not for support"}}))
        .await
        .unwrap();

    // The outsider announces through the client route, from worker B.
    outsider_b
        .send_json(json!({"type": "support", "action": "announce", "data": {"text": "desk open"}}))
        .await;
    let reply = outsider_b.next_json().await;
    assert_eq!(reply["response"]["announced"], true, "{reply}");

    let expected =
        json!({"type": "announcement", "action": "supportUpdate", "data": {"text": "desk open"}});
    assert_eq!(member_a.next_json().await, expected);
    assert_eq!(member_b.next_json().await, expected);

    a.running.wait_idle().await;
    b.running.wait_idle().await;
    let marker = marker(&a, 1).await;
    for client in [
        &mut member_a,
        &mut member_b,
        &mut outsider_a,
        &mut outsider_b,
    ] {
        assert_eq!(
            client.next_json().await,
            marker,
            "exactly one announcement for members, none for the others"
        );
    }
}

#[tokio::test]
async fn room_announcements_in_process() {
    support_announcement_reaches_room_members_on_both_workers(Bus::memory()).await;
}

#[tokio::test]
async fn room_announcements_through_redis() {
    support_announcement_reaches_room_members_on_both_workers(Bus::redis().await).await;
}

// ---------------------------------------------------------------------------------------------
// Use case 1: queue job results.

async fn job_results_reach_everyone_and_failures_only_the_requester(bus: Bus) {
    let handlers = ["jobNotifications", "jobFailures"];
    // Each worker has its own job store here (in-memory SQLite; the events still cross workers
    // through the broker). With a shared store (Redis), any worker may run any job.
    let jobs = JobBackend::sqlite_in_memory().await.unwrap();
    let builder = bus
        .worker(&handlers)
        .state(jobs.queue::<job_notifications::DemoJob>())
        .route("jobs", "enqueue", job_notifications::enqueue);
    let (a, _) = observed(builder);
    let (b, _) = observed(bus.worker(&handlers));
    let a = Server::start(a).await;
    let b = Server::start(b).await;
    let worker = job_notifications::start_worker(&jobs, &a.running);
    let mut requester = a.client().await;
    let mut other_a = a.client().await;
    let mut other_b = b.client().await;

    requester
        .send_json(json!({"type": "jobs", "action": "enqueue", "data": {"task": "resize"}}))
        .await;
    let reply = requester.next_json().await;
    assert_eq!(reply["response"]["queued"], true, "{reply}");
    let requester_id = Value::from(requester.id().to_string());
    for client in [&mut requester, &mut other_a, &mut other_b] {
        let frame = client.next_json().await;
        assert_eq!(frame["type"], "jobs", "{frame}");
        assert_eq!(frame["action"], "completed", "{frame}");
        assert_eq!(frame["data"]["queue"], "demo");
        assert_eq!(
            frame["data"]["result"],
            json!({"task": "resize", "output": "RESIZE"})
        );
        assert_eq!(
            frame["data"]["webSocketClientId"], requester_id,
            "the requester is named"
        );
        assert!(frame["data"]["jobId"].is_string(), "{frame}");
    }

    requester
        .send_json(
            json!({"type": "jobs", "action": "enqueue", "data": {"task": "explode", "fail": true}}),
        )
        .await;
    let reply = requester.next_json().await;
    assert_eq!(reply["response"]["queued"], true, "{reply}");
    let failed = requester.next_json().await;
    assert_eq!(failed["type"], "jobs", "{failed}");
    assert_eq!(failed["action"], "failed", "{failed}");
    assert_eq!(failed["data"]["error"], "explode: asked to fail");
    assert_eq!(failed["data"]["queue"], "demo");

    // Wait until both workers handled the failure event, then check nobody else heard of it.
    wait_for(|| a.running.stats().handler_runs >= 2 && b.running.stats().handler_runs >= 2).await;
    a.running.wait_idle().await;
    b.running.wait_idle().await;
    let marker = marker(&a, 2).await;
    for client in [&mut requester, &mut other_a, &mut other_b] {
        assert_eq!(
            client.next_json().await,
            marker,
            "only the requester hears of a failure"
        );
    }
    worker.stop().await;
}

async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn job_notifications_in_process() {
    job_results_reach_everyone_and_failures_only_the_requester(Bus::memory()).await;
}

#[tokio::test]
async fn job_notifications_through_redis() {
    job_results_reach_everyone_and_failures_only_the_requester(Bus::redis().await).await;
}

// ---------------------------------------------------------------------------------------------
// Use case 3: analytics into SQLite, and into Postgres.

/// A fresh Postgres database for one test on the server at `TEST_POSTGRES_URL` (`.ci/run` starts
/// one and sets it). Without it the test is skipped (said on stderr), unless
/// `SWITCHBOARD_REQUIRE_POSTGRES` is set, as in CI.
async fn postgres_database() -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(base) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        assert!(
            std::env::var_os("SWITCHBOARD_REQUIRE_POSTGRES").is_none(),
            "SWITCHBOARD_REQUIRE_POSTGRES is set but TEST_POSTGRES_URL is not"
        );
        eprintln!("SKIPPED: the Postgres analytics test needs TEST_POSTGRES_URL (postgres://...)");
        return None;
    };
    let name = format!(
        "switchboard_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("TEST_POSTGRES_URL accepts connections");
    // The name is made of digits and a fixed prefix.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (server, _) = base
        .split('?')
        .next()
        .unwrap()
        .rsplit_once('/')
        .expect("a URL with a database path");
    Some(format!("{server}/{name}"))
}

async fn analytics_events_land_in_sqlite(bus: Bus, batch: usize) {
    analytics_events_land_in("sqlite::memory:", bus, batch).await;
}

async fn analytics_events_land_in(database: &str, bus: Bus, batch: usize) {
    let store = analytics_sink::AnalyticsStore::open(database, batch)
        .await
        .unwrap();
    let sink = bus
        .worker(&["analyticsSink"])
        .state(store.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let publisher = bus.worker(&[]).build().unwrap().start().await.unwrap();
    let events = [
        ("analytics:pageview", json!({"userId": "ada", "path": "/"})),
        (
            "analytics:click",
            json!({"userId": "ada", "target": "signup"}),
        ),
        ("analytics:pageview", json!({"path": "/without-user"})),
        ("metrics:cpu", json!({"userId": "nobody", "load": 1})),
        (
            "analytics:signup",
            json!({"userId": "grace", "plan": "pro"}),
        ),
    ];
    for (channel, event) in &events {
        publisher.publisher().publish(channel, event).await.unwrap();
    }
    wait_for(|| sink.stats().handler_runs >= 4).await;
    sink.wait_idle().await;
    let stats = sink.stats();
    assert_eq!(stats.handler_runs, 4, "metrics:cpu matches no handler");
    assert_eq!(stats.handler_errors, 1, "the event without userId");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let stored = loop {
        let stored = store.events().await.unwrap();
        if stored.len() >= 3 || tokio::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut rows: Vec<(String, String, Value)> = stored
        .iter()
        .map(|e| {
            assert_eq!(e.worker_id, publisher.worker_id(), "the sender's worker id");
            assert!(e.received_at_ms > 0);
            (
                e.channel.clone(),
                e.user_id.clone(),
                serde_json::from_str(&e.payload).unwrap(),
            )
        })
        .collect();
    rows.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        rows,
        [
            (
                "analytics:click".to_owned(),
                "ada".to_owned(),
                json!({"userId": "ada", "target": "signup"})
            ),
            (
                "analytics:pageview".to_owned(),
                "ada".to_owned(),
                json!({"userId": "ada", "path": "/"})
            ),
            (
                "analytics:signup".to_owned(),
                "grace".to_owned(),
                json!({"userId": "grace", "plan": "pro"})
            ),
        ]
    );
}

#[tokio::test]
async fn analytics_in_process_one_row_per_insert() {
    analytics_events_land_in_sqlite(Bus::memory(), 1).await;
}

#[tokio::test]
async fn analytics_through_redis_batched() {
    analytics_events_land_in_sqlite(Bus::redis().await, 500).await;
}

#[tokio::test]
async fn analytics_into_postgres_one_row_per_insert() {
    if let Some(database) = postgres_database().await {
        analytics_events_land_in(&database, Bus::memory(), 1).await;
    }
}

#[tokio::test]
async fn analytics_into_postgres_batched_through_redis() {
    if let Some(database) = postgres_database().await {
        analytics_events_land_in(&database, Bus::redis().await, 500).await;
    }
}
