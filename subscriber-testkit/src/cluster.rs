//! [`TestCluster`]: several workers of one application on one Redis, for tests of what crosses
//! workers (presence, sends to a client of another worker, room broadcasts everywhere).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use subscriber_runtime::broker::RedisBroker;
use subscriber_runtime::{Builder, Error, Publisher};

use crate::{barrier, Dispatch, MockRedis, TestApp};

/// How long a worker's presence writer may take to write what changed.
#[cfg(feature = "server")]
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Several workers of one application on one Redis: the server at `REDIS_URL` when it is set
/// (each cluster in a namespace of its own, so tests run side by side), else a [`MockRedis`]
/// started for the cluster. [`publish`](Self::publish) and [`settle`](Self::settle) wait until
/// every worker has received and handled what was published, with barrier messages, not sleeps.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::testing::TestCluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let cluster = TestCluster::start(2, |_| {
///     Switchboard::builder().without_linked_handlers().subscriber(
///         Subscriber::channels(["orders"]).name("audit").handle(|| async {}),
///     )
/// })
/// .await?;
/// // Every worker handles a message published by an outsider...
/// let dispatches = cluster.publish("orders", &serde_json::json!({"id": 1})).await?;
/// assert!(dispatches.iter().all(|d| d.handlers() == ["audit"]));
///
/// // ...and a client of worker 0 is seen by worker 1, one broker hop later.
/// let client = cluster.worker(0).connect_client();
/// cluster.settle().await;
/// assert!(cluster.worker(1).running().websocket().is_connected(client.id()));
/// cluster.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct TestCluster {
    workers: Vec<TestApp>,
    outsider: Publisher,
    url: String,
    _mock: Option<MockRedis>,
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("workers", &self.workers.len())
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts `n` workers, worker `i` built by `app(i)`, on Redis (see above).
    ///
    /// # Errors
    /// A bad `REDIS_URL`, or what `build()` or `start()` of a worker returns.
    pub async fn start(n: usize, app: impl Fn(usize) -> Builder) -> Result<Self, Error> {
        let (url, mock) = match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let mock = MockRedis::start().await;
                (mock.url(), Some(mock))
            }
        };
        let namespace = format!("testcluster-{:016x}", barrier::token());
        let broker = RedisBroker::from_url(&url)?.namespace(namespace);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            workers.push(TestApp::start_with_broker(broker.clone(), app(i)).await?);
        }
        Ok(Self {
            workers,
            outsider: Publisher::new(Arc::new(broker), "testing-harness".into()),
            url,
            _mock: mock,
        })
    }

    /// Worker `i`.
    ///
    /// # Panics
    /// When there is no such worker.
    pub fn worker(&self, i: usize) -> &TestApp {
        &self.workers[i]
    }

    /// Every worker.
    pub fn workers(&self) -> &[TestApp] {
        &self.workers
    }

    /// The Redis URL the workers use (without the namespace).
    pub fn redis_url(&self) -> &str {
        &self.url
    }

    /// Publishes `message` on `channel` as an outsider (no worker skips it as its own), and waits
    /// until every worker has handled it and what it triggered; one [`Dispatch`] per worker.
    ///
    /// # Errors
    /// An invalid channel, a message that is not a JSON object, or Redis refusing it.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<Vec<Dispatch>, Error> {
        self.outsider.publish(channel, message).await?;
        Ok(self.settle().await)
    }

    /// Waits until every worker has received what was published so far (by anyone) and handled
    /// it, and what handling it published in turn, then returns what ran on each worker since
    /// the last call.
    ///
    /// # Panics
    /// When a worker receives no barrier message within 15 s (its broker subscription is down).
    pub async fn settle(&self) -> Vec<Dispatch> {
        let mut total: Vec<Dispatch> = vec![Dispatch::default(); self.workers.len()];
        // A round: a barrier through Redis to every worker, then every worker idle. Handlers may
        // have published in the meantime: rounds go on until one finds nothing new (at most 20).
        for round in 0..20 {
            // The presence changes each worker made (clients that connected, joined, left) go
            // out through the store first: the barrier then arrives after them.
            #[cfg(feature = "server")]
            for worker in &self.workers {
                let resources = worker.running().resources();
                if let Some(ws) = resources.state_ref::<subscriber_server::WebSocket>() {
                    if tokio::time::timeout(FLUSH_TIMEOUT, ws.presence_flushed())
                        .await
                        .is_err()
                    {
                        panic!(
                            "worker {}'s presence changes were not written within {FLUSH_TIMEOUT:?}: is Redis up?",
                            worker.worker_id()
                        );
                    }
                }
            }
            let token = barrier::token();
            barrier::publish(&self.outsider, token).await;
            let mut quiet = true;
            for (worker, sum) in self.workers.iter().zip(&mut total) {
                worker.barrier.wait(token, worker.worker_id()).await;
                let dispatch = worker.settle_local().await;
                quiet &= dispatch == Dispatch::default();
                sum.runs.extend(dispatch.runs);
                sum.invalid.extend(dispatch.invalid);
                sum.skipped_own += dispatch.skipped_own;
            }
            if quiet && round > 0 {
                break;
            }
        }
        total
    }

    /// Shuts every worker down.
    pub async fn shutdown(self) {
        for worker in self.workers {
            worker.shutdown().await;
        }
    }
}
