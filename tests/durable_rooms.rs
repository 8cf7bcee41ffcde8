//! Durable rooms: a WebSocket client that comes back gets every frame it missed, in order, then
//! the live ones. The last test drops 40 clients' connections again and again (2 s each) while
//! frames flow, and checks that every client saw every frame exactly once, in order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::broker::Retention;
use switchboard::prelude::*;
use switchboard::testing::{FaultProxy, SocketClient, TestServer};
use tokio_tungstenite::tungstenite::Message as Ws;

async fn server() -> TestServer {
    server_on(switchboard::MemoryBroker::new()).await
}

async fn server_on(broker: impl switchboard::Broker) -> TestServer {
    TestServer::start(
        Switchboard::builder()
            .without_linked_handlers()
            .broker(broker)
            .durable_rooms("live*", Retention::new().messages(10_000)),
    )
    .await
    .unwrap()
}

fn tick(n: u64) -> Value {
    json!({"type": "tick", "action": "n", "data": {"n": n}})
}

/// Reads frames until the `joinRoom` reply; returns the frames before it and the reply's data.
async fn join(
    client: &mut SocketClient,
    room: &str,
    since: Option<(&str, u64)>,
) -> (Vec<Value>, Value) {
    let mut data = json!({"roomName": room});
    if let Some((epoch, offset)) = since {
        data["since"] = json!({"epoch": epoch, "offset": offset});
    }
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": data}))
        .await;
    let mut before = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "system" && frame["action"] == "joinRoom" {
            return (before, frame["response"]["data"].clone());
        }
        before.push(frame);
    }
}

#[tokio::test]
async fn a_client_that_comes_back_gets_what_it_missed_in_order_then_live_frames() {
    comes_back(server().await).await;
}

#[tokio::test]
async fn the_same_on_redis() {
    let redis = switchboard::testing::TestRedis::start().await.unwrap();
    let namespace = format!("rooms-{}", std::process::id());
    comes_back(server_on(redis.broker(&namespace).unwrap()).await).await;
}

async fn comes_back(server: TestServer) {
    let ws = server.websocket();
    let mut client = server.connect().await;
    let (_, joined) = join(&mut client, "live", None).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["offset"], 0, "no history yet");
    for n in 1..=3 {
        ws.broadcast_to_room_everywhere("live", tick(n))
            .await
            .unwrap();
    }
    let mut epoch = String::new();
    for n in 1..=3 {
        let frame = client.next_json().await;
        assert_eq!(frame["data"]["n"], n);
        assert_eq!(frame["stream"]["room"], "live");
        assert_eq!(frame["stream"]["offset"], n);
        epoch = frame["stream"]["epoch"].as_str().unwrap().to_owned();
    }
    client.close().await;
    // While it is away.
    for n in 4..=6 {
        ws.broadcast_to_room_everywhere("live", tick(n))
            .await
            .unwrap();
    }
    let mut back = server.connect().await;
    let (missed, joined) = join(&mut back, "live", Some((&epoch, 3))).await;
    let offsets: Vec<&Value> = missed.iter().map(|f| &f["stream"]["offset"]).collect();
    assert_eq!(
        offsets,
        [4, 5, 6],
        "the missed frames, in order, before the reply"
    );
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["offset"], 6);
    assert_eq!(joined["epoch"], epoch.as_str());
    ws.broadcast_to_room_everywhere("live", tick(7))
        .await
        .unwrap();
    assert_eq!(back.next_json().await["stream"]["offset"], 7);
    // A room that is not durable: frames without a position, and nothing in the reply.
    let (_, plain) = join(&mut back, "other", None).await;
    assert!(plain.get("recovered").is_none(), "{plain}");
}

#[tokio::test]
async fn a_gap_the_history_does_not_cover_is_reported_not_papered_over() {
    let server = server().await;
    let ws = server.websocket();
    ws.broadcast_to_room_everywhere("live-x", tick(1))
        .await
        .unwrap();
    let mut client = server.connect().await;
    // An epoch the room never had (the history was lost, or the client's state is stale).
    let (missed, joined) = join(&mut client, "live-x", Some(("0000000000000000", 0))).await;
    assert!(missed.is_empty(), "nothing replayed: {missed:?}");
    assert_eq!(joined["recovered"], false);
    assert_eq!(
        joined["offset"], 1,
        "the room's current position, to reload from"
    );
    assert_ne!(joined["epoch"], "0000000000000000");
}

