//! A client blocked by `XREAD`/`XREADGROUP ... BLOCK`: its connection task waits here, without
//! holding the command lock, so that the other clients are served meanwhile.
//!
//! The wait ends with an answer when a change of a stream (the keyspace's stream signal: `XADD`,
//! from any client, a transaction or a script; `XGROUP DESTROY`; a stream deleted) lets the read
//! be served, with a nil when its timeout passes (`BLOCK 0`: never), and without one when the
//! connection is killed (`drop_connections`, `restart`, the server dropped), stalled, or closed by
//! the client. Commands the client pipelines meanwhile are kept, to run after the answer, as
//! Redis does.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::resp::Codec;
use super::server::Shared;
use super::streams::ReadRequest;

/// How many commands a blocked client may pipeline before the mock stops reading its input.
const MAX_PIPELINED: usize = 1024;

/// A read waiting for entries.
#[derive(Debug)]
pub(super) struct Blocked {
    request: ReadRequest,
    /// `None`: `BLOCK 0`, no timeout.
    deadline: Option<Instant>,
}

impl Blocked {
    /// A read blocked for `ms` milliseconds from now (0: forever).
    pub(super) fn new(request: ReadRequest, ms: u64) -> Self {
        let deadline = match ms {
            0 => None,
            // A timeout too far to represent is forever.
            ms => Instant::now().checked_add(Duration::from_millis(ms)),
        };
        Self { request, deadline }
    }
}

/// The connection of a blocked client, as its task holds it.
#[derive(Debug)]
pub(super) struct Connection<'a> {
    pub(super) id: u64,
    pub(super) framed: &'a mut Framed<TcpStream, Codec>,
    /// Commands received while blocked, to run afterwards.
    pub(super) backlog: &'a mut VecDeque<BytesFrame>,
    pub(super) kill: &'a CancellationToken,
    pub(super) stall: &'a CancellationToken,
}

/// Waits until the read can be answered (the reply) or its timeout passes (nil); `None` when the
/// connection must close.
pub(super) async fn wait(
    shared: &Shared,
    blocked: Blocked,
    conn: Connection<'_>,
) -> Option<BytesFrame> {
    let signal = shared.keyspace().stream_signal();
    loop {
        // Registered before looking at the streams, so that no change is missed in between.
        let changed = signal.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut keyspace = shared.keyspace();
            if !shared.clients().contains_key(&conn.id) {
                // Dropped (`drop_connections`, `restart`) meanwhile.
                return None;
            }
            if let Some(reply) = blocked.request.retry(&mut keyspace) {
                return Some(reply);
            }
        }
        let timeout = async {
            match blocked.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let reading = conn.backlog.len() < MAX_PIPELINED;
        tokio::select! {
            biased;
            () = conn.kill.cancelled() => return None,
            () = conn.stall.cancelled() => {
                // Silent from now on, as every stalled connection, until dropped.
                conn.kill.cancelled().await;
                return None;
            }
            () = &mut changed => {}
            () = timeout => return Some(BytesFrame::Null),
            input = conn.framed.next(), if reading => match input {
                Some(Ok(frame)) => conn.backlog.push_back(frame),
                // Closed by the client, or not RESP: Redis drops a blocked client as any other.
                Some(Err(_)) | None => return None,
            },
        }
    }
}
