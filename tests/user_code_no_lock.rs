//! No lock is held while the application's code runs: a broadcast predicate, a lifecycle hook, or
//! a conversion the server calls (`Into<Frame>`, `Display`) may call back into the `WebSocket`
//! handle, reads and writes alike, while clients connect, without deadlocking the server.
//!
//! A deadlock would hang the test, so each one runs on its own runtime in its own thread and is
//! failed, with a message that says so, when it does not finish within `LIMIT`.

mod support;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use switchboard::prelude::*;
use switchboard::{ClientId, Frame, JwtSecret};

/// Far more than any of these tests takes; past it, the test is taken to be deadlocked.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` on a multi-threaded runtime of its own, on a thread of its own, and fails when it
/// does not finish within `LIMIT`. The runtime of a deadlocked test is left behind (its threads
/// are blocked for good), so that the failure is reported instead of hanging the test binary.
fn bounded<F>(what: &str, test: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime");
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(test())));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "{what}: not finished within {LIMIT:?}: deadlocked (application code run while the \
             server holds its lock?)"
        ),
    }
}

/// Sets the flag when dropped: the connecting task says it is done even when it panics.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn end() -> Outgoing {
    Outgoing::new("test", "end", Value::Null)
}

/// Reads a client's frames up to the `test/end` frame; returns them (without it).
async fn until_end(client: &mut SocketClient) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "test" && frame["action"] == "end" {
            return frames;
        }
        frames.push(frame);
    }
}

/// The case: a predicate that reads the cluster through the handle (each read takes the
/// lock again), while 50 clients connect (each connect takes the write lock). With the predicate
/// run under the read lock, a writer queued between the broadcast's read and the predicate's
/// blocked both for good.
#[test]
fn a_predicate_reading_the_handle_while_clients_connect() {
    bounded(
        "broadcast_to_all_clients_where with a predicate reading the handle",
        || async {
            const CLIENTS: usize = 50;
            const BROADCASTS: usize = 200;
            let (builder, _gone) =
                observed(base().websocket(WebSocketConfig::default().ping_interval(None)));
            let server = Server::start(builder).await;
            let ws = server.ws();
            let done = Arc::new(AtomicBool::new(false));

            let connecting = {
                let (ws, url, done) = (ws.clone(), server.url(None), done.clone());
                tokio::spawn(async move {
                    let _done = SetOnDrop(done);
                    let mut clients = Vec::with_capacity(CLIENTS);
                    for i in 0..CLIENTS {
                        let client = SocketClient::connect(&url).await.welcomed().await;
                        let selected = i % 2 == 0;
                        ws.set_client_metadata(client.id(), json!({ "selected": selected }))
                            .expect("the client is connected here");
                        clients.push((client, selected));
                    }
                    clients
                })
            };

            let broadcasting = {
                let (ws, done) = (ws.clone(), done.clone());
                tokio::task::spawn_blocking(move || {
                    let mut sent = 0;
                    let mut n = 0;
                    while n < BROADCASTS || !done.load(Ordering::SeqCst) {
                        sent += ws.broadcast_to_all_clients_where(
                            Outgoing::new("test", "tick", json!(n)),
                            |client| {
                                let Some(info) = ws.client(client.id()) else {
                                    return false;
                                };
                                // Widens the window in which a connect queues for the write lock.
                                std::thread::sleep(Duration::from_micros(50));
                                assert!(ws.rooms_of(client.id()).is_empty());
                                assert!(ws.cluster_client_count() >= 1);
                                assert!(ws.is_local(client.id()));
                                info.metadata["selected"] == true
                            },
                        );
                        n += 1;
                    }
                    sent
                })
            };

            let mut clients = connecting.await.expect("the clients connect");
            let sent = broadcasting.await.expect("the broadcasts run");
            assert!(sent > 0, "no broadcast reached a selected client");

            // Once everyone is connected: exactly the selected half.
            let last = ws.broadcast_to_all_clients_where(
                Outgoing::new("test", "last", Value::Null),
                |client| ws.client(client.id()).unwrap().metadata["selected"] == true,
            );
            assert_eq!(last, CLIENTS / 2);
            assert_eq!(ws.broadcast_to_all_clients(end()), CLIENTS);

            let mut received = 0;
            for (client, selected) in &mut clients {
                let frames = until_end(client).await;
                let ticks = frames.iter().filter(|f| f["action"] == "tick").count();
                let got_last = frames.iter().any(|f| f["action"] == "last");
                if *selected {
                    assert!(got_last, "a selected client missed the last frame");
                } else {
                    assert_eq!(
                        (ticks, got_last),
                        (0, false),
                        "a client the predicate did not select got frames"
                    );
                }
                assert_eq!(
                    frames.len(),
                    ticks + usize::from(got_last),
                    "unexpected frames: {frames:?}"
                );
                received += ticks;
            }
            assert_eq!(
                received, sent,
                "the clients got what the broadcasts counted"
            );
            drop(clients);
            server.running.shutdown().await;
        },
    );
}

