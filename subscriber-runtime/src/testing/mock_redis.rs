//! [`MockRedis`]: a small Redis server for tests, with fault injection.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

/// How long [`MockRedis::restart`] refuses connections.
const RESTART_OUTAGE: Duration = Duration::from_millis(200);
/// Largest amount of unparsed input a connection may buffer before it is closed.
const MAX_BUFFERED_INPUT: usize = 64 * 1024 * 1024;

/// A Redis server for tests: a real TCP server on `127.0.0.1` speaking RESP2, with pub/sub
/// (`SUBSCRIBE`, `PSUBSCRIBE` with Redis glob semantics, `UNSUBSCRIBE`, `PUNSUBSCRIBE`,
/// `PUBLISH`) and the few other commands clients send (`PING`, `ECHO`, `SELECT`, `AUTH` — any
/// password is accepted —, `CLIENT SETINFO`/`SETNAME`/`ID`, `HELLO 2`, `RESET`, `QUIT`). Nothing
/// is stored: there are no keys.
///
/// Its fault injection drives the [`RedisBroker`](crate::broker::RedisBroker)'s reconnects:
/// [`drop_connections`](Self::drop_connections), [`stall_connections`](Self::stall_connections),
/// [`refuse_connections_for`](Self::refuse_connections_for) and [`restart`](Self::restart).
/// Input that is not RESP closes that connection only.
///
/// Dropping the `MockRedis` stops the server and closes every connection. It runs on the Tokio
/// runtime that started it.
///
/// ```
/// use switchboard::broker::RedisBroker;
/// use switchboard::testing::MockRedis;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let redis = MockRedis::start().await;
/// let broker = RedisBroker::from_url(&redis.url())?;
/// # let _ = broker;
/// # Ok(())
/// # }
/// ```
pub struct MockRedis {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl fmt::Debug for MockRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockRedis")
            .field("addr", &self.addr)
            .field("connections", &self.connection_count())
            .field("published", &self.published_count())
            .finish()
    }
}

impl Drop for MockRedis {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Default)]
struct Shared {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    published: AtomicU64,
    refuse_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn clients(&self) -> MutexGuard<'_, HashMap<u64, Client>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refusing(&self) -> bool {
        let until = self
            .refuse_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }
}

/// One connected client, as seen by `PUBLISH`.
struct Client {
    /// Messages pushed to the client (`message`, `pmessage`).
    push: mpsc::UnboundedSender<BytesFrame>,
    kill: CancellationToken,
    stall: CancellationToken,
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
}

impl Client {
    fn subscription_count(&self) -> i64 {
        i64::try_from(self.channels.len() + self.patterns.len()).unwrap_or(i64::MAX)
    }
}

impl MockRedis {
    /// Starts a server on `127.0.0.1` on a free port.
    ///
    /// # Panics
    /// When no local port can be bound (the test cannot run anyway).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("MockRedis: cannot bind a local port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::debug!(%addr, "mock redis started");
        Self { addr, shared, stop }
    }

    /// The URL to connect to, e.g. `redis://127.0.0.1:34567/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every client connection now (their subscriptions go with them), as a network
    /// failure or a server-side `CLIENT KILL` would. New connections are accepted as usual.
    pub fn drop_connections(&self) {
        let dropped: Vec<Client> = self.shared.clients().drain().map(|(_, c)| c).collect();
        tracing::debug!(addr = %self.addr, connections = dropped.len(), "mock redis dropping every connection");
        for client in dropped {
            client.kill.cancel();
        }
    }

    /// Stops answering on every current connection but keeps it open, as a network partition or
    /// a frozen server would: nothing is read from or written to those clients any more (they
    /// receive no messages, and `PUBLISH`es skip them), until they close or are dropped. New
    /// connections are served as usual.
    pub fn stall_connections(&self) {
        let clients = self.shared.clients();
        tracing::debug!(addr = %self.addr, connections = clients.len(), "mock redis stalling every connection");
        for client in clients.values() {
            client.stall.cancel();
        }
    }

    /// For `duration` from now, closes every new connection as soon as it is accepted (before it
    /// can send a command). Existing connections are left alone.
    pub fn refuse_connections_for(&self, duration: Duration) {
        *self
            .shared
            .refuse_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + duration);
    }

    /// Simulates a server restart: drops every connection, refuses new ones for a moment
    /// (200 ms), and returns once connections are accepted again. Like a real restart, it forgets
    /// every subscription.
    pub async fn restart(&self) {
        self.refuse_connections_for(RESTART_OUTAGE);
        self.drop_connections();
        tokio::time::sleep(RESTART_OUTAGE).await;
    }

    /// How many clients are connected now.
    pub fn connection_count(&self) -> usize {
        self.shared.clients().len()
    }

    /// How many `PUBLISH` commands were executed so far.
    pub fn published_count(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. too many open files: wait a little rather than spin.
                tracing::debug!(%error, "mock redis accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.refusing() {
            tracing::debug!(%peer, "mock redis refusing a connection");
            drop(socket);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (push, pushed) = mpsc::unbounded_channel();
        let kill = stop.child_token();
        let stall = CancellationToken::new();
        shared.clients().insert(
            id,
            Client {
                push,
                kill: kill.clone(),
                stall: stall.clone(),
                channels: BTreeSet::new(),
                patterns: BTreeSet::new(),
            },
        );
        tokio::spawn(serve(shared.clone(), id, socket, kill, stall, pushed));
    }
}

