//! `loadgen`: load generator for Switchboard's fan-out benchmark.
//!
//! Connects WebSocket clients to a server that implements the fan-out contract (the framework's
//! `fanout_bench` example or the hand-written `baseline-server`), publishes numbered, time-stamped
//! messages to Redis, and measures what the clients receive: loss, duplicates, reordering,
//! throughput, latency, and the server's CPU and memory. `--idle` measures memory per idle
//! connection instead, and `--report FILE` turns collected `RESULT` lines into a Markdown table.
//!
//! See `tools/switchboard-loadgen/README.md`.

mod client;
mod procstat;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use client::{ChurnStats, ClientStats, Progress, Shared};
use procstat::Proc;

/// Command line of `loadgen`.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Fan-out load generator for Switchboard benchmarks"
)]
struct Args {
    /// Counted WebSocket clients (or idle connections with --idle).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Messages to publish.
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Approximate size in bytes of each published JSON payload.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Messages per second; 0 publishes as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most messages published ahead of the slowest counted client (0: unlimited). Keeps the
    /// server's per-client queues (1024 frames by default) from overflowing at full speed.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Most messages sent to Redis in one pipeline (they stay in order).
    #[arg(long, default_value_t = 32)]
    pipeline: u64,
    /// Extra clients that keep connecting and disconnecting while publishing (not counted).
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Hold --clients idle connections and measure the server's memory per connection.
    #[arg(long)]
    idle: bool,
    /// Server port (ws://127.0.0.1:PORT/ws).
    #[arg(long, env = "WS_PORT", default_value_t = 8080)]
    port: u16,
    /// Full WebSocket URL (overrides --port).
    #[arg(long)]
    url: Option<String>,
    /// Redis to publish to.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
    /// Redis channel to publish on.
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
    /// Pid of the server, for its CPU time and memory (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections opened concurrently (connecting in batches avoids SYN backlog drops).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Pause after connecting, before publishing or sampling memory (ms).
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// How long to wait for frames after the last publish (s).
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Read buffer of each client connection (bytes). tungstenite zero-fills the free part of
    /// it before every read, so a large one costs CPU rather than saving it.
    #[arg(long, default_value_t = 4 * 1024)]
    read_buffer: usize,
    /// Server name recorded in the RESULT line (e.g. framework, baseline).
    #[arg(long)]
    server_name: Option<String>,
    /// Scenario name recorded in the RESULT line.
    #[arg(long)]
    scenario: Option<String>,
    /// Print a Markdown table of the RESULT lines in FILE and exit (nothing is run).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

impl Args {
    fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("ws://127.0.0.1:{}/ws", self.port))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.report {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        print!("{}", report::markdown(&text)?);
        return Ok(());
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    raise_fd_limit(args.clients + args.churn);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, 64))
        .enable_all()
        .build()?
        .block_on(async {
            if args.idle {
                run_idle(&args).await
            } else {
                run_fanout(&args).await
            }
        })
}

