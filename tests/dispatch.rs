//! Routing, dispatch and envelope behaviour, driven through the in-process broker with inline
//! subscribers (the attribute's own tests are in `attribute.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::prelude::*;
use switchboard::testing::{Outcome, TestApp};
use switchboard::{BuildError, Error, PayloadLimits};

type Log = Arc<Mutex<Vec<String>>>;

/// An inline subscriber that records `name` (and the channel) when it runs.
fn recorder(sub: Subscriber, name: &'static str, log: &Log) -> switchboard::InlineSubscriber {
    let log = log.clone();
    sub.name(name).handle(move |channel: Channel| {
        log.lock().unwrap().push(format!("{name}@{channel}"));
    })
}

fn base() -> switchboard::Builder {
    Switchboard::builder().without_linked_handlers()
}

#[tokio::test]
async fn priority_order_with_deterministic_ties() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(0),
                "zeta",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(10),
                "high",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(0),
                "alpha",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(-5),
                "low",
                &log,
            )),
    )
    .await
    .unwrap();
    let names: Vec<_> = app
        .running()
        .handlers()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    assert_eq!(names, ["high", "alpha", "zeta", "low"]);
    let d = app.publish("c", &json!({})).await.unwrap();
    assert_eq!(d.handlers(), ["high", "alpha", "zeta", "low"]);
    assert_eq!(
        *log.lock().unwrap(),
        ["high@c", "alpha@c", "zeta@c", "low@c"]
    );
}

#[tokio::test]
async fn wildcard_receives_every_channel() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(recorder(Subscriber::channels(["*"]), "tap", &log))
            .subscriber(recorder(Subscriber::channels(["only-this"]), "exact", &log)),
    )
    .await
    .unwrap();
    for channel in ["only-this", "analytics:pageview", "custom", "x"] {
        app.publish(channel, &json!({})).await.unwrap();
    }
    assert_eq!(
        *log.lock().unwrap(),
        [
            "exact@only-this",
            "tap@only-this",
            "tap@analytics:pageview",
            "tap@custom",
            "tap@x"
        ]
    );
}

#[tokio::test]
async fn exact_regex_glob_predicate_and_array_matchers() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(recorder(Subscriber::channels(["orders"]), "exact", &log))
            .subscriber(recorder(
                Subscriber::matching([Matcher::regex("^analytics:")]),
                "regex",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::matching([Matcher::pattern("jobs:*:done")]),
                "glob",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::when(|m| m.channel() == "custom" && m.message()["room"] == "support"),
                "predicate",
                &log,
            ))
            .subscriber(recorder(
                Subscriber::matching([
                    Matcher::channel("a"),
                    Matcher::pattern("b*"),
                    Matcher::regex("^c$"),
                ]),
                "array",
                &log,
            )),
    )
    .await
    .unwrap();
    let cases: [(&str, serde_json::Value, &[&str]); 10] = [
        ("orders", json!({}), &["exact"]),
        ("orders2", json!({}), &[]),
        ("analytics:pageview", json!({}), &["regex"]),
        ("xanalytics:pageview", json!({}), &[]),
        ("jobs:42:done", json!({}), &["glob"]),
        ("jobs:42:failed", json!({}), &[]),
        ("custom", json!({"room": "support"}), &["predicate"]),
        ("custom", json!({"room": "sales"}), &[]),
        ("a", json!({}), &["array"]),
        ("bee", json!({}), &["array"]),
    ];
    for (channel, message, expected) in cases {
        let d = app.publish(channel, &message).await.unwrap();
        assert_eq!(d.handlers(), expected, "channel {channel} with {message}");
    }
    assert!(app.publish("c", &json!({})).await.unwrap().handlers() == ["array"]);
}