/// The RESP2 codec, with a bound on buffered input.
#[derive(Debug, Default)]
struct Codec(Resp2);

impl Decoder for Codec {
    type Item = BytesFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesFrame>, io::Error> {
        match self.0.decode(src) {
            Ok(None) if src.len() > MAX_BUFFERED_INPUT => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request larger than the mock's limit",
            )),
            Ok(frame) => Ok(frame),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

impl Encoder<BytesFrame> for Codec {
    type Error = io::Error;

    fn encode(&mut self, item: BytesFrame, dst: &mut BytesMut) -> Result<(), io::Error> {
        self.0
            .encode(item, dst)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// What to do after a command.
enum After {
    Continue,
    Close,
}

async fn serve(
    shared: Arc<Shared>,
    id: u64,
    socket: TcpStream,
    kill: CancellationToken,
    stall: CancellationToken,
    mut pushed: mpsc::UnboundedReceiver<BytesFrame>,
) {
    let _ = socket.set_nodelay(true);
    let mut framed = Framed::new(socket, Codec::default());
    loop {
        let mut replies = Vec::new();
        let after = tokio::select! {
            biased;
            () = kill.cancelled() => break,
            () = stall.cancelled() => {
                // Hold the socket open, silent, until dropped (or the server stops).
                kill.cancelled().await;
                break;
            }
            push = pushed.recv() => match push {
                Some(frame) => {
                    replies.push(frame);
                    After::Continue
                }
                None => break,
            },
            input = framed.next() => match input {
                Some(Ok(frame)) => execute(&shared, id, frame, &mut replies),
                Some(Err(error)) => {
                    tracing::debug!(id, %error, "mock redis: malformed input, closing the connection");
                    break;
                }
                None => break,
            },
        };
        let write = async {
            for reply in replies {
                framed.feed(reply).await?;
            }
            framed.flush().await
        };
        let written = tokio::select! {
            () = kill.cancelled() => break,
            written = write => written,
        };
        if written.is_err() || matches!(after, After::Close) {
            break;
        }
    }
    shared.clients().remove(&id);
}

fn bulk(data: impl Into<Bytes>) -> BytesFrame {
    BytesFrame::BulkString(data.into())
}

fn error(message: impl Into<String>) -> BytesFrame {
    BytesFrame::Error(message.into().into())
}

fn ok() -> BytesFrame {
    BytesFrame::SimpleString(Bytes::from_static(b"OK"))
}

fn wrong_arity(name: &str) -> BytesFrame {
    error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Runs one command, pushing its replies.
fn execute(shared: &Shared, id: u64, frame: BytesFrame, replies: &mut Vec<BytesFrame>) -> After {
    let BytesFrame::Array(parts) = frame else {
        replies.push(error(
            "ERR Protocol error: expected a command (an array of bulk strings)",
        ));
        return After::Close;
    };
    let mut args = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => args.push(b),
            BytesFrame::Integer(i) => args.push(Bytes::from(i.to_string())),
            _ => {
                replies.push(error("ERR Protocol error: expected bulk strings"));
                return After::Close;
            }
        }
    }
    let Some((name, args)) = args.split_first() else {
        // An empty array is ignored, as Redis does.
        return After::Continue;
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();

    let subscribed = shared
        .clients()
        .get(&id)
        .is_some_and(|c| c.subscription_count() > 0);
    let allowed_when_subscribed = matches!(
        name.as_str(),
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
    );
    if subscribed && !allowed_when_subscribed {
        replies.push(error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            name.to_ascii_lowercase()
        )));
        return After::Continue;
    }

