//! Sharded pub/sub on one Redis Cluster node against three primaries:
//! `cargo bench --bench cluster_throughput` (needs `redis-server` and `redis-cli` on `PATH`).
//!
//! For each topology (a one-node cluster holding every slot; three primaries made by
//! `redis-cli --cluster create`), one process runs a subscribing worker whose `"*"` handler counts
//! (so it reads every partition) and a publishing worker. The publishing worker runs
//! `CLUSTER_BENCH_PUBLISHERS` independent publishers (default 1,000), each publishing messages of
//! about 60 bytes on a channel of its own and waiting for each answer before the next, as web
//! requests do: a node that is behind holds up only the publishers whose channels it owns. After a
//! second for the queues to fill, the bench counts what the subscribing worker handles in a window
//! of `CLUSTER_BENCH_SECONDS` (default 5), then stops the publishers and checks that every answered
//! publish is handled. With `CLUSTER_BENCH_PER_NODE=1`, each topology gets that many publishers
//! per node (the load grows with the cluster). The topologies take turns, run by run; reported per topology, medians of
//! `CLUSTER_BENCH_RUNS` runs (default 3):
//! - messages delivered per second in the window;
//! - the CPU each Redis node spent per message in the window (`INFO cpu`, user + system), summed
//!   and the busiest node's;
//! - what the busiest node would carry with a core of its own: 1 s divided by its CPU per message.
//!
//! A machine with fewer cores than Redis nodes plus clients cannot saturate three Redis nodes:
//! the clients are the limit. So each Redis node is given a CPU budget of its own, as if each ran
//! on a machine of its own: `CLUSTER_BENCH_NODE_CPU` percent of one core (default 3; 0 for none),
//! through a cgroup (v1 `cpu` controller, `cpu.cfs_quota_us`), when `/sys/fs/cgroup/cpu` is
//! writable. Then Redis, not the clients, saturates, and the delivered rate is Redis's.

#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis_cpu.rs"]
mod redis_cpu;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::broker::RedisClusterBroker;
use switchboard::prelude::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CPU the Redis node on `port` has used, in seconds.
async fn cpu_seconds(port: u16) -> f64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis_cpu::redis_cpu_seconds(&mut conn).await
}

/// A one-node cluster: a cluster-enabled `redis-server` that owns all 16,384 slots.
struct OneNode {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl OneNode {
    async fn start() -> Self {
        let port = redis_cluster::free_cluster_port();
        let dir =
            std::env::temp_dir().join(format!("switchboard-bench-one-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(conn) = client.get_multiplexed_async_connection().await {
                    break conn;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut conn)
            .await
            .unwrap();
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "the one-node cluster is not ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port, dir }
    }
}

impl Drop for OneNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gives the Redis node on `port` `percent` of one core, in a cgroup of its own; false when the
/// cgroup cannot be made.
async fn limit_cpu(port: u16, percent: u64) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("INFO server has process_id")
        .trim()
        .to_owned();
    let group = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/cpu/switchboard-bench-{}-{port}",
        std::process::id()
    ));
    let made = std::fs::create_dir_all(&group).is_ok()
        && std::fs::write(group.join("cpu.cfs_period_us"), "100000").is_ok()
        && std::fs::write(group.join("cpu.cfs_quota_us"), (percent * 1000).to_string()).is_ok()
        && std::fs::write(group.join("cgroup.procs"), &pid).is_ok();
    if !made {
        let _ = std::fs::remove_dir(&group);
    }
    made
}

/// Removes the cgroups when dropped, a panic included.
struct Cgroups;

impl Drop for Cgroups {
    fn drop(&mut self) {
        remove_cgroups();
    }
}

