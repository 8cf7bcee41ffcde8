//! The Redis broker end to end: subscriptions, namespaces, several workers (in one process and in
//! two), reconnects after dropped connections and after a real `redis-server` restart, and a
//! burst larger than the dispatch queue.
//!
//! Runs against the Redis at `REDIS_URL` when it is set (CI), otherwise against an in-process
//! [`MockRedis`]. Every test uses its own namespace and channel names, so tests never see each
//! other's messages on a shared server.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::broker::RedisBroker;
use switchboard::prelude::*;
use switchboard::testing::MockRedis;
use switchboard::{BrokerError, Builder, InlineSubscriber, PublishError, Running};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Longest wait for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

/// (handler, channel, message) as a handler saw it.
type Seen = (String, String, Value);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The Redis to test against: `REDIS_URL` when set (a real server), else a new [`MockRedis`]
/// (kept alive by the caller).
async fn redis_url() -> (String, Option<MockRedis>) {
    init_tracing();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            let mock = MockRedis::start().await;
            (mock.url(), Some(mock))
        }
    }
}

/// A name no other test (or test run on the same server) uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn broker(url: &str, namespace: &str) -> RedisBroker {
    RedisBroker::from_url(url)
        .expect("a valid Redis URL")
        .namespace(namespace)
}

/// An application on Redis with only the given inline subscribers.
fn app(url: &str, namespace: &str) -> Builder {
    app_on(broker(url, namespace))
}

fn app_on(broker: RedisBroker) -> Builder {
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker)
}

async fn start(builder: Builder) -> Running {
    builder
        .build()
        .expect("valid handlers")
        .start()
        .await
        .expect("subscribed")
}

/// A subscriber that reports every message it handles.
fn recorder(
    sub: Subscriber,
    name: &'static str,
    tx: &mpsc::UnboundedSender<Seen>,
) -> InlineSubscriber {
    let tx = tx.clone();
    sub.name(name)
        .handle(move |channel: Channel, Message(message): Message| {
            let _ = tx.send((name.to_owned(), channel.to_string(), message));
        })
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the handler is alive")
}

/// Receives until the message `{"marker": marker}` arrives, then waits until the worker has
/// handled everything it received before, and returns the other messages (markers of other
/// workers left out). Redis delivers in publish order on one connection, so everything published
/// before the marker has been received by then.
async fn until_marker(
    app: &Running,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    marker: &str,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let item = recv(rx, &format!("marker {marker}")).await;
        if item.2["marker"] == marker {
            break;
        }
        seen.push(item);
    }
    tokio::time::timeout(WAIT, app.wait_idle())
        .await
        .expect("handlers finish");
    while let Ok(item) = rx.try_recv() {
        seen.push(item);
    }
    seen.retain(|(_, _, m)| m.get("marker").is_none());
    seen
}

fn channels_of(seen: &[Seen]) -> Vec<String> {
    let mut channels: Vec<String> = seen.iter().map(|(_, c, _)| c.clone()).collect();
    channels.sort();
    channels
}

