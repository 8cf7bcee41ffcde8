//! Use case 2: tailor events by room. A predicate subscriber on `custom` picks the announcements
//! meant for the support room, and every worker broadcasts them to its own members of that room;
//! clients outside the room get nothing.
//!
//! ```text
//! cargo run --example room_announcements
//! ```
//!
//! Then, in two terminals (`websocat` or any WebSocket client):
//!
//! ```text
//! websocat ws://127.0.0.1:3001/ws
//! {"type":"system","action":"joinRoom","data":{"roomName":"support"}}
//! {"type":"support","action":"announce","data":{"text":"The support desk is open"}}
//! ```
//!
//! The first client, in the room, receives
//! `{"type":"announcement","action":"supportUpdate","data":{"text":"The support desk is open"}}`;
//! a second client that did not join receives nothing. With `REDIS_URL` set, start it twice with
//! different `PORT`s: a member connected to either worker gets the announcement, whichever worker
//! the announcer is on. Without a client, the example announces once a second by itself
//! (`ANNOUNCE_EVERY_MS=0` turns that off).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard::prelude::*;
use switchboard::{BoxError, Builder};

/// The room whose members get the announcements.
pub const SUPPORT_ROOM: &str = "support";

/// Matches `custom` messages addressed to the support room: `{"room": "support", "data": ...}`.
pub fn for_support_room(cx: &MatchContext<'_>) -> bool {
    cx.channel() == event::CUSTOM && cx.message()["room"] == SUPPORT_ROOM
}

/// An announcement as it travels on `custom`.
#[derive(Debug, Deserialize)]
pub struct Announcement {
    /// What the room's members receive.
    pub data: Value,
}

/// Sends support-room announcements to this worker's members of the room (every worker runs it,
/// so every member in the cluster gets it once).
#[websocket_subscriber(match = for_support_room, name = "roomAnnouncements")]
pub async fn room_announcements(Message(announcement): Message<Announcement>, ws: WebSocket) {
    let sent = ws.broadcast_to_room(
        SUPPORT_ROOM,
        Outgoing::new("announcement", "supportUpdate", &announcement.data),
    );
    tracing::info!(members = sent, "support announcement delivered");
}

/// The `support:announce` client route: announces `data` to the support room of every worker.
pub async fn announce(Data(data): Data<Value>, ws: WebSocket) -> Result<Value, BoxError> {
    ws.send_custom_message(json!({"room": SUPPORT_ROOM, "data": data}))
        .await?;
    Ok(json!({"announced": true}))
}

/// The example's app: the announce route on top of `builder`.
pub fn app(builder: Builder) -> Builder {
    builder.route("support", "announce", announce)
}

#[allow(
    dead_code,
    reason = "the tests include this file for its handlers, not for main"
)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Every connection is a file descriptor: raise the soft limit to the hard one (N clients need
    // N descriptors, plus the pending handshakes and a few dozen for the process itself).
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the file-descriptor limit");
    }
    let running = app(Switchboard::builder().broker_from_env()?)
        .build()?
        .start()
        .await?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let addr = running.listen(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?)?;
    println!("Serving ws://{addr}/ws (Ctrl-C stops). Join the room with:");
    println!(r#"  {{"type":"system","action":"joinRoom","data":{{"roomName":"support"}}}}"#);

    let every: u64 = std::env::var("ANNOUNCE_EVERY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(1000);
    let ws = running.websocket();
    let ticker = tokio::spawn(async move {
        if every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        for n in 1u64.. {
            tick.tick().await;
            let data = json!({"text": format!("support update #{n}")});
            if let Err(error) = ws
                .send_custom_message(json!({"room": SUPPORT_ROOM, "data": data}))
                .await
            {
                tracing::warn!(%error, "could not announce");
            }
        }
    });
    tokio::signal::ctrl_c().await?;
    ticker.abort();
    running.shutdown().await;
    Ok(())
}
