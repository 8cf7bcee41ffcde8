//! Handler middleware (tower layers for the application, a group and one handler), the built-in
//! layers (rate limit, throttle, debounce, retry with backoff) and tower's own, plain `fn`
//! handlers on the blocking pool with their timeout, and the log rate limit of invalid input.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use serde_json::json;
use switchboard::layer::{Backoff, DebounceLayer, Key, RateLimitLayer, ThrottleLayer};
use switchboard::prelude::*;
use switchboard::testing::TestApp;
use switchboard::tower::{Layer, Service};
use switchboard::Outcome;

fn builder() -> switchboard::Builder {
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
}

/// A layer that records `"<name>:before"` and `"<name>:after"` around the call.
#[derive(Clone)]
struct Record {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl<S> Layer<S> for Record {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            name: self.name,
            log: self.log.clone(),
        }
    }
}

impl<S, Cx> Service<Cx> for Recorded<S>
where
    S: Service<Cx> + Send + 'static,
    S::Future: Send + 'static,
    Cx: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Cx) -> Self::Future {
        let (name, log) = (self.name, self.log.clone());
        log.lock().unwrap().push(format!("{name}:before"));
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            log.lock().unwrap().push(format!("{name}:after"));
            result
        })
    }
}

fn entries(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn layers_run_application_then_group_then_own_first_given_outermost() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = |name| Record {
        name,
        log: log.clone(),
    };
    let handler_log = log.clone();
    let app = TestApp::start(
        builder()
            .layer(record("app1"))
            .layer(record("app2"))
            .layer_for(|h| h.name() == "picked", record("group"))
            .subscriber(
                Subscriber::channels(["orders"])
                    .name("picked")
                    .layer(record("own1"))
                    .layer(record("own2"))
                    .handle(move || {
                        let log = handler_log.clone();
                        async move { log.lock().unwrap().push("handler".to_owned()) }
                    }),
            )
            .subscriber(
                Subscriber::channels(["other"])
                    .name("not_picked")
                    .handle(|| async {}),
            ),
    )
    .await
    .unwrap();

    let dispatch = app.publish("orders", &json!({"id": 1})).await.unwrap();
    assert_eq!(dispatch.outcome("picked"), Some(&Outcome::Completed));
    assert_eq!(
        entries(&log),
        [
            "app1:before",
            "app2:before",
            "group:before",
            "own1:before",
            "own2:before",
            "handler",
            "own2:after",
            "own1:after",
            "group:after",
            "app2:after",
            "app1:after",
        ]
    );
    // The group layer picks by name: the other handler has the application's layers only.
    app.publish("other", &json!({})).await.unwrap();
    assert_eq!(
        entries(&log),
        ["app1:before", "app2:before", "app2:after", "app1:after"]
    );
}

fn counting(counter: &Arc<AtomicUsize>) -> impl Fn() -> std::future::Ready<()> + Clone {
    let counter = counter.clone();
    move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    }
}

#[tokio::test]
async fn rate_limit_lets_max_calls_per_window_and_key_through_and_counts_the_skips() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start(
        builder().subscriber(
            Subscriber::channels(["track"])
                .name("track")
                .layer(
                    RateLimitLayer::new(3, Duration::from_secs(60)).per(Key::property("user.id")),
                )
                .handle(counting(&runs)),
        ),
    )
    .await
    .unwrap();

    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let d = app
            .publish("track", &json!({"user": {"id": "ada"}}))
            .await
            .unwrap();
        outcomes.push(d.outcome("track").cloned().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(
        outcomes[..3].iter().all(Outcome::is_completed),
        "{outcomes:?}"
    );
    for skipped in &outcomes[3..] {
        assert!(
            matches!(skipped, Outcome::Skipped(reason) if reason.contains("rate limited")),
            "{skipped:?}"
        );
    }
    // Another key has a budget of its own.
    let d = app
        .publish("track", &json!({"user": {"id": "bob"}}))
        .await
        .unwrap();
    assert_eq!(d.outcome("track"), Some(&Outcome::Completed));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(app.stats().handler_skips, 2);
    assert_eq!(app.stats().handler_errors, 0);
}