/// Polls `condition` (pacing the loop only) until it holds, or fails after `WAIT`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_glob_regex_and_wildcard_subscriptions_deliver_only_what_they_match() {
    let (url, _mock) = redis_url().await;
    let ns = unique("kinds");
    let (exact_tx, mut exact_rx) = mpsc::unbounded_channel();
    let (glob_tx, mut glob_rx) = mpsc::unbounded_channel();
    let (regex_tx, mut regex_rx) = mpsc::unbounded_channel();
    let (any_tx, mut any_rx) = mpsc::unbounded_channel();

    // One worker per kind, so each kind gets its own SUBSCRIBE / PSUBSCRIBE on Redis.
    let exact = start(app(&url, &ns).subscriber(recorder(
        Subscriber::channels(["orders"]),
        "exact",
        &exact_tx,
    )))
    .await;
    let glob = start(app(&url, &ns).subscriber(recorder(
        Subscriber::matching([Matcher::pattern("jobs:*:done")]),
        "glob",
        &glob_tx,
    )))
    .await;
    let regex_app = app(&url, &ns)
        .subscriber(recorder(
            Subscriber::matching([Matcher::regex("^analytics:")]),
            "regex",
            &regex_tx,
        ))
        .build()
        .unwrap();
    // The regex is received through a real PSUBSCRIBE on its literal prefix.
    assert_eq!(
        regex_app.subscriptions().patterns().collect::<Vec<_>>(),
        ["analytics:*"]
    );
    let regex = regex_app.start().await.unwrap();
    let any =
        start(app(&url, &ns).subscriber(recorder(Subscriber::channels(["*"]), "any", &any_tx)))
            .await;
    let sender = start(app(&url, &ns)).await;

    let channels = [
        "orders",
        "orders:extra",
        "jobs:7:done",
        "jobs:7:started",
        "analytics:pageview",
        "analyticsX",
        "unrelated",
    ];
    let publisher = sender.publisher();
    for channel in channels {
        publisher
            .publish(channel, &json!({ "on": channel }))
            .await
            .unwrap();
    }
    for (channel, marker) in [
        ("orders", "exact"),
        ("jobs:marker:done", "glob"),
        ("analytics:marker", "regex"),
        ("zz:marker", "any"),
    ] {
        publisher
            .publish(channel, &json!({ "marker": marker }))
            .await
            .unwrap();
    }

    assert_eq!(
        channels_of(&until_marker(&exact, &mut exact_rx, "exact").await),
        ["orders"]
    );
    assert_eq!(
        channels_of(&until_marker(&glob, &mut glob_rx, "glob").await),
        ["jobs:7:done"]
    );
    let analytics = until_marker(&regex, &mut regex_rx, "regex").await;
    assert_eq!(channels_of(&analytics), ["analytics:pageview"]);
    assert_eq!(analytics[0].2, json!({ "on": "analytics:pageview" }));
    let mut all: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
    all.sort();
    assert_eq!(
        channels_of(&until_marker(&any, &mut any_rx, "any").await),
        all
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_patterns_deliver_each_message_once() {
    let (url, _mock) = redis_url().await;
    let ns = unique("overlap");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let built = app(&url, &ns)
        .subscriber(recorder(
            Subscriber::matching([Matcher::pattern("dd:?x")]),
            "glob",
            &tx,
        ))
        .subscriber(recorder(
            Subscriber::matching([Matcher::regex("^dd:a")]),
            "regex",
            &tx,
        ))
        .build()
        .unwrap();
    // Two patterns that both match `dd:ax`: Redis sends two pmessages for it.
    assert_eq!(
        built.subscriptions().patterns().collect::<Vec<_>>(),
        ["dd:?x", "dd:a*"]
    );
    let worker = built.start().await.unwrap();
    let sender = start(app(&url, &ns)).await;
    for channel in ["dd:ax", "dd:bx", "dd:ay"] {
        sender
            .publisher()
            .publish(channel, &json!({}))
            .await
            .unwrap();
    }
    sender
        .publisher()
        .publish("dd:ax", &json!({ "marker": "end" }))
        .await
        .unwrap();

    let mut markers = 0;
    let mut runs = Vec::new();
    while markers < 2 {
        let (handler, channel, message) = recv(&mut rx, "both handlers to see the marker").await;
        if message.get("marker").is_some() {
            markers += 1;
        } else {
            runs.push(format!("{handler}@{channel}"));
        }
    }
    worker.wait_idle().await;
    while let Ok((handler, channel, _)) = rx.try_recv() {
        runs.push(format!("{handler}@{channel}"));
    }
    runs.sort();
    assert_eq!(
        runs,
        ["glob@dd:ax", "glob@dd:bx", "regex@dd:ax", "regex@dd:ay"]
    );
    // Four messages taken from Redis, not five: the duplicate pmessage was dropped.
    assert_eq!(worker.stats().received, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_isolate_applications_sharing_one_redis() {
    let (url, _mock) = redis_url().await;
    let (ns1, ns2) = (unique("ns1"), unique("ns2"));
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let app1 = start(
        app(&url, &ns1)
            .subscriber(recorder(Subscriber::channels(["shared"]), "exact1", &tx1))
            .subscriber(recorder(Subscriber::channels(["*"]), "tap1", &tx1)),
    )
    .await;
    let app2 = start(
        app(&url, &ns2)
            .subscriber(recorder(Subscriber::channels(["shared"]), "exact2", &tx2))
            .subscriber(recorder(Subscriber::channels(["*"]), "tap2", &tx2)),
    )
    .await;
    // Without a namespace, the prefixed channel is visible as it is on Redis.
    let prefixed = format!("{ns1}:shared");
    let raw = start(app(&url, "").subscriber(recorder(
        Subscriber::channels([prefixed.clone()]),
        "raw",
        &raw_tx,
    )))
    .await;
    let sender1 = start(app(&url, &ns1)).await;
    let sender2 = start(app(&url, &ns2)).await;

    sender2
        .publisher()
        .publish("shared", &json!({ "from": 2 }))
        .await
        .unwrap();
    sender1
        .publisher()
        .publish("shared", &json!({ "from": 1 }))
        .await
        .unwrap();
    sender1
        .publisher()
        .publish("shared", &json!({ "marker": "end" }))
        .await
        .unwrap();
    sender2
        .publisher()
        .publish("shared", &json!({ "marker": "end" }))
        .await
        .unwrap();

    let mut seen1 = until_marker(&app1, &mut rx1, "end").await;
    // The marker reaches both of app1's handlers; the second may still be queued.
    seen1.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen1,
        [
            (
                "exact1".to_owned(),
                "shared".to_owned(),
                json!({ "from": 1 })
            ),
            ("tap1".to_owned(), "shared".to_owned(), json!({ "from": 1 })),
        ]
    );
    let mut seen2 = until_marker(&app2, &mut rx2, "end").await;
    seen2.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen2,
        [
            (
                "exact2".to_owned(),
                "shared".to_owned(),
                json!({ "from": 2 })
            ),
            ("tap2".to_owned(), "shared".to_owned(), json!({ "from": 2 })),
        ]
    );
    let seen_raw = until_marker(&raw, &mut raw_rx, "end").await;
    assert_eq!(
        seen_raw,
        [("raw".to_owned(), prefixed, json!({ "from": 1 }))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_process_receive_each_others_messages_but_not_their_own() {
    let (url, _mock) = redis_url().await;
    let ns = unique("pair");
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    // Separate brokers: separate connections, as separate processes would have.
    let a = start(app(&url, &ns).subscriber(recorder(Subscriber::channels(["chat"]), "a", &a_tx)))
        .await;
    let b = start(app(&url, &ns).subscriber(recorder(Subscriber::channels(["chat"]), "b", &b_tx)))
        .await;
    assert_ne!(a.worker_id(), b.worker_id());

    a.publisher()
        .publish("chat", &json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut b_rx, "b to receive n=1").await.2,
        json!({ "n": 1 })
    );
    a.publisher()
        .publish_including_sender("chat", &json!({ "n": 2 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut b_rx, "b to receive n=2").await.2,
        json!({ "n": 2 })
    );
    // A's first run is n=2: it received n=1 first (same connection, same order) and skipped it.
    assert_eq!(
        recv(&mut a_rx, "a to receive n=2").await.2,
        json!({ "n": 2 })
    );
    a.wait_idle().await;
    assert_eq!(a.stats().skipped_own, 1);
    assert!(a_rx.try_recv().is_err());

    b.publisher()
        .publish("chat", &json!({ "n": 3 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut a_rx, "a to receive n=3").await.2,
        json!({ "n": 3 })
    );
    // B receives its own n=3 too, and skips it.
    eventually("b has skipped its own message", || {
        b.stats().skipped_own == 1
    })
    .await;
    b.wait_idle().await;
    assert!(b_rx.try_recv().is_err());
}

/// A TCP proxy in front of a real Redis, whose connections can all be cut at once: the real-Redis
/// counterpart of [`MockRedis::drop_connections`] that touches only this test's connections
/// (`CLIENT KILL TYPE pubsub` would also cut other tests' subscribers on a shared server).
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    stall: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let (stall, _) = watch::channel(0u64);
        let (cuts, stalls) = (cut.clone(), stall.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                let mut stall = stalls.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    // No Nagle delay in between: the client and Redis both disable it.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                        // Forward nothing any more, but keep both sockets open until cut.
                        _ = stall.changed() => { let _ = cut.changed().await; }
                    }
                });
            }
        });
        Self { addr, cut, stall }
    }

    fn drop_connections(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn stall_connections(&self) {
        self.stall.send_modify(|n| *n += 1);
    }
}

