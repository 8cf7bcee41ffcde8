//! Tracing spans around messages and handler runs, and metrics emitted into a recorder the
//! application installed itself. A test binary of its own, since that recorder is global to the
//! process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use switchboard::prelude::*;
use switchboard::testing::{Outcome, TestApp};
use switchboard::{Error, ServerError};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The fields of a span or an event, as text.
#[derive(Debug, Clone, Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// One event: its fields, and the spans it was emitted in (outermost first).
#[derive(Debug, Clone)]
struct Captured {
    fields: Fields,
    spans: Vec<(String, Fields)>,
}

impl Captured {
    fn message(&self) -> &str {
        self.fields.0.get("message").map_or("", String::as_str)
    }
}

/// A layer that records every event with the fields of its spans.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S> Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        ctx.span(id)
            .expect("a new span is registered")
            .extensions_mut()
            .insert(fields);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let fields = span.extensions().get::<Fields>().cloned();
                        (span.name().to_owned(), fields.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push(Captured { fields, spans });
    }
}

/// The capture, installed as the global subscriber of this test binary by whichever test asks
/// first. Every test asks before it builds an application: a thread-local subscriber
/// (`set_default`) would race with callsites first hit by a test on another thread, which can
/// cache them as disabled.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(capture.clone()),
        )
        .expect("the only subscriber of this test binary");
        capture
    })
}

fn spans_of<'a>(events: &'a [Captured], message: &str) -> &'a [(String, Fields)] {
    let event = events
        .iter()
        .find(|e| e.message() == message)
        .unwrap_or_else(|| panic!("no event {message:?} among {events:#?}"));
    &event.spans
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Whatever a handler logs, `async` or plain, carries the message's span (channel, worker id,
/// payload size) and the handler's span (handler, channel, priority).
#[tokio::test]
async fn logs_inside_handlers_carry_the_message_and_handler_spans() {
    let capture = capture();
    let app = TestApp::start(
        Switchboard::builder()
            .without_linked_handlers()
            .worker_id("spans-worker")
            .subscriber(
                Subscriber::channels(["traced"])
                    .name("traced_async")
                    .priority(7)
                    .handle(|Message(m): Message| async move {
                        tokio::task::yield_now().await;
                        tracing::info!(order = %m["id"], "inside the async handler");
                    }),
            )
            .subscriber(
                Subscriber::matching([Matcher::pattern("trac*")])
                    .name("traced_plain")
                    .priority(-3)
                    .handle(|| tracing::info!("inside the plain handler")),
            ),
    )
    .await
    .unwrap();
    // Raw, so the size on the wire is known: 9 bytes.
    let d = app.publish_raw("traced", r#"{"id":42}"#).await;
    assert_eq!(d.handlers(), ["traced_async", "traced_plain"]);
    assert!(d.runs.iter().all(|r| r.outcome == Outcome::Completed));

    let events = capture.0.lock().unwrap().clone();
    let message_span = (
        "switchboard.message".to_owned(),
        fields(&[
            ("channel", "traced"),
            ("worker_id", "spans-worker"),
            ("size", "9"),
        ]),
    );
    for (message, handler, priority) in [
        ("inside the async handler", "traced_async", "7"),
        ("inside the plain handler", "traced_plain", "-3"),
    ] {
        let spans: Vec<(String, BTreeMap<String, String>)> = spans_of(&events, message)
            .iter()
            .map(|(name, f)| (name.clone(), f.0.clone()))
            .collect();
        assert_eq!(
            spans,
            [
                message_span.clone(),
                (
                    "switchboard.handler".to_owned(),
                    fields(&[
                        ("handler", handler),
                        ("channel", "traced"),
                        ("priority", priority)
                    ]),
                ),
            ],
            "{message}"
        );
    }
    let async_event = events
        .iter()
        .find(|e| e.message() == "inside the async handler")
        .unwrap();
    assert_eq!(async_event.fields.0["order"], "42");
}

/// Without `prometheus(...)`, the runtime emits into the recorder the application installed
/// before `build()`; with it, `build()` refuses to replace that recorder.
#[tokio::test]
async fn metrics_go_to_an_application_installed_recorder() {
    capture();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder of this process");

    let app = TestApp::start(
        Switchboard::builder().without_linked_handlers().subscriber(
            Subscriber::channels(["own-recorder"])
                .name("own_recorder_handler")
                .handle(|| -> HandlerResult { Err("no".into()) }),
        ),
    )
    .await
    .unwrap();
    app.publish("own-recorder", &json!({})).await.unwrap();
    app.publish("own-recorder", &json!({})).await.unwrap();
    let text = handle.render();
    for line in [
        r#"switchboard_messages_received_total{channel="own-recorder"} 2"#,
        r#"switchboard_handler_runs_total{handler="own_recorder_handler"} 2"#,
        r#"switchboard_handler_errors_total{handler="own_recorder_handler"} 2"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }

    let err = Switchboard::builder()
        .without_linked_handlers()
        .prometheus("/metrics")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Build(e) if matches!(e.plugin_error(), Some(ServerError::MetricsRecorderInstalled))
        ),
        "{err:?}"
    );
}
