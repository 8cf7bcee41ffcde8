//! Dispatch benchmarks: routing and dispatch cost per message against a naive scan of every
//! handler (what the reference framework does), the same with metrics and tracing spans on,
//! registry build time, and envelope parsing.
//!
//! Run with `cargo bench --bench dispatch`. Numbers and their reading are in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use switchboard::{MatchContext, Matcher, Subscriber, Switchboard};

const CHANNELS: usize = 1_000;
const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// Predicate handlers in the mix. A predicate sees the payload, so it runs for every message: its
/// cost is per registered predicate (see the `route_predicates` group), not per matching handler.
const PREDICATES: usize = 10;

/// The handler mix for `n` handlers: one glob that every message matches, then mostly exact
/// channels (4% globs, 4% regexes) and up to `PREDICATES` predicates, which a message matches
/// rarely.
#[derive(Clone)]
enum Spec {
    Exact(String),
    Glob(String),
    Regex(String),
    Predicate(String),
}

fn mix(n: usize) -> Vec<(Spec, i32)> {
    mix_with(n, PREDICATES)
}

fn mix_with(n: usize, predicates: usize) -> Vec<(Spec, i32)> {
    let mut out = vec![(Spec::Glob("ch:*".to_owned()), 0)];
    let mut predicate_count = 0;
    for i in 1..n {
        let spec = match i % 50 {
            0 | 1 => Spec::Glob(format!("g{i}:*")),
            2 | 3 => Spec::Regex(format!("^r{i}:")),
            4 | 5 if predicate_count < predicates => {
                predicate_count += 1;
                Spec::Predicate(format!("p{i}"))
            }
            _ => Spec::Exact(format!("ch:{i}")),
        };
        out.push((spec, (i % 7) as i32));
    }
    out
}

fn build(n: usize) -> Switchboard {
    build_mix(mix(n))
}

fn build_mix(mix: Vec<(Spec, i32)>) -> Switchboard {
    builder_for(mix).build().expect("valid handlers")
}

/// A builder holding the mix as inline subscribers (what a user's code does before `build()`),
/// with empty `async` bodies.
fn builder_for(mix: Vec<(Spec, i32)>) -> switchboard::Builder {
    builder_with(mix, false)
}

/// The same, with empty plain `fn` bodies when `plain` (each run goes to the blocking pool).
fn builder_with(mix: Vec<(Spec, i32)>, plain: bool) -> switchboard::Builder {
    let mut builder = Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false);
    for (i, (spec, priority)) in mix.into_iter().enumerate() {
        let matcher = match spec {
            Spec::Exact(c) => Matcher::channel(c),
            Spec::Glob(g) => Matcher::pattern(g),
            Spec::Regex(r) => Matcher::regex(r),
            Spec::Predicate(kind) => {
                Matcher::predicate(move |m: &MatchContext<'_>| m.message()["kind"] == kind.as_str())
            }
        };
        let subscriber = Subscriber::matching([matcher])
            .name(format!("h{i}"))
            .priority(priority);
        builder = builder.subscriber(if plain {
            subscriber.handle(|| {})
        } else {
            subscriber.handle(|| async {})
        });
    }
    builder
}

/// The naive router: every handler's matchers tested for every message, then a priority sort.
struct Naive {
    handlers: Vec<NaiveHandler>,
}

type NaiveHandler = (Vec<NaiveMatcher>, i32, fn());

enum NaiveMatcher {
    Exact(String),
    Glob(String),
    Regex(regex::Regex),
    Predicate(String),
}

impl Naive {
    fn new(n: usize) -> Self {
        fn noop() {}
        let handlers = mix(n)
            .into_iter()
            .map(|(spec, priority)| {
                let m = match spec {
                    Spec::Exact(c) => NaiveMatcher::Exact(c),
                    Spec::Glob(g) => NaiveMatcher::Glob(g),
                    Spec::Regex(r) => NaiveMatcher::Regex(regex::Regex::new(&r).unwrap()),
                    Spec::Predicate(k) => NaiveMatcher::Predicate(k),
                };
                (vec![m], priority, noop as fn())
            })
            .collect();
        Self { handlers }
    }

    fn route(&self, channel: &str, message: &Value) -> Vec<(i32, fn())> {
        let mut matched: Vec<(i32, fn())> = self
            .handlers
            .iter()
            .filter(|(matchers, _, _)| {
                matchers.iter().any(|m| match m {
                    NaiveMatcher::Exact(c) => c == channel,
                    NaiveMatcher::Glob(g) => subscriber_patterns::glob::matches(g, channel),
                    NaiveMatcher::Regex(r) => r.is_match(channel),
                    NaiveMatcher::Predicate(k) => message["kind"] == k.as_str(),
                })
            })
            .map(|(_, p, f)| (*p, *f))
            .collect();
        matched.sort_by_key(|m| std::cmp::Reverse(m.0));
        matched
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) -> usize {
        let message: Value = serde_json::from_slice(payload).unwrap();
        let matched = self.route(channel, &message);
        for (_, f) in &matched {
            f();
        }
        matched.len()
    }
}

fn channels() -> Vec<String> {
    (0..CHANNELS).map(|k| format!("ch:{k}")).collect()
}

fn routing(c: &mut Criterion) {
    let channels = channels();
    let message = json!({"kind": "view", "n": 1});
    let mut group = c.benchmark_group("route");
    for n in SIZES {
        let app = build(n);
        let naive = Naive::new(n);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("switchboard", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % CHANNELS;
                black_box(app.__route_count(&channels[i], &message))
            })
        });
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("naive_scan", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % CHANNELS;
                black_box(naive.route(&channels[i], &message).len())
            })
        });
    }
    group.finish();
}

