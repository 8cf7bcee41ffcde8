//! The inspector (opt-in: [`ServerBuilderExt::inspector`](crate::ServerBuilderExt::inspector)): a
//! page served beside the WebSocket endpoint that shows this worker's handler and route table,
//! message rates per channel, handler latency and errors, the cluster's clients per worker, rooms
//! and members, and the last errors, live.
//!
//! The page holds no data: it opens the WebSocket endpoint (with the page's own `?token=`, so the
//! same authentication applies) and sends `inspector:subscribe`; the server then pushes
//! `{"type":"inspector","action":"snapshot","data":{...}}` every second to its subscribers. When
//! the server has a JWT secret, only authenticated clients may subscribe. What it counts comes
//! from the dispatcher's events (a builder observer), so it costs nothing when it is off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use subscriber_runtime::{DispatchEvent, HandlerInfo, Outcome};

use crate::frame::{ClientId, Frame};
use crate::WebSocket;

/// The page.
const PAGE: &str = include_str!("inspector.html");

/// How many channels are counted one by one (the others under `"other"`).
const MAX_CHANNELS: usize = 1_000;
/// How many recent errors are kept.
const MAX_ERRORS: usize = 20;
/// How many rooms a snapshot lists (the largest), and members per room.
const MAX_ROOMS: usize = 50;
const MAX_MEMBERS: usize = 20;
/// How often subscribers get a snapshot.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Inspector {
    pub(crate) path: String,
    tally: Mutex<Tally>,
    handlers: OnceLock<Vec<HandlerInfo>>,
    subscribers: Mutex<HashSet<ClientId>>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct ChannelTally {
    total: u64,
    /// The total at the last snapshot, for the rate.
    before: u64,
}

#[derive(Default)]
struct HandlerTally {
    runs: u64,
    errors: u64,
    /// Since the last snapshot: runs, summed time, the longest.
    window_runs: u64,
    window_time: Duration,
    window_max: Duration,
    /// What the last window showed, kept until a window with runs replaces it.
    last_avg_ms: f64,
    last_max_ms: f64,
}

struct ErrorEntry {
    at: SystemTime,
    handler: String,
    channel: Arc<str>,
    kind: &'static str,
    error: String,
}

struct Tally {
    channels: HashMap<Arc<str>, ChannelTally>,
    handlers: HashMap<String, HandlerTally>,
    errors: VecDeque<ErrorEntry>,
    last_snapshot: Instant,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Inspector {
    pub(crate) fn new(path: String) -> Self {
        Self {
            path,
            tally: Mutex::new(Tally {
                channels: HashMap::new(),
                handlers: HashMap::new(),
                errors: VecDeque::new(),
                last_snapshot: Instant::now(),
                started: Instant::now(),
            }),
            handlers: OnceLock::new(),
            subscribers: Mutex::default(),
        }
    }

    /// Checks that the page's path can be a route of its own beside `/ws` and `metrics`.
    pub(crate) fn validate(&self, metrics: Option<&str>) -> Result<(), crate::ServerError> {
        let path = &self.path;
        let invalid = |reason: String| crate::ServerError::InvalidInspectorPath {
            path: path.clone(),
            reason,
        };
        if !path.starts_with('/') {
            return Err(invalid("it must start with `/`".to_owned()));
        }
        if path == crate::WS_PATH || Some(path.as_str()) == metrics {
            return Err(invalid(
                "another endpoint (the WebSocket's or the metrics') has it".to_owned(),
            ));
        }
        if let Some(c) = path
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~')))
        {
            return Err(invalid(format!(
                "{c:?} is not allowed: use letters, digits, `/`, `-`, `_`, `.` and `~`"
            )));
        }
        Ok(())
    }

    /// The page's HTML.
    pub(crate) fn page() -> &'static str {
        PAGE
    }

    /// The handler table, known once the application runs.
    pub(crate) fn set_handlers(&self, handlers: Vec<HandlerInfo>) {
        let _ = self.handlers.set(handlers);
    }

    /// Counts one dispatcher event.
    pub(crate) fn record(&self, event: &DispatchEvent) {
        match event {
            DispatchEvent::Received { channel } => {
                let mut tally = lock(&self.tally);
                let known =
                    tally.channels.len() < MAX_CHANNELS || tally.channels.contains_key(channel);
                let key: Arc<str> = if known {
                    channel.clone()
                } else {
                    Arc::from("other")
                };
                tally.channels.entry(key).or_default().total += 1;
            }
            DispatchEvent::Ran {
                handler,
                channel,
                outcome,
                elapsed,
            } => {
                let failure = match outcome {
                    Outcome::Failed(e) => Some(("failed", e.clone())),
                    Outcome::Panicked(e) => Some(("panicked", e.clone())),
                    Outcome::TimedOut(after) => Some(("timed out", format!("after {after:?}"))),
                    Outcome::Rejected(e) => Some(("rejected", e.clone())),
                    _ => None,
                };
                let mut tally = lock(&self.tally);
                let entry = tally.handlers.entry(handler.clone()).or_default();
                entry.runs += 1;
                entry.window_runs += 1;
                entry.window_time += *elapsed;
                entry.window_max = entry.window_max.max(*elapsed);
                if let Some((kind, error)) = failure {
                    entry.errors += 1;
                    if tally.errors.len() == MAX_ERRORS {
                        tally.errors.pop_front();
                    }
                    tally.errors.push_back(ErrorEntry {
                        at: SystemTime::now(),
                        handler: handler.clone(),
                        channel: channel.clone(),
                        kind,
                        error,
                    });
                }
            }
            _ => {}
        }
    }

