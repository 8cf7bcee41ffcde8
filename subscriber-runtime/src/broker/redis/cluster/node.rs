//! One subscriber connection to one primary of the cluster: it carries the partitions that node
//! owns, hands their messages over, and reports every confirmation, refusal, unsolicited
//! `sunsubscribe` and loss to the supervisor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::resp::{Frame, Resp};

/// What a node connection tells the supervisor.
#[derive(Debug)]
pub(super) enum Event {
    /// Redis confirmed `SSUBSCRIBE` of `channel`.
    Subscribed { node: Arc<str>, channel: Bytes },
    /// Redis says `channel` is no longer subscribed: the answer to our `SUNSUBSCRIBE`
    /// (`solicited`), or on its own (its slot moved to another node, or the node became a
    /// replica).
    Unsubscribed {
        node: Arc<str>,
        channel: Bytes,
        solicited: bool,
    },
    /// Redis refused `SSUBSCRIBE` of `channel` (`MOVED`, `CLUSTERDOWN`, ...).
    Refused {
        node: Arc<str>,
        channel: Bytes,
        error: String,
    },
    /// The connection could not be opened, or was lost.
    Lost {
        node: Arc<str>,
        /// Which connection to `node` (a newer one may have replaced it).
        id: u64,
        reason: String,
    },
}

/// What the supervisor asks of a node connection.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe(Bytes),
    Unsubscribe(Bytes),
}

/// How to open and watch a node connection.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) ping_interval: Duration,
    /// TLS to the node (`rediss://` seeds).
    pub(super) tls: Tls,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The TLS connector of `rediss://` seeds, `None` for plain TCP.
#[cfg(feature = "tls")]
pub(super) type Tls = Option<tokio_rustls::TlsConnector>;
/// No TLS without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(super) type Tls = Option<NoTls>;

/// What stands for a TLS connector without the `tls` feature: nothing.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
pub(super) enum NoTls {}

/// Where a partition's messages go (the broker unframes, filters and delivers them).
pub(super) type Deliver = Arc<dyn Fn(Bytes) + Send + Sync>;

/// A node connection's handle: dropping it closes the connection.
#[derive(Debug)]
pub(super) struct Node {
    tx: mpsc::UnboundedSender<Command>,
    pub(super) id: u64,
}

impl Node {
    /// Opens a connection to `addr` (`host:port`) in a task of its own. Commands sent before it
    /// is connected wait for it.
    pub(super) fn spawn(
        addr: Arc<str>,
        settings: Settings,
        deliver: Deliver,
        events: mpsc::UnboundedSender<Event>,
        shutdown: CancellationToken,
    ) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            addr,
            id,
            settings,
            deliver,
            events,
            shutdown,
        };
        tokio::spawn(task.run(rx));
        Self { tx, id }
    }

    /// False when the connection's task has ended (its loss is reported, or is about to be).
    pub(super) fn send(&self, command: Command) -> bool {
        self.tx.send(command).is_ok()
    }
}

/// A command Redis has not answered yet.
#[derive(Debug)]
enum Pending {
    Subscribe(Bytes),
    Unsubscribe(Bytes),
    Ping,
}

struct Task {
    addr: Arc<str>,
    id: u64,
    settings: Settings,
    deliver: Deliver,
    events: mpsc::UnboundedSender<Event>,
    shutdown: CancellationToken,
}

/// A node connection: plain, or TLS. The code that runs it is generic over the stream, so that a
/// plain connection pays nothing for TLS.
type Connection<S = TcpStream> = Framed<S, Resp>;

/// An opened (and authenticated) connection.
enum Connected {
    Plain(Connection),
    #[cfg(feature = "tls")]
    Tls(Box<Connection<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Reports the connection lost when its task ends any other way than by a clean stop (a panic in
/// a handler of a frame included), so that the supervisor never counts on a dead connection.
struct LostOnDrop {
    events: mpsc::UnboundedSender<Event>,
    node: Arc<str>,
    id: u64,
    armed: bool,
}

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.events.send(Event::Lost {
                node: self.node.clone(),
                id: self.id,
                reason: "the connection's task ended unexpectedly".to_owned(),
            });
        }
    }
}

impl Task {
    async fn run(self, commands: mpsc::UnboundedReceiver<Command>) {
        let mut guard = LostOnDrop {
            events: self.events.clone(),
            node: self.addr.clone(),
            id: self.id,
            armed: true,
        };
        self.serve(commands).await;
        guard.armed = false;
    }