/// Raises the soft open-files limit to the hard limit if `connections` may need it.
fn raise_fd_limit(connections: usize) {
    let wanted = connections as u64 + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => eprintln!(
            "warning: open-files limit is {limit}, {wanted} wanted: raise `ulimit -n` (hard limit)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
}

/// Opens `count` connections in batches of `batch`; each connected one is handed to `run`,
/// whose task handle is returned. Returns the handles and the number of failed connections.
async fn connect_all<T, F, Fut>(
    url: &str,
    count: usize,
    batch: usize,
    read_buffer: usize,
    run: F,
) -> (Vec<JoinHandle<T>>, usize)
where
    T: Send + 'static,
    F: Fn(usize, client::Ws) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let url: Arc<str> = Arc::from(url);
    let mut handles = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    for start in (0..count).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(count);
        let mut connected = Vec::with_capacity(end - start);
        for i in start..end {
            let (tx, rx) = oneshot::channel::<Result<client::Ws>>();
            let url = Arc::clone(&url);
            // Connect in a task (so a batch connects concurrently), then hand the stream back.
            tokio::spawn(async move {
                let _ = tx.send(client::connect(&url, read_buffer).await);
            });
            connected.push((i, rx));
        }
        for (i, rx) in connected {
            match rx.await {
                Ok(Ok(ws)) => handles.push(tokio::spawn(run(i, ws))),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => failed += 1,
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("warning: {failed} connection(s) failed; first error: {e}");
    }
    (handles, failed)
}

/// Server CPU and memory, when its pid is known.
#[derive(Debug, Clone, Copy)]
struct ServerSample {
    cpu_s: f64,
    rss_kib: u64,
}

fn sample_server(pid: Option<u32>) -> Option<ServerSample> {
    let proc_ = Proc::Pid(pid?);
    let sample = (|| {
        Ok::<_, anyhow::Error>(ServerSample {
            cpu_s: proc_.cpu_seconds()?,
            rss_kib: proc_.status_kib("VmRSS")?,
        })
    })();
    match sample {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: cannot read the server's /proc entry: {e:#}");
            None
        }
    }
}

fn server_peak_kib(pid: Option<u32>) -> Option<u64> {
    Proc::Pid(pid?).status_kib("VmHWM").ok()
}

/// Builds message `seq`: `{"seq":N,"sent_ns":T,"pad":"xx.."}` of about `size` bytes.
fn build_payload(seq: u64, size: usize, buf: &mut String) {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"seq":{seq},"sent_ns":{},"pad":""#,
        client::now_ns()
    );
    let pad = size.saturating_sub(buf.len() + 2);
    buf.extend(std::iter::repeat_n('x', pad));
    buf.push_str("\"}");
}