/// Splits `redis://[userinfo@]host:port[/rest]` into (`redis://[userinfo@]`, `host:port`, `/rest`).
fn split_url(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (format!("{userinfo}@"), host.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:6379")
    };
    (format!("{scheme}://{userinfo}"), host, tail.to_owned())
}

/// A Redis whose connections the test can drop, and its URL.
enum Droppable {
    Mock(MockRedis),
    Proxied(Proxy),
}

impl Droppable {
    async fn start() -> (String, Self) {
        let (url, mock) = redis_url().await;
        match mock {
            Some(mock) => (url, Self::Mock(mock)),
            None => {
                let (prefix, host, tail) = split_url(&url);
                let upstream = tokio::net::lookup_host(&host)
                    .await
                    .unwrap()
                    .next()
                    .unwrap();
                let proxy = Proxy::start(upstream).await;
                (
                    format!("{prefix}{}{tail}", proxy.addr),
                    Self::Proxied(proxy),
                )
            }
        }
    }

    fn drop_connections(&self) {
        match self {
            Self::Mock(mock) => mock.drop_connections(),
            Self::Proxied(proxy) => proxy.drop_connections(),
        }
    }

    fn stall_connections(&self) {
        match self {
            Self::Mock(mock) => mock.stall_connections(),
            Self::Proxied(proxy) => proxy.stall_connections(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_reconnect_once_and_later_messages_all_arrive() {
    let (url, redis) = Droppable::start().await;
    let ns = unique("drop");
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Frequent keep-alive PINGs, which must not count as reconnects.
    let worker =
        start(
            app_on(broker(&url, &ns).ping_interval(Duration::from_millis(100)))
                .subscriber(recorder(Subscriber::channels(["feed"]), "feed", &tx)),
        )
        .await;
    // A publisher only: no subscriber connection to notice the drop for it.
    let sender = start(app(&url, &ns)).await;

    sender
        .publisher()
        .publish("feed", &json!({ "n": "before" }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the first message").await.2,
        json!({ "n": "before" })
    );

    // Drop every connection while messages are flowing (those fail or are lost: at-most-once).
    let (stop, mut stopped) = watch::channel(false);
    let background = sender.publisher();
    let stream = tokio::spawn(async move {
        let mut sent = 0u64;
        while !*stopped.borrow_and_update() {
            let _ = background.publish("feed", &json!({ "during": sent })).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    });
    eventually("messages are flowing", || worker.stats().received > 5).await;
    redis.drop_connections();
    eventually("the worker has reconnected", || {
        worker.stats().reconnects == 1
    })
    .await;
    stop.send(true).unwrap();
    let during = stream.await.unwrap();
    assert!(during > 5);

    // Every message published after the recovery arrives, in order; no publish fails.
    for n in 0..20 {
        sender
            .publisher()
            .publish("feed", &json!({ "n": n }))
            .await
            .unwrap();
    }
    for n in 0..20 {
        loop {
            let (_, _, message) = recv(&mut rx, &format!("message {n}")).await;
            if message.get("during").is_none() {
                assert_eq!(message, json!({ "n": n }));
                break;
            }
        }
    }
    worker.wait_idle().await;
    assert_eq!(worker.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_found_by_ping_and_replaced() {
    let (url, redis) = Droppable::start().await;
    let ns = unique("stall");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker =
        start(
            app_on(broker(&url, &ns).ping_interval(Duration::from_millis(100)))
                .subscriber(recorder(Subscriber::channels(["c"]), "c", &tx)),
        )
        .await;
    let publish_timeout = Duration::from_millis(300);
    let sender = start(app_on(broker(&url, &ns).publish_timeout(publish_timeout))).await;
    sender
        .publisher()
        .publish("c", &json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the first message").await.2,
        json!({ "n": 1 })
    );

    // The connections stay open but nothing comes back: no error, no end of stream.
    redis.stall_connections();
    eventually("the unanswered PING made the worker reconnect", || {
        worker.stats().reconnects == 1
    })
    .await;

    // The sender's connection is stalled too: its publish times out instead of hanging...
    let began = Instant::now();
    let error = sender
        .publisher()
        .publish("c", &json!({ "n": "stalled" }))
        .await
        .expect_err("no answer");
    assert!(
        matches!(error, PublishError::Broker(BrokerError::Timeout(t)) if t == publish_timeout),
        "{error}"
    );
    assert!(began.elapsed() < publish_timeout + Duration::from_millis(500));
    // ...and the next publish uses a new connection.
    sender
        .publisher()
        .publish("c", &json!({ "n": 2 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the message after the stall").await.2,
        json!({ "n": 2 })
    );
    assert_eq!(worker.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_keep_trying_while_the_server_refuses_connections() {
    init_tracing();
    // Refusing connections needs the mock, whatever REDIS_URL says.
    let redis = MockRedis::start().await;
    let url = redis.url();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker =
        start(app(&url, "refuse").subscriber(recorder(Subscriber::channels(["c"]), "c", &tx)))
            .await;
    let sender = start(app(&url, "refuse")).await;

    let outage = Duration::from_millis(600);
    let began = Instant::now();
    redis.refuse_connections_for(outage);
    redis.drop_connections();
    // Publishing fails while the server refuses, with a typed error.
    let error = sender
        .publisher()
        .publish("c", &json!({}))
        .await
        .expect_err("refused");
    assert!(
        matches!(error, PublishError::Broker(BrokerError::Unreachable(_))),
        "{error}"
    );
    eventually("the worker has reconnected", || {
        worker.stats().reconnects == 1
    })
    .await;
    assert!(began.elapsed() >= outage, "reconnected during the outage");

    sender
        .publisher()
        .publish("c", &json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the message after the outage").await.2,
        json!({ "n": 1 })
    );
    assert_eq!(
        redis.connection_count(),
        2,
        "one subscriber and one publisher connection"
    );
    assert_eq!(worker.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_start_and_publish_with_typed_errors_in_time() {
    init_tracing();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let began = Instant::now();
    let error = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(
            RedisBroker::from_url(&url)
                .unwrap()
                .connect_timeout(Duration::from_secs(1)),
        )
        .subscriber(Subscriber::channels(["c"]).name("c").handle(|| async {}))
        .build()
        .unwrap()
        .start()
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            error,
            switchboard::Error::Broker(BrokerError::Unreachable(_))
        ),
        "{error}"
    );

    let sender = start(
        Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(
                RedisBroker::from_url(&url)
                    .unwrap()
                    .publish_timeout(Duration::from_millis(300)),
            ),
    )
    .await;
    for _ in 0..3 {
        let error = sender
            .publisher()
            .publish("c", &json!({}))
            .await
            .expect_err("unreachable");
        assert!(
            matches!(error, PublishError::Broker(BrokerError::Unreachable(_))),
            "{error}"
        );
    }
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );

    let error = RedisBroker::from_url("redis://127.0.0.1:notaport/").unwrap_err();
    assert!(matches!(error, BrokerError::Config(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_beyond_queue_capacity_is_counted_as_dropped_without_stalling_the_reader() {
    let (url, _mock) = redis_url().await;
    let ns = unique("burst");
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let gate = Arc::new(Semaphore::new(0));
    let handler_gate = gate.clone();
    let worker = start(app(&url, &ns).queue_capacity(8).subscriber(
        Subscriber::channels(["burst"]).name("slow").handle(
            move |channel: Channel, Message(message): Message| {
                let (gate, tx) = (handler_gate.clone(), tx.clone());
                async move {
                    // Blocks until the test opens the gate.
                    let _permit = gate.acquire().await.expect("open");
                    let _ = tx.send(("slow".to_owned(), channel.to_string(), message));
                }
            },
        ),
    ))
    .await;
    let sender = start(app(&url, &ns)).await;

    const BURST: u64 = 200;
    for n in 0..BURST {
        sender
            .publisher()
            .publish("burst", &json!({ "n": n }))
            .await
            .unwrap();
    }
    // The reader takes every message off the connection: each is queued or dropped.
    eventually("every message of the burst is accounted for", || {
        let s = worker.stats();
        s.received + s.dropped_queue_full == BURST
    })
    .await;
    let stats = worker.stats();
    assert!(stats.dropped_queue_full > 0, "{stats:?}");
    assert!(stats.received >= 8, "{stats:?}");

    gate.add_permits(usize::try_from(BURST).unwrap() * 2);
    tokio::time::timeout(WAIT, worker.wait_idle())
        .await
        .expect("the queue drains");
    let mut handled = 0;
    while rx.try_recv().is_ok() {
        handled += 1;
    }
    assert_eq!(handled, stats.received);

    sender
        .publisher()
        .publish("burst", &json!({ "n": "after" }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the message after the burst").await.2,
        json!({ "n": "after" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_a_real_redis_server_restarts_on_the_same_port() {
    init_tracing();
    let Some(binary) = RedisServer::find_binary() else {
        eprintln!(
            "SKIPPED delivery_resumes_after_a_real_redis_server_restarts_on_the_same_port: no `redis-server` on PATH (install the redis-server package to run it)"
        );
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = RedisServer::start(binary, port).await;
    let url = format!("redis://127.0.0.1:{port}/");
    let publish_timeout = Duration::from_millis(500);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = start(
        Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(
                RedisBroker::from_url(&url)
                    .unwrap()
                    .publish_timeout(publish_timeout),
            )
            .subscriber(recorder(Subscriber::channels(["status"]), "status", &tx)),
    )
    .await;
    let sender = start(
        Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(
                RedisBroker::from_url(&url)
                    .unwrap()
                    .publish_timeout(publish_timeout),
            ),
    )
    .await;
    sender
        .publisher()
        .publish("status", &json!({ "n": "before" }))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "the first message").await.2,
        json!({ "n": "before" })
    );

    server.stop();
    // While Redis is down, publishing fails fast with a typed error.
    let began = Instant::now();
    let error = sender
        .publisher()
        .publish("status", &json!({ "n": "lost" }))
        .await
        .expect_err("Redis is down");
    assert!(
        matches!(
            error,
            PublishError::Broker(BrokerError::Unreachable(_) | BrokerError::Timeout(_))
        ),
        "{error}"
    );
    assert!(
        began.elapsed() < publish_timeout + Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );

    server.spawn().await;
    let restarted = Instant::now();
    // Messages published before the worker has subscribed again are lost (at-most-once), so keep
    // publishing until one arrives.
    let mut n = 0;
    let resumed = loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "delivery did not resume within 5 s of the restart"
        );
        n += 1;
        let _ = sender
            .publisher()
            .publish("status", &json!({ "n": n }))
            .await;
        if let Ok(Some(seen)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            break seen;
        }
    };
    assert!(resumed.2["n"].is_number(), "{resumed:?}");
    assert!(restarted.elapsed() < Duration::from_secs(5));
    assert_eq!(worker.stats().reconnects, 1);
}

/// A `cluster` example process, its stdout read line by line.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Worker {
    fn spawn(binary: &Path, url: &str, namespace: &str, name: &str, channel: &str) -> Self {
        Self::spawn_with(binary, url, namespace, name, channel, &[])
    }

    /// [`spawn`](Self::spawn) with more environment variables.
    fn spawn_with(
        binary: &Path,
        url: &str,
        namespace: &str,
        name: &str,
        channel: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary)
            .envs(env.iter().copied())
            .env("REDIS_URL", url)
            .env("REDIS_NAMESPACE", namespace)
            .env("WORKER_NAME", name)
            .env("CHANNEL", channel)
            .env_remove("PUBLISH")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix` and returns it; earlier lines are kept in `seen`.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?}; output so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("the worker reads its input");
        stdin.flush().unwrap();
    }

    /// Closes the input (the worker then shuts down), waits for the exit, and reads the rest of
    /// the output.
    fn finish_in_place(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its output is complete now: keep the rest.
                while let Ok(line) = self.lines.recv_timeout(WAIT) {
                    self.seen.push(line);
                }
                assert!(
                    status.success(),
                    "worker exited with {status}; output: {:?}",
                    self.seen
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not stop at the end of its input"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn received(line: &str, worker: &str, channel: &str) -> Value {
    let json = line
        .strip_prefix(&format!("RECEIVED {worker} {channel} "))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    serde_json::from_str(json).expect("the message is printed as JSON")
}

#[test]
fn a_message_crosses_between_two_worker_processes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The mock (if any) runs on the runtime's threads while this thread drives the processes.
    let (url, _mock) = runtime.block_on(redis_url());
    let binary = binary::example_binary("cluster");
    let ns = unique("procs");
    let channel = unique("chat");

    let mut a = Worker::spawn(&binary, &url, &ns, "a", &channel);
    let mut b = Worker::spawn(&binary, &url, &ns, "b", &channel);
    a.expect("READY a");
    b.expect("READY b");

    a.send("hello from a");
    a.expect("PUBLISHED a hello from a");
    let got = received(&b.expect("RECEIVED b "), "b", &channel);
    assert_eq!(got, json!({ "from": "a", "text": "hello from a" }));

    b.send("hello from b");
    let got = received(&a.expect("RECEIVED a "), "a", &channel);
    assert_eq!(got, json!({ "from": "b", "text": "hello from b" }));
    // Each printed exactly the other's message, never its own.
    for (worker, other) in [(a, "b"), (b, "a")] {
        let mut worker = worker;
        worker.finish_in_place();
        let received: Vec<&String> = worker
            .seen
            .iter()
            .filter(|l| l.starts_with("RECEIVED"))
            .collect();
        assert_eq!(received.len(), 1, "{:?}", worker.seen);
        assert!(
            received[0].contains(&format!("hello from {other}")),
            "{:?}",
            worker.seen
        );
    }
}

/// Run-once handlers in three worker processes, one of them SIGKILLed while messages flow: every
/// message is handled, none lost; the only duplicates are messages the killed worker had printed
/// but not yet acknowledged, taken over by another after `ONCE_CLAIM_IDLE_MS`.
#[test]
fn run_once_across_three_processes_loses_nothing_when_one_is_killed() {
    const TOTAL: u64 = 3_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, _mock) = runtime.block_on(redis_url());
    let binary = binary::example_binary("cluster");
    let ns = unique("once");
    let channel = unique("jobs");
    let env = [("ONCE", "1"), ("ONCE_CLAIM_IDLE_MS", "1000")];
    let mut workers: Vec<Worker> = ["a", "b", "c"]
        .iter()
        .map(|name| Worker::spawn_with(&binary, &url, &ns, name, &channel, &env))
        .collect();
    for (worker, name) in workers.iter_mut().zip(["a", "b", "c"]) {
        worker.expect(&format!("READY {name}"));
    }
    let source = runtime.block_on(async {
        Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(RedisBroker::from_url(&url).unwrap().namespace(ns.clone()))
            .durable(
                channel.as_str(),
                switchboard::broker::Retention::new().messages(10_000),
            )
            .build()
            .unwrap()
            .start()
            .await
            .unwrap()
    });
    // (worker, n) for every RECEIVED line.
    let mut seen: Vec<(String, u64)> = Vec::new();
    let collect = |workers: &mut [Worker], seen: &mut Vec<(String, u64)>| {
        for (worker, name) in workers.iter_mut().zip(["a", "b", "c"]) {
            while let Ok(line) = worker.lines.try_recv() {
                if line.starts_with("RECEIVED") {
                    let json = line
                        .strip_prefix(&format!("RECEIVED {name} {channel} "))
                        .and_then(|rest| rest.rsplit_once(" offset="))
                        .map(|(json, _)| json)
                        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
                    let m: Value = serde_json::from_str(json).unwrap();
                    seen.push((name.to_owned(), m["n"].as_u64().unwrap()));
                }
            }
        }
    };
    let publisher = source.publisher();
    let started = Instant::now();
    for n in 0..TOTAL {
        runtime
            .block_on(publisher.publish(&channel, &json!({"n": n})))
            .unwrap();
        if n == TOTAL / 3 {
            // SIGKILL: no shutdown, no acknowledgement of what it holds.
            workers[1].child.kill().unwrap();
            workers[1].child.wait().unwrap();
        }
        if n % 100 == 0 {
            collect(&mut workers, &mut seen);
            // About 2,000 messages a second.
            let due = Duration::from_micros(500 * n);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        collect(&mut workers, &mut seen);
        let mut ns: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
        ns.sort_unstable();
        ns.dedup();
        if ns.len() as u64 == TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} messages handled",
            ns.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut counts = std::collections::HashMap::new();
    for (_, n) in &seen {
        *counts.entry(*n).or_insert(0) += 1;
    }
    let duplicates: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    // A duplicate is a message the killed worker handled but did not acknowledge: it printed it,
    // and a survivor ran it again.
    for n in &duplicates {
        assert_eq!(counts[n], 2, "{n} ran {} times", counts[n]);
        assert!(
            seen.iter().any(|(w, m)| w == "b" && m == n),
            "{n} ran twice without the killed worker having it"
        );
    }
    assert!(
        duplicates.len() <= 64,
        "at most one batch of the killed worker's is run again: {}",
        duplicates.len()
    );
    let by_worker = |name: &str| seen.iter().filter(|(w, _)| w == name).count();
    eprintln!(
        "{TOTAL} messages: a ran {}, b (killed) {}, c {}; {} duplicates",
        by_worker("a"),
        by_worker("b"),
        by_worker("c"),
        duplicates.len()
    );
    assert!(by_worker("a") > 0 && by_worker("c") > 0);
    runtime.block_on(source.shutdown());
}