#[tokio::test]
async fn throttle_runs_the_first_call_then_one_per_interval() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start(
        builder().subscriber(
            Subscriber::channels(["cursor:*"])
                .or(Matcher::pattern("cursor:*"))
                .name("cursor")
                .layer(ThrottleLayer::new(Duration::from_millis(400)))
                .handle(counting(&runs)),
        ),
    )
    .await
    .unwrap();

    for _ in 0..4 {
        app.publish("cursor:a", &json!({})).await.unwrap();
    }
    // Per channel: another channel is not throttled by the first.
    app.publish("cursor:b", &json!({})).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one per channel");
    assert_eq!(app.stats().handler_skips, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = app.publish("cursor:a", &json!({})).await.unwrap();
    assert_eq!(d.outcome("cursor"), Some(&Outcome::Completed));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn debounce_runs_the_last_call_of_a_burst_once_and_never_holds_the_lane() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let after = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start(
        builder()
            .subscriber(
                Subscriber::channels(["doc"])
                    .name("reindex")
                    .priority(10)
                    .layer(DebounceLayer::new(Duration::from_millis(300)).per(Key::property("doc")))
                    .handle(move |Message(m): Message| {
                        let record = record.clone();
                        async move { record.lock().unwrap().push(m) }
                    }),
            )
            // A lower-priority handler of the same messages still runs for each of them (the
            // reference's debounce never settled the calls it superseded, so these never ran).
            .subscriber(
                Subscriber::channels(["doc"])
                    .name("after")
                    .handle(counting(&after)),
            ),
    )
    .await
    .unwrap();

    for n in 0..5 {
        let d = app
            .publish("doc", &json!({"doc": "a", "n": n}))
            .await
            .unwrap();
        assert!(matches!(d.outcome("reindex"), Some(Outcome::Skipped(_))));
    }
    app.publish("doc", &json!({"doc": "b", "n": 9}))
        .await
        .unwrap();
    assert_eq!(after.load(Ordering::SeqCst), 6);
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing runs before the quiet period"
    );
    // The last call of each key runs once, the quiet period after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|m| m["doc"].as_str().map(str::to_owned));
    assert_eq!(
        seen,
        [json!({"doc": "a", "n": 4}), json!({"doc": "b", "n": 9})]
    );
}

