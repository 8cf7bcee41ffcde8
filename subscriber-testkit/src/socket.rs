//! Real WebSocket clients over loopback TCP, for what an in-process [`TestClient`](crate::TestClient)
//! cannot show: handshakes, authentication by URL, close codes, a peer that never reads, frames
//! too large, heartbeats.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use subscriber_runtime::{Builder, Error, Running};
use subscriber_server::{ClientId, ServerRunningExt, WebSocket};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a [`SocketClient`] waits for a connection, a frame or the end of its connection.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// An application serving WebSocket clients on a loopback port, for [`SocketClient`]s.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::testing::TestServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let server = TestServer::start(Switchboard::builder().without_linked_handlers().route(
///     "hello", "greet",
///     |Data(name): Data<String>| async move { serde_json::json!({"hi": name}) },
/// ))
/// .await?;
/// let mut client = server.connect().await;
/// client.send_json(serde_json::json!({"type": "hello", "action": "greet", "data": "Ada"})).await;
/// assert_eq!(client.next_json().await["response"]["hi"], "Ada");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestServer {
    /// The running application.
    pub running: Running,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestServer {
    /// Builds, starts and serves `builder` on a free loopback port.
    ///
    /// # Errors
    /// What `build()`, `start()` or binding returns.
    pub async fn start(builder: Builder) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(builder, listener).await
    }

    /// Builds, starts and serves `builder` on `listener`.
    ///
    /// # Errors
    /// What `build()` or `start()` returns.
    pub async fn start_on(builder: Builder, listener: TcpListener) -> Result<Self, Error> {
        let running = builder.build()?.start().await?;
        let addr = running.listen(listener)?;
        Ok(Self { running, addr })
    }

    /// The WebSocket URL, with `?token=` when given.
    pub fn url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws?token={t}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    /// The server's handle.
    pub fn websocket(&self) -> WebSocket {
        self.running.websocket()
    }

    /// Connects a client without a token.
    ///
    /// # Panics
    /// When the connection fails or takes longer than [`SOCKET_TIMEOUT`].
    pub async fn connect(&self) -> SocketClient {
        SocketClient::connect(&self.url(None)).await
    }
}

/// How a [`SocketClient`]'s connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server closed it: the close code (if any) and reason.
    Close(Option<u16>, String),
    /// It was dropped without a close frame: why.
    Dropped(String),
}

/// A WebSocket client over a real socket. Every wait is bounded by [`SOCKET_TIMEOUT`] and panics
/// with what happened instead: a test never hangs on it.
#[derive(Debug)]
pub struct SocketClient {
    /// The client's id, once the test learned it (from a frame its application sends).
    pub id: Option<ClientId>,
    /// The connection itself, for what the methods do not cover (not reading, raw frames).
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SocketClient {
    /// Connects to `url` (`ws://host:port/ws?token=...`).
    ///
    /// # Panics
    /// When the connection fails or takes longer than [`SOCKET_TIMEOUT`].
    pub async fn connect(url: &str) -> Self {
        let (stream, _) =
            tokio::time::timeout(SOCKET_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect timed out")
                .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        Self { id: None, stream }
    }

    /// Connects to `url` over a TCP stream of the test's (one it throttles or stalls, say).
    ///
    /// # Panics
    /// When the handshake fails or takes longer than [`SOCKET_TIMEOUT`].
    pub async fn connect_over(url: &str, tcp: TcpStream) -> Self {
        let (stream, _) = tokio::time::timeout(
            SOCKET_TIMEOUT,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("handshake timed out")
        .unwrap_or_else(|e| panic!("handshake with {url} failed: {e}"));
        Self { id: None, stream }
    }

    /// The id the test set in the [`id`](Self::id) field.
    ///
    /// # Panics
    /// When the test has not set it.
    pub fn id(&self) -> &ClientId {
        self.id
            .as_ref()
            .expect("the test has not learned this client's id")
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a text frame.
    ///
    /// # Panics
    /// When the connection is gone.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(WsMessage::text(text.to_owned()))
            .await
            .expect("send failed");
    }

    /// The next text frame (pings and pongs are skipped).
    ///
    /// # Panics
    /// When none comes within [`SOCKET_TIMEOUT`], or something else does.
    pub async fn next_text(&mut self) -> String {
        loop {
            let item = tokio::time::timeout(SOCKET_TIMEOUT, self.stream.next())
                .await
                .expect("no frame within the deadline");
            match item {
                Some(Ok(WsMessage::Text(t))) => return t.to_string(),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, parsed.
    ///
    /// # Panics
    /// As [`next_text`](Self::next_text), or when the frame is not JSON.
    pub async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).expect("frames are JSON")
    }

    /// Reads until the connection ends (frames before are skipped), and says how.
    ///
    /// # Panics
    /// When it does not end within [`SOCKET_TIMEOUT`].
    pub async fn ending(&mut self) -> Ending {
        loop {
            let item = tokio::time::timeout(SOCKET_TIMEOUT, self.stream.next())
                .await
                .expect("the connection did not end within the deadline");
            match item {
                Some(Ok(WsMessage::Close(frame))) => {
                    let _ = tokio::time::timeout(SOCKET_TIMEOUT, async {
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

    /// Closes the connection normally (1000).
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
