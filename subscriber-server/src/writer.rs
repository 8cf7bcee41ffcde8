//! A connection's writer: drains the client's queue, every queued frame fed then one flush,
//! pings, pongs within the stall timeout, and the closing handshake.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket as Socket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Conn, DisconnectReason};
use crate::frame::Frame;
use crate::WebSocket;

/// Resolves when a write in progress must be abandoned: at once for an urgent close (slow
/// consumer, oversized message, ...) or the shutdown deadline; `close_timeout` after a graceful
/// close began, so a stalled socket cannot hold the connection open.
async fn must_abandon(ws: &WebSocket, conn: &Conn) {
    tokio::select! {
        () = conn.closing.cancelled() => {}
        () = ws.inner.force.cancelled() => return,
    }
    if !conn.is_closing_urgently() {
        tokio::select! {
            () = tokio::time::sleep(ws.inner.config.close_timeout) => {}
            () = ws.inner.force.cancelled() => {}
        }
    }
}

/// Runs `f` unless it must be abandoned first (`None`).
///
/// `f` is polled first: a write that completes at once (the common case) never registers with
/// the cancellation tokens, one of which (`force`) every connection shares.
pub(crate) async fn abortable<T>(
    ws: &WebSocket,
    conn: &Conn,
    f: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        out = f => Some(out),
        () = must_abandon(ws, conn) => None,
    }
}

/// Why a batch was not written.
enum WriteError {
    /// The socket took nothing for the stall timeout.
    Stalled,
    /// The socket failed.
    Failed(axum::Error),
}

/// Feeds every frame of `batch` to the socket, then flushes once. Each step must make progress
/// within `stall`: a client that stops reading is found even in the middle of a batch.
async fn send_batch(
    sink: &mut SplitSink<Socket, Message>,
    batch: &mut VecDeque<Frame>,
    stall: Duration,
) -> Result<(), WriteError> {
    let step = |result: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>| match result {
        Err(_) => Err(WriteError::Stalled),
        Ok(Err(error)) => Err(WriteError::Failed(error)),
        Ok(Ok(())) => Ok(()),
    };
    while let Some(frame) = batch.pop_front() {
        step(within(stall, sink.feed(Message::Text(frame.0))).await)?;
    }
    step(within(stall, sink.flush()).await)
}

/// `tokio::time::timeout`, without making a timer for a step that completes at once (most
/// writes: the socket takes the bytes).
async fn within<F: Future>(
    limit: Duration,
    step: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut step = std::pin::pin!(step);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(step.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Ok(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, step).await,
    }
}

pub(crate) async fn write_loop(
    ws: &WebSocket,
    conn: &Arc<Conn>,
    mut sink: SplitSink<Socket, Message>,
) {
    let config = &ws.inner.config;
    let mut ping = config.ping_interval.map(|every| {
        let mut i = tokio::time::interval_at(Instant::now() + every, every);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let mut batch: VecDeque<Frame> = VecDeque::new();
    loop {
        // Frames first: when the writer was woken for them, the close token is not even polled
        // (polling it registers with it), and a close comes out on the next turn.
        tokio::select! {
            biased;
            () = conn.queued() => {}
            () = conn.closing.cancelled() => break,
            _ = async {
                match ping.as_mut() {
                    Some(p) => p.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                let ping = sink.send(Message::Ping(bytes::Bytes::new()));
                match Box::pin(abortable(ws, conn, ping)).await {
                    None => break,
                    Some(Ok(())) => continue,
                    Some(Err(error)) => {
                        conn.close(DisconnectReason::ConnectionLost(error.to_string()));
                        return;
                    }
                }
            }
        }
        conn.take(&mut batch);
        if batch.is_empty() {
            if conn.take_flush_request() {
                let flushed = Box::pin(abortable(
                    ws,
                    conn,
                    within(config.stall_timeout, sink.flush()),
                ))
                .await;
                match flushed {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Err(_)) => {
                        if conn.close(DisconnectReason::SlowConsumer) {
                            ws.count_slow_consumer(
                                conn,
                                "its pongs not read within the stall timeout",
                            );
                        }
                        break;
                    }
                    Some(Ok(Err(error))) => {
                        conn.close(DisconnectReason::ConnectionLost(error.to_string()));
                        return;
                    }
                }
            }
            continue;
        }
        let messages = batch.len();
        let bytes = batch.iter().map(crate::client::budget_cost).sum::<usize>();
        // Boxed, like every rare or large step: the connection's future lives as long as the
        // connection, so what only a write needs is allocated while it runs.
        let sent = Box::pin(abortable(
            ws,
            conn,
            send_batch(&mut sink, &mut batch, config.stall_timeout),
        ))
        .await;
        match sent {
            None => break,
            Some(Ok(())) => conn.release(messages, bytes),
            Some(Err(WriteError::Stalled)) => {
                if conn.close(DisconnectReason::SlowConsumer) {
                    ws.count_slow_consumer(conn, "no write progress within the stall timeout");
                }
                break;
            }
            Some(Err(WriteError::Failed(error))) => {
                conn.close(DisconnectReason::ConnectionLost(error.to_string()));
                return;
            }
        }
        if batch.capacity() > 64 {
            batch = VecDeque::new();
        }
    }
    let Some(reason) = conn.close_reason() else {
        return;
    };
    let _ = Box::pin(tokio::time::timeout(config.close_timeout, async {
        match &reason {
            DisconnectReason::ConnectionLost(_) => Ok(()),
            DisconnectReason::ClientClosed(_) => sink.close().await,
            _ => {
                if reason.drains() {
                    batch.clear();
                    conn.take(&mut batch);
                    if let Err(WriteError::Failed(error)) =
                        send_batch(&mut sink, &mut batch, config.close_timeout).await
                    {
                        return Err(error);
                    }
                }
                let code = reason.close_code().unwrap_or(1000);
                sink.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason.close_text()),
                })))
                .await
            }
        }
    }))
    .await;
}