/// A predicate that writes through the handle (`set_client_metadata` takes the write lock): under
/// the broadcast's read lock it deadlocked at once.
#[test]
fn a_predicate_writing_through_the_handle() {
    bounded(
        "broadcast_to_all_clients_where with a predicate setting metadata",
        || async {
            let (builder, _gone) = observed(base());
            let server = Server::start(builder).await;
            let mut clients = Vec::new();
            for _ in 0..4 {
                clients.push(server.client().await);
            }
            let chosen: Vec<ClientId> = clients[..2].iter().map(|c| c.id().clone()).collect();
            let ws = server.ws();
            let sent = {
                let (ws, chosen) = (ws.clone(), chosen.clone());
                tokio::task::spawn_blocking(move || {
                    ws.broadcast_to_all_clients_where(
                        Outgoing::new("test", "picked", Value::Null),
                        |client| {
                            ws.set_client_metadata(client.id(), json!({"seen": true}))
                                .unwrap();
                            chosen.contains(client.id())
                        },
                    )
                })
                .await
                .unwrap()
            };
            assert_eq!(sent, 2);
            assert_eq!(ws.broadcast_to_all_clients(end()), 4);
            for client in &mut clients {
                assert_eq!(
                    ws.client(client.id()).unwrap().metadata,
                    json!({"seen": true})
                );
                let frames = until_end(client).await;
                let expected: Vec<Value> = if chosen.contains(client.id()) {
                    vec![json!({"type": "test", "action": "picked", "data": null})]
                } else {
                    Vec::new()
                };
                assert_eq!(frames, expected);
            }
            drop(clients);
            server.running.shutdown().await;
        },
    );
}

/// A frame type of the application whose conversion uses the handle.
struct Greeting {
    ws: WebSocket,
    to: ClientId,
}

impl From<Greeting> for Frame {
    fn from(g: Greeting) -> Self {
        g.ws.set_client_metadata(&g.to, json!({"greeted": true}))
            .unwrap();
        Outgoing::new("test", "greeting", json!({"clients": g.ws.client_count()})).into()
    }
}

/// A user of the application whose `Display` uses the handle.
struct Who {
    ws: WebSocket,
    client: ClientId,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ws
            .set_client_metadata(&self.client, json!({"looked_up": true}))
            .unwrap();
        f.write_str("42")
    }
}