    /// Adds a subscriber (a client of this worker).
    pub(crate) fn subscribe(&self, client: ClientId) {
        lock(&self.subscribers).insert(client);
    }

    /// Sends a snapshot to every subscriber still connected here (none built without one).
    pub(crate) fn push(&self, ws: &WebSocket) {
        let subscribers: Vec<ClientId> = lock(&self.subscribers).iter().cloned().collect();
        if subscribers.is_empty() {
            return;
        }
        let frame = self.frame(ws);
        for id in subscribers {
            if !ws.broadcast_to_client(&id, &frame) {
                lock(&self.subscribers).remove(&id);
            }
        }
    }

    /// The snapshot frame.
    pub(crate) fn frame(&self, ws: &WebSocket) -> Frame {
        Frame::json(&json!({
            "type": "inspector",
            "action": "snapshot",
            "data": self.snapshot(ws),
        }))
        .expect("serializing JSON cannot fail")
    }

    fn snapshot(&self, ws: &WebSocket) -> Value {
        let (channels, handler_stats, errors, uptime) = {
            let mut tally = lock(&self.tally);
            let seconds = tally.last_snapshot.elapsed().as_secs_f64().max(0.001);
            tally.last_snapshot = Instant::now();
            let mut channels: Vec<(Arc<str>, u64, f64)> = tally
                .channels
                .iter_mut()
                .map(|(name, c)| {
                    let rate = (c.total - c.before) as f64 / seconds;
                    c.before = c.total;
                    (name.clone(), c.total, (rate * 10.0).round() / 10.0)
                })
                .collect();
            channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            channels.truncate(100);
            let mut handlers = HashMap::with_capacity(tally.handlers.len());
            for (name, h) in &mut tally.handlers {
                if h.window_runs > 0 {
                    h.last_avg_ms = millis(h.window_time) / h.window_runs as f64;
                    h.last_max_ms = millis(h.window_max);
                }
                handlers.insert(
                    name.clone(),
                    json!({
                        "runs": h.runs,
                        "errors": h.errors,
                        "avgMs": (h.last_avg_ms * 1000.0).round() / 1000.0,
                        "maxMs": h.last_max_ms,
                    }),
                );
                h.window_runs = 0;
                h.window_time = Duration::ZERO;
                h.window_max = Duration::ZERO;
            }
            let errors: Vec<Value> = tally
                .errors
                .iter()
                .rev()
                .map(|e| {
                    json!({
                        "at": epoch_ms(e.at),
                        "handler": e.handler,
                        "channel": &*e.channel,
                        "kind": e.kind,
                        "error": e.error,
                    })
                })
                .collect();
            (channels, handlers, errors, tally.started.elapsed())
        };
        let handlers: Vec<Value> =
            self.handlers
                .get()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|h| {
                    let stats = handler_stats.get(h.name()).cloned().unwrap_or_else(
                        || json!({"runs": 0, "errors": 0, "avgMs": 0.0, "maxMs": 0.0}),
                    );
                    json!({
                        "name": h.name(),
                        "priority": h.priority(),
                        "matchers": h.matchers(),
                        "location": h.location().to_string(),
                        "description": h.description(),
                        "stats": stats,
                    })
                })
                .collect();
        let inner = &ws.inner;
        let routes: Vec<Value> = inner
            .routes
            .rows()
            .into_iter()
            .map(|(route, entry)| {
                json!({
                    "route": route,
                    "handler": &*entry.name,
                    "location": entry.location.to_string(),
                    "description": entry.description,
                })
            })
            .collect();
        let mut rooms: Vec<(String, Vec<ClientId>)> = ws
            .rooms()
            .into_iter()
            .map(|room| {
                let members = ws.room_members(&room);
                (room, members)
            })
            .collect();
        rooms.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(MAX_ROOMS);
        let rooms: Vec<Value> = rooms
            .into_iter()
            .map(|(room, members)| {
                let count = members.len();
                let shown: Vec<&str> = members
                    .iter()
                    .take(MAX_MEMBERS)
                    .map(ClientId::as_str)
                    .collect();
                json!({"room": room, "count": count, "members": shown})
            })
            .collect();
        let workers: Vec<Value> = ws
            .clients_per_worker()
            .into_iter()
            .map(|(worker, clients)| {
                json!({
                    "workerId": worker,
                    "clients": clients,
                    "self": worker == *inner.worker_id,
                })
            })
            .collect();
        json!({
            "workerId": &*inner.worker_id,
            "at": epoch_ms(SystemTime::now()),
            "uptimeSeconds": uptime.as_secs(),
            "handlers": handlers,
            "routes": routes,
            "channels": channels
                .into_iter()
                .map(|(channel, total, rate)| json!({"channel": &*channel, "total": total, "perSecond": rate}))
                .collect::<Vec<_>>(),
            "workers": workers,
            "rooms": rooms,
            "errors": errors,
        })
    }
}

/// Pushes snapshots to the subscribers every [`INTERVAL`] until `stop`.
pub(crate) async fn run(
    ws: WebSocket,
    inspector: Arc<Inspector>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => inspector.push(&ws),
        }
    }
}