fn predicates(c: &mut Criterion) {
    let channels = channels();
    let message = json!({"kind": "view", "n": 1});
    let mut group = c.benchmark_group("route_predicates");
    for p in [0, 10, 100] {
        let app = build_mix(mix_with(1_000, p));
        let mut i = 0;
        group.bench_with_input(
            BenchmarkId::new("switchboard_1000_handlers", p),
            &p,
            |b, _| {
                b.iter(|| {
                    i = (i + 1) % CHANNELS;
                    black_box(app.__route_count(&channels[i], &message))
                })
            },
        );
    }
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channels = channels();
    let payload = Bytes::from_static(br#"{"kind":"view","n":1,"workerId":"other"}"#);
    let mut group = c.benchmark_group("dispatch");
    for n in SIZES {
        let app = rt.block_on(async { build(n) });
        let naive = Naive::new(n);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("switchboard", n), &n, |b, _| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % CHANNELS;
                let channel = &channels[i];
                let payload = payload.clone();
                let app = &app;
                async move { black_box(app.__dispatch_inline(channel, payload).await) }
            })
        });
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("naive_scan", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % CHANNELS;
                black_box(naive.dispatch(&channels[i], &payload))
            })
        });
    }
    group.finish();
}

/// The `dispatch` path with what production adds: metric handles bound to a Prometheus recorder
/// (`metrics`), then also an INFO-level `fmt` subscriber that formats every span and writes to a
/// sink (`metrics_spans`). The `dispatch` group above has neither: no recorder (handles are
/// no-ops) and no subscriber (spans are disabled).
fn dispatch_observed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channels = channels();
    let payload = Bytes::from_static(br#"{"kind":"view","n":1,"workerId":"other"}"#);
    // A recorder of its own (not the global one), so the other groups stay unobserved.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut group = c.benchmark_group("dispatch_observed");
    for n in [10, 1_000] {
        // Handles are bound to the recorder current when they are resolved: at `build()` for the
        // handlers, on a channel's first message for the channel.
        let app = metrics::with_local_recorder(&recorder, || {
            let app = build(n);
            for channel in &channels {
                app.__route_count(channel, &json!({}));
            }
            app
        });
        for spans in [false, true] {
            let label = if spans { "metrics_spans" } else { "metrics" };
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .with_max_level(if spans {
                    tracing::Level::INFO
                } else {
                    tracing::Level::ERROR
                })
                .finish();
            let mut i = 0;
            tracing::subscriber::with_default(subscriber, || {
                group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                    b.to_async(&rt).iter(|| {
                        i = (i + 1) % CHANNELS;
                        let channel = &channels[i];
                        let payload = payload.clone();
                        let app = &app;
                        async move { black_box(app.__dispatch_inline(channel, payload).await) }
                    })
                });
            });
        }
    }
    group.finish();
    recorder.handle().run_upkeep();
}

/// Dispatch at 1,000 handlers with 0, 1 and 3 pass-through tower layers on every handler (the
/// framework's cost of a layer: erasure, a clone of the service, `poll_ready`, one boxed future),
/// then one real layer (tower's `ConcurrencyLimitLayer`), then a plain `fn` body instead of an
/// `async` one (the hand-over to the blocking pool).
fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channels = channels();
    let payload = Bytes::from_static(br#"{"kind":"view","n":1,"workerId":"other"}"#);
    let mut group = c.benchmark_group("dispatch_layers");
    let pass = || switchboard::tower::util::MapRequestLayer::new(|cx: switchboard::Context| cx);
    type Configure = Box<dyn Fn(switchboard::Builder) -> switchboard::Builder>;
    let cases: Vec<(&str, Configure)> = vec![
        ("0_layers", Box::new(|b| b)),
        ("1_layer", Box::new(move |b| b.layer(pass()))),
        (
            "3_layers",
            Box::new(move |b| b.layer(pass()).layer(pass()).layer(pass())),
        ),
        (
            "concurrency_limit",
            Box::new(|b| b.layer(switchboard::tower::limit::ConcurrencyLimitLayer::new(1024))),
        ),
    ];
    for (label, configure) in cases {
        let app = rt.block_on(async { configure(builder_for(mix(1_000))).build().unwrap() });
        let mut i = 0;
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % CHANNELS;
                let channel = &channels[i];
                let payload = payload.clone();
                let app = &app;
                async move { black_box(app.__dispatch_inline(channel, payload).await) }
            })
        });
    }
    // The same 1,000 handlers with plain `fn` bodies: each run goes to the blocking pool.
    let app = rt.block_on(async { builder_with(mix(1_000), true).build().unwrap() });
    let mut i = 0;
    group.bench_function("plain_fn_bodies", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % CHANNELS;
            let channel = &channels[i];
            let payload = payload.clone();
            let app = &app;
            async move { black_box(app.__dispatch_inline(channel, payload).await) }
        })
    });
    group.finish();
}

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_build");
    group.sample_size(10);
    // Only `build()` is timed: collect, validate, sort, index and plan subscriptions. Making the
    // 10,000 closures beforehand and dropping the result afterwards are not.
    group.bench_function("10000_handlers", |b| {
        b.iter_batched(
            || builder_for(mix(10_000)),
            |builder| builder.build().expect("valid handlers"),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope_parse");
    for (label, size) in [("100B", 100), ("10KiB", 10 * 1024), ("1MiB", 1024 * 1024)] {
        let pad = "x".repeat(size - 60);
        let payload =
            format!(r#"{{"workerId":"w1","includeSender":true,"kind":"view","pad":"{pad}"}}"#);
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(label, |b| {
            b.iter(|| black_box(switchboard::__bench::parse_envelope(payload.as_bytes())))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = routing, predicates, dispatch, dispatch_observed, layers, registry, envelope
}
criterion_main!(benches);