/// The application's `Into<Frame>` and `Display` run before the handle takes its lock.
#[test]
fn conversions_of_application_types_may_use_the_handle() {
    bounded(
        "Into<Frame> and Display implementations using the handle",
        || async {
            let (builder, _gone) = observed(
                base().websocket(WebSocketConfig::default().jwt_secret(JwtSecret::raw(SECRET))),
            );
            let server = Server::start(builder).await;
            let (mut client, _auth) = server.client_with_token(&token(json!({"sub": "42"}))).await;
            let id = client.id().clone();
            let ws = server.ws();
            let sent = {
                let (ws, id) = (ws.clone(), id.clone());
                tokio::task::spawn_blocking(move || {
                    let greeting = Greeting {
                        ws: ws.clone(),
                        to: id.clone(),
                    };
                    ws.broadcast_to_client(&id, greeting)
                })
                .await
                .unwrap()
            };
            assert!(sent);
            assert_eq!(ws.client(&id).unwrap().metadata, json!({"greeted": true}));
            assert_eq!(
                client.next_json().await,
                json!({"type": "test", "action": "greeting", "data": {"clients": 1}})
            );

            let found = {
                let (ws, id) = (ws.clone(), id.clone());
                tokio::task::spawn_blocking(move || {
                    ws.clients_of_user(Who {
                        ws: ws.clone(),
                        client: id,
                    })
                })
                .await
                .unwrap()
            };
            assert_eq!(found, std::slice::from_ref(&id));
            assert_eq!(ws.client(&id).unwrap().metadata, json!({"looked_up": true}));
            drop(client);
            server.running.shutdown().await;
        },
    );
}

/// Every lifecycle hook may call back into the handle, reads and writes alike (`on_message` and
/// `on_error` reach it through a handle the application keeps).
#[test]
fn lifecycle_hooks_may_use_the_handle() {
    bounded("lifecycle hooks using the handle", || async {
        let handle: Arc<OnceLock<WebSocket>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (on_message_ws, on_error_ws) = (handle.clone(), handle.clone());
        let (seen_connect, seen_disconnect) = (seen.clone(), seen.clone());
        let (disconnected_tx, mut disconnected) = tokio::sync::mpsc::unbounded_channel();
        // The test's welcome hook first (its frame is the first a client gets), then these.
        let (builder, _gone) = observed(base());
        let builder = builder
            .on_connect(move |client, ws| {
                ws.set_client_metadata(client.id(), json!({"hooked": true}))
                    .unwrap();
                let info = ws.client(client.id()).unwrap();
                let picked = ws.broadcast_to_all_clients_where(
                    Outgoing::new("test", "hello", Value::Null),
                    |c| {
                        ws.client(c.id())
                            .is_some_and(|i| i.metadata["hooked"] == true)
                    },
                );
                seen_connect.lock().unwrap().push(format!(
                    "connect local={} clients={} picked={picked}",
                    info.local,
                    ws.cluster_client_count(),
                ));
            })
            .on_message(move |client, message| {
                let ws = on_message_ws.get().expect("the handle is kept");
                ws.set_client_metadata(client.id(), json!({"last": message.action()}))
                    .unwrap();
            })
            .on_error(move |client, error| {
                let ws = on_error_ws.get().expect("the handle is kept");
                assert!(ws.client(client.id()).is_some());
                ws.broadcast_to_client(client.id(), Outgoing::new("test", "on_error", error));
            })
            .on_disconnect(move |client, ws, _| {
                let picked = ws.broadcast_to_all_clients_where(
                    Outgoing::new("test", "bye", Value::Null),
                    |c| ws.client(c.id()).is_some(),
                );
                seen_disconnect.lock().unwrap().push(format!(
                    "disconnect listed={} clients={} picked={picked}",
                    ws.client(client.id()).is_some(),
                    ws.client_count(),
                ));
                let _ = disconnected_tx.send(());
            });
        let server = Server::start(builder).await;
        handle.set(server.ws()).unwrap();
        let ws = server.ws();

        let mut client = server.client().await;
        let id = client.id().clone();
        assert_eq!(
            client.next_json().await,
            json!({"type": "test", "action": "hello", "data": null})
        );
        client
            .send_json(json!({"type": "nope", "action": "missing"}))
            .await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "test", "action": "on_error", "data": "Unknown route: nope:missing"})
        );
        assert_eq!(
            client.next_json().await["data"]["error"],
            "Unknown route: nope:missing"
        );
        assert_eq!(ws.client(&id).unwrap().metadata, json!({"last": "missing"}));

        client.close().await;
        tokio::time::timeout(DEADLINE, disconnected.recv())
            .await
            .expect("on_disconnect within the deadline");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "connect local=true clients=1 picked=1",
                "disconnect listed=false clients=0 picked=0",
            ]
        );
        server.running.shutdown().await;
    });
}
