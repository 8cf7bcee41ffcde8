//! A worker of a cluster: several processes exchanging messages through Redis.
//!
//! Start Redis, then two workers in two terminals, and type lines into either one: the other
//! prints them.
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no
//! REDIS_URL=redis://127.0.0.1:6379/ WORKER_NAME=a cargo run --example cluster
//! REDIS_URL=redis://127.0.0.1:6379/ WORKER_NAME=b cargo run --example cluster
//! ```
//!
//! Environment:
//!
//! - `REDIS_URL`: the Redis server (without it, the in-process broker: nothing leaves the process);
//!   `REDIS_NAMESPACE`: an optional channel prefix (see `Builder::broker_from_env`);
//! - `WORKER_NAME`: a name for the output (default `worker`);
//! - `CHANNEL`: the channel to subscribe and publish on (default `cluster:chat`);
//! - `PUBLISH`: a message to publish once, right after start;
//! - `DURABLE=1`: makes the channel durable (see `Builder::durable`): what a worker misses while
//!   its link to Redis is down is read from the channel's stream when it is back, and each line
//!   printed ends with the message's offset, and `recovered` when it came from the stream;
//! - `ONCE=1`: makes the handler run-once (see `Subscriber::once`): each message is printed by one
//!   worker only; `ONCE_CLAIM_IDLE_MS` (default 60000) is how long a message taken by a worker that
//!   died waits before another worker takes it over.
//!
//! Every line read from standard input is published as `{"from": WORKER_NAME, "text": line}` to
//! the *other* workers (a worker does not receive its own messages). The worker stops at the end
//! of its input or on Ctrl-C.
//!
//! Standard output, one line per event (the integration tests read it):
//!
//! ```text
//! READY <worker>
//! RECEIVED <worker> <channel> <message as JSON>[ offset=<n>[ recovered]]
//! PUBLISHED <worker> <text>
//! ```
//!
//! Logs go to standard error (`RUST_LOG=info` shows the Redis connection's life).

use std::io::BufRead;

use switchboard::prelude::*;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let name = std::env::var("WORKER_NAME").unwrap_or_else(|_| "worker".to_owned());
    let channel = std::env::var("CHANNEL").unwrap_or_else(|_| "cluster:chat".to_owned());

    let me = name.clone();
    let mut builder = Switchboard::builder()
        .broker_from_env()?
        .without_linked_handlers()
        .framework_channels(false)
        .subscriber(
            Subscriber::channels([channel.clone()])
                .name("print_received")
                .handle(
                    move |channel: Channel, Message(message): Message, cx: Context| {
                        let at = match cx.stream_position() {
                            Some(at) if at.recovered => format!(" offset={} recovered", at.offset),
                            Some(at) => format!(" offset={}", at.offset),
                            None => String::new(),
                        };
                        println!("RECEIVED {me} {channel} {message}{at}");
                    },
                ),
        );
    if std::env::var("ONCE").is_ok_and(|d| d == "1") {
        let idle = std::env::var("ONCE_CLAIM_IDLE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(60_000);
        let me = name.clone();
        builder = Switchboard::builder()
            .broker_from_env()?
            .without_linked_handlers()
            .framework_channels(false)
            .handler_timeout(std::time::Duration::from_millis(idle / 2))
            .once_claim_idle(std::time::Duration::from_millis(idle))
            .subscriber(
                Subscriber::channels([channel.clone()])
                    .name("print_once")
                    .once()
                    .handle(
                        move |channel: Channel, Message(message): Message, cx: Context| {
                            let at = cx.stream_position().map(|at| at.offset).unwrap_or_default();
                            println!("RECEIVED {me} {channel} {message} offset={at}");
                        },
                    ),
            );
    } else if std::env::var("DURABLE").is_ok_and(|d| d == "1") {
        builder = builder.durable(
            channel.as_str(),
            switchboard::broker::Retention::new().messages(10_000),
        );
    }
    let running = builder.build()?.start().await?;
    println!("READY {name}");

    let publisher = running.publisher();
    if let Some(text) = std::env::var("PUBLISH").ok().filter(|t| !t.is_empty()) {
        publish(&publisher, &channel, &name, &text).await;
    }

    // Standard input is read on a thread and handed over line by line.
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(text) => publish(&publisher, &channel, &name, text.trim()).await,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    running.shutdown().await;
    Ok(())
}

async fn publish(publisher: &Publisher, channel: &str, name: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    let message = serde_json::json!({ "from": name, "text": text });
    match publisher.publish(channel, &message).await {
        Ok(()) => println!("PUBLISHED {name} {text}"),
        Err(error) => eprintln!("ERROR publishing on {channel}: {error}"),
    }
}
