//! The server side: the state shared by every connection, the accept loop (which honours
//! [`refuse_connections_for`](super::MockRedis::refuse_connections_for)), and the task serving one
//! connection (which honours drops and stalls, and waits in `blocking` when a read blocks).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::blocking::{self, Connection};
use super::commands::{execute, After};
use super::keyspace::Keyspace;
use super::resp::Codec;
use super::transaction::Session;

#[derive(Default)]
pub(super) struct Shared {
    /// The keys; its lock is also the server-wide command lock (see `commands::execute`). Lock
    /// order: `keyspace`, then `clients` or `scripts`.
    keyspace: Mutex<Keyspace>,
    clients: Mutex<HashMap<u64, Client>>,
    /// The script cache: the body of each script by its SHA1 (lower-case hex).
    scripts: Mutex<BTreeMap<String, Bytes>>,
    next_id: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) refuse_until: Mutex<Option<Instant>>,
}

impl Shared {
    pub(super) fn keyspace(&self) -> MutexGuard<'_, Keyspace> {
        self.keyspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn clients(&self) -> MutexGuard<'_, HashMap<u64, Client>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn scripts(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.scripts
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
pub(super) struct Client {
    /// Messages pushed to the client (`message`, `pmessage`).
    pub(super) push: mpsc::UnboundedSender<BytesFrame>,
    pub(super) kill: CancellationToken,
    pub(super) stall: CancellationToken,
    pub(super) channels: BTreeSet<Bytes>,
    pub(super) patterns: BTreeSet<Bytes>,
}

impl Client {
    pub(super) fn subscription_count(&self) -> i64 {
        i64::try_from(self.channels.len() + self.patterns.len()).unwrap_or(i64::MAX)
    }
}
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
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
    let mut session = Session::default();
    // Commands received while a read was blocked, run first.
    let mut backlog = VecDeque::new();
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
            Some(frame) = async { backlog.pop_front() }, if !backlog.is_empty() => {
                execute(&shared, id, &mut session, frame, &mut replies)
            }
            push = pushed.recv() => match push {
                Some(frame) => {
                    replies.push(frame);
                    After::Continue
                }
                None => break,
            },
            input = framed.next() => match input {
                Some(Ok(frame)) => execute(&shared, id, &mut session, frame, &mut replies),
                Some(Err(error)) => {
                    tracing::debug!(id, %error, "mock redis: malformed input, closing the connection");
                    break;
                }
                None => break,
            },
        };
        let after = match after {
            After::Block(blocked) => {
                let conn = Connection {
                    id,
                    framed: &mut framed,
                    backlog: &mut backlog,
                    kill: &kill,
                    stall: &stall,
                };
                match blocking::wait(&shared, blocked, conn).await {
                    Some(reply) => replies.push(reply),
                    None => break,
                }
                After::Continue
            }
            after => after,
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
    shared.keyspace().unwatch(id);
    shared.clients().remove(&id);
}