    async fn serve(&self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let connected = tokio::select! {
            () = self.shutdown.cancelled() => return,
            connected = tokio::time::timeout(self.settings.connect_timeout, self.connect()) => connected,
        };
        let pumped = match connected {
            Ok(Ok(Connected::Plain(connection))) => self.pump(connection, &mut commands).await,
            #[cfg(feature = "tls")]
            Ok(Ok(Connected::Tls(connection))) => self.pump(*connection, &mut commands).await,
            Ok(Err(reason)) => Err(reason),
            Err(_) => {
                let timeout = self.settings.connect_timeout;
                Err(format!("no connection within {timeout:?}"))
            }
        };
        if let Err(reason) = pumped {
            self.lost(reason);
        }
    }

    fn lost(&self, reason: String) {
        let _ = self.events.send(Event::Lost {
            node: self.addr.clone(),
            id: self.id,
            reason,
        });
    }

    async fn connect(&self) -> Result<Connected, String> {
        let stream = TcpStream::connect(socket_address(&self.addr))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        match &self.settings.tls {
            None => Ok(Connected::Plain(
                self.authenticate(Framed::new(stream, Resp)).await?,
            )),
            #[cfg(feature = "tls")]
            Some(connector) => {
                let host = self.addr.rsplit_once(':').map_or(&*self.addr, |(h, _)| h);
                let name = super::super::tls::server_name(host)?;
                let stream = connector.connect(name, stream).await.map_err(|e| {
                    super::super::tls::explain(&format!("TLS handshake with {}: {e}", self.addr))
                })?;
                let connection = self.authenticate(Framed::new(stream, Resp)).await?;
                Ok(Connected::Tls(Box::new(connection)))
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }

    /// Sends `AUTH` when the seeds carry a password.
    async fn authenticate<S>(&self, mut connection: Connection<S>) -> Result<Connection<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(password) = &self.settings.password {
            let mut auth = vec![Bytes::from_static(b"AUTH")];
            if let Some(user) = &self.settings.username {
                auth.push(Bytes::from(user.clone()));
            }
            auth.push(Bytes::from(password.clone()));
            connection
                .send(auth)
                .await
                .map_err(|e| format!("AUTH: {e}"))?;
            match connection.next().await {
                Some(Ok(Frame::Simple(_))) => {}
                Some(Ok(Frame::Error(e))) => return Err(format!("AUTH refused: {e}")),
                Some(Ok(other)) => return Err(format!("AUTH answered {other:?}")),
                Some(Err(e)) => return Err(format!("AUTH: {e}")),
                None => return Err("closed during AUTH".to_owned()),
            }
        }
        Ok(connection)
    }

    /// Runs the connection until it is lost (`Err`), the supervisor drops it or the application
    /// stops (`Ok`).
    async fn pump<S>(
        &self,
        mut connection: Connection<S>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let interval = self.settings.ping_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut ping_outstanding = false;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    // Closing the connection ends its subscriptions; say so first when it is quick.
                    let goodbye = connection.send(vec![Bytes::from_static(b"SUNSUBSCRIBE")]);
                    let _ = tokio::time::timeout(Duration::from_millis(200), goodbye).await;
                    return Ok(());
                }
                command = commands.recv() => {
                    let (verb, channel, expect) = match command {
                        None => return Ok(()),
                        Some(Command::Subscribe(c)) => ("SSUBSCRIBE", c.clone(), Pending::Subscribe(c)),
                        Some(Command::Unsubscribe(c)) => ("SUNSUBSCRIBE", c.clone(), Pending::Unsubscribe(c)),
                    };
                    pending.push_back(expect);
                    send(&mut connection, vec![Bytes::from_static(verb.as_bytes()), channel], interval)
                        .await
                        .map_err(|e| format!("{verb}: {e}"))?;
                }
                frame = connection.next() => match frame {
                    Some(Ok(frame)) => {
                        if matches!(self.on_frame(frame, &mut pending), Some(Pending::Ping)) {
                            ping_outstanding = false;
                        }
                    }
                    Some(Err(e)) => return Err(format!("bad frame: {e}")),
                    None => return Err("connection closed".to_owned()),
                },
                _ = ticks.tick() => {
                    if ping_outstanding {
                        return Err(format!("no answer to PING within {interval:?}"));
                    }
                    ping_outstanding = true;
                    pending.push_back(Pending::Ping);
                    send(&mut connection, vec![Bytes::from_static(b"PING")], interval)
                        .await
                        .map_err(|e| format!("PING: {e}"))?;
                }
            }
        }
    }

    /// Handles one frame; returns the pending command it answered, if any.
    fn on_frame(&self, frame: Frame, pending: &mut VecDeque<Pending>) -> Option<Pending> {
        let node = self.addr.clone();
        match frame {
            Frame::Array(Some(items)) => {
                let kind = items.first().and_then(Frame::bytes).unwrap_or_default();
                let channel = match items.get(1) {
                    Some(Frame::Bulk(Some(b))) => b.clone(),
                    _ => Bytes::new(),
                };
                match kind {
                    b"smessage" => {
                        if let Some(Frame::Bulk(Some(payload))) = items.get(2) {
                            (self.deliver)(payload.clone());
                        }
                        None
                    }
                    b"ssubscribe" => {
                        let answered = take(
                            pending,
                            |p| matches!(p, Pending::Subscribe(c) if *c == channel),
                        );
                        let _ = self.events.send(Event::Subscribed { node, channel });
                        answered
                    }
                    b"sunsubscribe" => {
                        let answered = take(
                            pending,
                            |p| matches!(p, Pending::Unsubscribe(c) if *c == channel),
                        );
                        let solicited = answered.is_some();
                        let _ = self.events.send(Event::Unsubscribed {
                            node,
                            channel,
                            solicited,
                        });
                        answered
                    }
                    b"pong" => take(pending, |p| matches!(p, Pending::Ping)),
                    _ => None,
                }
            }
            Frame::Simple(s) if s.eq_ignore_ascii_case("PONG") => {
                take(pending, |p| matches!(p, Pending::Ping))
            }
            Frame::Error(error) => {
                // Errors answer commands in order: the oldest unanswered one.
                let answered = pending.pop_front();
                match &answered {
                    Some(Pending::Subscribe(channel)) => {
                        let _ = self.events.send(Event::Refused {
                            node,
                            channel: channel.clone(),
                            error,
                        });
                    }
                    other => {
                        tracing::debug!(node = %self.addr, %error, answered = ?other, "redis cluster node answered an error");
                    }
                }
                answered
            }
            other => {
                tracing::debug!(node = %self.addr, frame = ?other, "unexpected frame on a sharded subscriber connection");
                None
            }
        }
    }
}

