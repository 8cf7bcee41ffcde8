//! What a durable channel costs against a plain pub/sub channel, on a real Redis (`REDIS_URL`,
//! required): `cargo bench --bench durable_cost`.
//!
//! One process runs a publishing worker and a subscribing worker (one handler that counts); each
//! run publishes `DURABLE_COST_MESSAGES` messages (default 50,000, about 100 bytes),
//! `DURABLE_COST_CONCURRENCY` at a time (default 64; 1 is the worst case for a durable channel,
//! whose publishes then never share a call of the script), and waits until the subscriber has
//! handled them all. Reported per message: this process's CPU
//! (publish + receive + dispatch, user + system, from `/proc/self/stat`), Redis's CPU
//! (`INFO cpu`), and the wall time; plain and durable alternate, `DURABLE_COST_RUNS` times each
//! (default 3), and the medians are printed. Then Redis's memory per retained message: `MEMORY
//! USAGE` of a durable channel's stream holding 10,000 messages, divided by 10,000.

#[path = "support/redis_cpu.rs"]
mod redis_cpu;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis_cpu::redis_cpu_seconds;
use serde_json::json;
use switchboard::broker::{RedisBroker, Retention};
use switchboard::prelude::*;

fn cpu_ticks_self() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ: 100 on Linux.
    100.0
}

struct Run {
    process_us: f64,
    redis_us: f64,
    wall_us: f64,
}

async fn run(url: &str, durable: bool, messages: u64, round: usize, concurrency: u64) -> Run {
    let namespace = format!("durable-cost-{}-{round}-{durable}", std::process::id());
    let broker = RedisBroker::from_url(url).unwrap().namespace(namespace);
    let retention = Retention::new().messages(messages + 1);
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let mut worker = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker.clone())
        .queue_capacity(1 << 20)
        .subscriber(Subscriber::channels(["ledger"]).name("count").handle(
            move |Message(m): Message| {
                let counter = counter.clone();
                async move {
                    std::hint::black_box(m);
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            },
        ));
    let mut source = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .worker_id("source")
        .broker(broker);
    if durable {
        worker = worker.durable("ledger", retention);
        source = source.durable("ledger", retention);
    }
    let worker = worker.build().unwrap().start().await.unwrap();
    let source = source.build().unwrap().start().await.unwrap();
    let publisher = source.publisher();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let padding = "x".repeat(64);
    let (cpu0, redis0, start) = (
        cpu_ticks_self(),
        redis_cpu_seconds(&mut conn).await,
        Instant::now(),
    );
    let mut n = 0;
    while n < messages {
        let batch = (messages - n).min(concurrency);
        let sends = (n..n + batch).map(|i| {
            let publisher = publisher.clone();
            let message = json!({"n": i, "pad": padding});
            async move { publisher.publish("ledger", &message).await.unwrap() }
        });
        join_all(sends).await;
        n += batch;
    }
    while handled.load(Ordering::Relaxed) < messages {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never handled them all"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = start.elapsed();
    let cpu = (cpu_ticks_self() - cpu0) as f64 / ticks_per_second();
    let redis = redis_cpu_seconds(&mut conn).await - redis0;
    assert_eq!(worker.stats().durable_lost, 0);
    worker.shutdown().await;
    source.shutdown().await;
    let per = |s: f64| s * 1e6 / messages as f64;
    Run {
        process_us: per(cpu),
        redis_us: per(redis),
        wall_us: per(wall.as_secs_f64()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("durable_cost: set REDIS_URL to a Redis server (nothing measured)");
        return;
    };
    let messages: u64 = std::env::var("DURABLE_COST_MESSAGES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(50_000);
    let runs: usize = std::env::var("DURABLE_COST_RUNS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3);
    let concurrency: u64 = std::env::var("DURABLE_COST_CONCURRENCY")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(64)
        .max(1);
    // One warm-up of each, not counted.
    run(&url, false, messages / 10, 0, concurrency).await;
    run(&url, true, messages / 10, 0, concurrency).await;
    let (mut plain, mut durable) = (Vec::new(), Vec::new());
    for round in 1..=runs {
        plain.push(run(&url, false, messages, round, concurrency).await);
        durable.push(run(&url, true, messages, round, concurrency).await);
    }
    let show = |name: &str, runs: &[Run]| {
        let p = median(runs.iter().map(|r| r.process_us).collect());
        let r = median(runs.iter().map(|r| r.redis_us).collect());
        let w = median(runs.iter().map(|r| r.wall_us).collect());
        println!(
            "{name:8} process CPU {p:6.2} µs/msg ({:?}), Redis CPU {r:6.2} µs/msg ({:?}), total {:6.2} µs/msg, wall {w:6.2} µs/msg",
            runs.iter().map(|r| (r.process_us * 100.0).round() / 100.0).collect::<Vec<_>>(),
            runs.iter().map(|r| (r.redis_us * 100.0).round() / 100.0).collect::<Vec<_>>(),
            p + r
        );
        (p, r)
    };
    println!("{messages} messages per run, {concurrency} at a time, {runs} runs each, medians:");
    let (pp, pr) = show("plain", &plain);
    let (dp, dr) = show("durable", &durable);
    println!(
        "durable / plain: process {:.2}x, Redis {:.2}x, total {:.2}x",
        dp / pp,
        dr / pr,
        (dp + dr) / (pp + pr)
    );

    // Memory per retained message.
    let retained = 10_000_u64;
    let namespace = format!("durable-cost-memory-{}", std::process::id());
    let broker = RedisBroker::from_url(&url)
        .unwrap()
        .namespace(namespace.clone());
    let source = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .worker_id("source")
        .broker(broker)
        .durable("ledger", Retention::new().messages(retained))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let padding = "x".repeat(64);
    for i in 0..retained {
        source
            .publisher()
            .publish("ledger", &json!({"n": i, "pad": padding}))
            .await
            .unwrap();
    }
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("switchboard:stream:{{{namespace}:ledger}}");
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let payload = serde_json::to_vec(&json!({"workerId": "source", "n": 5000, "pad": padding}))
        .unwrap()
        .len();
    println!(
        "Redis memory: {bytes} bytes for {retained} retained messages of about {payload} bytes: {:.1} bytes per message",
        bytes as f64 / retained as f64
    );
    source.shutdown().await;
}