#[tokio::test]
async fn a_handler_matching_several_ways_runs_once() {
    let log = Log::default();
    let app = TestApp::start(base().subscriber(recorder(
        Subscriber::matching([
            Matcher::channel("x"),
            Matcher::channel("*"),
            Matcher::regex("^x"),
            Matcher::pattern("x*"),
            Matcher::predicate(|_| true),
        ]),
        "greedy",
        &log,
    )))
    .await
    .unwrap();
    let d = app.publish("x", &json!({})).await.unwrap();
    assert_eq!(d.handlers(), ["greedy"]);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn failing_and_panicking_handlers_do_not_stop_the_others() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(4),
                "first",
                &log,
            ))
            .subscriber(
                Subscriber::channels(["c"])
                    .priority(3)
                    .name("fails")
                    .description("always fails")
                    .handle(|| async { Err::<(), _>(std::io::Error::other("disk full")) }),
            )
            .subscriber(
                Subscriber::channels(["c"])
                    .priority(2)
                    .name("panics")
                    .handle(|| async {
                        let explode = true;
                        if explode {
                            panic!("boom");
                        }
                    }),
            )
            .subscriber(
                Subscriber::channels(["c"])
                    .priority(2)
                    .name("panics_sync")
                    .handle(|| {
                        let explode = true;
                        if explode {
                            panic!("sync boom");
                        }
                    }),
            )
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(1),
                "last",
                &log,
            )),
    )
    .await
    .unwrap();
    let d = app.publish("c", &json!({})).await.unwrap();
    assert_eq!(
        d.handlers(),
        ["first", "fails", "panics", "panics_sync", "last"]
    );
    assert_eq!(
        d.outcome("fails"),
        Some(&Outcome::Failed("disk full".into()))
    );
    assert_eq!(d.outcome("panics"), Some(&Outcome::Panicked("boom".into())));
    assert_eq!(
        d.outcome("panics_sync"),
        Some(&Outcome::Panicked("sync boom".into()))
    );
    assert_eq!(*log.lock().unwrap(), ["first@c", "last@c"]);
    let stats = app.stats();
    assert_eq!((stats.handler_errors, stats.handler_panics), (1, 2));
    // The worker goes on.
    assert_eq!(app.publish("c", &json!({})).await.unwrap().runs.len(), 5);
}

#[tokio::test]
async fn a_slow_handler_times_out_and_the_next_runs() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .handler_timeout(Duration::from_secs(30))
            .handler_timeout_for("slow", Duration::from_millis(50))
            .subscriber(
                Subscriber::channels(["c"])
                    .priority(2)
                    .name("slow")
                    .handle(|| async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }),
            )
            .subscriber(recorder(
                Subscriber::channels(["c"]).priority(1),
                "next",
                &log,
            ))
            .subscriber(
                Subscriber::channels(["c"])
                    .priority(0)
                    .name("slow_inline_timeout")
                    .timeout(Duration::from_millis(20))
                    .handle(|| async { tokio::time::sleep(Duration::from_secs(3600)).await }),
            ),
    )
    .await
    .unwrap();
    let d = app.publish("c", &json!({})).await.unwrap();
    assert_eq!(
        d.outcome("slow"),
        Some(&Outcome::TimedOut(Duration::from_millis(50)))
    );
    assert_eq!(d.outcome("next"), Some(&Outcome::Completed));
    assert_eq!(
        d.outcome("slow_inline_timeout"),
        Some(&Outcome::TimedOut(Duration::from_millis(20)))
    );
    assert_eq!(app.stats().handler_timeouts, 2);
}

#[tokio::test]
async fn own_messages_are_skipped_unless_include_sender() {
    let log = Log::default();
    let app = TestApp::start(base().subscriber(recorder(Subscriber::channels(["c"]), "h", &log)))
        .await
        .unwrap();
    let d = app
        .publish_as_self("c", &json!({"n": 1}), false)
        .await
        .unwrap();
    assert!(d.runs.is_empty());
    assert_eq!(d.skipped_own, 1);
    let d = app
        .publish_as_self("c", &json!({"n": 2}), true)
        .await
        .unwrap();
    assert_eq!(d.handlers(), ["h"]);
    // Another worker's message is handled.
    assert_eq!(
        app.publish("c", &json!({"n": 3})).await.unwrap().handlers(),
        ["h"]
    );
    // `includeSender` must be the boolean true, as in the reference framework.
    let raw = format!(
        r#"{{"workerId":"{}","includeSender":"yes"}}"#,
        app.worker_id()
    );
    assert_eq!(app.publish_raw("c", raw).await.skipped_own, 1);
    assert_eq!(app.stats().skipped_own, 2);
}

