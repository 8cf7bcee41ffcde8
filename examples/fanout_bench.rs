//! The fan-out benchmark server: what `scripts/bench.sh` and the load generator
//! (`tools/switchboard-loadgen`) measure against the hand-written baseline. Written as a user would write it:
//! an attributed subscriber and the framework's own server.
//!
//! Contract:
//!
//! - environment: `REDIS_URL` (the broker) and `WS_PORT`;
//! - listens on `ws://127.0.0.1:$WS_PORT/ws` and prints a line with `READY` once it accepts
//!   connections and its Redis subscription is active;
//! - a message `{"seq": n, "sent_ns": t, "pad": "..."}` on `bench:fanout` becomes one text frame
//!   `{"type":"bench","action":"tick","data":<that object>}` to every connected client;
//! - stops cleanly on SIGTERM or Ctrl-C.
//!
//! Run with:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 WS_PORT=9001 cargo run --release --example fanout_bench
//! ```

use switchboard::prelude::*;
use switchboard::Frame;

/// Sends every tick to every connected client of this worker. The frame is built once, around the
/// payload's bytes as published, and the same bytes go to every client.
#[websocket_subscriber(channel = "bench:fanout")]
async fn fanout(Raw(payload): Raw, ws: WebSocket) {
    let Ok(data) = std::str::from_utf8(&payload) else {
        return;
    };
    let mut text = String::with_capacity(data.len() + 40);
    text.push_str(r#"{"type":"bench","action":"tick","data":"#);
    text.push_str(data);
    text.push('}');
    ws.broadcast_to_all_clients(Frame::text(text));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every connection is a file descriptor: raise the soft limit to the hard one (N clients need
    // N descriptors, plus the pending handshakes and a few dozen for the process itself).
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the file-descriptor limit");
    }
    let port: u16 = std::env::var("WS_PORT")
        .map_err(|_| anyhow::anyhow!("set WS_PORT"))?
        .parse()?;

    let running = Switchboard::builder()
        .broker_from_env()?
        .only(["fanout"])
        .build()?
        .start()
        .await?;

    // A deep accept backlog: the load generator connects thousands of clients in bursts.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    let addr = running.listen(socket.listen(4096)?)?;
    println!("READY ws://{addr}/ws");

    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