/// The throughput / latency run: counted clients (plus churn), publishing, draining, report.
async fn run_fanout(args: &Args) -> Result<()> {
    let url = args.url();
    let messages = args.messages;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let redis = redis::Client::open(args.redis_url.as_str()).context("--redis-url")?;
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", args.redis_url))?;

    let connect_started = Instant::now();
    let progress: Vec<Arc<Progress>> = (0..args.clients)
        .map(|_| Arc::new(Progress::default()))
        .collect();
    let (handles, connect_failed) = {
        let progress = progress.clone();
        let shared = Arc::clone(&shared);
        connect_all(
            &url,
            args.clients,
            args.batch,
            args.read_buffer,
            move |i, ws| {
                client::counted_client(
                    ws,
                    messages,
                    Arc::clone(&progress[i]),
                    Arc::clone(&shared),
                    stop_rx.clone(),
                )
            },
        )
        .await
    };
    let connected = handles.len();
    let connect_s = connect_started.elapsed().as_secs_f64();
    if connected == 0 {
        bail!("no client could connect to {url}");
    }
    eprintln!("{connected} clients connected in {connect_s:.2} s");

    // Churn clients run while publishing; they are not counted.
    let churn_stats = Arc::new(ChurnStats::default());
    let (churn_stop_tx, churn_stop_rx) = watch::channel(false);
    let url_arc: Arc<str> = Arc::from(url.as_str());
    let churners: Vec<JoinHandle<()>> = (0..args.churn)
        .map(|i| {
            tokio::spawn(client::churn_client(
                Arc::clone(&url_arc),
                args.read_buffer,
                i as u64 + 1,
                Arc::clone(&churn_stats),
                churn_stop_rx.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let server_before = sample_server(args.server_pid);
    let self_before = Proc::SelfProc.cpu_seconds().ok();

    // Publish, in order, in pipelines of the messages that are due (and allowed by the window):
    // a round trip per message would cap the rate at 1/RTT on a busy machine.
    let mut payload = String::with_capacity(args.payload + 64);
    let mut window_min = 0_u64;
    let mut window_on = args.window > 0;
    let mut no_receivers_warned = false;
    let max_batch = args.pipeline.max(1);
    let first_publish_ns = client::now_ns();
    let publish_started = Instant::now();
    let mut seq = 0_u64;
    while seq < messages {
        let mut end = (seq + max_batch).min(messages);
        if args.rate > 0.0 {
            let due_at = publish_started + Duration::from_secs_f64(seq as f64 / args.rate);
            if due_at > Instant::now() {
                tokio::time::sleep_until(due_at.into()).await;
            }
            // Every message whose time has come (at least `seq`).
            let due = (publish_started.elapsed().as_secs_f64() * args.rate) as u64 + 1;
            end = end.min(due.max(seq + 1));
        }
        if window_on {
            if seq >= window_min.saturating_add(args.window) {
                window_on = wait_for_window(&progress, seq, args.window, &mut window_min).await;
            }
            if window_on {
                end = end.min(window_min.saturating_add(args.window));
            }
        }
        let mut pipe = redis::pipe();
        for n in seq..end {
            build_payload(n, args.payload, &mut payload);
            pipe.cmd("PUBLISH").arg(&args.channel).arg(payload.as_str());
        }
        let receivers: Vec<i64> = pipe.query_async(&mut conn).await.context("PUBLISH")?;
        if receivers.contains(&0) && !no_receivers_warned {
            no_receivers_warned = true;
            eprintln!(
                "warning: nobody is subscribed to {} (is the server up?)",
                args.channel
            );
        }
        seq = end;
    }
    let publish_s = publish_started.elapsed().as_secs_f64();
    let _ = churn_stop_tx.send(true);

    // Drain: until every counted client has everything (or ended), or the deadline.
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let drain_timed_out = loop {
        let done = shared.complete.load(Ordering::Relaxed) + shared.ended.load(Ordering::Relaxed);
        if done >= connected {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };

    let server_after = sample_server(args.server_pid);
    let self_after = Proc::SelfProc.cpu_seconds().ok();
    let server_peak = server_peak_kib(args.server_pid);

    let _ = stop_tx.send(true);
    let mut stats: Vec<ClientStats> = Vec::with_capacity(connected);
    for handle in handles {
        if let Ok(s) = handle.await {
            stats.push(s);
        }
    }
    for churner in churners {
        let _ = tokio::time::timeout(Duration::from_secs(5), churner).await;
    }

    // Aggregate.
    let mut hist = client::new_histogram();
    let (mut frames, mut distinct, mut duplicated, mut out_of_order, mut invalid) = (0, 0, 0, 0, 0);
    let mut last_frame_ns = 0;
    let mut ended_early = 0;
    let mut first_end_reason = None;
    for s in &stats {
        hist.add(&s.hist).context("merging histograms")?;
        frames += s.frames;
        distinct += s.distinct;
        duplicated += s.duplicated;
        out_of_order += s.out_of_order;
        invalid += s.invalid;
        last_frame_ns = last_frame_ns.max(s.last_frame_ns);
        if let Some(reason) = &s.ended_early {
            ended_early += 1;
            first_end_reason.get_or_insert(reason.clone());
        }
    }
    let expected = args.clients as u64 * messages;
    let lost = expected - distinct.min(expected);
    let duration_s = last_frame_ns.saturating_sub(first_publish_ns) as f64 / 1e9;
    let frames_per_s = if duration_s > 0.0 {
        frames as f64 / duration_s
    } else {
        0.0
    };
    let quantile_ms = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1e3);
    let max_ms = (!hist.is_empty()).then(|| hist.max() as f64 / 1e3);
    let mean_ms = (!hist.is_empty()).then(|| hist.mean() / 1e3);

    let server_cpu_s = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let server_cpu_us_per_frame = server_cpu_s
        .filter(|_| frames > 0)
        .map(|cpu| cpu * 1e6 / frames as f64);
    let loadgen_cpu_s = match (self_before, self_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    // More than one clock tick (10 ms) above the server's CPU time.
    let loadgen_bottleneck =
        matches!((loadgen_cpu_s, server_cpu_s), (Some(l), Some(s)) if l - s > 0.0105);

    // Human-readable summary.
    println!(
        "clients            {} connected of {} ({connect_failed} failed)",
        connected, args.clients
    );
    println!(
        "messages           {messages} x {} B payload, rate {}, window {}",
        args.payload,
        if args.rate > 0.0 {
            format!("{} msg/s", args.rate)
        } else {
            "max".to_owned()
        },
        if args.window > 0 {
            args.window.to_string()
        } else {
            "off".to_owned()
        }
    );
    println!(
        "delivered          {distinct} / {expected} ({:.3} %)",
        pct(distinct, expected)
    );
    println!("lost               {lost}");
    println!("duplicated         {duplicated}");
    println!("out-of-order       {out_of_order}");
    if invalid > 0 {
        println!("invalid frames     {invalid}");
    }
    if ended_early > 0 {
        println!(
            "disconnected       {ended_early} client(s) ended early; first: {}",
            first_end_reason.as_deref().unwrap_or("?")
        );
    }
    if drain_timed_out {
        println!(
            "drain              timed out after {:.1} s",
            args.drain_timeout
        );
    }
    println!(
        "publish time       {publish_s:.3} s ({:.0} msg/s)",
        messages as f64 / publish_s.max(1e-9)
    );
    println!("frames/s           {frames_per_s:.0} ({frames} frames in {duration_s:.3} s)");
    println!(
        "latency ms         p50 {} | p99 {} | p99.9 {} | max {} | mean {}",
        fmt_opt(quantile_ms(0.50), 3),
        fmt_opt(quantile_ms(0.99), 3),
        fmt_opt(quantile_ms(0.999), 3),
        fmt_opt(max_ms, 3),
        fmt_opt(mean_ms, 3)
    );
    if args.churn > 0 {
        println!(
            "churn              {} clients: {} connects, {} failures, {} frames discarded",
            args.churn,
            churn_stats.connects.load(Ordering::Relaxed),
            churn_stats.failures.load(Ordering::Relaxed),
            churn_stats.frames.load(Ordering::Relaxed)
        );
    }
    if args.server_pid.is_some() {
        println!(
            "server peak RSS    {} KiB",
            fmt_opt(server_peak.map(|v| v as f64), 0)
        );
        println!(
            "server CPU         {} s ({} us/frame)",
            fmt_opt(server_cpu_s, 3),
            fmt_opt(server_cpu_us_per_frame, 3)
        );
    }
    println!("loadgen CPU        {} s", fmt_opt(loadgen_cpu_s, 3));
    if loadgen_bottleneck {
        println!(
            "WARNING: the load generator used more CPU than the server: it is probably the \
             bottleneck, and frames/s and latency understate the server"
        );
    }

    let result = json!({
        "mode": "fanout",
        "server": args.server_name,
        "scenario": args.scenario,
        "clients": args.clients,
        "connected": connected,
        "connect_failed": connect_failed,
        "connect_s": connect_s,
        "messages": messages,
        "payload": args.payload,
        "rate": args.rate,
        "window": args.window,
        "pipeline": args.pipeline,
        "churn": args.churn,
        "churn_connects": churn_stats.connects.load(Ordering::Relaxed),
        "churn_failures": churn_stats.failures.load(Ordering::Relaxed),
        "expected": expected,
        "delivered": distinct,
        "frames": frames,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "invalid": invalid,
        "ended_early": ended_early,
        "drain_timed_out": drain_timed_out,
        "publish_s": publish_s,
        "duration_s": duration_s,
        "frames_per_s": frames_per_s,
        "latency_ms": {
            "p50": quantile_ms(0.50),
            "p99": quantile_ms(0.99),
            "p999": quantile_ms(0.999),
            "max": max_ms,
            "mean": mean_ms,
        },
        "server_pid": args.server_pid,
        "server_rss_peak_kib": server_peak,
        "server_rss_kib": server_after.map(|s| s.rss_kib),
        "server_cpu_s": server_cpu_s,
        "server_cpu_us_per_frame": server_cpu_us_per_frame,
        "loadgen_cpu_s": loadgen_cpu_s,
        "loadgen_bottleneck": loadgen_bottleneck,
    });
    println!("RESULT {result}");
    Ok(())
}

/// Waits until every live counted client has received at least message `seq - window`.
/// Returns `false` (window given up) if the slowest client makes no progress for 10 s.
async fn wait_for_window(
    progress: &[Arc<Progress>],
    seq: u64,
    window: u64,
    window_min: &mut u64,
) -> bool {
    let mut last_min = u64::MAX;
    let mut stalled_since = Instant::now();
    loop {
        let min = progress
            .iter()
            .filter(|p| !p.ended.load(Ordering::Relaxed))
            .map(|p| p.next.load(Ordering::Relaxed))
            .min()
            // No live client left: nothing to wait for.
            .unwrap_or(u64::MAX);
        *window_min = min;
        if seq < min.saturating_add(window) {
            return true;
        }
        if min != last_min {
            last_min = min;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "warning: the slowest client is stuck at message {min}; publishing without a window"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The idle-memory run: hold connections, compare the server's RSS before and after.
async fn run_idle(args: &Args) -> Result<()> {
    let url = args.url();
    let settle = Duration::from_millis(args.settle_ms.max(500));
    let rss_before = sample_server(args.server_pid).map(|s| s.rss_kib);
    let (stop_tx, stop_rx) = watch::channel(false);

    let connect_started = Instant::now();
    let (handles, connect_failed) = connect_all(
        &url,
        args.clients,
        args.batch,
        args.read_buffer,
        move |_, ws| client::idle_client(ws, stop_rx.clone()),
    )
    .await;
    let connected = handles.len();
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!("{connected} idle connections in {connect_s:.2} s");
    // Let the server finish setting every connection up before sampling.
    tokio::time::sleep(settle).await;
    let rss_after = sample_server(args.server_pid).map(|s| s.rss_kib);
    let server_peak = server_peak_kib(args.server_pid);

    let _ = stop_tx.send(true);
    let mut still_open = 0;
    for handle in handles {
        if let Ok(true) = handle.await {
            still_open += 1;
        }
    }

    let kib_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => Some((a as f64 - b as f64) / connected as f64),
        _ => None,
    };
    println!("idle connections   {connected} of {} ({connect_failed} failed, {still_open} still open at the end)", args.clients);
    println!("connect time       {connect_s:.2} s");
    if args.server_pid.is_some() {
        println!(
            "server RSS         {} KiB before, {} KiB after, peak {} KiB",
            fmt_opt(rss_before.map(|v| v as f64), 0),
            fmt_opt(rss_after.map(|v| v as f64), 0),
            fmt_opt(server_peak.map(|v| v as f64), 0)
        );
        println!("memory/connection  {} KiB", fmt_opt(kib_per_conn, 2));
    } else {
        println!("memory/connection  unknown (pass --server-pid)");
    }
    let result = json!({
        "mode": "idle",
        "server": args.server_name,
        "scenario": args.scenario,
        "clients": args.clients,
        "connected": connected,
        "connect_failed": connect_failed,
        "still_open": still_open,
        "connect_s": connect_s,
        "server_pid": args.server_pid,
        "server_rss_before_kib": rss_before,
        "server_rss_kib": rss_after,
        "server_rss_peak_kib": server_peak,
        "kib_per_conn": kib_per_conn,
    });
    println!("RESULT {result}");
    Ok(())
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_size() {
        let mut buf = String::new();
        for size in [64, 128, 1000] {
            build_payload(7, size, &mut buf);
            assert_eq!(buf.len(), size);
            assert_eq!(client::parse_fast(&buf).map(|(seq, _)| seq), Some(7));
        }
        build_payload(7, 1, &mut buf);
        assert!(buf.ends_with(r#""pad":""}"#));
    }
}