#[tokio::test]
async fn retry_with_backoff_retries_failures_up_to_the_attempts_but_never_a_rejection() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let retry = || {
        switchboard::tower::retry::RetryLayer::new(
            Backoff::new(3, Duration::from_millis(5)).jitter(0.5),
        )
    };
    #[derive(serde::Deserialize)]
    struct Order {
        #[allow(dead_code)]
        id: u64,
    }
    let typed_log = Arc::new(Mutex::new(Vec::new()));
    let app = TestApp::start(
        builder()
            .subscriber(
                Subscriber::channels(["flaky"])
                    .name("flaky")
                    .layer(retry())
                    .handle(move |Message(m): Message| {
                        let counter = counter.clone();
                        async move {
                            let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
                            if call < m["succeed_on"].as_u64().unwrap() as usize {
                                return Err(format!("attempt {call} failed"));
                            }
                            Ok(())
                        }
                    }),
            )
            .subscriber(
                Subscriber::channels(["typed"])
                    .name("typed")
                    // A recording layer inside the retry: logs each call that reaches it.
                    .layer(retry())
                    .layer(Record {
                        name: "typed",
                        log: typed_log.clone(),
                    })
                    .handle(|Message(_): Message<Order>| async {}),
            ),
    )
    .await
    .unwrap();

    // Fails twice, then succeeds: 3 calls, completed.
    let d = app
        .publish("flaky", &json!({"succeed_on": 3}))
        .await
        .unwrap();
    assert_eq!(d.outcome("flaky"), Some(&Outcome::Completed));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
    // Always fails: 3 attempts, then the last error.
    let d = app
        .publish("flaky", &json!({"succeed_on": 100}))
        .await
        .unwrap();
    assert_eq!(
        d.outcome("flaky"),
        Some(&Outcome::Failed("attempt 3 failed".to_owned()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // A payload that does not deserialize is rejected once, not retried.
    let d = app.publish("typed", &json!({"id": "x"})).await.unwrap();
    assert!(
        matches!(d.outcome("typed"), Some(Outcome::Rejected(_))),
        "{d:?}"
    );
    assert_eq!(entries(&typed_log), ["typed:before", "typed:after"]);
}

/// Tracks how many calls run at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    async fn hold(&self, pause: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(pause).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn max_concurrency(limit: Option<usize>) -> usize {
    let gauge = Arc::new(Gauge::default());
    let held = gauge.clone();
    let mut subscriber = Subscriber::matching([Matcher::pattern("work:*")]).name("work");
    if let Some(limit) = limit {
        subscriber = subscriber.layer(switchboard::tower::limit::ConcurrencyLimitLayer::new(limit));
    }
    let app = TestApp::start(builder().subscriber(subscriber.handle(move || {
        let held = held.clone();
        async move { held.hold(Duration::from_millis(30)).await }
    })))
    .await
    .unwrap();
    let publisher = app.running().publisher();
    for i in 0..12 {
        publisher
            .publish_including_sender(&format!("work:{}", i % 4), &json!({}))
            .await
            .unwrap();
    }
    let d = app.settle().await;
    assert_eq!(d.runs.len(), 12);
    assert!(d.runs.iter().all(|r| r.outcome.is_completed()), "{d:?}");
    gauge.max.load(Ordering::SeqCst)
}

#[tokio::test]
async fn towers_concurrency_limit_bounds_a_handler_across_channels() {
    // Four channels are four lanes: without the layer, their messages run side by side.
    assert!(max_concurrency(None).await > 1);
    assert_eq!(max_concurrency(Some(1)).await, 1);
}

#[tokio::test]
async fn towers_timeout_inside_a_retry_bounds_each_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = TestApp::start(
        builder().subscriber(
            Subscriber::channels(["slow"])
                .name("slow")
                .layer(switchboard::tower::retry::RetryLayer::new(Backoff::new(
                    3,
                    Duration::from_millis(1),
                )))
                .layer(switchboard::tower::timeout::TimeoutLayer::new(
                    Duration::from_millis(50),
                ))
                .handle(move || {
                    let counter = counter.clone();
                    async move {
                        // The first attempt hangs; the retry's second one is quick.
                        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                }),
        ),
    )
    .await
    .unwrap();
    let d = app.publish("slow", &json!({})).await.unwrap();
    assert_eq!(d.outcome("slow"), Some(&Outcome::Completed));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// One thread for the whole runtime: a plain `fn` that blocked it would stall everything.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_fn_handler_runs_off_the_async_threads_and_times_out_like_an_async_one() {
    let app = TestApp::start(
        builder()
            .handler_timeout(Duration::from_millis(100))
            .subscriber(Subscriber::channels(["blocking"]).name("blocking").handle(
                |Message(m): Message| {
                    std::thread::sleep(Duration::from_millis(m["sleep_ms"].as_u64().unwrap()));
                },
            ))
            .subscriber(
                Subscriber::channels(["quick"])
                    .name("quick")
                    .handle(|| async {}),
            ),
    )
    .await
    .unwrap();
    let publisher = app.running().publisher();
    publisher
        .publish_including_sender("blocking", &json!({"sleep_ms": 600}))
        .await
        .unwrap();
    // While the blocking handler sleeps, another channel's handler runs at once.
    let started = std::time::Instant::now();
    let d = app.publish("quick", &json!({})).await.unwrap();
    let (quick, blocking): (Vec<_>, Vec<_>) = d.runs.iter().partition(|r| r.handler == "quick");
    assert_eq!(quick.len(), 1);
    assert!(quick[0].outcome.is_completed());
    // `publish` waits for everything in flight: the blocking handler ended too, by its timeout.
    assert_eq!(blocking.len(), 1, "{d:?}");
    assert_eq!(
        blocking[0].outcome,
        Outcome::TimedOut(Duration::from_millis(100))
    );
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.stats().handler_timeouts, 1);
    // Its result comes later: discarded and counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.stats().late_results == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.stats().late_results, 1);
    // A quick plain handler completes, and is not late.
    let d = app
        .publish("blocking", &json!({"sleep_ms": 1}))
        .await
        .unwrap();
    assert_eq!(d.outcome("blocking"), Some(&Outcome::Completed));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(app.stats().late_results, 1);
}

