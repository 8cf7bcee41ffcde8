//! The Switchboard hello world: subscribers firing in priority order, then a WebSocket server.
//!
//! Run with:
//!
//! ```text
//! cargo run --example hello_world
//! ```
//!
//! No Redis needed (the in-process broker); with `REDIS_URL` set it joins the other workers on
//! that Redis. It first plays a short scripted demo, then serves `ws://127.0.0.1:3000/ws` (`PORT`
//! changes the port) until Ctrl-C. Connect with any WebSocket client, e.g.
//!
//! ```text
//! websocat ws://127.0.0.1:3000/ws
//! {"type":"hello","action":"greet","data":{"name":"Ada"}}
//! {"type":"system","action":"joinRoom","data":{"roomName":"support"}}
//! ```
//!
//! Set `RUST_LOG=debug` to see every handler run.

use serde::Deserialize;
use serde_json::json;
use switchboard::prelude::*;

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
fn log_custom_events(Message(message): Message) {
    println!("  [priority -10] log_custom_events: {message}");
}

/// Counts analytics events on any `analytics:*` channel.
#[websocket_subscriber(match = regex("^analytics:"))]
fn analytics_sink(channel: Channel, Message(event): Message) {
    println!("  [priority   0] analytics_sink: {channel} {event}");
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

    let app = Switchboard::builder()
        .broker_from_env()?
        .prometheus("/metrics")
        .route("hello", "greet", greet)
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
        .publish_including_sender("analytics:pageview", &json!({"path": "/"}))
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
    let addr = running.listen(listener)?;
    println!("\nServing ws://{addr}/ws (Ctrl-C stops). Try:");
    println!("  websocat ws://{addr}/ws");
    println!(r#"  {{"type":"hello","action":"greet","data":{{"name":"Ada"}}}}"#);
    println!("Prometheus metrics: http://{addr}/metrics");
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
