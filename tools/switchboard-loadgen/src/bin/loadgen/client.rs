//! The WebSocket clients of the load generator: counted clients (which check every frame),
//! idle clients and churn clients.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Highest latency the histograms track, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures of the histograms: 1 % resolution keeps one histogram per client at
/// about 20 KiB, so thousands of clients stay cheap.
const SIGFIG: u8 = 2;

/// Nanoseconds since the Unix epoch (the clock `sent_ns` is stamped with).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An empty latency histogram (microseconds).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG).expect("valid histogram bounds")
}

/// Opens one connection, retrying a few times (a burst of connects may hit a full backlog).
pub(crate) async fn connect(url: &str, read_buffer: usize) -> Result<Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let mut last_err = None;
    for attempt in 0..4_u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let fut = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok((ws, _response))) => return Ok(ws),
            Ok(Err(e)) => last_err = Some(e.to_string()),
            Err(_) => last_err = Some("handshake timed out".to_owned()),
        }
    }
    bail!("connecting to {url}: {}", last_err.unwrap_or_default())
}

/// Closes a connection politely, without waiting long for the peer.
pub(crate) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

/// State of one counted client that the publisher and the main task can watch.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Highest sequence number received plus one.
    pub(crate) next: AtomicU64,
    /// The connection ended before the client was stopped.
    pub(crate) ended: AtomicBool,
}

/// Counters shared by all counted clients.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Clients that have received every sequence number.
    pub(crate) complete: AtomicUsize,
    /// Clients whose connection ended early.
    pub(crate) ended: AtomicUsize,
    /// Whether an invalid frame was already printed (only the first one is).
    pub(crate) invalid_reported: AtomicBool,
}

/// What one counted client saw.
#[derive(Debug)]
pub(crate) struct ClientStats {
    /// Latency (receive time − `sent_ns`) of every valid frame, in microseconds.
    pub(crate) hist: Histogram<u64>,
    /// Valid frames received, duplicates included.
    pub(crate) frames: u64,
    /// Distinct sequence numbers received.
    pub(crate) distinct: u64,
    /// Frames whose sequence number had already been received.
    pub(crate) duplicated: u64,
    /// Frames whose sequence number is lower than one received before.
    pub(crate) out_of_order: u64,
    /// Frames that did not parse as the expected envelope.
    pub(crate) invalid: u64,
    /// Unix time (ns) of the last valid frame, 0 if none.
    pub(crate) last_frame_ns: u64,
    /// Why the connection ended before the client was stopped, if it did.
    pub(crate) ended_early: Option<String>,
}

/// Checks and times the frames of one counted client.
#[derive(Debug)]
struct Checker {
    stats: ClientStats,
    messages: u64,
    /// Bit set of the sequence numbers received.
    seen: Vec<u64>,
    /// Highest sequence number received plus one.
    next: u64,
    /// Whether a frame has passed the strict check (later ones get the fast one).
    validated: bool,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
}

