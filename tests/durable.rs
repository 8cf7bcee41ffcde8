//! Durable channels: at-least-once delivery through each channel's stream. Every test tries to
//! lose a message (a link to Redis cut again and again, a full queue, a stream that starts again,
//! a retention too short) and checks what each worker handled, offset by offset.
//!
//! Against the Redis at `REDIS_URL` when it is set, else the mock (which runs the publish script
//! natively).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::broker::{RedisBroker, Retention};
use switchboard::prelude::*;
use switchboard::testing::{FaultProxy, MockRedis, TestRedis};
use switchboard::{BuildError, Error, Matcher, MemoryBroker, Running};

/// What a handler saw: the message's `n`, its offset, and whether it was recovered.
type Log = Arc<Mutex<Vec<(u64, u64, bool)>>>;

fn namespace(test: &str) -> String {
    format!("durable-{test}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

/// A worker with one durable handler on `channel` that logs what it sees.
async fn worker(
    broker: impl switchboard::Broker,
    channel: &str,
    retention: Retention,
) -> (Running, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let running = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker)
        .durable(channel, retention)
        .subscriber(Subscriber::channels([channel]).name("ledger").handle(
            move |Message(m): Message, at: StreamPosition| {
                let sink = sink.clone();
                async move {
                    let n = m["n"].as_u64().expect("every test message has an `n`");
                    sink.lock().unwrap().push((n, at.offset, at.recovered));
                }
            },
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    (running, log)
}

/// A worker that only publishes (it has the same durable rule, as workers of one binary do).
async fn publisher(
    broker: impl switchboard::Broker,
    channel: &str,
    retention: Retention,
) -> Running {
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .worker_id("publisher")
        .broker(broker)
        .durable(channel, retention)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `n`s handled, in order.
fn handled(log: &Log) -> Vec<u64> {
    log.lock().unwrap().iter().map(|(n, _, _)| *n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_five_cuts_are_all_handled_in_order() {
    const TOTAL: u64 = 10_000;
    let redis = TestRedis::start().await.unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let ns = namespace("cuts");
    let retention = Retention::new().messages(2 * TOTAL);
    let behind_proxy = RedisBroker::from_url(&format!("redis://{}", proxy.addr()))
        .unwrap()
        .namespace(ns.clone())
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400))
        .publish_timeout(Duration::from_millis(500))
        .ping_interval(Duration::from_millis(500));
    let (victim, log) = worker(behind_proxy, "ledger", retention).await;
    let source = publisher(redis.broker(&ns).unwrap(), "ledger", retention).await;
    let publish = source.publisher();

    // Five 2 s outages, 1 s apart, while 1,000 messages a second are published for 10 s.
    let cuts = proxy.schedule(Duration::from_secs(1), Duration::from_secs(2), 5);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..TOTAL {
        ticks.tick().await;
        let at = publish
            .publish_durable("ledger", &json!({"n": n}))
            .await
            .unwrap()
            .expect("a durable channel gives a position");
        assert_eq!(at.offset, n + 1, "offsets are consecutive from 1");
    }
    let publishing = started.elapsed();
    cuts.await.unwrap();
    assert_eq!(proxy.cuts(), 5);
    eventually("the last reconnect", Duration::from_secs(10), || {
        victim.stats().reconnects >= 5
    })
    .await;
    eventually("every message handled", Duration::from_secs(30), || {
        log.lock().unwrap().len() as u64 >= TOTAL
    })
    .await;
    victim.wait_idle().await;

    let log = log.lock().unwrap().clone();
    let ns: Vec<u64> = log.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(
        ns,
        (0..TOTAL).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert!(log.iter().all(|(n, offset, _)| *offset == n + 1));
    let recovered = log.iter().filter(|(_, _, r)| *r).count() as u64;
    let stats = victim.stats();
    assert!(stats.reconnects >= 5, "{stats:?}");
    assert!(recovered > 0, "the cuts made gaps that the stream filled");
    assert_eq!(stats.durable_recovered, recovered);
    assert_eq!(stats.durable_lost, 0);
    eprintln!(
        "published {TOTAL} in {publishing:?}; {recovered} recovered from the stream, \
         {} live copies skipped, {} reconnects",
        stats.durable_duplicates, stats.reconnects
    );
    victim.shutdown().await;
    source.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_nothing_on_a_durable_channel() {
    // The in-process broker: a slow handler and a queue of 4, so that most live messages are
    // dropped; the offsets show the gaps and the stream fills them.
    let bus = MemoryBroker::new();
    let log: Log = Arc::default();
    let sink = log.clone();
    let running = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(bus.clone())
        .queue_capacity(4)
        .subscriber(
            Subscriber::channels(["orders"])
                .name("slow")
                .durable()
                .handle(move |Message(m): Message, at: StreamPosition| {
                    let sink = sink.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        sink.lock().unwrap().push((
                            m["n"].as_u64().unwrap(),
                            at.offset,
                            at.recovered,
                        ));
                    }
                }),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let source = publisher(bus, "orders", Retention::default()).await;
    // The start's catch-up is over once a first message was handled: what follows can only be
    // recovered because the drops themselves ask for it (nothing is published after the burst).
    source
        .publisher()
        .publish("orders", &json!({"n": 0}))
        .await
        .unwrap();
    eventually("the first message", Duration::from_secs(10), || {
        log.lock().unwrap().len() == 1
    })
    .await;
    running.wait_idle().await;
    for n in 1..500 {
        source
            .publisher()
            .publish("orders", &json!({"n": n}))
            .await
            .unwrap();
    }
    eventually("all 500 handled", Duration::from_secs(20), || {
        log.lock().unwrap().len() >= 500
    })
    .await;
    running.wait_idle().await;
    assert_eq!(handled(&log), (0..500).collect::<Vec<_>>());
    let stats = running.stats();
    assert!(
        stats.dropped_queue_full > 0,
        "the queue overflowed: {stats:?}"
    );
    assert!(stats.durable_recovered > 0, "{stats:?}");
    assert_eq!(stats.durable_lost, 0);
}

/// A worker behind a [`FaultProxy`] on `channel` and a publisher beside it (not behind the
/// proxy), once the worker has handled a first message (`n: 0`, offset 1).
struct CutOff {
    redis: TestRedis,
    proxy: FaultProxy,
    ns: String,
    victim: Running,
    log: Log,
    source: Running,
    /// The first message's position.
    first: switchboard::broker::Position,
}

async fn cut_off(test: &str, channel: &str, retention: Retention) -> CutOff {
    let redis = TestRedis::start().await.unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let ns = namespace(test);
    let behind_proxy = RedisBroker::from_url(&format!("redis://{}", proxy.addr()))
        .unwrap()
        .namespace(ns.clone())
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let (victim, log) = worker(behind_proxy, channel, retention).await;
    let source = publisher(redis.broker(&ns).unwrap(), channel, retention).await;
    let first = source
        .publisher()
        .publish_durable(channel, &json!({"n": 0}))
        .await
        .unwrap()
        .expect("a durable channel");
    eventually("the first message", Duration::from_secs(10), || {
        handled(&log) == [0]
    })
    .await;
    CutOff {
        redis,
        proxy,
        ns,
        victim,
        log,
        source,
        first,
    }
}

#[tokio::test]
async fn what_was_published_during_an_outage_is_read_after_the_reconnect_without_a_new_message() {
    // (`_redis`: a mock Redis stops when its handle goes.)
    let CutOff {
        redis: _redis,
        proxy,
        victim,
        log,
        source,
        ..
    } = cut_off("outage", "audit", Retention::default()).await;
    proxy.cut_for(Duration::from_millis(500));
    for n in 1..=20 {
        source
            .publisher()
            .publish("audit", &json!({"n": n}))
            .await
            .unwrap();
    }
    // Nothing more is published: the reconnect alone brings the 20 missed messages.
    eventually("the outage's messages", Duration::from_secs(10), || {
        log.lock().unwrap().len() == 21
    })
    .await;
    victim.wait_idle().await;
    assert_eq!(handled(&log), (0..=20).collect::<Vec<_>>());
    assert!(log.lock().unwrap()[1..]
        .iter()
        .all(|(_, _, recovered)| *recovered));
    assert!(victim.stats().reconnects >= 1);
}

#[tokio::test]
async fn a_worker_that_starts_later_begins_at_the_stream_s_end_and_misses_nothing_after() {
    let redis = TestRedis::start().await.unwrap();
    let ns = namespace("late");
    let source = publisher(redis.broker(&ns).unwrap(), "late", Retention::default()).await;
    for n in 0..5 {
        source
            .publisher()
            .publish("late", &json!({"n": n}))
            .await
            .unwrap();
    }
    // History is not replayed to a worker that starts now...
    let (late, log) = worker(redis.broker(&ns).unwrap(), "late", Retention::default()).await;
    source
        .publisher()
        .publish("late", &json!({"n": 5}))
        .await
        .unwrap();
    eventually(
        "the message after its start",
        Duration::from_secs(10),
        || !log.lock().unwrap().is_empty(),
    )
    .await;
    late.wait_idle().await;
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log.iter()
            .map(|(n, offset, _)| (*n, *offset))
            .collect::<Vec<_>>(),
        [(5, 6)]
    );
}

#[tokio::test]
async fn a_stream_that_starts_again_is_read_from_its_new_start() {
    let CutOff {
        redis,
        proxy,
        ns,
        victim,
        log,
        source,
        first,
    } = cut_off("epoch", "epochs", Retention::default()).await;

    // While the worker is away, the stream is lost (as when Redis restarts without its data)
    // and a new one begins.
    proxy.cut_for(Duration::from_millis(500));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("switchboard:stream:{{{ns}:epochs}}"))
        .arg(format!("switchboard:meta:{{{ns}:epochs}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut second = None;
    for n in 1..=3 {
        second = source
            .publisher()
            .publish_durable("epochs", &json!({"n": n}))
            .await
            .unwrap();
    }
    let second = second.unwrap();
    assert_ne!(first.epoch, second.epoch, "a new epoch");
    assert_eq!(second.offset, 3, "offsets start again at 1");
    eventually("the new epoch's messages", Duration::from_secs(10), || {
        log.lock().unwrap().len() == 4
    })
    .await;
    victim.wait_idle().await;
    assert_eq!(
        *log.lock().unwrap(),
        [(0, 1, false), (1, 1, true), (2, 2, true), (3, 3, true)]
    );
}

#[tokio::test]
async fn what_the_retention_trimmed_is_counted_as_lost_and_the_rest_handled_in_order() {
    // (`_redis`: a mock Redis stops when its handle goes.)
    let CutOff {
        redis: _redis,
        proxy,
        victim,
        log,
        source,
        ..
    } = cut_off("trim", "short", Retention::new().messages(10)).await;
    proxy.cut_for(Duration::from_millis(500));
    for n in 1..=300 {
        source
            .publisher()
            .publish("short", &json!({"n": n}))
            .await
            .unwrap();
    }
    let lost = || victim.stats().durable_lost;
    eventually(
        "the stream read after the outage",
        Duration::from_secs(10),
        || log.lock().unwrap().last().map(|(n, _, _)| *n) == Some(300),
    )
    .await;
    victim.wait_idle().await;
    let ns = handled(&log);
    // Redis trims whole stream nodes (`MAXLEN ~`), so it may keep more than 10: whatever it
    // kept is handled, in order, and the rest is counted.
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    assert_eq!(ns.len() as u64 + lost(), 301, "handled + lost = published");
    assert!(ns.len() >= 11, "at least the retention's 10 and the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_time_window_trimmed_is_counted_as_lost_and_the_rest_handled_in_order() {
    // A window of 1 s in time (and room for 10,000 messages): while the worker is cut off for
    // 2.5 s, a message every 20 ms; the ones older than the window when it comes back are gone.
    let window = Duration::from_secs(1);
    let CutOff {
        redis: _redis,
        proxy,
        victim,
        log,
        source,
        ..
    } = cut_off(
        "window",
        "recent",
        Retention::new().messages(10_000).age(window),
    )
    .await;
    proxy.cut_for(Duration::from_millis(2_500));
    let cut_at = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pacer = {
        let (published, stop, publisher) = (published.clone(), stop.clone(), source.publisher());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                publisher.publish("recent", &json!({"n": n})).await.unwrap();
                published.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Publishing goes on until the worker is back and has caught up with something recent.
    eventually("the worker back", Duration::from_secs(20), || {
        cut_at.elapsed() > Duration::from_millis(2_500)
            && log
                .lock()
                .unwrap()
                .iter()
                .any(|(_, _, recovered)| !recovered)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    pacer.await.unwrap();
    let total = published.load(Ordering::SeqCst);
    eventually(
        "every message handled or lost",
        Duration::from_secs(10),
        || handled(&log).last() == Some(&total),
    )
    .await;
    victim.wait_idle().await;
    let ns = handled(&log);
    let lost = victim.stats().durable_lost;
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    assert_eq!(
        ns.len() as u64 + lost,
        total + 1,
        "handled + lost = published"
    );
    // 2.5 s away with a 1 s window (kept at most 1/16 longer): at least the first second's
    // messages (about 50) are gone, and what came in the window before the return is handled.
    assert!(
        lost >= 25,
        "the window trimmed the oldest: {lost} lost of {total}"
    );
    assert!(
        ns.iter().any(|n| *n > 1 && *n < total - 5),
        "recovered messages from inside the window: {ns:?}"
    );
}

#[tokio::test]
async fn a_stream_that_went_back_hands_its_reused_offsets_to_handlers() {
    // As after a failover to a replica that had not received the last writes: the stream and its
    // offset go back from 6 to 3 while the worker is away, and the next messages get offsets 4
    // and 5 again. The worker, back, must take them for new messages, not for duplicates.
    let CutOff {
        redis,
        proxy,
        ns,
        victim,
        log,
        source,
        ..
    } = cut_off("rollback", "ledger", Retention::default()).await;
    for n in 1..=5 {
        source
            .publisher()
            .publish("ledger", &json!({"n": n}))
            .await
            .unwrap();
    }
    eventually("offsets 1 to 6", Duration::from_secs(10), || {
        log.lock().unwrap().len() == 6
    })
    .await;
    proxy.cut_for(Duration::from_millis(300));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The stream as the replica has it: entries 1 to 3 only (its last ID 3-0), offset 3.
    let (stream, meta) = (
        format!("switchboard:stream:{{{ns}:ledger}}"),
        format!("switchboard:meta:{{{ns}:ledger}}"),
    );
    let kept: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("3-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.len(), 3);
    let mut pipe = redis::pipe();
    pipe.atomic().del(&stream).ignore();
    for (id, fields) in &kept {
        pipe.cmd("XADD").arg(&stream).arg(id).arg(fields).ignore();
    }
    pipe.hset(&meta, "offset", 3).ignore();
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    eventually("the worker back", Duration::from_secs(10), || {
        victim.stats().reconnects >= 1
    })
    .await;
    // (its catch-up, which finds the stream behind it)
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.wait_idle().await;
    for n in 6..=7 {
        let at = source
            .publisher()
            .publish_durable("ledger", &json!({"n": n}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.offset, n - 2, "the offsets handed out again");
    }
    eventually("the two new messages", Duration::from_secs(10), || {
        handled(&log).last() == Some(&7)
    })
    .await;
    victim.wait_idle().await;
    assert_eq!(handled(&log), (0..=7).collect::<Vec<_>>());
    assert_eq!(victim.stats().durable_duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_behind_a_publisher_that_gives_up_mid_send_are_still_answered() {
    // A publisher dropped while Redis does not answer its publish, with 20 publishes queued
    // behind it on the channel: they must be sent (or fail with a timeout), never left waiting,
    // and the channel must publish again afterwards.
    let redis = MockRedis::start().await;
    let broker = RedisBroker::from_url(&redis.url())
        .unwrap()
        .namespace(namespace("handoff"))
        .publish_timeout(Duration::from_millis(500));
    let source = publisher(broker, "handoff", Retention::default()).await;
    let first = source
        .publisher()
        .publish_durable("handoff", &json!({"n": 0}))
        .await
        .unwrap()
        .unwrap();
    redis.stall_connections();
    let publish = |n: u64| {
        let publisher = source.publisher();
        tokio::spawn(async move { publisher.publish_durable("handoff", &json!({"n": n})).await })
    };
    let sender = publish(1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued: Vec<_> = (2..22).map(publish).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sender.abort();
    let mut offsets = vec![];
    for publish in queued {
        let answer = tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .expect("answered, not left waiting")
            .unwrap();
        match answer {
            Ok(position) => offsets.push(position.expect("a durable channel").offset),
            Err(switchboard::PublishError::Broker(switchboard::BrokerError::Timeout(_))) => {}
            Err(other) => panic!("{other}"),
        }
    }
    // What was sent got consecutive offsets (the tasks queued in no set order), each once.
    offsets.sort_unstable();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    // The connection is replaced, and the channel publishes again.
    let later = source
        .publisher()
        .publish_durable("handoff", &json!({"n": 99}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.epoch, first.epoch);
    assert!(later.offset > first.offset);
}

#[tokio::test]
async fn positions_reach_handlers_and_ordinary_channels_have_none() {
    let bus = MemoryBroker::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let plain = Arc::new(AtomicU64::new(0));
    let plain_sink = plain.clone();
    let running = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(bus.clone())
        .durable(Matcher::pattern("kept:*"), Retention::default())
        .subscriber(
            Subscriber::matching([Matcher::pattern("kept:*")])
                .name("kept")
                .handle(move |channel: Channel, at: StreamPosition| {
                    let sink = sink.clone();
                    async move {
                        sink.lock()
                            .unwrap()
                            .push((channel.0.to_string(), at.offset))
                    }
                }),
        )
        .subscriber(
            Subscriber::channels(["plain"])
                .name("plain")
                .handle(move |cx: Context| {
                    let plain = plain_sink.clone();
                    async move {
                        assert!(cx.stream_position().is_none());
                        plain.fetch_add(1, Ordering::SeqCst);
                    }
                }),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let source = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(bus)
        .durable(Matcher::pattern("kept:*"), Retention::default())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let publisher = source.publisher();
    for channel in ["kept:a", "kept:b", "kept:a"] {
        publisher.publish(channel, &json!({})).await.unwrap();
    }
    assert_eq!(
        publisher
            .publish_durable("plain", &json!({}))
            .await
            .unwrap(),
        None
    );
    eventually(
        "three durable and one plain",
        Duration::from_secs(5),
        || seen.lock().unwrap().len() == 3 && plain.load(Ordering::SeqCst) == 1,
    )
    .await;
    running.wait_idle().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("kept:a".into(), 1),
            ("kept:a".into(), 2),
            ("kept:b".into(), 1)
        ],
        "each channel has its own offsets"
    );
    // A raw payload on a durable channel must be a JSON object.
    assert!(publisher.publish_raw("kept:a", "not json").await.is_err());
}

#[test]
fn durable_needs_a_channel_to_keep() {
    let invalid = |builder: switchboard::Builder| match builder.build() {
        Err(Error::Build(BuildError::InvalidDurable { what, reason })) => {
            format!("{what}: {reason}")
        }
        other => panic!("expected InvalidDurable, got {other:?}"),
    };
    let base = || Switchboard::builder().without_linked_handlers();
    let every = invalid(base().durable("*", Retention::default()));
    assert!(every.contains("every channel"), "{every}");
    let predicate = invalid(base().durable(Matcher::predicate(|_| true), Retention::default()));
    assert!(predicate.contains("predicate"), "{predicate}");
    let bad = invalid(base().durable(Matcher::regex("("), Retention::default()));
    assert!(bad.contains("regex"), "{bad}");
    let handler = invalid(
        base().subscriber(
            Subscriber::channels(["*"])
                .name("tap")
                .durable()
                .handle(|| async {}),
        ),
    );
    assert!(handler.contains("handler `tap`"), "{handler}");
}

/// A run-once worker: its handler logs `(worker, n)`; `hang` makes it take messages and never
/// finish them (a worker that died holding them, as far as the group can tell).
async fn once_worker(
    broker: impl switchboard::Broker,
    name: &str,
    log: Arc<Mutex<Vec<(String, u64)>>>,
    hang: bool,
) -> Running {
    let me = name.to_owned();
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .worker_id(name)
        .broker(broker)
        .handler_timeout(Duration::from_secs(60))
        .once_claim_idle(Duration::from_millis(300))
        .subscriber(Subscriber::channels(["jobs"]).name("charge").once().handle(
            move |Message(m): Message| {
                let (log, me) = (log.clone(), me.clone());
                async move {
                    if hang {
                        log.lock()
                            .unwrap()
                            .push((me.clone(), m["n"].as_u64().unwrap()));
                        std::future::pending::<()>().await;
                    }
                    log.lock().unwrap().push((me, m["n"].as_u64().unwrap()));
                }
            },
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// Three run-once workers (one hangs on the first message it takes, holding its batch) and a
/// publisher: each message runs once on the others, and what the hung worker took is taken over.
async fn each_message_runs_once<B: switchboard::Broker + Clone>(broker: B, what: &str) {
    let log = Arc::new(Mutex::new(Vec::new()));
    // The publisher has the same durable rule as the workers (workers of one binary have).
    let source = publisher(broker.clone(), "jobs", Retention::default()).await;
    // The hung worker alone first, so that it takes some.
    let hung = once_worker(broker.clone(), "hung", log.clone(), true).await;
    for n in 0..10 {
        source
            .publisher()
            .publish("jobs", &json!({"n": n}))
            .await
            .unwrap();
    }
    eventually(
        "the hung worker takes a job",
        Duration::from_secs(10),
        || !log.lock().unwrap().is_empty(),
    )
    .await;
    let mut workers = vec![hung];
    for name in ["a", "b"] {
        workers.push(once_worker(broker.clone(), name, log.clone(), false).await);
    }
    for n in 10..300 {
        source
            .publisher()
            .publish("jobs", &json!({"n": n}))
            .await
            .unwrap();
    }
    let ran = |log: &[(String, u64)]| {
        let mut seen: Vec<u64> = log
            .iter()
            .filter(|(w, _)| w != "hung")
            .map(|(_, n)| *n)
            .collect();
        seen.sort_unstable();
        seen
    };
    eventually("every job run", Duration::from_secs(20), || {
        let mut seen = ran(&log.lock().unwrap());
        seen.dedup();
        seen.len() == 300
    })
    .await;
    let log = log.lock().unwrap().clone();
    assert_eq!(
        ran(&log),
        (0..300).collect::<Vec<_>>(),
        "each job exactly once on the live workers ({what})"
    );
    let claimed: u64 = workers.iter().map(|w| w.stats().once_claimed).sum();
    assert!(
        claimed >= 1,
        "the hung worker's jobs were taken over ({what}): {claimed}"
    );
}

#[tokio::test]
async fn run_once_handlers_run_each_message_on_one_worker_and_take_over_a_hung_one() {
    each_message_runs_once(MemoryBroker::new(), "memory").await;
    let redis = TestRedis::start().await.unwrap();
    each_message_runs_once(redis.broker(&namespace("once")).unwrap(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_consecutive_offsets_and_each_message_is_handled_once_in_order() {
    let redis = TestRedis::start().await.unwrap();
    let ns = namespace("concurrent");
    let (worker, log) = worker(redis.broker(&ns).unwrap(), "burst", Retention::default()).await;
    let source = publisher(redis.broker(&ns).unwrap(), "burst", Retention::default()).await;
    // 8 publishers × 200 messages at once: they queue up and go in batches.
    let tasks: Vec<_> = (0..8_u64)
        .map(|p| {
            let publisher = source.publisher();
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for i in 0..200_u64 {
                    let at = publisher
                        .publish_durable("burst", &json!({"n": p * 1000 + i}))
                        .await
                        .unwrap()
                        .unwrap();
                    offsets.push((at.offset, p * 1000 + i));
                }
                offsets
            })
        })
        .collect();
    let mut published = Vec::new();
    for task in tasks {
        let offsets = task.await.unwrap();
        // One publisher's messages get increasing offsets, in its order.
        assert!(offsets.windows(2).all(|w| w[0].0 < w[1].0));
        published.extend(offsets);
    }
    published.sort_unstable();
    let offsets: Vec<u64> = published.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=1600).collect::<Vec<_>>(),
        "consecutive, none twice"
    );
    eventually("all 1,600 handled", Duration::from_secs(20), || {
        log.lock().unwrap().len() >= 1600
    })
    .await;
    worker.wait_idle().await;
    let log = log.lock().unwrap().clone();
    let handled: Vec<(u64, u64)> = log.iter().map(|(n, offset, _)| (*offset, *n)).collect();
    assert_eq!(
        handled, published,
        "each once, in offset order, the right message at each offset"
    );
}
