//! Background jobs whose outcome reaches WebSocket clients: a thin bridge between the
//! [`apalis`] job queue and Switchboard.
//!
//! - [`Job`] names a job type's queue and, when a WebSocket client asked for the job, that client.
//! - [`JobBackend`] is where jobs wait: SQLite (embedded, in memory or a file) by default, Redis
//!   when `REDIS_URL` is set ([`JobBackend::from_env`]).
//! - [`JobQueue`] is the cloneable handle that handlers and client routes push jobs with; give it to
//!   the app with `Builder::state` and take it with `State<JobQueue<MyJob>>`.
//! - [`JobBackend::spawn_worker`] runs the jobs. When one succeeds the worker publishes
//!   [`event::QUEUE_JOB_COMPLETED`] with `{jobId, queue, result, webSocketClientId?}`; when
//!   one fails, [`event::QUEUE_JOB_ERROR`] with `{jobId, queue, error,
//!   webSocketClientId?}` (the reference framework never published failures). Both are published
//!   with `includeSender`, so the subscribers of every worker, this one included, see them.
//! - [`JobEventsLayer`] is that publishing step as a `tower` layer, for a worker you build yourself
//!   with `apalis::WorkerBuilder`.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use switchboard::prelude::*;
//! use subscriber_jobs::{Job, JobBackend, JobQueue};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Render {
//!     page: u32,
//!     client: Option<String>,
//! }
//!
//! impl Job for Render {
//!     const QUEUE: &'static str = "render";
//!     fn web_socket_client_id(&self) -> Option<&str> {
//!         self.client.as_deref()
//!     }
//! }
//!
//! async fn render(job: Render) -> Result<String, std::io::Error> {
//!     Ok(format!("page {} rendered", job.page))
//! }
//!
//! /// Tells every client when a job completes.
//! #[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED)]
//! fn job_completed(Message(done): Message, ws: WebSocket) {
//!     ws.broadcast_to_all_clients(Outgoing::new("jobs", "completed", &done));
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let jobs = JobBackend::from_env().await?;
//! let queue: JobQueue<Render> = jobs.queue();
//! let running = Switchboard::builder().state(queue.clone()).build()?.start().await?;
//! jobs.spawn_worker(running.publisher(), render);
//! queue.push(Render { page: 1, client: None }).await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! [`event::QUEUE_JOB_COMPLETED`]: subscriber_runtime::event::QUEUE_JOB_COMPLETED
//! [`event::QUEUE_JOB_ERROR`]: subscriber_runtime::event::QUEUE_JOB_ERROR
#![deny(missing_docs)]

mod backend;
mod layer;

pub use backend::{JobBackend, JobError, JobQueue, WorkerHandle};
pub use layer::{JobEvents, JobEventsLayer};

/// A job type: how it is stored and who asked for it.
///
/// The arguments are stored as JSON, so they must serialize; the queue name is the backend's
/// queue (or namespace) and the `queue` field of the published events.
pub trait Job:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + Unpin + 'static
{
    /// The queue's name, e.g. `"reports"`.
    const QUEUE: &'static str;

    /// The WebSocket client that asked for this job, published as `webSocketClientId` so a
    /// subscriber can answer that client only. `None` (the default) for jobs nobody waits for.
    fn web_socket_client_id(&self) -> Option<&str> {
        None
    }
}
