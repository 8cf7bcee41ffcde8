//! Shared helpers of the WebSocket server tests: a server on 127.0.0.1:0 and tokio-tungstenite
//! clients that wait for frames with deadlines (never sleeps).
#![allow(dead_code, unreachable_pub)]

mod binary;
#[allow(unused_imports)]
pub use binary::example_binary;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::prelude::*;
use switchboard::{Builder, ClientId, DisconnectReason, Running};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

pub struct Server {
    pub running: Running,
    pub addr: SocketAddr,
}

impl Server {
    pub async fn start(builder: Builder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(builder, listener).await
    }

    pub async fn start_on(builder: Builder, listener: TcpListener) -> Self {
        let running = builder.build().unwrap().start().await.unwrap();
        let addr = running.listen(listener).unwrap();
        Self { running, addr }
    }

    pub fn url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws?token={t}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    pub fn ws(&self) -> WebSocket {
        self.running.websocket()
    }

    /// Connects an anonymous client and reads its welcome frame.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.url(None)).await.welcomed().await
    }

    /// Connects a client with a token, reads its auth frame, then its welcome frame.
    pub async fn client_with_token(&self, token: &str) -> (WsClient, Value) {
        let mut c = WsClient::connect(&self.url(Some(token))).await;
        let auth = c.next_json().await;
        (c.welcomed().await, auth)
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

pub struct WsClient {
    pub id: Option<ClientId>,
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What ended a client's stream.
#[derive(Debug, PartialEq)]
pub enum Ending {
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    Dropped(String),
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Self { id: None, stream }
    }

    pub async fn from_stream(url: &str, tcp: TcpStream) -> Self {
        let (stream, _) = tokio::time::timeout(
            DEADLINE,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
        Self { id: None, stream }
    }

    /// Reads the `test/welcome` frame and keeps the client id.
    pub async fn welcomed(mut self) -> Self {
        let welcome = self.next_json().await;
        assert_eq!(
            welcome["type"], "test",
            "expected the welcome frame, got {welcome}"
        );
        let id = welcome["data"]["clientId"].as_str().unwrap();
        self.id = Some(client_id_from_str(id));
        self
    }

    pub fn id(&self) -> &ClientId {
        self.id.as_ref().expect("welcomed client")
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(WsMessage::text(text.to_owned()))
            .await
            .expect("send failed");
    }

    /// The next text frame, as raw text (pings and pongs are skipped).
    pub async fn next_text(&mut self) -> String {
        loop {
            let item = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .expect("no frame within the deadline");
            match item {
                Some(Ok(WsMessage::Text(t))) => return t.to_string(),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).expect("frames are JSON")
    }

    /// Reads until the connection ends; returns how it ended (frames before are discarded).
    pub async fn ending(&mut self) -> Ending {
        loop {
            let item = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .expect("the connection did not end within the deadline");
            match item {
                Some(Ok(WsMessage::Close(frame))) => {
                    // Keep polling so the client's close reply is flushed, as a browser does.
                    let _ = tokio::time::timeout(DEADLINE, async {
                        while let Some(Ok(_)) = self.stream.next().await {}
                    })
                    .await;
                    return match frame {
                        Some(CloseFrame { code, reason }) => {
                            Ending::Close(Some(u16::from(code)), reason.to_string())
                        }
                        None => Ending::Close(None, String::new()),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ending::Dropped(e.to_string()),
                None => return Ending::Dropped("end of stream".into()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
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