impl Checker {
    fn on_text(&mut self, text: &str) {
        let received_ns = now_ns();
        let parsed = if self.validated {
            parse_fast(text)
        } else {
            parse_strict(text)
        };
        let Some((seq, sent_ns)) = parsed.filter(|(seq, _)| *seq < self.messages) else {
            self.stats.invalid += 1;
            if !self.shared.invalid_reported.swap(true, Ordering::Relaxed) {
                let head: String = text.chars().take(200).collect();
                eprintln!("warning: unexpected frame: {head}");
            }
            return;
        };
        self.validated = true;
        let stats = &mut self.stats;
        stats.frames += 1;
        stats.last_frame_ns = received_ns;
        let latency_us = received_ns.saturating_sub(sent_ns) / 1_000;
        stats.hist.saturating_record(latency_us.max(1));

        let (word, bit) = ((seq / 64) as usize, 1_u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            stats.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        stats.distinct += 1;
        if seq < self.next {
            stats.out_of_order += 1;
        } else {
            self.next = seq + 1;
            self.progress.next.store(self.next, Ordering::Relaxed);
        }
        if stats.distinct == self.messages {
            self.shared.complete.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads until the connection ends; returns why it ended.
    async fn read_all(&mut self, ws: &mut Ws) -> String {
        while let Some(incoming) = ws.next().await {
            match incoming {
                Ok(Message::Text(text)) => self.on_text(&text),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Binary(_)) => self.stats.invalid += 1,
                Ok(Message::Close(frame)) => return format!("closed by server: {frame:?}"),
                Err(e) => return e.to_string(),
            }
        }
        "connection ended".to_owned()
    }
}

/// Reads frames until `stop` fires, checking and timing each one.
pub(crate) async fn counted_client(
    mut ws: Ws,
    messages: u64,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ClientStats {
    let words = usize::try_from(messages.div_ceil(64)).expect("message count fits in memory");
    let mut checker = Checker {
        stats: ClientStats {
            hist: new_histogram(),
            frames: 0,
            distinct: 0,
            duplicated: 0,
            out_of_order: 0,
            invalid: 0,
            last_frame_ns: 0,
            ended_early: None,
        },
        messages,
        seen: vec![0_u64; words],
        next: 0,
        validated: false,
        progress,
        shared,
    };
    // One select per connection, not per frame: the read loop runs until the stop signal.
    let ended = tokio::select! {
        reason = checker.read_all(&mut ws) => Some(reason),
        _ = stop.changed() => None,
    };
    if let Some(reason) = ended {
        checker.stats.ended_early = Some(reason);
        checker.progress.ended.store(true, Ordering::Relaxed);
        checker.shared.ended.fetch_add(1, Ordering::Relaxed);
    } else {
        close(ws).await;
    }
    checker.stats
}

/// Holds a connection open (answering pings) until `stop` fires; returns whether it was still
/// open then.
pub(crate) async fn idle_client(mut ws: Ws, mut stop: watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => break,
        }
    }
    close(ws).await;
    true
}

/// Counters of the churn clients.
#[derive(Debug, Default)]
pub(crate) struct ChurnStats {
    /// Successful connections.
    pub(crate) connects: AtomicU64,
    /// Failed connection attempts (after retries).
    pub(crate) failures: AtomicU64,
    /// Frames received (and discarded).
    pub(crate) frames: AtomicU64,
}

/// Connects, reads for a short random time, disconnects, and again, until `stop` fires.
pub(crate) async fn churn_client(
    url: Arc<str>,
    read_buffer: usize,
    seed: u64,
    stats: Arc<ChurnStats>,
    mut stop: watch::Receiver<bool>,
) {
    // xorshift64*: plenty for spreading hold times.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next_rand = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    while !*stop.borrow() {
        let mut ws = tokio::select! {
            res = connect(&url, read_buffer) => match res {
                Ok(ws) => ws,
                Err(_) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        let hold = tokio::time::sleep(Duration::from_millis(20 + next_rand() % 180));
        tokio::pin!(hold);
        let mut frames = 0_u64;
        let open = loop {
            tokio::select! {
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break false,
                    Some(Ok(_)) => frames += 1,
                },
                () = &mut hold => break true,
                _ = stop.changed() => break true,
            }
        };
        stats.frames.fetch_add(frames, Ordering::Relaxed);
        if open {
            close(ws).await;
        }
    }
}

/// Parses a frame fully: `{"type":"bench","action":"tick","data":{"seq":N,"sent_ns":T,..}}`.
/// Used for the first frame of each client, so that a wrong envelope is caught.
pub(crate) fn parse_strict(text: &str) -> Option<(u64, u64)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("type")?.as_str()? != "bench" || value.get("action")?.as_str()? != "tick" {
        return None;
    }
    let data = value.get("data")?;
    Some((data.get("seq")?.as_u64()?, data.get("sent_ns")?.as_u64()?))
}

