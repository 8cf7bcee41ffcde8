//! Durable channels under attack: a peer that `PUBLISH`es spoofed positions and garbage on a
//! durable channel, a Redis that loses its data while messages flow, two publishers racing while a
//! worker's link is cut, handlers that panic, a stream trimmed to nothing while a worker is away.
//! Every test checks what each worker handled, message by message, against what was published.
//!
//! Against the Redis at `REDIS_URL` when it is set (each test in a namespace of its own; data loss
//! there is the namespace's keys deleted, never a `FLUSHALL` of the shared server), else the mock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::broker::{Position, RedisBroker, Retention};
use switchboard::prelude::*;
use switchboard::testing::{FaultProxy, MockRedis, TestRedis};
use switchboard::Running;

/// One message a handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    n: u64,
    /// `None` when the message came without a position (not a durable one).
    epoch: Option<String>,
    offset: u64,
    recovered: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Real messages have an `n` below this; spoofed ones at or above it.
const SPOOF: u64 = 1_000_000;

fn namespace(test: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "durable-adv-{test}-{:08x}",
        t.subsec_nanos() ^ std::process::id().rotate_left(16)
    )
}

/// A worker with one durable handler on `channel` that logs each message with an `n` (before
/// panicking on the ones `panics_on` picks).
async fn worker(
    broker: impl switchboard::Broker,
    channel: &str,
    retention: Retention,
    panics_on: fn(u64) -> bool,
) -> (Running, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let running =
        Switchboard::builder()
            .without_linked_handlers()
            .framework_channels(false)
            .broker(broker)
            .durable(channel, retention)
            .subscriber(Subscriber::channels([channel]).name("ledger").handle(
                move |cx: Context| {
                    let sink = sink.clone();
                    async move {
                        let Some(n) = cx.message()["n"].as_u64() else {
                            return;
                        };
                        let at = cx.stream_position();
                        sink.lock().unwrap().push(Seen {
                            n,
                            epoch: at.as_ref().map(|at| at.epoch.to_string()),
                            offset: at.as_ref().map_or(0, |at| at.offset),
                            recovered: at.as_ref().is_some_and(|at| at.recovered),
                        });
                        assert!(!panics_on(n), "the handler fails on message {n}");
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

fn never(_: u64) -> bool {
    false
}

/// A worker that only publishes, named `name` (it has the same durable rule, as workers of one
/// binary do).
async fn publisher(
    broker: impl switchboard::Broker,
    name: &str,
    channel: &str,
    retention: Retention,
) -> Running {
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .worker_id(name)
        .broker(broker)
        .durable(channel, retention)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// A broker through `proxy`, quick to reconnect.
fn behind(proxy: &FaultProxy, ns: &str) -> RedisBroker {
    RedisBroker::from_url(&format!("redis://{}", proxy.addr()))
        .unwrap()
        .namespace(ns)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .publish_timeout(Duration::from_millis(1_000))
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The channel on Redis (the broker's namespace prefix, `<namespace>:`, before it), and its
/// stream and meta keys.
fn on_redis(ns: &str, channel: &str) -> (String, String, String) {
    let on_redis = format!("{ns}:{channel}");
    (
        format!("switchboard:stream:{{{on_redis}}}"),
        format!("switchboard:meta:{{{on_redis}}}"),
        on_redis,
    )
}

async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real messages handled (`n` below [`SPOOF`]), in order.
fn real(log: &Log) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.n < SPOOF)
        .cloned()
        .collect()
}

fn ns_of(seen: &[Seen]) -> Vec<u64> {
    seen.iter().map(|s| s.n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_and_garbage_publishes_on_a_durable_channel_do_not_make_the_worker_skip_real_ones()
{
    const ROUNDS: u64 = 20;
    let redis = TestRedis::start().await.unwrap();
    let ns = namespace("spoof");
    let (victim, log) = worker(
        redis.broker(&ns).unwrap(),
        "ledger",
        Retention::default(),
        never,
    )
    .await;
    let source = publisher(
        redis.broker(&ns).unwrap(),
        "source",
        "ledger",
        Retention::default(),
    )
    .await;
    let (_, _, channel) = on_redis(&ns, "ledger");
    let mut peer = raw_connection(redis.url()).await;
    let first = source
        .publisher()
        .publish_durable("ledger", &json!({"n": 0}))
        .await
        .unwrap()
        .unwrap();
    eventually("the first message", Duration::from_secs(10), || {
        ns_of(&real(&log)) == [0]
    })
    .await;
    let epoch = first.epoch.to_string();

    // Each round: a real message, then every kind of spoof on the channel, in a PUBLISH of their
    // own (not through the script: the stream never holds them).
    let mut published: Vec<(u64, Position)> = vec![(0, first)];
    for round in 0..ROUNDS {
        let n = round + 1;
        let at = source
            .publisher()
            .publish_durable("ledger", &json!({"n": n}))
            .await
            .unwrap()
            .unwrap();
        published.push((n, at.clone()));
        let spoofs: Vec<Vec<u8>> = vec![
            // The real epoch, the largest offset: every later offset would look handled.
            format!(
                r#"{{"streamEpoch":"{epoch}","streamOffset":{},"n":{}}}"#,
                u64::MAX,
                SPOOF + 1
            )
            .into_bytes(),
            // The real epoch, an offset far beyond any this test publishes.
            format!(
                r#"{{"streamEpoch":"{epoch}","streamOffset":{},"n":{}}}"#,
                at.offset + 10_000,
                SPOOF + 2
            )
            .into_bytes(),
            // Offset 0, and an offset too large for a u64.
            format!(
                r#"{{"streamEpoch":"{epoch}","streamOffset":0,"n":{}}}"#,
                SPOOF + 3
            )
            .into_bytes(),
            format!(
                r#"{{"streamEpoch":"{epoch}","streamOffset":99999999999999999999999,"n":{}}}"#,
                SPOOF + 4
            )
            .into_bytes(),
            // An epoch the stream never had, at an offset behind and one ahead of the real one.
            format!(
                r#"{{"streamEpoch":"b0905b0905b09050","streamOffset":1,"n":{}}}"#,
                SPOOF + 5
            )
            .into_bytes(),
            format!(
                r#"{{"streamEpoch":"b0905e90c4{round:06}","streamOffset":{},"n":{}}}"#,
                at.offset + 3,
                SPOOF + 6
            )
            .into_bytes(),
            format!(
                r#"{{"streamEpoch":"bogus","streamOffset":{},"n":{}}}"#,
                u64::MAX,
                SPOOF + 7
            )
            .into_bytes(),
            // Not JSON: cut after the position, binary, empty, and an epoch that is not one.
            format!(r#"{{"streamEpoch":"{epoch}","streamOffset":{}"#, u64::MAX).into_bytes(),
            b"{\"streamEpoch\":\"\xff\x00\xfe\",\"streamOffset\":7,\"n\":1".to_vec(),
            Vec::new(),
            b"not json at all".to_vec(),
            format!(
                r#"{{"streamEpoch":"{epoch}\",\"streamOffset\":{},"n":{}}}"#,
                u64::MAX,
                SPOOF + 8
            )
            .into_bytes(),
        ];
        for spoof in spoofs {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(spoof)
                .query_async(&mut peer)
                .await
                .unwrap();
        }
    }
    // One last real message after the last spoofs.
    let last = source
        .publisher()
        .publish_durable("ledger", &json!({"n": ROUNDS + 1}))
        .await
        .unwrap()
        .unwrap();
    published.push((ROUNDS + 1, last));
    eventually("every real message", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(ROUNDS + 1)
    })
    .await;
    victim.wait_idle().await;

    let handled = real(&log);
    assert_eq!(
        handled
            .iter()
            .map(|s| (s.n, s.epoch.clone().unwrap(), s.offset))
            .collect::<Vec<_>>(),
        published
            .iter()
            .map(|(n, at)| (*n, at.epoch.to_string(), at.offset))
            .collect::<Vec<_>>(),
        "each real message once, in order, at its own position"
    );
    // A position in the real epoch that its stream does not hold never reaches a handler: one
    // that stores `(epoch, offset)` to skip what is not newer would skip every real message after.
    let all = log.lock().unwrap().clone();
    let top = published.last().unwrap().1.offset;
    assert!(
        all.iter()
            .all(|s| s.epoch.as_deref() != Some(epoch.as_str()) || s.offset <= top),
        "a spoofed position of the real epoch was handled: {all:?}"
    );
    let stats = victim.stats();
    assert_eq!(
        stats.durable_lost, 0,
        "nothing real was lost, so nothing is counted lost: {stats:?}"
    );
    assert!(
        stats.invalid_payloads > 0,
        "the garbage was seen and dropped"
    );

    // And the worker is still well: the next message is handled at once.
    source
        .publisher()
        .publish("ledger", &json!({"n": ROUNDS + 2}))
        .await
        .unwrap();
    eventually("a message after it all", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(ROUNDS + 2)
    })
    .await;
    victim.shutdown().await;
    source.shutdown().await;
}

/// The Redis of a data-loss test: the mock, whose restart loses every key and connection, or the
/// shared server at `REDIS_URL` behind a proxy, whose "restart" is the proxy cutting every
/// connection and the test's own keys deleted (never a `FLUSHALL` of a shared server).
struct Lossy {
    /// `REDIS_URL`'s server, when set.
    real: Option<TestRedis>,
    /// Else the mock (its own handle: [`MockRedis::restart`]).
    mock: Option<MockRedis>,
    /// In front of either, for workers that must see the restart.
    proxy: FaultProxy,
}

impl Lossy {
    async fn start() -> Self {
        let redis = TestRedis::start().await.unwrap();
        let (real, mock) = if redis.is_mock() {
            (None, Some(MockRedis::start().await))
        } else {
            (Some(redis), None)
        };
        let target = match (&real, &mock) {
            (Some(real), _) => real.addr(),
            (None, Some(mock)) => mock.addr(),
            (None, None) => unreachable!(),
        };
        let proxy = FaultProxy::start(target).await.unwrap();
        Self { real, mock, proxy }
    }

    /// The server's own URL (not through the proxy).
    fn url(&self) -> String {
        match (&self.real, &self.mock) {
            (Some(real), _) => real.url().to_owned(),
            (None, Some(mock)) => mock.url(),
            (None, None) => unreachable!(),
        }
    }

    /// Every key of `channel` in `ns` gone while connections stay up (a `FLUSHALL` on the
    /// test's private mock).
    async fn flush(&self, conn: &mut redis::aio::MultiplexedConnection, ns: &str, channel: &str) {
        if self.mock.is_some() {
            let _: () = redis::cmd("FLUSHALL").query_async(conn).await.unwrap();
        } else {
            let (stream, meta, _) = on_redis(ns, channel);
            let _: () = redis::cmd("DEL")
                .arg(stream)
                .arg(meta)
                .query_async(conn)
                .await
                .unwrap();
        }
    }

    /// A restart without persistence: every connection dropped, every key lost.
    async fn restart(&self, ns: &str, channel: &str) {
        match &self.mock {
            Some(mock) => mock.restart().await,
            None => {
                self.proxy.cut_for(Duration::from_millis(200));
                let mut conn = raw_connection(&self.url()).await;
                self.flush(&mut conn, ns, channel).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_loses_its_data_under_a_connected_worker_starts_new_epochs_and_loses_nothing()
{
    const TOTAL: u64 = 600;
    let lab = Lossy::start().await;
    let ns = namespace("flush");
    let url = lab.url();
    let broker = || RedisBroker::from_url(&url).unwrap().namespace(ns.clone());
    let (victim, log) = worker(broker(), "ledger", Retention::default(), never).await;
    let source = publisher(broker(), "source", "ledger", Retention::default()).await;
    let mut conn = raw_connection(&url).await;
    let mut published = Vec::new();
    for n in 0..TOTAL {
        if n > 0 && n % 150 == 0 {
            // Every key gone (the worker's connection stays up): the next publish starts a new
            // epoch from offset 1.
            lab.flush(&mut conn, &ns, "ledger").await;
        }
        let at = source
            .publisher()
            .publish_durable("ledger", &json!({"n": n}))
            .await
            .unwrap()
            .unwrap();
        published.push((n, at.epoch.to_string(), at.offset));
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let epochs: std::collections::HashSet<_> = published.iter().map(|(_, e, _)| e).collect();
    assert_eq!(epochs.len(), 4, "each loss started a new epoch");
    assert_eq!(published[150].2, 1, "from offset 1");
    eventually("every message", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(TOTAL - 1)
    })
    .await;
    victim.wait_idle().await;
    let handled: Vec<(u64, String, u64)> = real(&log)
        .into_iter()
        .map(|s| (s.n, s.epoch.unwrap(), s.offset))
        .collect();
    assert_eq!(
        handled, published,
        "each message once, in order, at its position"
    );
    let stats = victim.stats();
    assert_eq!(stats.durable_lost, 0, "{stats:?}");
    victim.shutdown().await;
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_its_data_while_messages_flow_goes_on_with_the_new_epoch() {
    let lab = Lossy::start().await;
    let ns = namespace("restart");
    let (victim, log) = worker(
        behind(&lab.proxy, &ns),
        "ledger",
        Retention::default(),
        never,
    )
    .await;
    let source = publisher(
        behind(&lab.proxy, &ns),
        "source",
        "ledger",
        Retention::default(),
    )
    .await;

    // A steady flow of messages (a failed publish is not retried: its `n` is skipped, and may or
    // may not have been published) while Redis restarts and forgets everything, twice.
    let flow = {
        let publisher = source.publisher();
        tokio::spawn(async move {
            let mut published = Vec::new();
            let mut failed = 0;
            for n in 0..600_u64 {
                match publisher.publish_durable("ledger", &json!({"n": n})).await {
                    Ok(at) => {
                        let at = at.unwrap();
                        published.push((n, at.epoch.to_string(), at.offset));
                    }
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (published, failed)
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lab.restart(&ns, "ledger").await;
    }
    let (published, failed) = tokio::time::timeout(Duration::from_secs(30), flow)
        .await
        .expect("publishing ends")
        .unwrap();
    let last_epoch = published.last().unwrap().1.clone();
    let first_epoch = published[0].1.clone();
    assert_ne!(first_epoch, last_epoch, "the restarts started new epochs");
    let after: Vec<(u64, String, u64)> = published
        .iter()
        .filter(|(_, e, _)| *e == last_epoch)
        .cloned()
        .collect();
    assert_eq!(
        after.iter().map(|(_, _, o)| *o).collect::<Vec<_>>(),
        (1..=after.len() as u64).collect::<Vec<_>>(),
        "the last epoch's offsets from 1"
    );
    let last_n = published.last().unwrap().0;
    eventually("the last epoch's messages", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(last_n)
    })
    .await;
    victim.wait_idle().await;

    let handled: Vec<(u64, String, u64)> = real(&log)
        .into_iter()
        .map(|s| (s.n, s.epoch.unwrap(), s.offset))
        .collect();
    let ns_handled: Vec<u64> = handled.iter().map(|(n, _, _)| *n).collect();
    assert!(
        ns_handled.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {ns_handled:?}"
    );
    // Everything published after the last loss, once, in order, at its position.
    let of_last: Vec<(u64, String, u64)> = handled
        .iter()
        .filter(|(_, e, _)| *e == last_epoch)
        .cloned()
        .collect();
    assert_eq!(of_last, after, "every message of the new epoch");
    // What was handled was published (a failed publish may have been too), at its position.
    let positions: HashMap<u64, (String, u64)> = published
        .iter()
        .map(|(n, e, o)| (*n, (e.clone(), *o)))
        .collect();
    for (n, e, o) in &handled {
        if let Some(at) = positions.get(n) {
            assert_eq!(at, &(e.clone(), *o), "message {n} at its own position");
        }
    }
    // What the worker counts lost was published and not handled (the older epochs' last
    // messages may go uncounted: their offsets were lost with the data).
    let stats = victim.stats();
    let unhandled = (published.len() as u64 + failed)
        .checked_sub(handled.len() as u64)
        .expect("no more handled than published");
    assert!(
        stats.durable_lost <= unhandled,
        "{} counted lost, {unhandled} not handled: {stats:?}",
        stats.durable_lost
    );
    assert!(stats.reconnects >= 2, "{stats:?}");
    victim.shutdown().await;
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_racing_while_a_subscriber_is_cut_twice_each_message_once_per_worker() {
    const EACH: u64 = 500;
    const TASKS: u64 = 4;
    let redis = TestRedis::start().await.unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let ns = namespace("race");
    let retention = Retention::new().messages(10_000);
    let (victim, victim_log) = worker(behind(&proxy, &ns), "ledger", retention, never).await;
    let (steady, steady_log) = worker(redis.broker(&ns).unwrap(), "ledger", retention, never).await;
    let a = publisher(redis.broker(&ns).unwrap(), "pub-a", "ledger", retention).await;
    let b = publisher(redis.broker(&ns).unwrap(), "pub-b", "ledger", retention).await;

    // Both publishers at once, each from TASKS tasks: 500 messages each (`n`: publisher * 10,000
    // + its own count).
    let mut tasks = Vec::new();
    for (p, source) in [(1_u64, &a), (2, &b)] {
        for t in 0..TASKS {
            let publisher = source.publisher();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in (t..EACH).step_by(TASKS as usize) {
                    let n = p * 10_000 + i;
                    let at = publisher
                        .publish_durable("ledger", &json!({"n": n}))
                        .await
                        .unwrap()
                        .unwrap();
                    mine.push((at.offset, n, at.epoch.to_string()));
                    // (about a second of publishing, for both cuts to fall inside it)
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
                mine
            }));
        }
    }
    // Two cuts of the subscriber's link while they publish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut_for(Duration::from_millis(300));
    eventually("the first reconnect", Duration::from_secs(10), || {
        victim.stats().reconnects >= 1
    })
    .await;
    proxy.cut_for(Duration::from_millis(300));
    let mut published = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "one task's offsets increase"
        );
        published.extend(mine);
    }
    published.sort_unstable();
    assert_eq!(
        published.iter().map(|(o, _, _)| *o).collect::<Vec<_>>(),
        (1..=2 * EACH).collect::<Vec<_>>(),
        "consecutive offsets, none twice"
    );
    eventually("the second reconnect", Duration::from_secs(10), || {
        victim.stats().reconnects >= 2
    })
    .await;
    let epoch = &published[0].2;
    assert!(published.iter().all(|(_, _, e)| e == epoch), "one epoch");
    let expected: Vec<(u64, u64)> = published.iter().map(|(o, n, _)| (*o, *n)).collect();
    for (running, log, what) in [
        (&victim, &victim_log, "the worker cut off"),
        (&steady, &steady_log, "the steady worker"),
    ] {
        eventually(what, Duration::from_secs(15), || {
            log.lock().unwrap().len() as u64 >= 2 * EACH
        })
        .await;
        running.wait_idle().await;
        let handled: Vec<(u64, u64)> = real(log).iter().map(|s| (s.offset, s.n)).collect();
        assert_eq!(
            handled, expected,
            "{what}: each message once, in offset order"
        );
        assert_eq!(running.stats().durable_lost, 0, "{what}");
    }
    let stats = victim.stats();
    eprintln!(
        "cut twice: {} recovered from the stream, {} live copies skipped",
        stats.durable_recovered, stats.durable_duplicates
    );
    for running in [victim, steady, a, b] {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_on_some_messages_does_not_stop_or_replay_its_durable_channel() {
    const TOTAL: u64 = 120;
    let redis = TestRedis::start().await.unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let ns = namespace("panic");
    // Every fifth message makes the handler panic (after it logged the attempt).
    let (victim, log) = worker(behind(&proxy, &ns), "ledger", Retention::default(), |n| {
        n % 5 == 2
    })
    .await;
    let source = publisher(
        redis.broker(&ns).unwrap(),
        "source",
        "ledger",
        Retention::default(),
    )
    .await;
    for n in 0..TOTAL {
        if n == TOTAL / 3 {
            // A cut: what follows until the reconnect (panicking ones among them) is read from
            // the stream.
            proxy.cut_for(Duration::from_millis(300));
        }
        source
            .publisher()
            .publish("ledger", &json!({"n": n}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    eventually("every message tried", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(TOTAL - 1)
    })
    .await;
    victim.wait_idle().await;
    // Let a replay (there must be none) show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.wait_idle().await;
    let seen = real(&log);
    assert_eq!(
        ns_of(&seen),
        (0..TOTAL).collect::<Vec<_>>(),
        "each message tried once, in order, the ones after a panic too"
    );
    assert!(seen.iter().all(|s| s.offset == s.n + 1));
    let stats = victim.stats();
    assert_eq!(stats.handler_panics, TOTAL / 5, "{stats:?}");
    assert_eq!(stats.durable_lost, 0, "{stats:?}");
    assert!(stats.reconnects >= 1, "{stats:?}");
    victim.shutdown().await;
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_to_nothing_while_the_worker_is_away_is_counted_lost_and_new_ones_follow()
{
    let redis = TestRedis::start().await.unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let ns = namespace("xtrim");
    let (victim, log) = worker(behind(&proxy, &ns), "ledger", Retention::default(), never).await;
    let source = publisher(
        redis.broker(&ns).unwrap(),
        "source",
        "ledger",
        Retention::default(),
    )
    .await;
    let publish = |n: u64| {
        let publisher = source.publisher();
        async move {
            publisher
                .publish_durable("ledger", &json!({"n": n}))
                .await
                .unwrap()
                .unwrap()
        }
    };
    publish(0).await;
    eventually("the first message", Duration::from_secs(10), || {
        ns_of(&real(&log)) == [0]
    })
    .await;

    // Away: 20 messages go to the stream only, the stream is trimmed to nothing, 5 more follow.
    proxy.cut_for(Duration::from_secs(3));
    for n in 1..=20 {
        publish(n).await;
    }
    let (stream, _, _) = on_redis(&ns, "ledger");
    let mut conn = raw_connection(redis.url()).await;
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(trimmed, 21, "the whole stream");
    for n in 21..=25 {
        publish(n).await;
    }
    assert_eq!(
        victim.stats().reconnects,
        0,
        "(the worker must still be away for this test to mean anything)"
    );
    eventually("the worker back", Duration::from_secs(10), || {
        victim.stats().reconnects >= 1
    })
    .await;
    eventually("what the stream kept", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(25)
    })
    .await;
    for n in 26..=30 {
        publish(n).await;
    }
    eventually("the new messages", Duration::from_secs(10), || {
        real(&log).last().map(|s| s.n) == Some(30)
    })
    .await;
    victim.wait_idle().await;
    let seen = real(&log);
    assert_eq!(
        ns_of(&seen),
        [0].into_iter().chain(21..=30).collect::<Vec<_>>(),
        "the first, what was published after the trim, and the new ones; each once, in order"
    );
    assert!(seen.iter().all(|s| s.offset == s.n + 1));
    assert!(
        seen.iter()
            .filter(|s| (21..=25).contains(&s.n))
            .all(|s| s.recovered),
        "read from the stream"
    );
    assert_eq!(victim.stats().durable_lost, 20, "the trimmed messages");
    victim.shutdown().await;
    source.shutdown().await;
}
