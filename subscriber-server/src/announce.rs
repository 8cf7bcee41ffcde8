//! Presence announcements (`clientConnected`, `clientJoinedRoom`, `clientLeftRoom`,
//! `clientDisconnected`): queued without waiting and published in order by one task, so that a
//! slow or unreachable broker never slows a connect, a room join or a disconnect.
//!
//! The queue is bounded: when the broker is away for long, announcements beyond the bound are
//! dropped with a warning (at most one per 10 s, saying how many were held back); the other
//! workers' view of the cluster is then stale, as it is when any publish fails.

use std::time::{Duration, Instant};

use serde_json::Value;
use subscriber_runtime::{Publisher, RateLimit};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Announcements waiting for the broker, at most.
const CAPACITY: usize = 65_536;

/// One announcement.
type Announcement = (&'static str, Value);

/// The sending side, held by the server handle.
#[derive(Debug)]
pub(crate) struct Announcer {
    tx: mpsc::Sender<Announcement>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Announcement>>>,
    dropped_warning: RateLimit,
}

impl Announcer {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped_warning: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Queues an announcement; never waits. False when the queue is full (it is dropped).
    pub(crate) fn announce(&self, channel: &'static str, message: Value) -> bool {
        match self.tx.try_send((channel, message)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full((channel, _))) => {
                if let Some(suppressed) = self.dropped_warning.allow() {
                    tracing::warn!(
                        channel,
                        suppressed,
                        capacity = CAPACITY,
                        "presence announcement dropped: the broker has not taken the earlier ones; other workers' view of the cluster may be stale"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Starts the task that publishes the announcements in order, until `finish` is cancelled;
    /// it then publishes what is still queued and ends. `None` when it was started already.
    pub(crate) fn start(
        &self,
        publisher: Publisher,
        finish: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let mut rx = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        Some(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    next = rx.recv() => next,
                    () = finish.cancelled() => break,
                };
                let Some((channel, message)) = next else {
                    return;
                };
                publish(&publisher, channel, &message).await;
            }
            rx.close();
            while let Some((channel, message)) = rx.recv().await {
                publish(&publisher, channel, &message).await;
            }
        }))
    }
}

async fn publish(publisher: &Publisher, channel: &'static str, message: &Value) {
    if let Err(error) = publisher.publish(channel, message).await {
        tracing::warn!(
            channel,
            worker_id = publisher.worker_id(),
            %error,
            "could not tell the other workers; their view of the cluster may be stale"
        );
    }
}

/// Waits for the announcer task to publish what is queued, until `deadline`.
pub(crate) async fn drain(task: JoinHandle<()>, finish: &CancellationToken, deadline: Instant) {
    finish.cancel();
    let deadline = tokio::time::Instant::from_std(deadline);
    if tokio::time::timeout_at(deadline, task).await.is_err() {
        tracing::warn!(
            "shutdown: presence announcements still unpublished at the deadline were dropped"
        );
    }
}