/// Extracts `seq` and `sent_ns` without a full JSON parse, so that checking frames costs the
/// load generator far less CPU than producing them costs the server. Frames laid out exactly
/// as the contract shows them are read at fixed offsets; any other key order or spacing falls
/// back to a search.
pub(crate) fn parse_fast(text: &str) -> Option<(u64, u64)> {
    const PREFIX: &str = r#"{"type":"bench","action":"tick","data":{"seq":"#;
    const SENT: &str = r#","sent_ns":"#;
    if let Some(rest) = text.strip_prefix(PREFIX) {
        let (seq, rest) = leading_number(rest)?;
        if let Some(rest) = rest.strip_prefix(SENT) {
            return Some((seq, leading_number(rest)?.0));
        }
    }
    Some((
        number_after(text, "\"seq\":")?,
        number_after(text, "\"sent_ns\":")?,
    ))
}

/// The unsigned integer that follows the first occurrence of `key` (whitespace allowed).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    Some(leading_number(text[start..].trim_start())?.0)
}

/// The unsigned integer at the start of `text`, and what follows it.
fn leading_number(text: &str) -> Option<(u64, &str)> {
    let end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    Some((text[..end].parse().ok()?, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: &str = r#"{"type":"bench","action":"tick","data":{"seq":42,"sent_ns":1700000000000000000,"pad":"xxxx"}}"#;

    #[test]
    fn parses_frames() {
        assert_eq!(parse_strict(FRAME), Some((42, 1_700_000_000_000_000_000)));
        assert_eq!(parse_fast(FRAME), Some((42, 1_700_000_000_000_000_000)));
        let spaced =
            r#"{"action": "tick", "data": {"pad": "x", "sent_ns": 7, "seq": 3}, "type": "bench"}"#;
        assert_eq!(parse_strict(spaced), Some((3, 7)));
        assert_eq!(parse_fast(spaced), Some((3, 7)));
    }

    #[test]
    fn counts_loss_duplicates_and_reordering() {
        let mut checker = Checker {
            stats: ClientStats {
                hist: new_histogram(),
                frames: 0,
                distinct: 0,
                duplicated: 0,
                out_of_order: 0,
                invalid: 0,
                last_frame_ns: 0,
                ended_early: None,
            },
            messages: 4,
            seen: vec![0; 1],
            next: 0,
            validated: false,
            progress: Arc::new(Progress::default()),
            shared: Arc::new(Shared::default()),
        };
        let frame = |seq: u64| {
            format!(
                r#"{{"type":"bench","action":"tick","data":{{"seq":{seq},"sent_ns":{},"pad":"x"}}}}"#,
                now_ns()
            )
        };
        for seq in [0, 2, 1, 1, 9] {
            checker.on_text(&frame(seq));
        }
        checker.on_text("not json");
        let stats = &checker.stats;
        assert_eq!((stats.frames, stats.distinct), (4, 3));
        assert_eq!(
            (stats.duplicated, stats.out_of_order, stats.invalid),
            (1, 1, 2)
        );
        assert_eq!(checker.progress.next.load(Ordering::Relaxed), 3);
        assert_eq!(checker.shared.complete.load(Ordering::Relaxed), 0);
        checker.on_text(&frame(3));
        assert_eq!(checker.shared.complete.load(Ordering::Relaxed), 1);
        assert_eq!(checker.stats.hist.len(), 5);
    }

    #[test]
    fn rejects_wrong_envelopes() {
        let wrong = r#"{"type":"other","action":"tick","data":{"seq":1,"sent_ns":2}}"#;
        assert_eq!(parse_strict(wrong), None);
        assert_eq!(parse_fast("{}"), None);
        assert_eq!(parse_fast(r#"{"seq":,"sent_ns":1}"#), None);
        assert_eq!(
            parse_fast(r#"{"seq":99999999999999999999999,"sent_ns":1}"#),
            None
        );
    }
}