/// Moves the bench's Redis nodes back to the root group and removes their cgroups.
fn remove_cgroups() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup/cpu") else {
        return;
    };
    let mine = format!("switchboard-bench-{}-", std::process::id());
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&mine) {
            if let Ok(pids) = std::fs::read_to_string(entry.path().join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", pid);
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

struct Run {
    per_second: f64,
    /// Redis CPU per message, summed over the nodes, in µs.
    total_us: f64,
    /// The busiest node's CPU per message, in µs.
    busiest_us: f64,
}

async fn run(ports: &[u16], round: u64, publishers: u64, window: Duration) -> Run {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let namespace = format!("bench-{}-{round}", std::process::id());
    let broker = || {
        RedisClusterBroker::from_urls(&urls)
            .unwrap()
            .namespace(namespace.clone())
            .partitions(env_or("CLUSTER_BENCH_PARTITIONS", 128) as usize)
            // Publishes queue up in front of a saturated Redis: that is the point.
            .publish_timeout(Duration::from_secs(60))
    };
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let worker = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker())
        .subscriber(Subscriber::channels(["*"]).name("count").handle(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        }))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let sender = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let publisher = sender.publisher();
    // Warm the publisher's connections up.
    publisher.publish("warmup", &json!({})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "the warm-up message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handled.store(0, Ordering::Relaxed);
    // Independent publishers, each on a channel of its own and each waiting only for its own
    // publish, as web requests do: a node that is behind holds up its own channels' publishers,
    // never the others'. (A single stream with one cap on what is in flight would fill up with
    // the slowest node's publishes and starve the others: it measures the slowest node.)
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let publisher = publisher.clone();
            let stop = stop.clone();
            let published = published.clone();
            tokio::spawn(async move {
                let channel = format!("c{p}");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    publisher
                        .publish(&channel, &json!({ "i": i, "pad": "0123456789" }))
                        .await
                        .unwrap();
                    published.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    // A second for every queue to fill, then the window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut before = Vec::new();
    for port in ports {
        before.push(cpu_seconds(*port).await);
    }
    let handled_before = handled.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let messages = handled.load(Ordering::Relaxed) - handled_before;
    let wall = started.elapsed();
    let mut per_node_us = Vec::new();
    for (port, before) in ports.iter().zip(before) {
        per_node_us.push((cpu_seconds(*port).await - before) * 1e6 / messages as f64);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    // Nothing lost: every publish that was answered is handled, or counted as dropped by a
    // dispatch queue that was full (the clients, not Redis, were then the limit).
    let total = published.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    let dropped = loop {
        let dropped = worker.stats().dropped_queue_full;
        if handled.load(Ordering::Relaxed) + dropped >= total {
            break dropped;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {total} handled; the subscribing worker's stats: {:?}",
            handled.load(Ordering::Relaxed),
            worker.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    if dropped > 0 {
        println!("  {dropped} of {total} messages dropped by the subscribing worker's full dispatch queue: the clients were the limit");
    }
    // A sanity check: publishes go straight to the slot's owner (no redirection).
    for port in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !info.contains("errorstat_MOVED"),
            "node {port} answered MOVED: {info}"
        );
    }
    worker.shutdown().await;
    sender.shutdown().await;
    Run {
        per_second: messages as f64 / wall.as_secs_f64(),
        total_us: per_node_us.iter().sum(),
        busiest_us: per_node_us.iter().copied().fold(0.0, f64::max),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn show(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[tokio::main]
async fn main() {
    let publishers = env_or("CLUSTER_BENCH_PUBLISHERS", 1000);
    let per_node = env_or("CLUSTER_BENCH_PER_NODE", 0) == 1;
    let window = Duration::from_secs(env_or("CLUSTER_BENCH_SECONDS", 5));
    let runs = env_or("CLUSTER_BENCH_RUNS", 3);
    // Redis's default node timeout (15 s): the cluster bus then pings about once a second, which
    // costs next to nothing even within a small CPU budget.
    std::env::set_var("SWITCHBOARD_CLUSTER_NODE_TIMEOUT_MS", "15000");
    let one = OneNode::start().await;
    let Some(three) = redis_cluster::RedisCluster::start(3, 0).await else {
        eprintln!("SKIPPED: redis-server or redis-cli not found");
        return;
    };
    let three_ports = three.primaries();
    let node_cpu = env_or("CLUSTER_BENCH_NODE_CPU", 3);
    let _cgroups = Cgroups;
    if node_cpu > 0 {
        let mut limited = true;
        for port in std::iter::once(one.port).chain(three_ports.iter().copied()) {
            limited &= limit_cpu(port, node_cpu).await;
        }
        if limited {
            println!(
                "each Redis node limited to {node_cpu}% of one core (cgroup cpu.cfs_quota_us)"
            );
        } else {
            remove_cgroups();
            println!("no cgroup for the Redis nodes (is /sys/fs/cgroup/cpu writable?): not limited, the clients may be the limit");
        }
    }
    // The topologies take turns, run by run, so that a change in the machine's load falls on both.
    let topologies = [("1 node", vec![one.port]), ("3 primaries", three_ports)];
    let mut runs_of: Vec<Vec<Run>> = topologies.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for ((_, ports), done) in topologies.iter().zip(&mut runs_of) {
            // `CLUSTER_BENCH_PER_NODE=1`: as many publishers per node on every topology (the
            // load grows with the cluster), instead of as many in all.
            let publishers = if per_node {
                publishers * ports.len() as u64
            } else {
                publishers
            };
            done.push(run(ports, round, publishers, window).await);
        }
    }
    let mut results = Vec::new();
    for ((name, _), done) in topologies.iter().zip(&runs_of) {
        let rates: Vec<f64> = done.iter().map(|r| r.per_second).collect();
        let totals: Vec<f64> = done.iter().map(|r| r.total_us).collect();
        let busiest: Vec<f64> = done.iter().map(|r| r.busiest_us).collect();
        let saturation: Vec<f64> = busiest.iter().map(|us| 1e6 / us).collect();
        println!(
            "{name}: delivered {} msg/s (median {:.0}); Redis CPU per message, all nodes {} µs (median {:.2}), busiest node {} µs (median {:.2}); with a core per node, the busiest would saturate at {:.0} msg/s",
            show(&rates),
            median(rates.clone()),
            show(&totals),
            median(totals),
            show(&busiest),
            median(busiest.clone()),
            median(saturation.clone()),
        );
        results.push((median(rates), median(saturation)));
    }
    remove_cgroups();
    println!(
        "3 primaries / 1 node: delivered {:.2}x, Redis saturation {:.2}x",
        results[1].0 / results[0].0,
        results[1].1 / results[0].1
    );
}
