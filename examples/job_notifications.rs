//! Use case 1: broadcast queue job results. A client enqueues work through a client route; a job
//! worker (apalis) runs it; when it completes, a subscriber on `queueJobCompleted` tells every
//! connected client, and when it fails, another on `queueJobError` tells only the client that
//! asked for it.
//!
//! ```text
//! cargo run --example job_notifications
//! ```
//!
//! Jobs wait in an in-memory SQLite database, or in Redis when `REDIS_URL` is set (then every
//! worker of the cluster takes jobs from the same queue, and the events reach the clients of
//! every worker). Then, with `websocat` or any WebSocket client:
//!
//! ```text
//! websocat ws://127.0.0.1:3002/ws
//! {"type":"jobs","action":"enqueue","data":{"task":"resize avatar"}}
//! {"type":"jobs","action":"enqueue","data":{"task":"explode","fail":true}}
//! ```
//!
//! Every client receives `{"type":"jobs","action":"completed","data":{"jobId":...,"queue":"demo",
//! "result":{"task":"resize avatar","output":"RESIZE AVATAR"},...}}`; only the second command's
//! sender receives `{"type":"jobs","action":"failed","data":{"error":"explode: asked to fail",
//! ...}}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subscriber_jobs::{Job, JobBackend, JobQueue, WorkerHandle};
use switchboard::prelude::*;
use switchboard::{BoxError, Builder, ClientId, Running};

/// The example's job: some text to shout, and who asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoJob {
    /// What to do.
    pub task: String,
    /// Fail on purpose, to show `queueJobError`.
    #[serde(default)]
    pub fail: bool,
    /// The WebSocket client that enqueued it.
    #[serde(default)]
    pub client: Option<String>,
}

impl Job for DemoJob {
    const QUEUE: &'static str = "demo";

    fn web_socket_client_id(&self) -> Option<&str> {
        self.client.as_deref()
    }
}

/// The job failed on purpose.
#[derive(Debug, thiserror::Error)]
#[error("{task}: asked to fail")]
pub struct AskedToFail {
    task: String,
}

/// Runs a job: "works" for a moment, then returns the task in capitals.
pub async fn run_job(job: DemoJob) -> Result<Value, AskedToFail> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    if job.fail {
        return Err(AskedToFail { task: job.task });
    }
    Ok(json!({"task": job.task, "output": job.task.to_uppercase()}))
}

/// What a client sends to `jobs:enqueue`.
#[derive(Debug, Deserialize)]
pub struct EnqueueRequest {
    /// What to do.
    pub task: String,
    /// Fail on purpose.
    #[serde(default)]
    pub fail: bool,
}

/// The `jobs:enqueue` client route: queues a job on behalf of the client.
pub async fn enqueue(
    client: Client,
    Data(request): Data<EnqueueRequest>,
    State(queue): State<JobQueue<DemoJob>>,
) -> Result<Value, BoxError> {
    queue
        .push(DemoJob {
            task: request.task,
            fail: request.fail,
            client: Some(client.id().to_string()),
        })
        .await?;
    Ok(json!({"queued": true}))
}

/// Tells every connected client that a job completed (each worker tells its own clients).
#[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED, name = "jobNotifications")]
pub async fn job_notifications(Message(completed): Message, ws: WebSocket) {
    ws.broadcast_to_all_clients(Outgoing::new("jobs", "completed", &completed));
}

/// A failed job as `queueJobError` carries it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFailed {
    /// The client that asked for the job.
    pub web_socket_client_id: Option<String>,
    /// Everything else: `jobId`, `queue`, `error`.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Tells only the requesting client that its job failed (the worker it is connected to does).
#[websocket_subscriber(channel = event::QUEUE_JOB_ERROR, name = "jobFailures")]
pub async fn job_failures(Message(failed): Message<JobFailed>, ws: WebSocket) {
    let Some(client) = failed
        .web_socket_client_id
        .as_deref()
        .and_then(|id| id.parse::<ClientId>().ok())
    else {
        tracing::warn!(job = ?failed.rest.get("jobId"), "a job nobody waits for failed");
        return;
    };
    ws.broadcast_to_client(&client, Outgoing::new("jobs", "failed", &failed.rest));
}

/// The example's app: the job backend (from the environment), the queue as state and the route.
pub async fn app(builder: Builder) -> anyhow::Result<(Builder, JobBackend)> {
    let jobs = JobBackend::from_env().await?;
    let builder = builder
        .state(jobs.queue::<DemoJob>())
        .route("jobs", "enqueue", enqueue);
    Ok((builder, jobs))
}

/// Starts the job worker once the app runs (it publishes through the app's broker).
pub fn start_worker(jobs: &JobBackend, running: &Running) -> WorkerHandle {
    jobs.spawn_worker(running.publisher(), run_job)
}

#[allow(
    dead_code,
    reason = "the tests include this file for its handlers, not for main"
)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Every connection is a file descriptor: raise the soft limit to the hard one (N clients need
    // N descriptors, plus the pending handshakes and a few dozen for the process itself).
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the file-descriptor limit");
    }
    let (builder, jobs) = app(Switchboard::builder().broker_from_env()?).await?;
    let running = builder.build()?.start().await?;
    let worker = start_worker(&jobs, &running);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3002);
    let addr = running.listen(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?)?;
    println!("Serving ws://{addr}/ws (Ctrl-C stops). Enqueue a job with:");
    println!(r#"  {{"type":"jobs","action":"enqueue","data":{{"task":"resize avatar"}}}}"#);
    tokio::signal::ctrl_c().await?;
    worker.stop().await;
    running.shutdown().await;
    Ok(())
}
