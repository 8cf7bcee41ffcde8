//! One stalled client among 200: it is disconnected with close code 1013 while the other 199
//! receive every frame, in order. (Its own test binary, so its load does not disturb the timing
//! tests of `websocket_server.rs`.)

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::json;
use support::*;
use switchboard::prelude::*;
use switchboard::DisconnectReason;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const CLIENTS: usize = 200;
const ROUND: usize = 16;
const MAX_ROUNDS: usize = 400;

/// Counts frames received by the healthy clients and wakes the test when it changes.
#[derive(Default)]
struct Progress {
    frames: AtomicUsize,
    changed: Notify,
}

impl Progress {
    async fn wait_for(&self, total: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.frames.load(Ordering::SeqCst) >= total {
                return;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "healthy clients got {} of {total} frames",
                        self.frames.load(Ordering::SeqCst)
                    )
                });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_and_the_others_receive_everything() {
    let (builder, mut gone) = observed(
        base().websocket(
            WebSocketConfig::default()
                .max_queued_messages(64)
                .max_queued_bytes(256 * 1024)
                .ping_interval(None),
        ),
    );
    // Small kernel buffers, so a client that stops reading fills its queue quickly.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(1024).unwrap();
    let server = Server::start_on(builder, listener).await;
    let ws = server.ws();

    // The stalled client: a small receive buffer, and it does not read.
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(server.addr).await.unwrap();
    let stalled = support::SocketClient::connect_over(&server.url(None), tcp)
        .await
        .welcomed()
        .await;
    let stalled_id = stalled.id().clone();

    // 199 healthy clients, each reading in its own task and checking the order.
    let progress = Arc::new(Progress::default());
    let mut readers = Vec::new();
    for _ in 1..CLIENTS {
        let client = server.client().await;
        let progress = progress.clone();
        readers.push(tokio::spawn(async move {
            let mut stream = client.stream;
            let mut expected = 0u64;
            loop {
                match stream.next().await {
                    Some(Ok(WsMessage::Text(text))) => {
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        if frame["action"] == "end" {
                            return expected;
                        }
                        assert_eq!(frame["data"]["seq"], expected, "frames arrive in order");
                        expected += 1;
                        progress.frames.fetch_add(1, Ordering::SeqCst);
                        progress.changed.notify_waiters();
                    }
                    Some(Ok(_)) => {}
                    other => panic!("a healthy client lost its connection: {other:?}"),
                }
            }
        }));
    }
    assert_eq!(ws.client_count(), CLIENTS);

    let padding = "p".repeat(1000);
    let mut sent = 0usize;
    for _ in 0..MAX_ROUNDS {
        for _ in 0..ROUND {
            let frame = Outgoing::new("load", "tick", json!({"seq": sent, "pad": padding}));
            ws.broadcast_to_all_clients(frame);
            sent += 1;
        }
        progress.wait_for(sent * (CLIENTS - 1)).await;
        if server.running.websocket().stats().slow_consumer_disconnects > 0 {
            break;
        }
    }
    assert_eq!(
        server.running.websocket().stats().slow_consumer_disconnects,
        1,
        "exactly the stalled client is disconnected (after {sent} frames)"
    );

    // The stalled client reads again: what was buffered, then the 1013 close frame.
    let mut stalled = stalled;
    let ending = tokio::spawn(async move { stalled.ending().await });
    let (id, reason) = next_disconnect(&mut gone).await;
    assert_eq!((id, reason), (stalled_id, DisconnectReason::SlowConsumer));
    match ending.await.unwrap() {
        Ending::Close(code, _) => assert_eq!(code, Some(1013)),
        Ending::Dropped(e) => panic!("expected a 1013 close frame, the connection dropped: {e}"),
    }

    // The other 199 got every frame and are still connected.
    assert_eq!(ws.client_count(), CLIENTS - 1);
    ws.broadcast_to_all_clients(Outgoing::new("load", "end", json!(null)));
    for reader in readers {
        let got = tokio::time::timeout(DEADLINE, reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sent as u64);
    }
}