#[tokio::test]
async fn envelope_fields_are_stripped_before_handlers() {
    type Seen = Vec<(serde_json::Value, String, Option<String>, bool)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let app = TestApp::start(
        base().subscriber(Subscriber::channels(["c"]).name("h").handle(
            move |Message(m): Message, raw: Raw, envelope: Envelope| {
                sink.lock().unwrap().push((
                    m,
                    String::from_utf8(raw.0.to_vec()).unwrap(),
                    envelope.worker_id().map(str::to_owned),
                    envelope.include_sender(),
                ));
            },
        )),
    )
    .await
    .unwrap();
    app.publish_raw("c", r#"{"workerId":"other","includeSender":true,"a":1}"#)
        .await;
    let seen = seen.lock().unwrap();
    let (message, raw, worker, include) = &seen[0];
    assert_eq!(message, &json!({"a": 1}));
    assert_eq!(raw, r#"{"a":1}"#);
    assert_eq!(worker.as_deref(), Some("other"));
    assert!(*include);
}

#[tokio::test]
async fn invalid_payloads_are_counted_and_the_worker_goes_on() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .payload_limits(PayloadLimits {
                max_bytes: 64,
                max_depth: 4,
            })
            .subscriber(recorder(Subscriber::channels(["c"]), "h", &log)),
    )
    .await
    .unwrap();
    let d = app.publish_raw("c", "not json {").await;
    assert!(d.runs.is_empty());
    assert!(d.invalid[0].contains("not JSON"), "{:?}", d.invalid);
    let d = app
        .publish_raw("c", format!("{{\"pad\":\"{}\"}}", "x".repeat(100)))
        .await;
    assert!(
        d.invalid[0].contains("larger than the limit of 64 bytes"),
        "{:?}",
        d.invalid
    );
    let d = app.publish_raw("c", "[[[[[[1]]]]]]").await;
    assert!(
        d.invalid[0].contains("deeper than the limit of 4"),
        "{:?}",
        d.invalid
    );
    // JSON that is not an object (even `null`) is a valid payload.
    assert_eq!(app.publish_raw("c", "null").await.handlers(), ["h"]);
    assert_eq!(app.publish_raw("c", "{}").await.handlers(), ["h"]);
    assert_eq!(app.stats().invalid_payloads, 3);
}

#[derive(Debug, Deserialize, PartialEq)]
struct Job {
    id: u64,
}

