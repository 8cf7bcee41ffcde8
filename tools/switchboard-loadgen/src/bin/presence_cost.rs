//! What presence costs: drives running servers and reads Redis's command counters and the servers'
//! CPU time.
//!
//! - `churn`: `--clients` clients (at most `--concurrency` at a time) each connect to the first
//!   server, join a room with `system:joinRoom`, wait for the reply and close. Reports, per
//!   client, the Redis commands (by name, from `INFO commandstats`) and the server's CPU time.
//! - `room`: `--clients` clients join one room, spread over every `--url`, then `--messages`
//!   `sendMessageToRoom` messages are published on Redis (each server sends them to its own
//!   members). Reports the servers' CPU time per frame delivered and the time until every client
//!   has every frame.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[path = "loadgen/procstat.rs"]
#[allow(dead_code)] // only the CPU time is read here
mod procstat;

use procstat::Proc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Churn,
    Room,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// A server's WebSocket URL (repeat for several servers).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The servers' process ids, for their CPU time (repeat, same order as `--url`).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// The Redis the servers share.
    #[arg(long)]
    redis: String,
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Messages published in `room` mode.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// The Redis channel prefix of the servers (their `REDIS_NAMESPACE` followed by `:`).
    #[arg(long, default_value = "")]
    prefix: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, room: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let frame =
        serde_json::json!({"type": "system", "action": "joinRoom", "data": {"roomName": room}});
    ws.send(Message::text(frame.to_string())).await?;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            if text.contains("\"joinRoom\"") {
                return Ok(ws);
            }
        }
    }
    bail!("the server closed before the join's reply")
}

/// Redis's command counters: calls by command name.
async fn command_counts(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Result<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

fn cpu(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| Proc::Pid(pid).cpu_seconds()).sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    match args.mode {
        Mode::Churn => churn(&args, &mut redis).await,
        Mode::Room => room(&args, &mut redis).await,
    }
}

async fn churn(args: &Args, redis: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    let before = command_counts(redis).await?;
    let cpu_before = cpu(&args.pids)?;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let permit = permits.clone().acquire_owned().await?;
        let url = args.urls[0].clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = join(&url, "churn").await?;
            ws.close(None).await?;
            while ws.next().await.is_some() {}
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    // Let the last disconnects be written before reading the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_used = cpu(&args.pids)? - cpu_before;
    let after = command_counts(redis).await?;
    let n = args.clients as f64;
    println!(
        "clients            {} (connect, join a room, close), {} at a time",
        args.clients, args.concurrency
    );
    println!("wall time          {:.2} s", elapsed.as_secs_f64());
    println!("server CPU         {:.1} us per client", cpu_used * 1e6 / n);
    let mut total = 0;
    for (name, calls) in &after {
        let delta = calls - before.get(name).copied().unwrap_or(0);
        if delta > 0 && name != "info" {
            total += delta;
            println!("redis {name:<12} {:.3} per client", delta as f64 / n);
        }
    }
    println!("redis commands     {:.3} per client", total as f64 / n);
    Ok(())
}

async fn room(args: &Args, redis: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        clients.push(join(&args.urls[i % args.urls.len()], "bench-room").await?);
    }
    // Let every worker learn the members (they deliver to their own only, but the joins are
    // written and published in the background).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu(&args.pids)?;
    let started = Instant::now();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            let expected = args.messages;
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < expected {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"room-tick\"") => {
                            seen += 1
                        }
                        Some(Ok(_)) => {}
                        _ => bail!("a client lost its connection"),
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let channel = format!("{}sendMessageToRoom", args.prefix);
    for seq in 0..args.messages {
        let message = serde_json::json!({
            "roomName": "bench-room",
            "message": {"type": "bench", "action": "room-tick", "data": {"seq": seq, "pad": "x".repeat(100)}},
        });
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message.to_string())
            .query_async(redis)
            .await?;
    }
    for reader in readers {
        reader.await??;
    }
    let elapsed = started.elapsed();
    let cpu_used = cpu(&args.pids)? - cpu_before;
    let frames = (args.clients * args.messages) as f64;
    println!(
        "room broadcast     {} members over {} workers, {} messages",
        args.clients,
        args.urls.len(),
        args.messages
    );
    println!("all delivered in   {:.3} s", elapsed.as_secs_f64());
    println!(
        "server CPU         {:.3} us per frame delivered",
        cpu_used * 1e6 / frames
    );
    Ok(())
}