    match name.as_str() {
        "PING" => match args {
            [] if subscribed => replies.push(BytesFrame::Array(vec![bulk("pong"), bulk("")])),
            [] => replies.push(BytesFrame::SimpleString(Bytes::from_static(b"PONG"))),
            [message] if subscribed => {
                replies.push(BytesFrame::Array(vec![bulk("pong"), bulk(message.clone())]));
            }
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(&name)),
        },
        "ECHO" => match args {
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(&name)),
        },
        "SELECT" => match args {
            [db] => match std::str::from_utf8(db)
                .ok()
                .and_then(|d| d.parse::<i64>().ok())
            {
                Some(0..=15) => replies.push(ok()),
                Some(_) => replies.push(error("ERR DB index is out of range")),
                None => replies.push(error("ERR value is not an integer or out of range")),
            },
            _ => replies.push(wrong_arity(&name)),
        },
        "AUTH" => match args {
            [_] | [_, _] => replies.push(ok()),
            _ => replies.push(wrong_arity(&name)),
        },
        "CLIENT" => {
            let sub = args
                .first()
                .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
            match sub.as_deref() {
                Some("SETINFO") if args.len() == 3 => replies.push(ok()),
                Some("SETNAME") if args.len() == 2 => replies.push(ok()),
                Some("ID") if args.len() == 1 => {
                    replies.push(BytesFrame::Integer(i64::try_from(id).unwrap_or(i64::MAX)));
                }
                Some("GETNAME") if args.len() == 1 => replies.push(BytesFrame::Null),
                Some("SETINFO" | "SETNAME" | "ID" | "GETNAME") => {
                    replies.push(error("ERR wrong number of arguments for 'client' command"))
                }
                Some(other) => replies.push(error(format!(
                    "ERR unknown subcommand '{other}'. Try CLIENT HELP."
                ))),
                None => replies.push(wrong_arity(&name)),
            }
        }
        "HELLO" => {
            let version = args
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if version.as_deref().is_some_and(|v| v != "2") {
                replies.push(error("NOPROTO this server (MockRedis) speaks RESP2 only"));
            } else {
                replies.push(BytesFrame::Array(vec![
                    bulk("server"),
                    bulk("redis"),
                    bulk("version"),
                    bulk("7.0.0"),
                    bulk("proto"),
                    BytesFrame::Integer(2),
                    bulk("id"),
                    BytesFrame::Integer(i64::try_from(id).unwrap_or(i64::MAX)),
                    bulk("mode"),
                    bulk("standalone"),
                    bulk("role"),
                    bulk("master"),
                    bulk("modules"),
                    BytesFrame::Array(Vec::new()),
                ]));
            }
        }
        "SUBSCRIBE" | "PSUBSCRIBE" => {
            if args.is_empty() {
                replies.push(wrong_arity(&name));
                return After::Continue;
            }
            let pattern = name == "PSUBSCRIBE";
            let mut clients = shared.clients();
            let Some(client) = clients.get_mut(&id) else {
                return After::Close;
            };
            for target in args {
                if pattern {
                    client.patterns.insert(target.clone());
                } else {
                    client.channels.insert(target.clone());
                }
                replies.push(BytesFrame::Array(vec![
                    bulk(name.to_ascii_lowercase()),
                    bulk(target.clone()),
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
        }
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
            let pattern = name == "PUNSUBSCRIBE";
            let kind = bulk(name.to_ascii_lowercase());
            let mut clients = shared.clients();
            let Some(client) = clients.get_mut(&id) else {
                return After::Close;
            };
            let targets: Vec<Bytes> = if args.is_empty() {
                let set = if pattern {
                    &client.patterns
                } else {
                    &client.channels
                };
                set.iter().cloned().collect()
            } else {
                args.to_vec()
            };
            if targets.is_empty() {
                replies.push(BytesFrame::Array(vec![
                    kind.clone(),
                    BytesFrame::Null,
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
            for target in targets {
                if pattern {
                    client.patterns.remove(&target);
                } else {
                    client.channels.remove(&target);
                }
                replies.push(BytesFrame::Array(vec![
                    kind.clone(),
                    bulk(target),
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
        }
        "PUBLISH" => match args {
            [channel, message] => {
                let receivers = publish(shared, channel, message);
                replies.push(BytesFrame::Integer(receivers));
            }
            _ => replies.push(wrong_arity(&name)),
        },
        "RESET" => {
            if let Some(client) = shared.clients().get_mut(&id) {
                client.channels.clear();
                client.patterns.clear();
            }
            replies.push(BytesFrame::SimpleString(Bytes::from_static(b"RESET")));
        }
        "QUIT" => {
            replies.push(ok());
            return After::Close;
        }
        _ => {
            let mut preview = String::new();
            for arg in args.iter().take(3) {
                preview.push('\'');
                preview.push_str(&String::from_utf8_lossy(arg));
                preview.push_str("' ");
            }
            replies.push(error(format!(
                "ERR unknown command '{}', with args beginning with: {preview}",
                name.to_ascii_lowercase()
            )));
        }
    }
    After::Continue
}

/// Delivers a message to every matching subscription, as Redis does: one `message` per client
/// subscribed to the channel and one `pmessage` per matching pattern of each client. Returns the
/// number of deliveries.
fn publish(shared: &Shared, channel: &Bytes, message: &Bytes) -> i64 {
    shared.published.fetch_add(1, Ordering::Relaxed);
    let channel_text = String::from_utf8_lossy(channel);
    let mut receivers = 0;
    for client in shared
        .clients()
        .values()
        .filter(|c| !c.stall.is_cancelled())
    {
        if client.channels.contains(channel) {
            receivers += 1;
            let _ = client.push.send(BytesFrame::Array(vec![
                bulk("message"),
                bulk(channel.clone()),
                bulk(message.clone()),
            ]));
        }
        for pattern in &client.patterns {
            if subscriber_patterns::glob::matches(&String::from_utf8_lossy(pattern), &channel_text)
            {
                receivers += 1;
                let _ = client.push.send(BytesFrame::Array(vec![
                    bulk("pmessage"),
                    bulk(pattern.clone()),
                    bulk(channel.clone()),
                    bulk(message.clone()),
                ]));
            }
        }
    }
    receivers
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Conn = Framed<TcpStream, Resp2>;

    const WAIT: Duration = Duration::from_secs(5);

    async fn connect(redis: &MockRedis) -> Conn {
        Framed::new(
            TcpStream::connect(redis.addr()).await.unwrap(),
            Resp2::default(),
        )
    }

    fn command(args: &[&str]) -> BytesFrame {
        BytesFrame::Array(args.iter().map(|a| bulk(a.as_bytes().to_vec())).collect())
    }

    async fn call(conn: &mut Conn, args: &[&str]) -> BytesFrame {
        conn.send(command(args)).await.unwrap();
        next(conn).await
    }

    async fn next(conn: &mut Conn) -> BytesFrame {
        tokio::time::timeout(WAIT, conn.next())
            .await
            .expect("a reply in time")
            .expect("the connection is open")
            .expect("a valid frame")
    }

    fn array(items: &[&str]) -> BytesFrame {
        BytesFrame::Array(items.iter().map(|a| bulk(a.as_bytes().to_vec())).collect())
    }

    fn push(kind: &str, target: &str, count: i64) -> BytesFrame {
        BytesFrame::Array(vec![
            bulk(kind.to_owned()),
            bulk(target.to_owned()),
            BytesFrame::Integer(count),
        ])
    }

    async fn closed(conn: &mut Conn) -> bool {
        matches!(
            tokio::time::timeout(WAIT, conn.next()).await,
            Ok(None | Some(Err(_)))
        )
    }

    #[tokio::test]
    async fn answers_connection_commands() {
        let redis = MockRedis::start().await;
        let mut c = connect(&redis).await;
        assert_eq!(
            call(&mut c, &["PING"]).await,
            BytesFrame::SimpleString("PONG".into())
        );
        assert_eq!(call(&mut c, &["ping", "hi"]).await, bulk("hi"));
        assert_eq!(call(&mut c, &["ECHO", "x y"]).await, bulk("x y"));
        assert_eq!(call(&mut c, &["SELECT", "3"]).await, ok());
        assert!(matches!(
            call(&mut c, &["SELECT", "99"]).await,
            BytesFrame::Error(_)
        ));
        assert_eq!(
            call(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "x"]).await,
            ok()
        );
        assert_eq!(call(&mut c, &["CLIENT", "SETNAME", "worker"]).await, ok());
        assert!(matches!(
            call(&mut c, &["CLIENT", "KILL"]).await,
            BytesFrame::Error(_)
        ));
        assert!(
            matches!(call(&mut c, &["HELLO", "3"]).await, BytesFrame::Error(e) if e.starts_with("NOPROTO"))
        );
        match call(&mut c, &["GET", "k"]).await {
            BytesFrame::Error(e) => assert!(e.starts_with("ERR unknown command 'get'"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            call(&mut c, &["PUBLISH", "only-one-arg"]).await,
            BytesFrame::Error(_)
        ));
        assert_eq!(call(&mut c, &["QUIT"]).await, ok());
        assert!(closed(&mut c).await);
    }

    #[tokio::test]
    async fn pipelined_commands_are_answered_in_order() {
        let redis = MockRedis::start().await;
        let mut raw = TcpStream::connect(redis.addr()).await.unwrap();
        raw.write_all(
            b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\na\r\n*2\r\n$4\r\nECHO\r\n$1\r\nb\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let expected = b"+PONG\r\n$1\r\na\r\n$1\r\nb\r\n";
        while got.len() < expected.len() {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn publish_delivers_message_and_pmessage_like_redis() {
        let redis = MockRedis::start().await;
        let mut sub = connect(&redis).await;
        let mut publisher = connect(&redis).await;
        sub.send(command(&["SUBSCRIBE", "news", "other"]))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await, push("subscribe", "news", 1));
        assert_eq!(next(&mut sub).await, push("subscribe", "other", 2));
        assert_eq!(
            call(&mut sub, &["PSUBSCRIBE", "n?ws"]).await,
            push("psubscribe", "n?ws", 3)
        );
        sub.send(command(&["PSUBSCRIBE", "[mn]*", "x*"]))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await, push("psubscribe", "[mn]*", 4));
        assert_eq!(next(&mut sub).await, push("psubscribe", "x*", 5));

        // One delivery per matching subscription, as real Redis counts them.
        assert_eq!(
            call(&mut publisher, &["PUBLISH", "news", "hello"]).await,
            BytesFrame::Integer(3)
        );
        let mut got = vec![
            next(&mut sub).await,
            next(&mut sub).await,
            next(&mut sub).await,
        ];
        got.sort_by_key(|f| format!("{f:?}"));
        let mut want = vec![
            array(&["message", "news", "hello"]),
            array(&["pmessage", "n?ws", "news", "hello"]),
            array(&["pmessage", "[mn]*", "news", "hello"]),
        ];
        want.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(got, want);
        assert_eq!(
            call(&mut publisher, &["PUBLISH", "nobody", "x"]).await,
            BytesFrame::Integer(1)
        );
        assert_eq!(
            next(&mut sub).await,
            array(&["pmessage", "[mn]*", "nobody", "x"])
        );
        assert_eq!(
            call(&mut publisher, &["PUBLISH", "zzz", "x"]).await,
            BytesFrame::Integer(0)
        );
        assert_eq!(redis.published_count(), 3);

        // Subscribed mode: only pub/sub commands and PING.
        assert_eq!(call(&mut sub, &["PING"]).await, array(&["pong", ""]));
        assert!(
            matches!(call(&mut sub, &["ECHO", "x"]).await, BytesFrame::Error(e) if e.contains("only (P|S)SUBSCRIBE"))
        );

        // UNSUBSCRIBE without arguments leaves every channel, patterns stay.
        sub.send(command(&["UNSUBSCRIBE"])).await.unwrap();
        assert_eq!(next(&mut sub).await, push("unsubscribe", "news", 4));
        assert_eq!(next(&mut sub).await, push("unsubscribe", "other", 3));
        assert_eq!(
            call(&mut publisher, &["PUBLISH", "other", "x"]).await,
            BytesFrame::Integer(0)
        );
        assert_eq!(
            call(&mut sub, &["PUNSUBSCRIBE", "x*"]).await,
            push("punsubscribe", "x*", 2)
        );
        sub.send(command(&["PUNSUBSCRIBE"])).await.unwrap();
        assert_eq!(next(&mut sub).await, push("punsubscribe", "[mn]*", 1));
        assert_eq!(next(&mut sub).await, push("punsubscribe", "n?ws", 0));
        assert_eq!(
            call(&mut sub, &["UNSUBSCRIBE"]).await,
            BytesFrame::Array(vec![
                bulk("unsubscribe"),
                BytesFrame::Null,
                BytesFrame::Integer(0)
            ])
        );
        assert_eq!(call(&mut sub, &["ECHO", "back"]).await, bulk("back"));
    }

    #[tokio::test]
    async fn malformed_input_closes_only_that_connection() {
        let redis = MockRedis::start().await;
        let mut good = connect(&redis).await;
        assert_eq!(
            call(&mut good, &["PING"]).await,
            BytesFrame::SimpleString("PONG".into())
        );
        for garbage in [
            &b"*1\r\n$x\r\n"[..],
            b"\x00\x01\x02garbage\r\n",
            b"*2\r\n:1\r\n*-5\r\n",
        ] {
            let mut bad = TcpStream::connect(redis.addr()).await.unwrap();
            bad.write_all(garbage).await.unwrap();
            let mut buf = Vec::new();
            let read = tokio::time::timeout(WAIT, bad.read_to_end(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(_)) | Ok(Err(_))),
                "{garbage:?}: not closed"
            );
        }
        // A non-array frame gets an error, then the connection is closed.
        let mut inline = connect(&redis).await;
        inline.send(bulk("PING")).await.unwrap();
        assert!(matches!(next(&mut inline).await, BytesFrame::Error(_)));
        assert!(closed(&mut inline).await);
        assert_eq!(
            call(&mut good, &["ECHO", "still here"]).await,
            bulk("still here")
        );
    }

    #[tokio::test]
    async fn fault_injection() {
        let redis = MockRedis::start().await;
        let mut a = connect(&redis).await;
        let mut b = connect(&redis).await;
        assert_eq!(
            call(&mut a, &["SUBSCRIBE", "c"]).await,
            push("subscribe", "c", 1)
        );
        assert_eq!(
            call(&mut b, &["PING"]).await,
            BytesFrame::SimpleString("PONG".into())
        );
        assert_eq!(redis.connection_count(), 2);
        redis.drop_connections();
        assert_eq!(redis.connection_count(), 0);
        assert!(closed(&mut a).await);
        assert!(closed(&mut b).await);

        redis.refuse_connections_for(Duration::from_secs(60));
        let mut refused = connect(&redis).await;
        let _ = refused.send(command(&["PING"])).await;
        assert!(closed(&mut refused).await);
        redis.refuse_connections_for(Duration::ZERO);

        let mut c = connect(&redis).await;
        assert_eq!(
            call(&mut c, &["SUBSCRIBE", "c"]).await,
            push("subscribe", "c", 1)
        );
        redis.restart().await;
        assert!(closed(&mut c).await);
        let mut d = connect(&redis).await;
        // The restart forgot the subscription.
        assert_eq!(
            call(&mut d, &["PUBLISH", "c", "x"]).await,
            BytesFrame::Integer(0)
        );

        // A stalled connection stays open but answers nothing; others are unaffected.
        assert_eq!(
            call(&mut d, &["SUBSCRIBE", "s"]).await,
            push("subscribe", "s", 1)
        );
        redis.stall_connections();
        d.send(command(&["PING"])).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), d.next())
            .await
            .is_err());
        let mut e = connect(&redis).await;
        assert_eq!(
            call(&mut e, &["PUBLISH", "s", "x"]).await,
            BytesFrame::Integer(0)
        );
        assert_eq!(redis.connection_count(), 2);
        redis.drop_connections();
        assert!(closed(&mut d).await);
    }

    #[tokio::test]
    async fn the_redis_crate_talks_to_it() {
        let redis = MockRedis::start().await;
        let client = redis::Client::open(redis.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("a").await.unwrap();
        pubsub.psubscribe("b*").await.unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let n: i64 = redis::cmd("PUBLISH")
            .arg("a")
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let n: i64 = redis::cmd("PUBLISH")
            .arg("bee")
            .arg("2")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let mut messages = pubsub.on_message();
        let first = tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.get_channel_name(), "a");
        assert_eq!(first.get_payload_bytes(), b"1");
        let second = tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.get_pattern::<String>().unwrap(), "b*");
        assert_eq!(second.get_channel_name(), "bee");
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }
}