#[tokio::test]
async fn message_type_rejection_skips_only_that_handler() {
    let jobs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = jobs.clone();
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(
                Subscriber::channels(["jobs"])
                    .priority(1)
                    .name("typed")
                    .handle(move |Message(job): Message<Job>| {
                        sink.lock().unwrap().push(job.id);
                    }),
            )
            .subscriber(recorder(Subscriber::channels(["jobs"]), "untyped", &log)),
    )
    .await
    .unwrap();
    let d = app.publish("jobs", &json!({"id": 7})).await.unwrap();
    assert_eq!(d.outcome("typed"), Some(&Outcome::Completed));
    let d = app.publish("jobs", &json!({"id": "seven"})).await.unwrap();
    match d.outcome("typed") {
        Some(Outcome::Rejected(reason)) => {
            assert!(reason.contains("does not deserialize into"), "{reason}");
            assert!(reason.contains("Job"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(d.outcome("untyped"), Some(&Outcome::Completed));
    assert_eq!(*jobs.lock().unwrap(), [7]);
    assert_eq!(app.stats().handler_rejections, 1);
}

#[derive(Clone)]
struct Db;

#[test]
fn missing_state_fails_build() {
    let err = base()
        .subscriber(
            Subscriber::channels(["c"])
                .name("needs_db")
                .handle(|_: State<Db>| {}),
        )
        .build()
        .unwrap_err();
    match &err {
        Error::Build(BuildError::MissingState {
            handler, type_name, ..
        }) => {
            assert_eq!(handler, "needs_db");
            assert!(type_name.ends_with("Db"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("add `.state(value)`"));
    // With the state, it builds.
    base()
        .state(Db)
        .subscriber(
            Subscriber::channels(["c"])
                .name("needs_db")
                .handle(|_: State<Db>| {}),
        )
        .build()
        .unwrap();
}

#[test]
fn duplicate_names_fail_build() {
    let err = base()
        .subscriber(Subscriber::channels(["a"]).name("same").handle(|| {}))
        .subscriber(Subscriber::channels(["b"]).name("same").handle(|| {}))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Build(BuildError::DuplicateName { ref name, .. }) if name == "same")
    );
}

#[test]
fn invalid_inline_matchers_fail_build() {
    for (matcher, needle) in [
        (Matcher::channel("has space"), "space"),
        (Matcher::channel(""), "empty"),
        (Matcher::regex("("), "invalid regex"),
        (Matcher::pattern("a[b"), "never closed"),
    ] {
        let err = base()
            .subscriber(Subscriber::matching([matcher]).name("bad").handle(|| {}))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`bad`") && text.contains(needle), "{text}");
    }
    let err = base()
        .subscriber(
            Subscriber::channels(Vec::<String>::new())
                .name("none")
                .handle(|| {}),
        )
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Build(BuildError::NoMatchers { .. })));
}

#[tokio::test]
async fn same_channel_order_is_kept_under_concurrency() {
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let sink = seen.clone();
    let app = TestApp::start(
        base().max_concurrent_channels(4).subscriber(
            Subscriber::matching([Matcher::pattern("lane:*")])
                .name("ordered")
                .handle(move |channel: Channel, Message(m): Message| {
                    let sink = sink.clone();
                    async move {
                        let n = m["n"].as_u64().unwrap();
                        // Uneven work so that channels interleave.
                        if n % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                        tokio::time::sleep(Duration::from_micros(100 * (n % 4))).await;
                        sink.lock().unwrap().push((channel.to_string(), n));
                    }
                }),
        ),
    )
    .await
    .unwrap();
    let publisher = switchboard::testing::TestApp::bus(&app);
    for n in 0..200u64 {
        let channel = format!("lane:{}", n % 5);
        publisher.publish_now(
            &channel,
            serde_json::to_vec(&json!({"n": n})).unwrap().into(),
        );
    }
    let d = app.settle().await;
    assert_eq!(d.runs.len(), 200);
    let seen = seen.lock().unwrap();
    for lane in 0..5 {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(c, _)| *c == format!("lane:{lane}"))
            .map(|(_, n)| *n)
            .collect();
        let expected: Vec<u64> = (0..200).filter(|n| n % 5 == lane).collect();
        assert_eq!(order, expected, "lane {lane}");
    }
    // Channels did run concurrently: the global order is not the publish order.
    let global: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_ne!(global, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn predicates_that_panic_count_as_no_match() {
    let log = Log::default();
    let app = TestApp::start(
        base()
            .subscriber(recorder(
                Subscriber::when(|m| m.message()["boom"].as_bool().expect("boom must be a bool")),
                "fragile",
                &log,
            ))
            .subscriber(recorder(Subscriber::channels(["c"]), "steady", &log)),
    )
    .await
    .unwrap();
    let d = app.publish("c", &json!({"boom": "no"})).await.unwrap();
    assert_eq!(d.handlers(), ["steady"]);
    let d = app.publish("c", &json!({"boom": true})).await.unwrap();
    assert_eq!(d.handlers(), ["fragile", "steady"]);
    assert_eq!(app.stats().predicate_panics, 1);
}

#[cfg(feature = "server")]
#[tokio::test]
async fn handlers_publish_through_the_publisher_and_reach_clients() {
    let app = TestApp::start(
        base()
            .subscriber(Subscriber::channels(["orders"]).name("forward").handle(
                |Message(m): Message, publisher: Publisher| async move {
                    publisher.publish_including_sender("orders:seen", &m).await
                },
            ))
            .subscriber(Subscriber::channels(["orders:seen"]).name("notify").handle(
                |Message(m): Message, ws: WebSocket| {
                    ws.broadcast_to_all_clients(Outgoing::new("orders", "seen", m));
                },
            )),
    )
    .await
    .unwrap();
    let mut client = app.connect_client();
    let d = app.publish("orders", &json!({"id": 1})).await.unwrap();
    assert_eq!(d.handlers(), ["forward", "notify"]);
    let published = app.published();
    assert_eq!(published[0].channel, "orders:seen");
    assert_eq!(published[0].message["workerId"], app.worker_id());
    assert_eq!(published[0].message["includeSender"], true);
    let frame = client.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        frame,
        json!({"type": "orders", "action": "seen", "data": {"id": 1}})
    );
}

#[tokio::test]
async fn full_dispatch_queue_drops_and_counts() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let app = TestApp::start(
        base()
            .queue_capacity(4)
            .max_concurrent_channels(1)
            .subscriber(Subscriber::channels(["c"]).name("blocked").handle(move || {
                let mut rx = release_rx.clone();
                async move {
                    let _ = rx.wait_for(|released| *released).await;
                }
            })),
    )
    .await
    .unwrap();
    let bus = app.bus();
    for n in 0..100 {
        bus.publish_now("c", serde_json::to_vec(&json!({"n": n})).unwrap().into());
    }
    let dropped = app.stats().dropped_queue_full;
    assert!(dropped > 0, "expected drops, stats: {:?}", app.stats());
    release_tx.send(true).unwrap();
    let d = app.settle().await;
    assert_eq!(d.runs.len() as u64 + dropped, 100);
}

#[test]
fn publish_refuses_bad_input() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = base().build().unwrap().start().await.unwrap();
        let p = running.publisher();
        assert!(p.publish("", &json!({})).await.is_err());
        assert!(p.publish("a b", &json!({})).await.is_err());
        let err = p.publish("c", &json!([1, 2])).await.unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
        p.publish_raw("c", "[1,2]").await.unwrap();
    });
}
