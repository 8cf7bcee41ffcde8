//! The Switchboard hello world: subscribers firing in priority order, then a web page that shows
//! every use case live.
//!
//! Run with:
//!
//! ```text
//! cargo run --example hello_world
//! ```
//!
//! No Redis needed (the in-process broker); with `REDIS_URL` set it joins the other workers on
//! that Redis (start a second one with `PORT=3001` and watch messages cross between them). It
//! first plays a short scripted demo in the terminal, then serves, until Ctrl-C:
//!
//! - `http://127.0.0.1:3000/`: a page (plain HTML and JavaScript inside the binary) that connects
//!   to `/ws` and shows greetings sent through the `hello:greet` client route, the system status a
//!   subscriber relays, joining and leaving the support room and its announcements, jobs that
//!   complete or fail, the count of analytics events, and a live feed in a durable room (`feed`,
//!   a tick every second): drop the connection and, when it is back, the page rejoins with the
//!   last position it saw, gets what it missed, and says `recovered`;
//! - `ws://127.0.0.1:3000/ws`: the WebSocket endpoint, for any client;
//! - `http://127.0.0.1:3000/metrics`: Prometheus metrics.
//!
//! `PORT` changes the port (`0` picks a free one). Set `RUST_LOG=debug` to see every handler run.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::json;
use switchboard::prelude::*;

/// The durable room of the page's live feed.
const FEED_ROOM: &str = "feed";

// The three use-case examples, whole: their subscribers, routes and state are part of this demo.
#[path = "analytics_sink.rs"]
#[allow(dead_code, unreachable_pub)]
mod analytics_sink;
#[path = "job_notifications.rs"]
#[allow(dead_code, unreachable_pub)]
mod job_notifications;
#[path = "room_announcements.rs"]
#[allow(dead_code, unreachable_pub)]
mod room_announcements;

/// The page served at `/`: plain HTML and JavaScript, shipped inside the binary.
const PAGE: &str = include_str!("hello_world.html");

/// A system status update, as the reference framework's hello-world sends it on `custom`.
#[derive(Debug, Deserialize)]
struct StatusUpdate {
    #[serde(rename = "type")]
    kind: String,
    action: String,
    data: serde_json::Value,
}

/// Relays system status updates to every connected client (runs before the logger).
#[websocket_subscriber(channel = event::CUSTOM, priority = 10)]
async fn system_status_relay(Message(update): Message<StatusUpdate>, ws: WebSocket) {
    if update.kind == "system" && update.action == "statusUpdate" {
        let sent =
            ws.broadcast_to_all_clients(Outgoing::new("system", "statusUpdate", &update.data));
        println!(
            "  [priority  10] system_status_relay: relayed {} to {sent} client(s)",
            update.data
        );
    }
}

/// Logs every custom event (runs after the relay).
#[websocket_subscriber(channel = event::CUSTOM, priority = -10)]
async fn log_custom_events(Message(message): Message) {
    println!("  [priority -10] log_custom_events: {message}");
}

/// How many analytics events this worker has seen.
static ANALYTICS_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Counts analytics events on any `analytics:*` channel and shows the count on every page of
/// this worker (after `analyticsSink`, from the analytics example, has queued the event for the
/// database).
#[websocket_subscriber(match = regex("^analytics:"), priority = -1)]
async fn analytics_counter(channel: Channel, ws: WebSocket) {
    let count = ANALYTICS_EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
    ws.broadcast_to_all_clients(Outgoing::new("analytics", "count", json!({"count": count})));
    println!("  [priority  -1] analytics_counter: {channel} (event #{count})");
}

/// The `analytics:track` client route: publishes a page view for the analytics subscribers of
/// every worker.
async fn track(
    client: Client,
    Data(view): Data<serde_json::Value>,
    publisher: Publisher,
) -> Result<serde_json::Value, switchboard::BoxError> {
    let event = json!({"userId": client.id(), "path": view["path"]});
    publisher
        .publish_including_sender("analytics:pageview", &event)
        .await?;
    Ok(json!({"tracked": true}))
}

/// Shows that one failing handler does not stop the others.
#[websocket_subscriber(channel = event::CUSTOM, priority = 0)]
async fn flaky_handler(Message(message): Message) -> HandlerResult {
    if message["fail"] == true {
        return Err("asked to fail".into());
    }
    println!("  [priority   0] flaky_handler: fine");
    Ok(())
}

/// What a client sends with `{"type":"hello","action":"greet","data":{...}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Greet {
    name: String,
    message: String,
}

