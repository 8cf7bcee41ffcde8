//! Use case 3: persist real-time analytics. A `regex("^analytics:")` subscriber stores every event
//! published on any `analytics:*` channel in a database through `sqlx`: SQLite by default (in
//! memory, or the file `DATABASE_URL=sqlite://analytics.db?mode=rwc` names), Postgres when
//! `DATABASE_URL=postgres://...`. The table is created (migrated) on start.
//!
//! ```text
//! cargo run --example analytics_sink
//! ```
//!
//! The handler never waits for the database: it hands the event to a writer task through a
//! bounded queue and returns, so the other handlers of the message (and of the next ones) run at
//! once. The writer inserts one row per event (`ANALYTICS_BATCH=1`) or, the high-volume variant
//! and the default, up to `ANALYTICS_BATCH` rows per `INSERT` (flushed at least every 50 ms). A
//! batch that the database refuses is retried row by row, so one bad event never loses the
//! others. Without `REDIS_URL` the example publishes a few events itself and prints the table;
//! with it, it stores what any worker of the cluster publishes on `analytics:*`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use switchboard::layer::Backoff;
use switchboard::prelude::*;
use switchboard::BoxError;
use tokio::sync::mpsc;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The channel, e.g. `analytics:pageview`.
    pub channel: String,
    /// The user the event is about.
    pub user_id: String,
    /// The whole payload, as JSON text.
    pub payload: String,
    /// The worker that stored it.
    pub worker_id: String,
    /// When this worker received it (ms since the Unix epoch).
    pub received_at_ms: i64,
}

/// Where events go: the database and the queue in front of its writer. Cheap to clone; give it
/// to the app with `Builder::state` and take it with `State<AnalyticsStore>`.
#[derive(Debug, Clone)]
pub struct AnalyticsStore {
    pool: AnyPool,
    queue: mpsc::Sender<StoredEvent>,
}

/// How the database spells a bind parameter. sqlx's `Any` driver writes `?` whatever the
/// database (sqlx issue #3000), which Postgres refuses (`42601 syntax error`): the statement is
/// written with `$1, $2, ...` for Postgres and `?` for SQLite.
#[derive(Debug, Clone, Copy)]
enum Placeholders {
    Numbered,
    Question,
}

impl Placeholders {
    fn of(url: &str) -> Self {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::Numbered
        } else {
            Self::Question
        }
    }

    /// The placeholder of the `n`th parameter (from 1).
    fn nth(self, n: usize) -> String {
        match self {
            Self::Numbered => format!("${n}"),
            Self::Question => "?".to_owned(),
        }
    }
}

impl AnalyticsStore {
    /// Opens `url` (`sqlite:...` or `postgres://...`), creates the table when needed and starts
    /// the writer, which inserts up to `batch` rows per statement.
    pub async fn open(url: &str, batch: usize) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let mut options = AnyPoolOptions::new();
        if url.starts_with("sqlite::memory:") || url.contains("mode=memory") {
            // Every connection to an in-memory SQLite database is a database of its own.
            options = options
                .min_connections(1)
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options.connect(url).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS analytics_events (
                channel TEXT NOT NULL,
                user_id TEXT NOT NULL,
                payload TEXT NOT NULL,
                worker_id TEXT NOT NULL,
                received_at_ms BIGINT NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        let (queue, events) = mpsc::channel(100_000);
        tokio::spawn(write(
            pool.clone(),
            Placeholders::of(url),
            events,
            batch.max(1),
        ));
        Ok(Self { pool, queue })
    }

    /// Queues an event for the writer; waits only when 100,000 events already wait (the
    /// database is far behind), so nothing is dropped.
    pub async fn record(&self, event: StoredEvent) -> Result<(), BoxError> {
        self.queue
            .send(event)
            .await
            .map_err(|_| "the analytics writer stopped".into())
    }

    /// Every stored event, oldest first.
    pub async fn events(&self) -> anyhow::Result<Vec<StoredEvent>> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT channel, user_id, payload, worker_id, received_at_ms FROM analytics_events \
             ORDER BY received_at_ms, payload",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    channel: row.try_get("channel")?,
                    user_id: row.try_get("user_id")?,
                    payload: row.try_get("payload")?,
                    worker_id: row.try_get("worker_id")?,
                    received_at_ms: row.try_get("received_at_ms")?,
                })
            })
            .collect()
    }
}

