//! Durable rooms under attack: what the README's "Durable rooms" section promises (every frame
//! once and in order after a rejoin with `since`, or `recovered: false` with the room's current
//! position) checked against clients that send malformed positions, rejoin again and again while
//! frames flow, never read, send garbage in the middle of a catch-up, or leave in the middle of
//! one. In each test the room's other members get every frame, in order, and new clients are still
//! served.
//!
//! The tests that take a broker run twice: on the in-process broker and on Redis (the server at
//! `REDIS_URL` when it is set, else the test kit's mock Redis).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::broker::Retention;
use switchboard::prelude::*;
use switchboard::testing::{Ending, SocketClient, TestRedis, TestServer};
use switchboard::{ClientId, DisconnectReason};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Ws;

/// Bounds the waits that could otherwise hang (never a measure of speed).
const DEADLINE: Duration = Duration::from_secs(10);

/// Which broker a test's server runs on.
#[derive(Clone, Copy, Debug)]
enum On {
    Memory,
    Redis,
}

/// A server whose rooms `live*` are durable, and the disconnections of its clients.
struct Harness {
    server: TestServer,
    gone: mpsc::UnboundedReceiver<(ClientId, DisconnectReason)>,
    _redis: Option<TestRedis>,
}

impl Harness {
    async fn start(on: On, test: &str, config: WebSocketConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(on, test, config, listener).await
    }

    async fn start_on(on: On, test: &str, config: WebSocketConfig, listener: TcpListener) -> Self {
        let (tx, gone) = mpsc::unbounded_channel();
        let builder = Switchboard::builder()
            .without_linked_handlers()
            .durable_rooms("live*", Retention::new().messages(10_000))
            .websocket(config)
            .on_disconnect(move |client, _, reason| {
                let _ = tx.send((client.id().clone(), reason.clone()));
            });
        let (builder, redis) = match on {
            On::Memory => (builder.broker(switchboard::MemoryBroker::new()), None),
            On::Redis => {
                let redis = TestRedis::start().await.unwrap();
                let namespace = format!("adversarial-{test}-{}", std::process::id());
                (
                    builder.broker(redis.broker(&namespace).unwrap()),
                    Some(redis),
                )
            }
        };
        let server = TestServer::start_on(builder, listener).await.unwrap();
        Self {
            server,
            gone,
            _redis: redis,
        }
    }

    fn ws(&self) -> WebSocket {
        self.server.websocket()
    }

    /// The next client that disconnected, and why.
    async fn next_disconnect(&mut self) -> (ClientId, DisconnectReason) {
        tokio::time::timeout(DEADLINE, self.gone.recv())
            .await
            .expect("no disconnection within the deadline")
            .expect("the hook's channel is open")
    }
}

fn tick(n: u64) -> Value {
    json!({"type": "tick", "action": "n", "data": {"n": n}})
}

/// A tick of about 1 KB.
fn padded_tick(n: u64) -> Value {
    json!({"type": "tick", "action": "n", "data": {"n": n, "pad": "p".repeat(1000)}})
}

async fn broadcast(ws: &WebSocket, room: &str, ticks: RangeInclusive<u64>) {
    for n in ticks {
        ws.broadcast_to_room_everywhere(room, tick(n))
            .await
            .unwrap();
    }
}

