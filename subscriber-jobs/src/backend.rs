//! Where jobs wait (SQLite or Redis), the handle that pushes them, and the worker that runs them.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apalis::prelude::{BoxDynError, TaskBuilder, TaskSink, WorkerBuilder};
use apalis_core::backend::ext::BackendExt;
use apalis_core::error::AbortError;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use serde::Serialize;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::SqlitePool;
use subscriber_runtime::Publisher;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Job, JobEventsLayer};

/// Why a job backend could not be opened or a job could not be pushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The SQLite database could not be opened or migrated.
    #[error("cannot open the SQLite job store `{url}`: {source}")]
    Sqlite {
        /// The database URL.
        url: String,
        /// What SQLite said.
        #[source]
        source: BoxDynError,
    },
    /// Redis could not be reached.
    #[error("cannot reach the Redis job store: {0}")]
    Redis(#[source] apalis_redis::RedisError),
    /// The backend refused the job.
    #[error("cannot push a `{queue}` job: {message}")]
    Push {
        /// The job's queue.
        queue: &'static str,
        /// The backend's error.
        message: String,
    },
}

/// Where jobs wait between [`JobQueue::push`] and the worker: SQLite or Redis.
///
/// Cloning is cheap (a pool or a connection manager).
#[derive(Clone)]
pub enum JobBackend {
    /// An SQLite database: embedded, durable when it is a file.
    Sqlite(SqlitePool),
    /// Redis (a `redis://` or `rediss://` URL): jobs shared by every worker of the cluster.
    Redis(ConnectionManager),
}

impl fmt::Debug for JobBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "JobBackend::Sqlite",
            Self::Redis(_) => "JobBackend::Redis",
        })
    }
}

impl JobBackend {
    /// Redis when `REDIS_URL` is set (and not blank), else an in-memory SQLite database, or the
    /// SQLite file that `JOBS_DATABASE_URL` names (e.g. `sqlite://jobs.db?mode=rwc`).
    ///
    /// # Errors
    /// The backend cannot be reached or set up.
    pub async fn from_env() -> Result<Self, JobError> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match (var("REDIS_URL"), var("JOBS_DATABASE_URL")) {
            (Some(url), _) => Self::redis(&url).await,
            (None, Some(url)) => Self::sqlite(&url).await,
            (None, None) => Self::sqlite_in_memory().await,
        }
    }

    /// An SQLite database at `url`, created and migrated when needed.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn sqlite(url: &str) -> Result<Self, JobError> {
        let error = |source: BoxDynError| JobError::Sqlite {
            url: url.to_owned(),
            source,
        };
        let pool = SqlitePoolOptions::new()
            .connect(url)
            .await
            .map_err(|e| error(e.into()))?;
        SqliteStorage::setup(&pool)
            .await
            .map_err(|e| error(e.into()))?;
        Ok(Self::Sqlite(pool))
    }

    /// An SQLite database in memory: nothing to set up, gone when the process ends.
    ///
    /// # Errors
    /// SQLite cannot be set up.
    pub async fn sqlite_in_memory() -> Result<Self, JobError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // A named in-memory database with a shared cache, so that the pool's connections (the
        // worker's polling and the pushes) all see the same database; it lives while the pool
        // keeps one connection open.
        let url = format!(
            "sqlite:file:subscriber-jobs-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let error = |source: BoxDynError| JobError::Sqlite {
            url: url.clone(),
            source,
        };
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect(&url)
            .await
            .map_err(|e| error(e.into()))?;
        SqliteStorage::setup(&pool)
            .await
            .map_err(|e| error(e.into()))?;
        Ok(Self::Sqlite(pool))
    }

    /// Redis at `url`.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn redis(url: &str) -> Result<Self, JobError> {
        let conn = apalis_redis::connect(url).await.map_err(JobError::Redis)?;
        Ok(Self::Redis(conn))
    }

    /// The handle that pushes jobs of type `J` (onto the queue [`Job::QUEUE`]).
    pub fn queue<J: Job>(&self) -> JobQueue<J> {
        JobQueue {
            backend: self.clone(),
            _job: PhantomData,
        }
    }

    /// Runs jobs of type `J` with `handler` on a tokio task, and publishes each outcome through
    /// `publisher` (see [`JobEventsLayer`]). An idle worker looks for new jobs every 100 ms; jobs are
    /// picked up until [`WorkerHandle::stop`].
    ///
    /// The handler is an `async fn(J) -> Result<R, E>`: `R` is published as the event's `result`,
    /// `E`'s message as its `error`.
    pub fn spawn_worker<J, F, Fut, R, E>(&self, publisher: Publisher, handler: F) -> WorkerHandle
    where
        J: Job,
        F: Fn(J) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxDynError> + Send + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let signal = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            Ok::<(), std::io::Error>(())
        };
        let name = format!("subscriber-jobs-{}-{}", J::QUEUE, publisher.worker_id());
        let layer = JobEventsLayer::new(publisher);
        // A failure is final: as an `AbortError`, apalis marks the job killed instead of
        // scheduling it again (its Redis storage retries failures up to 25 times otherwise).
        let handler = move |job: J| {
            let run = handler(job);
            async move { run.await.map_err(AbortError::new) }
        };
        // The two storages are different types, so the worker is built once per arm.
        macro_rules! run {
            ($storage:expr) => {{
                let worker = WorkerBuilder::new(name)
                    .backend($storage.poll_with_interval(POLL_INTERVAL))
                    .layer(layer)
                    .build(handler);
                tokio::spawn(async move {
                    if let Err(error) = worker.run_until(signal).await {
                        tracing::error!(queue = J::QUEUE, %error, "the job worker stopped");
                    }
                })
            }};
        }
        let task = match self {
            Self::Sqlite(pool) => run!(sqlite_storage::<J>(pool)),
            Self::Redis(conn) => run!(redis_storage::<J>(conn)),
        };
        WorkerHandle { stop, task }
    }
}