#[tokio::test]
async fn a_plain_fn_handler_that_panics_is_reported_as_a_panic() {
    let app = TestApp::start(
        builder().subscriber(
            Subscriber::channels(["boom"])
                .name("boom")
                .handle(|| -> HandlerResult { panic!("kaboom") }),
        ),
    )
    .await
    .unwrap();
    let d = app.publish("boom", &json!({})).await.unwrap();
    assert_eq!(
        d.outcome("boom"),
        Some(&Outcome::Panicked("kaboom".to_owned()))
    );
    assert_eq!(app.stats().handler_panics, 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn lines(&self, containing: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(containing))
            .map(str::to_owned)
            .collect()
    }
}

fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

// One thread, so that the dispatcher's tasks log into this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn invalid_input_is_counted_every_time_and_logged_once_per_interval_per_channel_and_handler()
{
    let (logs, _guard) = capture();
    #[derive(serde::Deserialize)]
    struct Count {
        #[allow(dead_code)]
        n: u64,
    }
    let app = TestApp::start(
        builder()
            .invalid_input_log_interval(Duration::from_millis(300))
            .subscriber(
                Subscriber::channels(["counts", "other"])
                    .name("counts")
                    .handle(|Message(_): Message<Count>| async {}),
            ),
    )
    .await
    .unwrap();
    for _ in 0..50 {
        app.publish_raw("counts", "not json").await;
        app.publish("counts", &json!({"n": "x"})).await.unwrap();
    }
    app.publish("other", &json!({"n": "x"})).await.unwrap();
    let stats = app.stats();
    assert_eq!(stats.invalid_payloads, 50);
    assert_eq!(stats.handler_rejections, 51);
    assert_eq!(logs.lines("invalid payload dropped").len(), 1);
    let rejected = logs.lines("an argument was rejected");
    assert_eq!(rejected.len(), 2, "one per channel: {rejected:#?}");
    // The serde error is said once, not twice.
    let reason = &rejected[0];
    assert_eq!(reason.matches("expected u64").count(), 1, "{reason}");
    // After the interval, the next one is logged with the count of those held back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.publish_raw("counts", "not json").await;
    let dropped = logs.lines("invalid payload dropped");
    assert_eq!(dropped.len(), 2);
    assert!(dropped[1].contains("suppressed=49"), "{}", dropped[1]);
}

#[tokio::test]
async fn retry_if_leaves_the_errors_it_refuses_alone() {
    #[derive(Debug, thiserror::Error)]
    #[error("permanent")]
    struct Permanent;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = TestApp::start(
        builder().subscriber(
            Subscriber::channels(["jobs"])
                .name("jobs")
                .layer(switchboard::tower::retry::RetryLayer::new(
                    Backoff::new(4, Duration::from_millis(1)).retry_if(|e| !e.is::<Permanent>()),
                ))
                .handle(move |Message(m): Message| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if m["permanent"] == true {
                            Err(switchboard::BoxError::from(Permanent))
                        } else {
                            Err("transient".into())
                        }
                    }
                }),
        ),
    )
    .await
    .unwrap();
    let d = app
        .publish("jobs", &json!({"permanent": true}))
        .await
        .unwrap();
    assert_eq!(
        d.outcome("jobs"),
        Some(&Outcome::Failed("permanent".to_owned()))
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
    let d = app
        .publish("jobs", &json!({"permanent": false}))
        .await
        .unwrap();
    assert_eq!(
        d.outcome("jobs"),
        Some(&Outcome::Failed("transient".to_owned()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