/// The `hello:greet` client route: greets every client of every worker, tells the subscribers
/// through `custom`, and replies `{"success": true}` to the sender.
async fn greet(
    client: Client,
    Data(greet): Data<Greet>,
    ws: WebSocket,
) -> Result<serde_json::Value, switchboard::BoxError> {
    let name = match greet.name.trim() {
        "" => "World".to_owned(),
        name => name.to_owned(),
    };
    let message = match greet.message.trim() {
        "" => format!("{name} says hello!"),
        message => message.to_owned(),
    };
    ws.send_message_to_all(Outgoing::new(
        "hello",
        "greeting",
        json!({"name": name, "message": message, "clientId": client.id()}),
    ))
    .await?;
    ws.send_custom_message(json!({
        "type": "system",
        "action": "statusUpdate",
        "data": {"status": format!("{name} just sent a hello")},
    }))
    .await?;
    Ok(json!({"success": true}))
}

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

    let analytics = analytics_sink::store_from_env().await?;
    let builder = Switchboard::builder()
        .broker_from_env()?
        .prometheus("/metrics")
        .state(analytics)
        // The live feed: a durable room, so a page that comes back gets what it missed.
        .durable_rooms(
            FEED_ROOM,
            switchboard::broker::Retention::new().messages(1_000),
        );
    let (builder, jobs) = job_notifications::app(builder).await?;
    let app = room_announcements::app(builder)
        .route("hello", "greet", greet)
        .route("analytics", "track", track)
        .on_connect(|client, ws| {
            ws.broadcast_to_client(
                client.id(),
                Outgoing::new(
                    "hello",
                    "connected",
                    json!({"message": "Welcome to Switchboard", "clientId": client.id()}),
                ),
            );
        })
        .subscriber(
            Subscriber::channels(["*"])
                .name("debugTap")
                .description("logs raw traffic while debugging")
                .priority(-100)
                .handle(|cx: Context| async move {
                    println!(
                        "  [priority -100] debugTap: {} {}",
                        cx.channel(),
                        cx.message()
                    );
                }),
        )
        .build()?;

    println!("Handlers, in the order they run:");
    for handler in app.handlers() {
        println!("  {handler}");
    }

    let running = app.start().await?;
    let job_worker = job_notifications::start_worker(&jobs, &running);
    let publisher = running.publisher();

    println!("\n1. A status update on `custom` (relay first, then the logger, then the tap):");
    publisher
        .publish_including_sender(
            event::CUSTOM,
            &json!({"type": "system", "action": "statusUpdate", "data": {"status": "Green"}}),
        )
        .await?;
    running.wait_idle().await;

    println!("\n2. An analytics event on `analytics:pageview` (regex subscriber):");
    publisher
        .publish_including_sender(
            "analytics:pageview",
            &json!({"userId": "demo", "path": "/"}),
        )
        .await?;
    running.wait_idle().await;

    println!("\n3. A custom message that makes one handler fail (the others still run):");
    publisher
        .publish_including_sender(
            event::CUSTOM,
            &json!({"type": "demo", "action": "x", "data": {}, "fail": true}),
        )
        .await?;
    running.wait_idle().await;

    println!("\n4. A message this worker publishes without includeSender is skipped here:");
    publisher
        .publish(
            event::CUSTOM,
            &json!({"type": "demo", "action": "y", "data": {}}),
        )
        .await?;
    running.wait_idle().await;

    let stats = running.stats();
    println!(
        "\nStats: {} messages, {} handler runs, {} errors, {} skipped as own",
        stats.received, stats.handler_runs, stats.handler_errors, stats.skipped_own
    );

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    // The framework's router (`/ws`, `/metrics`) mounted into the application's own.
    let site = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Html(PAGE) }),
        )
        .merge(running.router());
    let server = tokio::spawn(async move { axum::serve(listener, site).await });
    // A tick a second in the durable feed room, from this worker.
    let ws = running.websocket();
    let feed = tokio::spawn(async move {
        for n in 1_u64.. {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let tick = Outgoing::new("feed", "tick", json!({"n": n, "from": "hello_world"}));
            if let Err(error) = ws.broadcast_to_room_everywhere(FEED_ROOM, tick).await {
                tracing::warn!(%error, "feed tick not sent");
            }
        }
    });
    println!("\nOpen http://{addr}/ in a browser (Ctrl-C stops), or use any WebSocket client:");
    println!("  websocat ws://{addr}/ws");
    println!(r#"  {{"type":"hello","action":"greet","data":{{"name":"Ada"}}}}"#);
    println!("Prometheus metrics: http://{addr}/metrics");
    tokio::signal::ctrl_c().await?;
    feed.abort();
    job_worker.stop().await;
    running.shutdown().await;
    server.abort();
    Ok(())
}