/// One client's view: the frames it got (offsets), and how long each catch-up took.
#[derive(Default)]
struct View {
    offsets: Vec<u64>,
    catch_ups: Vec<Duration>,
    connections: usize,
}

/// A client that reconnects through `proxy` until it has seen offset `last`, rejoining with
/// the last position it saw.
async fn resilient_client(url: String, last: u64, view: Arc<Mutex<View>>) {
    let mut position: Option<(String, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    'connect: loop {
        assert!(Instant::now() < deadline, "the client never caught up");
        if position.as_ref().is_some_and(|(_, o)| *o >= last) {
            return;
        }
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        view.lock().unwrap().connections += 1;
        let connected = Instant::now();
        let mut data = json!({"roomName": "live"});
        if let Some((epoch, offset)) = &position {
            data["since"] = json!({"epoch": epoch, "offset": offset});
        }
        let join = json!({"type": "system", "action": "joinRoom", "data": data});
        if socket.send(Ws::text(join.to_string())).await.is_err() {
            continue;
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            let Ok(Some(Ok(Ws::Text(text)))) = next else {
                if position.as_ref().is_some_and(|(_, o)| *o >= last) {
                    return;
                }
                continue 'connect;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "system" && frame["action"] == "joinRoom" {
                let data = &frame["response"]["data"];
                match &position {
                    Some(_) => {
                        assert_eq!(data["recovered"], true, "{data}");
                        view.lock().unwrap().catch_ups.push(connected.elapsed());
                    }
                    None => {
                        position = Some((
                            data["epoch"].as_str().unwrap_or_default().to_owned(),
                            data["offset"].as_u64().unwrap(),
                        ));
                    }
                }
            } else if let Some(offset) = frame["stream"]["offset"].as_u64() {
                let epoch = frame["stream"]["epoch"].as_str().unwrap().to_owned();
                let expected = position.as_ref().map_or(1, |(_, o)| o + 1);
                assert_eq!(offset, expected, "every frame once, in order");
                view.lock().unwrap().offsets.push(offset);
                position = Some((epoch, offset));
                if offset >= last {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_under_repeated_two_second_drops_get_every_frame_in_order() {
    const CLIENTS: usize = 40;
    const FRAMES: u64 = 1_200;
    let server = server().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let url = format!("ws://{}/ws", proxy.addr());
    let views: Vec<Arc<Mutex<View>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = views
        .iter()
        .map(|view| tokio::spawn(resilient_client(url.clone(), FRAMES, view.clone())))
        .collect();
    // Everyone in the room before the first frame.
    let ws = server.websocket();
    let start = Instant::now();
    while ws.room_members("live").len() < CLIENTS {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the clients never joined"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Four 2 s outages, 1 s apart, while 100 frames a second are broadcast for 12 s.
    let cuts = proxy.schedule(Duration::from_secs(1), Duration::from_secs(2), 4);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for n in 1..=FRAMES {
        ticks.tick().await;
        ws.broadcast_to_room_everywhere("live", tick(n))
            .await
            .unwrap();
    }
    cuts.await.unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let mut catch_ups: Vec<Duration> = Vec::new();
    for view in &views {
        let view = view.lock().unwrap();
        assert_eq!(
            view.offsets,
            (1..=FRAMES).collect::<Vec<_>>(),
            "100% of the frames, in order"
        );
        assert!(view.connections >= 2, "the client was cut at least once");
        catch_ups.extend(&view.catch_ups);
    }
    catch_ups.sort_unstable();
    let p = |q: f64| catch_ups[((catch_ups.len() as f64 * q) as usize).min(catch_ups.len() - 1)];
    eprintln!(
        "{CLIENTS} clients, {FRAMES} frames, {} cuts: {} catch-ups, reconnect to caught-up p50 {:?}, p99 {:?}, max {:?}",
        proxy.cuts(),
        catch_ups.len(),
        p(0.5),
        p(0.99),
        catch_ups.last().unwrap()
    );
    assert!(!catch_ups.is_empty());
}
