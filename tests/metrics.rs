//! The Prometheus endpoint: the exact values of the runtime's metrics after a known workload, read
//! over HTTP as Prometheus scrapes them. A test binary of its own, since the recorder is global to
//! the process (the tests here share it, so each asserts only series no other test touches).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::prelude::*;
use switchboard::{DisconnectReason, Error, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{base, next_disconnect, observed, Server, ServerExt, DEADLINE};

/// A scrape: the status line, the headers (lower-case names) and the samples by series.
struct Scrape {
    status: String,
    headers: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    /// The value of one series, written as Prometheus shows it: `name{label="value"}`.
    #[track_caller]
    fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in the scrape:\n{}", self.text),
        }
    }
}

/// GETs `path` with a raw HTTP/1.1 request and parses the text format.
async fn scrape(addr: SocketAddr, path: &str) -> Scrape {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("no HTTP response within the deadline");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a head");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let samples = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line is `series value`");
            (series.to_owned(), value.parse().expect("a sample value"))
        })
        .collect();
    Scrape {
        status,
        headers,
        samples,
        text: body.to_owned(),
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: u64,
}

#[tokio::test]
async fn prometheus_endpoint_counts_messages_handlers_and_clients() {
    let (builder, mut disconnects) = observed(
        base()
            .prometheus("/metrics")
            .subscriber(
                Subscriber::channels(["orders"])
                    .name("orders_ok")
                    .priority(10)
                    .handle(|| {}),
            )
            .subscriber(
                Subscriber::channels(["orders"])
                    .name("orders_fail")
                    .handle(|| -> HandlerResult { Err("the order service is down".into()) }),
            )
            .subscriber(
                Subscriber::channels(["orders"])
                    .name("orders_typed")
                    .priority(-1)
                    .handle(|Message(_order): Message<Order>| {}),
            )
            .subscriber(
                Subscriber::matching([Matcher::pattern("analytics:*")])
                    .name("analytics_panics")
                    .handle(|Message(m): Message| {
                        if m["panic"] == true {
                            panic!("asked to panic");
                        }
                    }),
            )
            .subscriber(
                Subscriber::matching([Matcher::pattern("analytics:user-2*")])
                    .name("analytics_vip")
                    .priority(5)
                    .handle(|| {}),
            )
            .subscriber(
                Subscriber::matching([Matcher::regex("^audit:")])
                    .name("audit_slow")
                    .timeout(Duration::from_millis(50))
                    .handle(|| async { tokio::time::sleep(Duration::from_secs(60)).await }),
            )
            .subscriber(
                Subscriber::channels(["*"])
                    .name("tap")
                    .priority(-100)
                    .handle(|| {}),
            ),
    );
    let server = Server::start(builder).await;
    let publisher = server.running.publisher();
    for message in [json!({"id": 1}), json!({"id": "not a number"})] {
        publisher
            .publish_including_sender("orders", &message)
            .await
            .unwrap();
    }
    publisher.publish_raw("orders", "not json").await.unwrap();
    for (channel, panic) in [("analytics:user-1", false), ("analytics:user-2", true)] {
        publisher
            .publish_including_sender(channel, &json!({ "panic": panic }))
            .await
            .unwrap();
    }
    publisher
        .publish_including_sender("audit:login", &json!({}))
        .await
        .unwrap();
    publisher
        .publish_including_sender("misc-1", &json!({}))
        .await
        .unwrap();
    server.running.wait_idle().await;

    // A client connects (this worker publishes `clientConnected` without includeSender, so it
    // skips it) and sends one frame that is not JSON (an error frame comes back).
    let mut client = server.client().await;
    client.send_text("not json").await;
    let error = client.next_json().await;
    assert_eq!(error["type"], "error");
    server.running.wait_idle().await;

    let first = scrape(server.addr, "/metrics").await;
    assert_eq!(first.status, "HTTP/1.1 200 OK");
    assert_eq!(
        first.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let expected = [
        // A named channel keeps its name, whatever its payload.
        (
            r#"switchboard_messages_received_total{channel="orders"}"#,
            3.0,
        ),
        // Others are labelled by the glob or regex of the highest-priority handler they match,
        // else by "*".
        (
            r#"switchboard_messages_received_total{channel="analytics:*"}"#,
            1.0,
        ),
        (
            r#"switchboard_messages_received_total{channel="analytics:user-2*"}"#,
            1.0,
        ),
        (
            r#"switchboard_messages_received_total{channel="regex:^audit:"}"#,
            1.0,
        ),
        (r#"switchboard_messages_received_total{channel="*"}"#, 1.0),
        // Framework channels keep their name.
        (
            r#"switchboard_messages_received_total{channel="clientConnected"}"#,
            1.0,
        ),
        (
            r#"switchboard_messages_dropped_total{reason="invalid_payload"}"#,
            1.0,
        ),
        (
            r#"switchboard_messages_dropped_total{reason="queue_full"}"#,
            0.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="orders_ok"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="orders_fail"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_errors_total{handler="orders_fail"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_errors_total{handler="orders_ok"}"#,
            0.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="orders_typed"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_rejections_total{handler="orders_typed"}"#,
            1.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="analytics_panics"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_panics_total{handler="analytics_panics"}"#,
            1.0,
        ),
        (
            r#"switchboard_handler_errors_total{handler="analytics_panics"}"#,
            0.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="analytics_vip"}"#,
            1.0,
        ),
        (
            r#"switchboard_handler_runs_total{handler="audit_slow"}"#,
            1.0,
        ),
        (
            r#"switchboard_handler_timeouts_total{handler="audit_slow"}"#,
            1.0,
        ),
        // The tap sees every routed message: 2 orders, 2 analytics, 1 audit, 1 misc.
        (r#"switchboard_handler_runs_total{handler="tap"}"#, 6.0),
        (
            r#"switchboard_handler_duration_seconds_count{handler="orders_ok"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_duration_seconds_count{handler="tap"}"#,
            6.0,
        ),
        (
            r#"switchboard_handler_duration_seconds_bucket{handler="tap",le="+Inf"}"#,
            6.0,
        ),
        (r#"switchboard_predicate_panics_total{handler="tap"}"#, 0.0),
        ("switchboard_broker_reconnects_total", 0.0),
        ("switchboard_clients_connected", 1.0),
        ("switchboard_client_connections_total", 1.0),
        ("switchboard_client_messages_total", 1.0),
        ("switchboard_client_errors_total", 1.0),
        ("switchboard_slow_consumer_disconnects_total", 0.0),
        ("switchboard_auth_rejections_total", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(first.get(series), value, "{series}");
    }
    // Skipped as its own: `clientConnected`. This worker's presence feed comes back to it too
    // (received: at least the client's connect), and is dropped without a count.
    let own_feed =
        first.get(r#"switchboard_messages_received_total{channel="switchboard.presence"}"#);
    assert!(
        own_feed >= 1.0,
        "the connect is written to the presence feed"
    );
    assert_eq!(
        first.get(r#"switchboard_messages_skipped_total{reason="own_message"}"#),
        1.0
    );
    // Every dispatched message is timed: 2 orders (the invalid one is not dispatched),
    // 2 analytics, 1 audit, 1 misc, and `clientConnected` is skipped before dispatch.
    assert_eq!(
        first.get("switchboard_dispatch_duration_seconds_count"),
        6.0
    );
    // The timed-out handler took its 50 ms: its run is in the histogram's sum.
    assert!(first.get(r#"switchboard_handler_duration_seconds_sum{handler="audit_slow"}"#) >= 0.05);
    assert!(first
        .text
        .contains("# HELP switchboard_handler_runs_total Subscriber handler runs started"));
    assert!(first
        .text
        .contains("# TYPE switchboard_dispatch_duration_seconds histogram"));

    // The client leaves: the gauge goes down and the disconnection is counted by reason.
    client.close().await;
    let (_, reason) = next_disconnect(&mut disconnects).await;
    assert!(matches!(reason, DisconnectReason::ClientClosed(_)));
    server.running.wait_idle().await;
    let second = scrape(server.addr, "/metrics").await;
    assert_eq!(second.get("switchboard_clients_connected"), 0.0);
    assert_eq!(
        second.get(r#"switchboard_client_disconnections_total{reason="client_closed"}"#),
        1.0
    );
    assert_eq!(
        second.get(r#"switchboard_client_disconnections_total{reason="slow_consumer"}"#),
        0.0
    );
    assert_eq!(
        second.get(r#"switchboard_messages_received_total{channel="clientDisconnected"}"#),
        1.0
    );
    assert_eq!(
        second.get(r#"switchboard_messages_skipped_total{reason="own_message"}"#),
        2.0
    );
    // Any other path is still 404.
    assert_eq!(
        scrape_status(server.addr, "/metrics/other").await,
        "HTTP/1.1 404 Not Found"
    );
    server.running.shutdown().await;
}

async fn scrape_status(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(DEADLINE, exchange).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

/// A channel that no pattern, regex or `"*"` routes is labelled `other`, so one-off channel names
/// cannot grow the number of series.
#[tokio::test]
async fn unnamed_unrouted_channels_share_the_other_label() {
    // A regex without a literal prefix subscribes to every channel.
    let server = Server::start(
        base()
            .prometheus("/metrics")
            .framework_channels(false)
            .listen(["lonely"])
            .subscriber(
                Subscriber::matching([Matcher::regex("-suffix-only$")])
                    .name("suffix_only")
                    .handle(|| {}),
            ),
    )
    .await;
    let publisher = server.running.publisher();
    for i in 0..5 {
        publisher
            .publish_including_sender(&format!("one-off-{i}"), &json!({}))
            .await
            .unwrap();
    }
    publisher
        .publish_including_sender("lonely", &json!({}))
        .await
        .unwrap();
    server.running.wait_idle().await;
    let other = scrape(server.addr, "/metrics").await;
    assert_eq!(
        other.get(r#"switchboard_messages_received_total{channel="other"}"#),
        5.0
    );
    // A `listen` channel is named by the application: it keeps its name.
    assert_eq!(
        other.get(r#"switchboard_messages_received_total{channel="lonely"}"#),
        1.0
    );
    assert_eq!(
        other.get(r#"switchboard_messages_skipped_total{reason="no_handler"}"#),
        6.0
    );
    assert_eq!(
        other.get(r#"switchboard_handler_runs_total{handler="suffix_only"}"#),
        0.0
    );
    assert!(!other.text.contains("one-off-"));
    server.running.shutdown().await;
}

#[test]
fn a_bad_metrics_path_fails_the_build() {
    for (path, reason) in [
        ("metrics", "must start with `/`"),
        ("/ws", "WebSocket"),
        ("/{id}", "'{' is not allowed"),
    ] {
        let err = base().prometheus(path).build().unwrap_err();
        match &err {
            Error::Build(e) if e.plugin_error::<ServerError>().is_some() => {
                let Some(ServerError::InvalidMetricsPath { path: p, reason: r }) = e.plugin_error()
                else {
                    panic!("expected InvalidMetricsPath for {path}, got {err:?}");
                };
                assert_eq!(p, path);
                assert!(r.contains(reason), "{r}");
            }
            other => panic!("expected InvalidMetricsPath for {path}, got {other:?}"),
        }
    }
}