/// Broadcasts `ticks` in the background, pausing a millisecond every 4 frames, so that they flow
/// while the test does something else.
fn broadcast_in_background(
    ws: WebSocket,
    room: &'static str,
    ticks: RangeInclusive<u64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for n in ticks {
            ws.broadcast_to_room_everywhere(room, tick(n))
                .await
                .unwrap();
            if n % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
}

fn join_frame(room: &str, since: Option<(&str, u64)>) -> Value {
    let mut data = json!({"roomName": room});
    if let Some((epoch, offset)) = since {
        data["since"] = json!({"epoch": epoch, "offset": offset});
    }
    json!({"type": "system", "action": "joinRoom", "data": data})
}

fn leave_frame(room: &str) -> Value {
    json!({"type": "system", "action": "leaveRoom", "data": {"roomName": room}})
}

/// The offset of a frame of `room` (`"stream": {"room", "epoch", "offset"}`); `None` for any
/// other frame.
fn offset_in(frame: &Value, room: &str) -> Option<u64> {
    if frame["stream"]["room"] == room {
        Some(
            frame["stream"]["offset"]
                .as_u64()
                .expect("a room frame has an offset"),
        )
    } else {
        None
    }
}

fn is_reply(frame: &Value, action: &str) -> bool {
    frame["type"] == "system" && frame["action"] == action && frame.get("response").is_some()
}

/// Sends `text` (a `joinRoom` message) and reads until the `joinRoom` reply: the frames before it
/// and the reply's `response`.
async fn join_raw(client: &mut SocketClient, text: &str) -> (Vec<Value>, Value) {
    client.send_text(text).await;
    let mut before = Vec::new();
    loop {
        let frame = client.next_json().await;
        if is_reply(&frame, "joinRoom") {
            return (before, frame["response"].clone());
        }
        before.push(frame);
    }
}

/// Joins `room` (from `since`, when given); the frames before the reply and the reply's `data`.
async fn join(
    client: &mut SocketClient,
    room: &str,
    since: Option<(&str, u64)>,
) -> (Vec<Value>, Value) {
    let (before, response) = join_raw(client, &join_frame(room, since).to_string()).await;
    assert_eq!(response["success"], true, "{response}");
    (before, response["data"].clone())
}

/// Offsets of the frames of `room` among `frames`.
fn offsets(frames: &[Value], room: &str) -> Vec<u64> {
    frames.iter().filter_map(|f| offset_in(f, room)).collect()
}

/// Reads for `quiet` and fails on any frame of `room`: the client is not a member.
async fn assert_no_room_frame(client: &mut SocketClient, room: &str, quiet: Duration) {
    let end = tokio::time::Instant::now() + quiet;
    while let Ok(item) = tokio::time::timeout_at(end, client.stream.next()).await {
        match item {
            Some(Ok(Ws::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert!(
                    offset_in(&frame, room).is_none(),
                    "a frame of {room} reached a client that left it: {frame}"
                );
            }
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// A member of a room that reads in its own task and checks that it gets every frame once, in
/// order, from its join's position to `last`.
struct Member {
    epoch: String,
    start: u64,
    seen: Arc<AtomicU64>,
    /// The offsets it got, and its connection (kept open until the test is done with it).
    task: JoinHandle<(Vec<u64>, SocketClient)>,
}

impl Member {
    async fn join(server: &TestServer, room: &'static str, last: u64) -> Self {
        let mut client = server.connect().await;
        let (_, joined) = join(&mut client, room, None).await;
        let start = joined["offset"].as_u64().unwrap();
        let epoch = joined["epoch"].as_str().unwrap_or_default().to_owned();
        let seen = Arc::new(AtomicU64::new(start));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut got = Vec::new();
                while seen.load(Ordering::SeqCst) < last {
                    let frame = client.next_json().await;
                    if let Some(offset) = offset_in(&frame, room) {
                        let expected = seen.load(Ordering::SeqCst) + 1;
                        assert_eq!(offset, expected, "a member gets every frame once, in order");
                        got.push(offset);
                        seen.store(offset, Ordering::SeqCst);
                    }
                }
                (got, client)
            }
        });
        Self {
            epoch,
            start,
            seen,
            task,
        }
    }

    /// Waits until it got offset `offset`.
    async fn wait_for(&mut self, offset: u64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.seen.load(Ordering::SeqCst) < offset {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a member got {} of {offset} frames",
                self.seen.load(Ordering::SeqCst)
            );
            if self.task.is_finished() && self.seen.load(Ordering::SeqCst) < offset {
                match (&mut self.task).await {
                    // Its reader failed: its panic is the test's.
                    Err(failed) => std::panic::resume_unwind(failed.into_panic()),
                    Ok(_) => panic!("waiting for offset {offset} past the member's last"),
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Checks that it got every frame after its join, up to `last`, once and in order.
    async fn finish(self, last: u64) {
        let (got, client) = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the member got its frames within the deadline")
            .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()));
        assert_eq!(got, (self.start + 1..=last).collect::<Vec<_>>());
        client.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed `since`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_since_is_answered_with_the_rooms_position_in_memory() {
    malformed_since(On::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_since_is_answered_with_the_rooms_position_on_redis() {
    malformed_since(On::Redis).await;
}

/// Every malformed or bogus `since` is a join from the room's current position: nothing
/// replayed, `recovered: false`, the room's epoch and newest offset. Never `recovered: true`
/// (the client would believe its view whole), never a replay for a position the room never had.
async fn malformed_since(on: On) {
    const ROOM: &str = "live-m";
    let mut h = Harness::start(on, "malformed", WebSocketConfig::default()).await;
    let ws = h.ws();
    broadcast(&ws, ROOM, 1..=5).await;
    broadcast(&ws, "live-other", 1..=3).await;
    let bystander = Member::join(&h.server, ROOM, 10).await;
    let epoch = bystander.epoch.clone();
    assert_eq!(bystander.start, 5);
    let mut client = h.server.connect().await;
    let (_, other) = join(&mut client, "live-other", None).await;
    let other_epoch = other["epoch"].as_str().unwrap().to_owned();
    assert_ne!(other_epoch, epoch, "two rooms, two epochs");

    let e = serde_json::to_string(&epoch).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("epoch a number", r#"{"epoch": 42, "offset": 3}"#.to_owned()),
        ("epoch null", r#"{"epoch": null, "offset": 3}"#.to_owned()),
        ("epoch empty", r#"{"epoch": "", "offset": 3}"#.to_owned()),
        (
            "epoch not alphanumeric",
            serde_json::to_string(
                &json!({"epoch": "../*?\"\\\n\u{0}\u{1F980} OR 1=1", "offset": 3}),
            )
            .unwrap(),
        ),
        (
            "epoch 60 KB long",
            format!(r#"{{"epoch": "{}", "offset": 3}}"#, "e".repeat(60_000)),
        ),
        (
            "epoch of another room",
            format!(r#"{{"epoch": "{other_epoch}", "offset": 2}}"#),
        ),
        ("epoch missing", r#"{"offset": 3}"#.to_owned()),
        ("offset missing", format!(r#"{{"epoch": {e}}}"#)),
        (
            "offset negative",
            format!(r#"{{"epoch": {e}, "offset": -1}}"#),
        ),
        (
            "offset a float",
            format!(r#"{{"epoch": {e}, "offset": 2.5}}"#),
        ),
        (
            "offset a whole float",
            format!(r#"{{"epoch": {e}, "offset": 3.0}}"#),
        ),
        (
            "offset a string",
            format!(r#"{{"epoch": {e}, "offset": "3"}}"#),
        ),
        (
            "offset null",
            format!(r#"{{"epoch": {e}, "offset": null}}"#),
        ),
        (
            "offset over u64",
            format!(r#"{{"epoch": {e}, "offset": 18446744073709551616}}"#),
        ),
        (
            "offset 1e30",
            format!(r#"{{"epoch": {e}, "offset": 1e30}}"#),
        ),
        (
            "offset u64::MAX",
            format!(r#"{{"epoch": {e}, "offset": {}}}"#, u64::MAX),
        ),
        (
            "offset u64::MAX - 1",
            format!(r#"{{"epoch": {e}, "offset": {}}}"#, u64::MAX - 1),
        ),
        (
            "offset one past the newest",
            format!(r#"{{"epoch": {e}, "offset": 6}}"#),
        ),
        (
            "offset far past the newest",
            format!(r#"{{"epoch": {e}, "offset": 1000000}}"#),
        ),
        ("since an array", format!(r#"[{e}, 3]"#)),
        ("since a string", format!(r#""{epoch}:3""#)),
        ("since a number", "3".to_owned()),
        ("since null", "null".to_owned()),
        ("since empty", "{}".to_owned()),
    ];
    for (case, since) in &cases {
        let text = format!(
            r#"{{"type": "system", "action": "joinRoom", "data": {{"roomName": "{ROOM}", "since": {since}}}}}"#
        );
        let (before, response) = join_raw(&mut client, &text).await;
        assert!(
            offsets(&before, ROOM).is_empty(),
            "{case}: nothing is replayed for a bogus position: {before:?}"
        );
        assert_eq!(response["success"], true, "{case}: {response}");
        let data = &response["data"];
        assert_eq!(data["recovered"], false, "{case}: {data}");
        assert_eq!(data["epoch"], epoch.as_str(), "{case}: the room's epoch");
        assert_eq!(data["offset"], 5, "{case}: the room's newest offset");
    }

    // The genuine positions still work on the same connection: the newest (nothing to replay)
    // and an older one.
    let (before, data) = join(&mut client, ROOM, Some((&epoch, 5))).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        (&data["recovered"], &data["offset"]),
        (&json!(true), &json!(5))
    );
    let (before, data) = join(&mut client, ROOM, Some((&epoch, 3))).await;
    assert_eq!(offsets(&before, ROOM), [4, 5]);
    assert_eq!(
        (&data["recovered"], &data["offset"]),
        (&json!(true), &json!(5))
    );

    // A room without history: nothing to recover, whatever the position.
    let (before, data) = join(&mut client, "live-empty", Some((&epoch, 3))).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(data["recovered"], false);
    assert_eq!(data["epoch"], Value::Null);
    assert_eq!(data["offset"], 0);
    // A room that is not durable ignores `since`.
    let (before, data) = join(&mut client, "plain", Some((&epoch, 3))).await;
    assert!(before.is_empty(), "{before:?}");
    assert!(data.get("recovered").is_none(), "{data}");

    // A 100 KB epoch is over the message size limit: that client alone is closed (1009).
    let mut big = h.server.connect().await;
    let text = format!(
        r#"{{"type": "system", "action": "joinRoom", "data": {{"roomName": "{ROOM}", "since": {{"epoch": "{}", "offset": 1}}}}}}"#,
        "e".repeat(100 * 1024)
    );
    let _ = big.stream.send(Ws::text(text)).await;
    assert_eq!(h.next_disconnect().await.1, DisconnectReason::MessageTooBig);
    assert_eq!(ws.stats().oversized_message_disconnects, 1);
    match big.ending().await {
        Ending::Close(code, _) => assert_eq!(code, Some(1009)),
        // The server stops reading the oversized frame: its close frame may be lost to a reset.
        Ending::Dropped(_) => {}
    }

    // Live frames: each once, in order, to the client that sent all of the above and to the
    // member that saw none of it.
    broadcast(&ws, ROOM, 6..=10).await;
    broadcast(&ws, "live-empty", 1..=1).await;
    let mut live = Vec::new();
    let mut empty = Vec::new();
    while live.len() < 5 || empty.is_empty() {
        let frame = client.next_json().await;
        live.extend(offset_in(&frame, ROOM));
        empty.extend(offset_in(&frame, "live-empty"));
    }
    assert_eq!(live, [6, 7, 8, 9, 10]);
    assert_eq!(empty, [1]);
    bystander.finish(10).await;
    assert_eq!(ws.stats().slow_consumer_disconnects, 0);

    // And a new client still recovers.
    let mut newcomer = h.server.connect().await;
    let (before, data) = join(&mut newcomer, ROOM, Some((&epoch, 7))).await;
    assert_eq!(offsets(&before, ROOM), [8, 9, 10]);
    assert_eq!(data["recovered"], true);
}

// ---------------------------------------------------------------------------------------------
// Rejoins in quick succession.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_quick_rejoins_while_frames_flow_then_each_live_frame_once_in_memory() {
    quick_rejoins(On::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_quick_rejoins_while_frames_flow_then_each_live_frame_once_on_redis() {
    quick_rejoins(On::Redis).await;
}

/// A client sends 10 `joinRoom` with the same `since` at once, while frames flow. Each rejoin
/// replays from `since` (the client asked for it), so what it reads is: consecutive frames, each
/// rejoin restarting at `since + 1`, each reply with `recovered: true` and the last offset sent;
/// after the 10th reply, every live frame once, in order.
async fn quick_rejoins(on: On) {
    const ROOM: &str = "live-r";
    const SINCE: u64 = 20;
    const WAVE: u64 = 220;
    const LAST: u64 = 320;
    const REJOINS: usize = 10;
    let h = Harness::start(on, "rejoins", WebSocketConfig::default()).await;
    let ws = h.ws();
    broadcast(&ws, ROOM, 1..=SINCE).await;
    let bystander = Member::join(&h.server, ROOM, LAST).await;
    let epoch = bystander.epoch.clone();
    let mut client = h.server.connect().await;
    let (_, joined) = join(&mut client, ROOM, None).await;
    assert_eq!(joined["offset"], SINCE);

    let wave = broadcast_in_background(ws.clone(), ROOM, SINCE + 1..=WAVE);
    let rejoin = join_frame(ROOM, Some((&epoch, SINCE)));
    for _ in 0..REJOINS {
        client.send_json(rejoin.clone()).await;
    }
    let mut next = SINCE + 1;
    let mut replies = 0;
    let mut replaying = false;
    // What it read (offsets, `R<offset>` for a reply), for the failure messages.
    let mut read = Vec::new();
    while replies < REJOINS {
        let frame = client.next_json().await;
        if is_reply(&frame, "joinRoom") {
            read.push(format!("R{}", frame["response"]["data"]["offset"]));
        } else {
            read.push(frame["stream"]["offset"].to_string());
        }
        if is_reply(&frame, "joinRoom") {
            let response = &frame["response"];
            assert_eq!(response["success"], true, "{response}");
            let data = &response["data"];
            assert_eq!(data["recovered"], true, "{data}");
            assert_eq!(data["epoch"], epoch.as_str());
            assert_eq!(
                data["offset"],
                next - 1,
                "the reply's position is the last frame sent: {}",
                read.join(" ")
            );
            replies += 1;
            replaying = false;
            continue;
        }
        let offset = offset_in(&frame, ROOM).unwrap_or_else(|| panic!("unexpected frame {frame}"));
        if offset == next {
            next += 1;
            continue;
        }
        // Anything else than the next frame must be a rejoin's replay starting over.
        assert!(
            offset == SINCE + 1 && !replaying,
            "frame {offset} after {}: a frame twice or out of order: {}",
            next - 1,
            read.join(" ")
        );
        replaying = true;
        next = SINCE + 2;
    }
    let caught_up = next - 1;
    wave.await.unwrap();
    broadcast(&ws, ROOM, WAVE + 1..=LAST).await;
    let mut live = Vec::new();
    while live.last() != Some(&LAST) {
        let frame = client.next_json().await;
        live.push(offset_in(&frame, ROOM).unwrap_or_else(|| panic!("unexpected frame {frame}")));
    }
    assert_eq!(
        live,
        (caught_up + 1..=LAST).collect::<Vec<_>>(),
        "after the last rejoin, each live frame once, in order"
    );
    assert_no_room_frame(&mut client, ROOM, Duration::from_millis(100)).await;
    bystander.finish(LAST).await;
}

// ---------------------------------------------------------------------------------------------
// A rejoined client that never reads.

/// A client rejoins with `since` then never reads while about 1 KB frames flow: its queue fills,
/// it alone is cut as a slow consumer (1013), and the room's other members get every frame, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoined_client_that_never_reads_is_cut_alone() {
    const ROOM: &str = "live-s";
    const HISTORY: u64 = 10;
    const ROUND: u64 = 16;
    const LAST: u64 = HISTORY + 75 * ROUND;
    // Small kernel buffers, so that a client that does not read fills its queue quickly.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let config = WebSocketConfig::default()
        .max_queued_bytes(64 * 1024)
        .ping_interval(None);
    let mut h = Harness::start_on(On::Memory, "stalled", config, listener).await;
    let ws = h.ws();
    for n in 1..=HISTORY {
        ws.broadcast_to_room_everywhere(ROOM, padded_tick(n))
            .await
            .unwrap();
    }
    let mut members = [
        Member::join(&h.server, ROOM, LAST).await,
        Member::join(&h.server, ROOM, LAST).await,
        Member::join(&h.server, ROOM, LAST).await,
    ];
    let epoch = members[0].epoch.clone();

    let tcp = TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(h.server.addr).await.unwrap();
    let mut stalled = SocketClient::connect_over(&h.server.url(None), tcp).await;
    stalled.send_json(join_frame(ROOM, Some((&epoch, 2)))).await;
    let mut stalled = Some(stalled);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ws.room_members(ROOM).len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never joined"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Rounds small enough for the readers' queues; the stalled client's fills up.
    let mut ending = None;
    let mut sent = HISTORY;
    while sent < LAST {
        for n in sent + 1..=sent + ROUND {
            ws.broadcast_to_room_everywhere(ROOM, padded_tick(n))
                .await
                .unwrap();
        }
        sent += ROUND;
        for member in &mut members {
            member.wait_for(sent).await;
        }
        if ending.is_none() && ws.stats().slow_consumer_disconnects > 0 {
            // It reads again: what was buffered, then the close frame.
            let mut stalled = stalled.take().unwrap();
            ending = Some(tokio::spawn(async move { stalled.ending().await }));
        }
    }
    let ending = ending.expect("the client that never reads was never cut");
    assert_eq!(h.next_disconnect().await.1, DisconnectReason::SlowConsumer);
    assert_eq!(
        ending.await.unwrap(),
        Ending::Close(Some(1013), "slow consumer".into())
    );
    assert_eq!(ws.stats().slow_consumer_disconnects, 1, "it alone");
    assert_eq!(ws.room_members(ROOM).len(), 3);
    for member in members {
        member.finish(LAST).await;
    }
    // A client that comes back recovers.
    let mut back = h.server.connect().await;
    let (before, data) = join(&mut back, ROOM, Some((&epoch, LAST - 3))).await;
    assert_eq!(offsets(&before, ROOM), [LAST - 2, LAST - 1, LAST]);
    assert_eq!(data["recovered"], true);
}

// ---------------------------------------------------------------------------------------------
// Garbage between a rejoin and its reply.

/// A client sends garbage right after `joinRoom` with `since`, before its reply: it gets its
/// catch-up and reply first, then one error per bad message, and stays in the room; one that
/// sends 1 MB is closed (1009) alone. The other member, and new clients, are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_a_rejoin_and_its_reply_harms_no_one_else() {
    const ROOM: &str = "live-g";
    let mut h = Harness::start(On::Memory, "garbage", WebSocketConfig::default()).await;
    let ws = h.ws();
    broadcast(&ws, ROOM, 1..=30).await;
    let bystander = Member::join(&h.server, ROOM, 60).await;
    let epoch = bystander.epoch.clone();

    let mut client = h.server.connect().await;
    client.send_json(join_frame(ROOM, Some((&epoch, 10)))).await;
    client.send_text("not json at all {").await;
    client
        .stream
        .send(Ws::binary(vec![0xff, 0xfe, 0x00, 0x80]))
        .await
        .unwrap();
    client.send_text("null").await;
    client.send_text("[1, 2, 3]").await;
    client.send_json(json!({"type": "system"})).await;
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"since": {"epoch": epoch, "offset": 1}}}))
        .await;
    client
        .stream
        .send(Ws::binary(leave_frame("nowhere").to_string().into_bytes()))
        .await
        .unwrap();

    let mut before = Vec::new();
    let reply = loop {
        let frame = client.next_json().await;
        if is_reply(&frame, "joinRoom") {
            break frame["response"].clone();
        }
        before.push(frame);
    };
    assert_eq!(
        offsets(&before, ROOM),
        (11..=30).collect::<Vec<_>>(),
        "the catch-up, whole and in order, before the reply"
    );
    assert_eq!(
        before.len(),
        20,
        "nothing else before the reply: {before:?}"
    );
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(reply["data"]["offset"], 30);
    for code in [
        "invalid_json",
        "invalid_json",
        "invalid_message",
        "missing_type",
        "missing_action",
    ] {
        let frame = client.next_json().await;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["data"]["code"], code, "{frame}");
    }
    let frame = client.next_json().await;
    assert!(is_reply(&frame, "joinRoom"), "{frame}");
    assert_eq!(frame["response"]["success"], false);
    assert_eq!(frame["response"]["error"], "Room name is required");
    let frame = client.next_json().await;
    assert!(is_reply(&frame, "leaveRoom"), "{frame}");
    assert_eq!(frame["response"]["success"], false);

    broadcast(&ws, ROOM, 31..=40).await;
    for n in 31..=40 {
        assert_eq!(offset_in(&client.next_json().await, ROOM), Some(n));
    }

    // 1 MB between a rejoin and its reply.
    let mut flooder = h.server.connect().await;
    flooder
        .send_json(join_frame(ROOM, Some((&epoch, 10))))
        .await;
    let _ = flooder.stream.send(Ws::text("x".repeat(1024 * 1024))).await;
    broadcast(&ws, ROOM, 41..=50).await;
    assert_eq!(h.next_disconnect().await.1, DisconnectReason::MessageTooBig);
    assert_eq!(ws.stats().oversized_message_disconnects, 1);
    match flooder.ending().await {
        Ending::Close(code, _) => assert_eq!(code, Some(1009)),
        // The server stops reading the oversized frame: its close frame may be lost to a reset.
        Ending::Dropped(_) => {}
    }

    // A new client is served, and recovers.
    let mut newcomer = h.server.connect().await;
    let (before, data) = join(&mut newcomer, ROOM, Some((&epoch, 45))).await;
    assert_eq!(offsets(&before, ROOM), [46, 47, 48, 49, 50]);
    assert_eq!(data["recovered"], true);
    broadcast(&ws, ROOM, 51..=60).await;
    for n in 41..=60 {
        assert_eq!(offset_in(&client.next_json().await, ROOM), Some(n));
    }
    for n in 51..=60 {
        assert_eq!(offset_in(&newcomer.next_json().await, ROOM), Some(n));
    }
    assert_eq!(ws.room_members(ROOM).len(), 3);
    bystander.finish(60).await;
    assert_eq!(ws.stats().slow_consumer_disconnects, 0);
}

// ---------------------------------------------------------------------------------------------
// leaveRoom in the middle of a catch-up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_during_a_catch_up_then_a_rejoin_in_memory() {
    leave_during_catch_up(On::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_during_a_catch_up_then_a_rejoin_on_redis() {
    leave_during_catch_up(On::Redis).await;
}

/// Reads the next frame, which must not be a frame of `room`.
async fn next_not_of(client: &mut SocketClient, room: &str, after: &str) -> Value {
    let frame = client.next_json().await;
    assert!(
        offset_in(&frame, room).is_none(),
        "a frame of {room} {after}: {frame}"
    );
    frame
}

/// Reads a catch-up from `from` up to the `joinRoom` reply: checks it is whole and in order and
/// that the reply says so; returns the last offset.
async fn catch_up_from(client: &mut SocketClient, room: &str, from: u64) -> u64 {
    let mut next = from;
    loop {
        let frame = client.next_json().await;
        if is_reply(&frame, "joinRoom") {
            let data = &frame["response"]["data"];
            assert_eq!(data["recovered"], true, "{data}");
            assert_eq!(data["offset"], next - 1, "{data}");
            return next - 1;
        }
        let offset = offset_in(&frame, room).unwrap_or_else(|| panic!("unexpected frame {frame}"));
        assert_eq!(offset, next, "a catch-up whole and in order");
        next += 1;
    }
}

/// Reads live frames from `from` up to the `user:leftRoom` push, then the `leaveRoom` reply;
/// returns the last offset.
async fn live_until_left(client: &mut SocketClient, room: &str, from: u64) -> u64 {
    let mut next = from;
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "user" && frame["action"] == "leftRoom" {
            let reply = next_not_of(client, room, "between leftRoom and the leave's reply").await;
            assert!(is_reply(&reply, "leaveRoom"), "{reply}");
            assert_eq!(reply["response"]["success"], true, "{reply}");
            return next - 1;
        }
        let offset = offset_in(&frame, room).unwrap_or_else(|| panic!("unexpected frame {frame}"));
        assert_eq!(offset, next, "live frames once, in order");
        next += 1;
    }
}

/// `joinRoom` from the start of a 2,000-frame history and `leaveRoom` at once, while frames
/// flow: the catch-up, the reply, live frames, the leave; then no frame of the room until the
/// client joins again, whose catch-up is exactly what it missed. Then join, leave and join again
/// at once: after the leave's reply, the next frame of the room is the second join's catch-up
/// from its start.
async fn leave_during_catch_up(on: On) {
    const ROOM: &str = "live-l";
    const HISTORY: u64 = 2_000;
    const LAST: u64 = 2_600;
    let h = Harness::start(on, "leave", WebSocketConfig::default()).await;
    let ws = h.ws();
    broadcast(&ws, ROOM, 1..=HISTORY).await;
    let mut bystander = Member::join(&h.server, ROOM, LAST).await;
    let epoch = bystander.epoch.clone();
    let mut client = h.server.connect().await;

    let wave = broadcast_in_background(ws.clone(), ROOM, HISTORY + 1..=2_300);
    client.send_json(join_frame(ROOM, Some((&epoch, 0)))).await;
    client.send_json(leave_frame(ROOM)).await;
    let caught_up = catch_up_from(&mut client, ROOM, 1).await;
    let left_at = live_until_left(&mut client, ROOM, caught_up + 1).await;
    wave.await.unwrap();
    // Frames the client is not to get: delivered to the member, so dispatched to the room.
    broadcast(&ws, ROOM, 2_301..=2_350).await;
    bystander.wait_for(2_350).await;
    assert_no_room_frame(&mut client, ROOM, Duration::from_millis(200)).await;
    // Back: exactly what it missed, then live.
    client
        .send_json(join_frame(ROOM, Some((&epoch, left_at))))
        .await;
    assert_eq!(catch_up_from(&mut client, ROOM, left_at + 1).await, 2_350);

    // Join again from the start, leave and join again, all at once, while frames flow.
    let wave = broadcast_in_background(ws.clone(), ROOM, 2_351..=2_500);
    client.send_json(join_frame(ROOM, Some((&epoch, 0)))).await;
    client.send_json(leave_frame(ROOM)).await;
    client.send_json(join_frame(ROOM, Some((&epoch, 0)))).await;
    // Live frames until the first join's catch-up starts over from 1.
    let mut next = 2_351;
    loop {
        let frame = client.next_json().await;
        let offset = offset_in(&frame, ROOM).unwrap_or_else(|| panic!("unexpected frame {frame}"));
        if offset == 1 {
            break;
        }
        assert_eq!(offset, next, "live frames once, in order");
        next += 1;
    }
    let caught_up = catch_up_from(&mut client, ROOM, 2).await;
    live_until_left(&mut client, ROOM, caught_up + 1).await;
    // After the leave's reply, the next frame of the room is the second join's catch-up, from 1.
    let frame = client.next_json().await;
    assert_eq!(
        offset_in(&frame, ROOM),
        Some(1),
        "after the leave, nothing of the room before the next join's catch-up: {frame}"
    );
    let caught_up = catch_up_from(&mut client, ROOM, 2).await;
    wave.await.unwrap();
    broadcast(&ws, ROOM, 2_501..=LAST).await;
    let mut live = Vec::new();
    while live.last() != Some(&LAST) {
        let frame = client.next_json().await;
        live.push(offset_in(&frame, ROOM).unwrap_or_else(|| panic!("unexpected frame {frame}")));
    }
    assert_eq!(live, (caught_up + 1..=LAST).collect::<Vec<_>>());
    bystander.finish(LAST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_and_rejoins_while_a_burst_is_dispatched_in_memory() {
    leaves_and_rejoins_during_a_burst(On::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_and_rejoins_while_a_burst_is_dispatched_on_redis() {
    leaves_and_rejoins_during_a_burst(On::Redis).await;
}

/// A client leaves and rejoins from the last frame it saw, again and again, while a burst of
/// frames is published faster than the server dispatches them (so live frames arrive after the
/// catch-up sent them from the history): across all the joins and leaves, it sees every frame
/// once, in order, and none between a leave's reply and its next join.
async fn leaves_and_rejoins_during_a_burst(on: On) {
    const ROOM: &str = "live-b";
    const LAST: u64 = 5_000;
    const CYCLES: usize = 100;
    let h = Harness::start(on, "burst", WebSocketConfig::default()).await;
    let ws = h.ws();
    broadcast(&ws, ROOM, 1..=1).await;
    let bystander = Member::join(&h.server, ROOM, LAST).await;
    let epoch = bystander.epoch.clone();
    let burst = tokio::spawn({
        let ws = ws.clone();
        async move { broadcast(&ws, ROOM, 2..=LAST).await }
    });
    let mut client = h.server.connect().await;
    let mut seen = 1;
    for _ in 0..CYCLES {
        client
            .send_json(join_frame(ROOM, Some((&epoch, seen))))
            .await;
        client.send_json(leave_frame(ROOM)).await;
        seen = catch_up_from(&mut client, ROOM, seen + 1).await;
        seen = live_until_left(&mut client, ROOM, seen + 1).await;
    }
    burst.await.unwrap();
    client
        .send_json(join_frame(ROOM, Some((&epoch, seen))))
        .await;
    assert_eq!(catch_up_from(&mut client, ROOM, seen + 1).await, LAST);
    assert_no_room_frame(&mut client, ROOM, Duration::from_millis(100)).await;
    bystander.finish(LAST).await;
}
