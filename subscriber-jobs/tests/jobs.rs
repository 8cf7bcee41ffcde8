//! Jobs pushed through a [`JobQueue`], run by the worker, and their outcomes published on
//! `queueJobCompleted` / `queueJobError`. The job store is Redis when `REDIS_URL` is set (CI runs a
//! real server: apalis's Redis storage runs Lua scripts, which the project's mock Redis does not
//! speak), else in-memory SQLite.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use subscriber_jobs::{Job, JobBackend, JobError};
use switchboard::prelude::*;
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Square {
    n: i64,
    client: Option<String>,
}

impl Job for Square {
    // A queue name per process, so parallel runs on one Redis never share jobs.
    const QUEUE: &'static str = "subscriber-jobs-test-square";

    fn web_socket_client_id(&self) -> Option<&str> {
        self.client.as_deref()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is negative")]
struct Negative(i64);

async fn square(job: Square) -> Result<i64, Negative> {
    if job.n < 0 {
        return Err(Negative(job.n));
    }
    Ok(job.n * job.n)
}

async fn backend() -> JobBackend {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => JobBackend::redis(&url).await.unwrap(),
        _ => JobBackend::sqlite_in_memory().await.unwrap(),
    }
}

/// The next outcome of a job of this run: jobs of other runs on the same Redis carry other
/// client ids (or none) and are skipped.
async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, client: &str) -> (String, Value) {
    loop {
        let (channel, event) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an outcome within 10 s")
            .unwrap();
        if event["webSocketClientId"] == client {
            return (channel, event);
        }
    }
}

/// A client id no other run uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn outcomes_are_published_with_the_job_and_its_client() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Switchboard::builder()
        .without_linked_handlers()
        .subscriber(
            Subscriber::channels([event::QUEUE_JOB_COMPLETED, event::QUEUE_JOB_ERROR])
                .name("recorder")
                .handle(move |channel: Channel, Message(message): Message| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send((channel.to_string(), message));
                    }
                }),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let jobs = backend().await;
    let queue = jobs.queue::<Square>();
    let worker = jobs.spawn_worker(app.publisher(), square);

    let (first, second) = (unique("c1"), unique("c2"));
    queue
        .push(Square {
            n: 7,
            client: Some(first.clone()),
        })
        .await
        .unwrap();
    let (channel, done) = next(&mut rx, &first).await;
    assert_eq!(channel, event::QUEUE_JOB_COMPLETED);
    assert_eq!(done["result"], 49);
    assert_eq!(done["queue"], Square::QUEUE);
    assert_eq!(done["webSocketClientId"], first.as_str());
    assert!(
        done["jobId"].as_str().is_some_and(|id| !id.is_empty()),
        "{done}"
    );
    assert!(
        done.get("workerId").is_none(),
        "handlers never see the envelope"
    );

    queue
        .push(Square {
            n: -2,
            client: Some(second.clone()),
        })
        .await
        .unwrap();
    let (channel, failed) = next(&mut rx, &second).await;
    assert_eq!(channel, event::QUEUE_JOB_ERROR);
    assert_eq!(failed["error"], "-2 is negative");
    assert_eq!(failed["queue"], Square::QUEUE);
    assert_ne!(failed["jobId"], done["jobId"]);

    // A failure is final: the backend does not run the job again, so nobody hears of it twice.
    // A job without a client is reported without `webSocketClientId`; once its outcome is in,
    // anything the failed job would have caused by a retry has had time to arrive before it.
    let third = unique("c3");
    queue
        .push(Square {
            n: 3,
            client: Some(third.clone()),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue.push(Square { n: 5, client: None }).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let (channel, event) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an outcome within 10 s")
            .unwrap();
        if event["result"] == 25 && event.get("webSocketClientId").is_none() {
            break;
        }
        seen.push((channel, event));
    }
    let repeats: Vec<_> = seen
        .iter()
        .filter(|(_, e)| e["webSocketClientId"] == second.as_str())
        .collect();
    assert!(repeats.is_empty(), "the failed job ran again: {repeats:?}");
    assert!(
        seen.iter()
            .any(|(c, e)| c == event::QUEUE_JOB_COMPLETED
                && e["webSocketClientId"] == third.as_str()),
        "{seen:?}"
    );

    worker.stop().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    // Port 1 on loopback: nothing listens there.
    let error = JobBackend::redis("redis://127.0.0.1:1/").await.unwrap_err();
    assert!(matches!(error, JobError::Redis(_)), "{error:?}");
    let error = JobBackend::sqlite("sqlite:///nonexistent-dir/x/jobs.db")
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::Sqlite { .. }), "{error:?}");
    assert!(error.to_string().contains("nonexistent-dir"), "{error}");
}