/// The writer: takes what is queued (up to `batch` at a time) and inserts it.
async fn write(
    pool: AnyPool,
    placeholders: Placeholders,
    mut events: mpsc::Receiver<StoredEvent>,
    batch: usize,
) {
    let mut buffer = Vec::with_capacity(batch);
    loop {
        if events.recv_many(&mut buffer, batch).await == 0 {
            return;
        }
        // Give a burst 50 ms to fill the batch.
        if buffer.len() < batch {
            let deadline = tokio::time::sleep(Duration::from_millis(50));
            tokio::pin!(deadline);
            while buffer.len() < batch {
                let room = batch - buffer.len();
                tokio::select! {
                    () = &mut deadline => break,
                    n = events.recv_many(&mut buffer, room) => if n == 0 { break },
                }
            }
        }
        if let Err(error) = insert(&pool, placeholders, &buffer).await {
            tracing::warn!(%error, rows = buffer.len(), "batch insert failed; inserting row by row");
            for event in &buffer {
                if let Err(error) = insert(&pool, placeholders, std::slice::from_ref(event)).await {
                    tracing::error!(%error, channel = %event.channel, "analytics event not stored");
                }
            }
        }
        buffer.clear();
    }
}

/// One `INSERT` of `events` (five parameters per row).
async fn insert(
    pool: &AnyPool,
    placeholders: Placeholders,
    events: &[StoredEvent],
) -> Result<(), sqlx::Error> {
    let mut sql = String::from(
        "INSERT INTO analytics_events (channel, user_id, payload, worker_id, received_at_ms) VALUES ",
    );
    for row in 0..events.len() {
        if row > 0 {
            sql.push_str(", ");
        }
        let params: Vec<String> = (1..=5).map(|c| placeholders.nth(row * 5 + c)).collect();
        sql.push('(');
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    // Only placeholders are formatted into the statement; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for event in events {
        query = query
            .bind(event.channel.clone())
            .bind(event.user_id.clone())
            .bind(event.payload.clone())
            .bind(event.worker_id.clone())
            .bind(event.received_at_ms);
    }
    query.execute(pool).await?;
    Ok(())
}

/// An event the sink refuses: retrying it would not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(String);

/// Stores every event published on an `analytics:*` channel. An event without a string `userId`
/// is refused with an error (logged, counted); the other events, and the other handlers of this
/// one, are not affected. A failed write is tried again (3 attempts, 20 ms then 40 ms apart), all
/// within 5 s; a refused event is not.
#[websocket_subscriber(
    match = regex("^analytics:"),
    name = "analyticsSink",
    description = "persists analytics events (SQLite or Postgres)",
    timeout = "5s",
    layer = switchboard::tower::retry::RetryLayer::new(
        Backoff::new(3, Duration::from_millis(20)).retry_if(|e| !e.is::<InvalidEvent>())
    )
)]
pub async fn analytics_sink(
    channel: Channel,
    Message(event): Message<Value>,
    envelope: Envelope,
    State(store): State<AnalyticsStore>,
) -> HandlerResult {
    let Some(user_id) = event.get("userId").and_then(Value::as_str) else {
        return Err(InvalidEvent(format!(
            "{channel}: an analytics event needs a string `userId`"
        ))
        .into());
    };
    let received_at_ms = envelope
        .received_at()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    store
        .record(StoredEvent {
            channel: channel.to_string(),
            user_id: user_id.to_owned(),
            payload: event.to_string(),
            worker_id: envelope.worker_id().unwrap_or("?").to_owned(),
            received_at_ms,
        })
        .await
}

/// The store `DATABASE_URL` and `ANALYTICS_BATCH` ask for (in-memory SQLite and 500 by default).
pub async fn store_from_env() -> anyhow::Result<AnalyticsStore> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "sqlite::memory:".to_owned());
    let batch = std::env::var("ANALYTICS_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    AnalyticsStore::open(&url, batch).await
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
    let store = store_from_env().await?;
    let running = Switchboard::builder()
        .broker_from_env()?
        .state(store.clone())
        .build()?
        .start()
        .await?;
    if std::env::var_os("REDIS_URL").is_some() {
        println!("Storing analytics:* events from the cluster (Ctrl-C stops).");
        tokio::signal::ctrl_c().await?;
    } else {
        let publisher = running.publisher();
        for (channel, event) in [
            (
                "analytics:pageview",
                serde_json::json!({"userId": "ada", "path": "/"}),
            ),
            (
                "analytics:click",
                serde_json::json!({"userId": "ada", "target": "signup"}),
            ),
            (
                "analytics:pageview",
                serde_json::json!({"path": "/no-user"}),
            ),
            ("analytics:signup", serde_json::json!({"userId": "grace"})),
        ] {
            publisher.publish_including_sender(channel, &event).await?;
        }
        running.wait_idle().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("Stored (the event without userId was refused, the others kept):");
        for event in store.events().await? {
            println!("  {} {} {}", event.channel, event.user_id, event.payload);
        }
    }
    running.shutdown().await;
    Ok(())
}
