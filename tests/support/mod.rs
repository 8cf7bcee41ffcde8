//! Shared helpers of the WebSocket server tests: a server on 127.0.0.1:0 and tokio-tungstenite
//! clients that wait for frames with deadlines (never sleeps).
#![allow(dead_code, unreachable_pub, unused_imports, async_fn_in_trait)]

mod binary;
#[allow(unused_imports)]
pub use binary::example_binary;

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::prelude::*;
pub use switchboard::testing::{Ending, SocketClient, TestServer};
use switchboard::{Builder, ClientId, DisconnectReason};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long any single expected event may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const SECRET: &[u8] = b"test-secret";

pub fn base() -> Builder {
    Switchboard::builder().without_linked_handlers()
}

/// A builder whose clients are told their id in a `test/welcome` frame right after connecting,
/// and whose disconnections are reported on the returned channel.
pub fn observed(
    builder: Builder,
) -> (
    Builder,
    mpsc::UnboundedReceiver<(ClientId, DisconnectReason)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder
        .on_connect(|client, ws| {
            ws.broadcast_to_client(
                client.id(),
                Outgoing::new("test", "welcome", json!({ "clientId": client.id() })),
            );
        })
        .on_disconnect(move |client, _, reason| {
            let _ = tx.send((client.id().clone(), reason.clone()));
        });
    (builder, rx)
}

/// The kit's loopback server, started or the test fails.
pub struct Server;

impl Server {
    pub async fn start(builder: Builder) -> TestServer {
        TestServer::start(builder)
            .await
            .expect("the test server starts")
    }

    pub async fn start_on(builder: Builder, listener: TcpListener) -> TestServer {
        TestServer::start_on(builder, listener)
            .await
            .expect("the test server starts")
    }
}

/// The tests' convention on top of the kit's clients: applications built with [`observed`] greet
/// each client with its id.
pub trait ServerExt {
    fn ws(&self) -> WebSocket;
    async fn client(&self) -> SocketClient;
    async fn client_with_token(&self, token: &str) -> (SocketClient, Value);
}

impl ServerExt for TestServer {
    fn ws(&self) -> WebSocket {
        self.websocket()
    }

    async fn client(&self) -> SocketClient {
        SocketClient::connect(&self.url(None))
            .await
            .welcomed()
            .await
    }

    async fn client_with_token(&self, token: &str) -> (SocketClient, Value) {
        let mut c = SocketClient::connect(&self.url(Some(token))).await;
        let auth = c.next_json().await;
        (c.welcomed().await, auth)
    }
}

pub trait Welcomed: Sized {
    /// Reads the welcome frame of an [`observed`] application and learns the client's id.
    async fn welcomed(self) -> Self;
}

impl Welcomed for SocketClient {
    async fn welcomed(mut self) -> Self {
        let welcome = self.next_json().await;
        assert_eq!(
            welcome["type"], "test",
            "expected the welcome frame, got {welcome}"
        );
        let id = welcome["data"]["clientId"].as_str().unwrap();
        self.id = Some(client_id_from_str(id));
        self
    }
}

pub fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `ClientId` from its text.
pub fn client_id_from_str(id: &str) -> ClientId {
    id.parse().expect("a client id")
}

/// Waits for the next disconnection report.
pub async fn next_disconnect(
    rx: &mut mpsc::UnboundedReceiver<(ClientId, DisconnectReason)>,
) -> (ClientId, DisconnectReason) {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("no disconnection within the deadline")
        .expect("hook channel closed")
}

/// Reads an example's standard output until its `Open http://...` line and returns that URL
/// (the rest of the output is drained in the background).
pub async fn announced_url(stdout: std::process::ChildStdout) -> String {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("Open ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        }
    });
    tokio::time::timeout(DEADLINE, rx)
        .await
        .expect("the example announces its URL")
        .expect("the example's output")
}

/// The hello-world example as a child process on a free port (`PORT=0`), without a database and
/// without Redis unless the caller sets `REDIS_URL`; its standard output is piped (it prints
/// `Open http://...` once it serves, see [`announced_url`]).
pub fn hello_world_command() -> std::process::Command {
    use std::process::Stdio;
    let mut command = std::process::Command::new(example_binary("hello_world"));
    command
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JOBS_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}