/// How often an idle worker looks for new jobs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn sqlite_storage<J: Job>(pool: &SqlitePool) -> SqliteStorage<J> {
    SqliteStorage::new(pool).with_config(apalis_sqlite::Config::default().queue(J::QUEUE))
}

fn redis_storage<J: Job>(conn: &ConnectionManager) -> RedisStorage<J> {
    RedisStorage::new(conn.clone()).with_config(apalis_redis::Config::default().queue(J::QUEUE))
}

/// Pushes jobs of type `J`; cheap to clone. Give it to the app with `Builder::state` and take it in
/// a handler or a client route with `State<JobQueue<J>>`.
pub struct JobQueue<J> {
    backend: JobBackend,
    _job: PhantomData<fn(J)>,
}

impl<J> Clone for JobQueue<J> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            _job: PhantomData,
        }
    }
}

impl<J> fmt::Debug for JobQueue<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("job", &std::any::type_name::<J>())
            .field("backend", &self.backend)
            .finish()
    }
}

impl<J: Job> JobQueue<J> {
    /// Stores `job` until a worker picks it up.
    ///
    /// # Errors
    /// The backend refused it (e.g. Redis is unreachable).
    pub async fn push(&self, job: J) -> Result<(), JobError> {
        let error = |message: String| JobError::Push {
            queue: J::QUEUE,
            message,
        };
        // One attempt: a failure is final and reported once (see `JobEventsLayer`); retries
        // belong in a retry layer inside the worker, where the outcome of the last one is known.
        let task = TaskBuilder::new(job).max_attempts(1).build();
        match &self.backend {
            JobBackend::Sqlite(pool) => sqlite_storage::<J>(pool)
                .push_task(task)
                .await
                .map_err(|e| error(e.to_string())),
            JobBackend::Redis(conn) => redis_storage::<J>(conn)
                .push_task(task)
                .await
                .map_err(|e| error(e.to_string())),
        }
    }
}

/// A running job worker (from [`JobBackend::spawn_worker`]).
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops picking up jobs, lets the running ones finish, and waits for the worker to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