/// The oldest pending command, when `answers` says the frame is its answer. Redis answers
/// commands in order; pushes of its own (`smessage`, an unsolicited `sunsubscribe`) come in
/// between, so a frame that does not answer the oldest command answers none.
fn take(pending: &mut VecDeque<Pending>, answers: impl Fn(&Pending) -> bool) -> Option<Pending> {
    if pending.front().is_some_and(answers) {
        pending.pop_front()
    } else {
        None
    }
}

/// Writes a command, within `limit`: a node that stops reading is a lost connection.
async fn send<S>(
    connection: &mut Connection<S>,
    command: Vec<Bytes>,
    limit: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, connection.send(command)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("not written within {limit:?}")),
    }
}

/// `host:port` as a socket address: an IPv6 host in brackets.
pub(super) fn socket_address(node: &str) -> String {
    match node.rsplit_once(':') {
        Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
            format!("[{host}]:{port}")
        }
        _ => node.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oldest_pending_command_is_answered() {
        let a = Bytes::from_static(b"a");
        let b = Bytes::from_static(b"b");
        let mut pending = VecDeque::from([
            Pending::Unsubscribe(a.clone()),
            Pending::Subscribe(b.clone()),
        ]);
        // A `sunsubscribe b` of Redis's own while our SUNSUBSCRIBE of `a` is pending answers
        // nothing: it is unsolicited.
        assert!(take(
            &mut pending,
            |p| matches!(p, Pending::Unsubscribe(c) if *c == b)
        )
        .is_none());
        assert_eq!(pending.len(), 2);
        assert!(take(
            &mut pending,
            |p| matches!(p, Pending::Unsubscribe(c) if *c == a)
        )
        .is_some());
        assert!(take(
            &mut pending,
            |p| matches!(p, Pending::Subscribe(c) if *c == b)
        )
        .is_some());
        assert!(pending.is_empty());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(socket_address("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(socket_address("::1:7000"), "[::1]:7000");
        assert_eq!(socket_address("[::1]:7000"), "[::1]:7000");
        assert_eq!(socket_address("redis-0.local:6379"), "redis-0.local:6379");
    }
}
