//! Barrier messages: how a test knows that everything published before now has reached a worker
//! through a real broker, without sleeping. The harness publishes a random token on an internal
//! channel; each worker's internal subscriber records it. Redis delivers a connection's messages
//! in the order they were published, so once a worker has the token it has received everything
//! published before it; what it received is then handled once the worker is idle.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use subscriber_runtime::plugin::{Plugin, PluginContext};
use subscriber_runtime::{BuildError, Message, Publisher, Subscriber};
use tokio::sync::Notify;

/// The channel of barrier messages (internal: never dispatched to application handlers).
pub(crate) const CHANNEL: &str = "switchboard.testkit.barrier";

/// How long a worker may take to receive a barrier.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The tokens a worker has received and nobody waited for yet.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    tokens: Mutex<HashSet<u64>>,
    notify: Notify,
}

impl Seen {
    fn record(&self, token: u64) {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token);
        self.notify.notify_waiters();
    }

    /// Waits until `token` has arrived.
    ///
    /// # Panics
    /// When it has not within 15 s: the worker is not receiving from the broker.
    pub(crate) async fn wait(&self, token: u64, worker: &str) {
        let arrived = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self
                    .tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&token)
                {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(TIMEOUT, arrived).await.is_err() {
            panic!("worker {worker} received no barrier message within {TIMEOUT:?}: is its broker subscription up?");
        }
    }
}

/// A fresh random token (each `RandomState` has random keys).
pub(crate) fn token() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Publishes a barrier with `token`.
///
/// # Panics
/// When the broker refuses it.
pub(crate) async fn publish(publisher: &Publisher, token: u64) {
    if let Err(error) = publisher
        .publish(CHANNEL, &serde_json::json!({ "token": token }))
        .await
    {
        panic!("publishing a barrier message failed: {error}");
    }
}

/// Adds the barrier's internal subscriber to a test worker.
pub(crate) struct BarrierPlugin(pub(crate) Arc<Seen>);

impl Plugin for BarrierPlugin {
    fn name(&self) -> &'static str {
        "testkit-barrier"
    }

    fn build(&mut self, cx: &mut PluginContext<'_>) -> Result<(), BuildError> {
        let seen = self.0.clone();
        cx.listen([CHANNEL]);
        cx.subscriber(
            Subscriber::channels([CHANNEL])
                .name("testkitBarrier")
                .handle(move |Message(m): Message<Value>| {
                    if let Some(token) = m["token"].as_u64() {
                        seen.record(token);
                    }
                    std::future::ready(())
                }),
        );
        Ok(())
    }
}
