//! `rediss://` against real TLS-only `redis-server` processes (`--port 0 --tls-port P`) whose
//! certificate a private CA made at test time signed: one Redis (`RedisBroker`) and a Redis
//! Cluster of three primaries (`RedisClusterBroker`, `--tls-cluster yes`). Workers trust the CA
//! with `tls_root_certificates`; a worker that trusts another CA fails with an error that says
//! why.
//!
//! Where `redis-server` is missing the tests say SKIPPED, unless `SWITCHBOARD_REQUIRE_CLUSTER=1`
//! (CI), where that is a failure.
#![cfg(feature = "tls")]

#[path = "support/redis_tls.rs"]
mod redis_tls;

use std::collections::BTreeSet;
use std::time::Duration;

use redis_tls::{unrelated_ca_pem, TlsCluster, TlsRedis};
use serde_json::{json, Value};
use switchboard::broker::{RedisBroker, RedisClusterBroker, Retention};
use switchboard::prelude::*;
use switchboard::{Broker, BrokerError, Builder, Error, Running};
use tokio::sync::mpsc;

/// Longest wait for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn app(broker: impl Broker) -> Builder {
    Switchboard::builder()
        .without_linked_handlers()
        .framework_channels(false)
        .broker(broker)
}

async fn start(builder: Builder) -> Running {
    builder
        .build()
        .expect("valid handlers")
        .start()
        .await
        .expect("subscribed over TLS")
}

/// A worker that sends what its handler sees on `channels` (channel, message).
fn recording(
    builder: Builder,
    channels: Vec<String>,
    tx: &mpsc::UnboundedSender<(String, Value)>,
) -> Builder {
    let tx = tx.clone();
    builder.subscriber(Subscriber::channels(channels).name("record").handle(
        move |channel: Channel, Message(message): Message| {
            let _ = tx.send((channel.to_string(), message));
        },
    ))
}

/// A run-once handler on `jobs` (a consumer group on the channel's stream, on a connection of
/// its own) that sends what it handles.
fn run_once(builder: Builder, tx: &mpsc::UnboundedSender<(String, Value)>) -> Builder {
    let tx = tx.clone();
    builder.subscriber(Subscriber::channels(["jobs"]).name("charge").once().handle(
        move |channel: Channel, Message(message): Message| {
            let _ = tx.send((channel.to_string(), message));
        },
    ))
}

/// Publishes 20 jobs and waits until the run-once handler has handled each of them.
async fn jobs_are_handled(
    publisher: &switchboard::Publisher,
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
) {
    for n in 0..20 {
        publisher
            .publish("jobs", &json!({ "n": n }))
            .await
            .expect("a job published over TLS");
    }
    let mut handled = BTreeSet::new();
    while handled.len() < 20 {
        let (channel, message) = recv(rx, "every job").await;
        assert_eq!(channel, "jobs");
        handled.insert(message["n"].as_u64().unwrap());
    }
}

/// Three applications on one Redis (or cluster): a worker recording `channels` and the durable
/// `ledger`, a run-once consumer of `jobs`, and a sender that publishes.
struct Apps {
    worker: Running,
    consumer: Running,
    sender: Running,
    seen: mpsc::UnboundedReceiver<(String, Value)>,
    jobs: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Apps {
    async fn start<B: Broker>(broker: impl Fn() -> B, mut channels: Vec<String>) -> Self {
        channels.push("ledger".into());
        let (tx, seen) = mpsc::unbounded_channel();
        let worker = start(recording(
            app(broker()).durable("ledger", Retention::default()),
            channels,
            &tx,
        ))
        .await;
        let (jobs_tx, jobs) = mpsc::unbounded_channel();
        let consumer = start(run_once(app(broker()), &jobs_tx)).await;
        let sender = start(
            app(broker())
                .durable("ledger", Retention::default())
                .durable("jobs", Retention::default()),
        )
        .await;
        Self {
            worker,
            consumer,
            sender,
            seen,
            jobs,
        }
    }

    /// A durable publish on `ledger` is delivered and read back from its stream, then 20 jobs
    /// are each handled once.
    async fn durable_messages_are_kept_and_jobs_run_once(&mut self) {
        let publisher = self.sender.publisher();
        let position = publisher
            .publish_durable("ledger", &json!({ "n": "durable" }))
            .await
            .expect("a durable publish over TLS")
            .expect("a durable channel has a position");
        let (channel, message) = recv(&mut self.seen, "the durable message").await;
        assert_eq!(
            (channel.as_str(), &message["n"]),
            ("ledger", &json!("durable"))
        );
        // The stream kept it: read back over TLS.
        let read = publisher
            .read_stream("ledger", 0, 10)
            .await
            .expect("a stream read over TLS");
        assert!(
            read.entries
                .iter()
                .any(|(offset, _)| *offset == position.offset),
            "the stream holds offset {}: {read:?}",
            position.offset
        );
        jobs_are_handled(&publisher, &mut self.jobs).await;
    }

    async fn shutdown(self) {
        self.worker.shutdown().await;
        self.consumer.shutdown().await;
        self.sender.shutdown().await;
    }
}

/// Publishes on every channel until each has been delivered (at-most-once meanwhile: what is
/// published before a partition is subscribed again is lost), within 20 s of `after`.
async fn every_channel_is_delivered(
    publisher: &switchboard::Publisher,
    channels: &[String],
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
    after: &str,
) {
    let since = std::time::Instant::now();
    let mut seen = BTreeSet::new();
    while seen.len() < channels.len() {
        assert!(
            since.elapsed() < 2 * WAIT,
            "{after}, {} of {} channels delivered",
            seen.len(),
            channels.len()
        );
        for channel in channels.iter().filter(|c| !seen.contains(*c)) {
            let _ = publisher.publish(channel, &json!({ "n": 0 })).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some((channel, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            seen.insert(channel);
        }
    }
    eprintln!(
        "{after}: every channel delivered within {:?}",
        since.elapsed()
    );
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, what: &str) -> (String, Value) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the handler is alive")
}

fn single(redis: &TlsRedis, namespace: &str) -> RedisBroker {
    RedisBroker::from_url(&redis.url())
        .unwrap()
        .tls_root_certificates(&redis.certificates.ca_pem)
        .expect("the CA's PEM")
        .namespace(namespace)
        .publish_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
}

fn on_cluster(cluster: &TlsCluster, namespace: &str) -> RedisClusterBroker {
    RedisClusterBroker::from_urls(cluster.urls())
        .unwrap()
        .tls_root_certificates(cluster.certificates.ca_pem.as_bytes())
        .expect("the CA's PEM")
        .namespace(namespace)
        .partitions(16)
        .publish_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(3))
}

/// A worker recording 64 channels (every one of 16 partitions), and a sender.
struct Watched {
    channels: Vec<String>,
    worker: Running,
    sender: Running,
    seen: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Watched {
    async fn start<B: Broker>(broker: impl Fn() -> B) -> Self {
        let channels: Vec<String> = (0..64).map(|i| format!("orders:{i}")).collect();
        let (tx, seen) = mpsc::unbounded_channel();
        let worker = start(recording(app(broker()), channels.clone(), &tx)).await;
        let sender = start(app(broker())).await;
        Self {
            channels,
            worker,
            sender,
            seen,
        }
    }

    /// See [`every_channel_is_delivered`].
    async fn every_channel_is_delivered(&mut self, after: &str) {
        let publisher = self.sender.publisher();
        every_channel_is_delivered(&publisher, &self.channels, &mut self.seen, after).await;
    }

    async fn shutdown(self) {
        self.worker.shutdown().await;
        self.sender.shutdown().await;
    }
}

/// A cluster broker that notices a lost node and retries quickly.
fn recovering(cluster: &TlsCluster, namespace: &str) -> RedisClusterBroker {
    on_cluster(cluster, namespace)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .ping_interval(Duration::from_millis(500))
}

/// The text of the broker error a worker on `broker` fails to start with; `what` names the
/// worker in the panic if it starts.
async fn start_error(broker: impl Broker, what: &str) -> String {
    let started = app(broker)
        .subscriber(
            Subscriber::channels(["orders"])
                .name("a")
                .handle(|| async {}),
        )
        .build()
        .unwrap()
        .start()
        .await;
    match started {
        Err(Error::Broker(error)) => error.to_string(),
        Err(other) => panic!("expected a broker error, got {other}"),
        Ok(_) => panic!("{what} started"),
    }
}

/// What a TLS error must say: that it is about the certificate, and what to do.
fn assert_explains_the_certificate(error: &str) {
    eprintln!("the error: {error}");
    assert!(
        error.contains("certificate") && error.contains("tls_root_certificates"),
        "the error says the certificate is not trusted and how to trust it: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_over_tls_with_a_private_ca_delivers_keeps_durable_messages_and_runs_jobs_once() {
    init_tracing();
    let Some(redis) = TlsRedis::start().await else {
        return;
    };
    let mut apps = Apps::start(|| single(&redis, "tls1"), vec!["orders".into()]).await;
    apps.sender
        .publisher()
        .publish("orders", &json!({ "n": 1 }))
        .await
        .expect("a publish over TLS");
    let (channel, message) = recv(&mut apps.seen, "the plain message").await;
    assert_eq!(
        (channel.as_str(), message["n"].as_u64()),
        ("orders", Some(1))
    );
    apps.durable_messages_are_kept_and_jobs_run_once().await;
    apps.shutdown().await;
}

/// A restart of the TLS server: the subscriber reconnects over TLS, and the publishing connection
/// the server closed is noticed and replaced before the next publish (which then succeeds at
/// once, instead of failing on the dead connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_over_tls_survives_a_restart_and_the_next_publish_succeeds() {
    init_tracing();
    let Some(mut redis) = TlsRedis::start().await else {
        return;
    };
    let broker = || {
        single(&redis, "tls-restart")
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .ping_interval(Duration::from_millis(500))
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = start(recording(app(broker()), vec!["status".into()], &tx)).await;
    let sender = start(app(broker())).await;
    let publisher = sender.publisher();
    publisher
        .publish("status", &json!({ "n": 0 }))
        .await
        .unwrap();
    recv(&mut rx, "the message before the restart").await;

    redis.stop();
    // The connections' ends are seen (the process is gone), then the server comes back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.restart().await;
    publisher
        .publish("status", &json!({ "n": "first" }))
        .await
        .expect("the first publish after the restart succeeds: the closed connection was replaced");

    // The worker subscribes again; publish until a message arrives (at-most-once meanwhile).
    let restarted = std::time::Instant::now();
    let mut n = 0;
    loop {
        assert!(
            restarted.elapsed() < WAIT,
            "delivery did not resume after the restart"
        );
        n += 1;
        publisher
            .publish("status", &json!({ "n": n }))
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            break;
        }
    }
    assert_eq!(worker.stats().reconnects, 1);
    worker.shutdown().await;
    sender.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_refuses_a_worker_that_trusts_another_ca_and_says_why() {
    init_tracing();
    let Some(redis) = TlsRedis::start().await else {
        return;
    };
    let broker = || {
        RedisBroker::from_url(&redis.url())
            .unwrap()
            .tls_root_certificates(unrelated_ca_pem())
            .unwrap()
            .publish_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
    };
    let error = broker()
        .publish("orders", "{}".into())
        .await
        .expect_err("the server's certificate is not trusted");
    assert!(matches!(error, BrokerError::Unreachable(_)), "{error}");
    assert_explains_the_certificate(&error.to_string());

    let error = start_error(
        broker(),
        "a worker that does not trust the server's certificate",
    )
    .await;
    assert_explains_the_certificate(&error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_delivers_every_partition_keeps_durable_messages_and_runs_jobs_once() {
    init_tracing();
    let Some(cluster) = TlsCluster::start(3).await else {
        return;
    };
    let broker = on_cluster(&cluster, "tlsc");
    // Channels on every one of the 16 partitions, so on every primary.
    let channels: Vec<String> = (0..64).map(|i| format!("orders:{i}")).collect();
    let partitions: BTreeSet<&str> = channels
        .iter()
        .map(|c| broker.partition_channel(c))
        .collect();
    assert_eq!(partitions.len(), 16, "the channels cover every partition");

    let mut apps = Apps::start(|| on_cluster(&cluster, "tlsc"), channels.clone()).await;
    let publisher = apps.sender.publisher();
    for (i, channel) in channels.iter().enumerate() {
        publisher
            .publish(channel, &json!({ "n": i }))
            .await
            .expect("a publish on the TLS cluster");
    }
    let mut seen = BTreeSet::new();
    while seen.len() < channels.len() {
        let (channel, message) = recv(&mut apps.seen, "a message of every channel").await;
        assert_eq!(
            channel,
            format!("orders:{}", message["n"]),
            "the message of its channel"
        );
        seen.insert(channel);
    }
    apps.durable_messages_are_kept_and_jobs_run_once().await;
    apps.shutdown().await;
}

/// A primary killed and restarted: the worker's TLS connection to it is lost, opened again, and
/// its partitions subscribed again; every channel is delivered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_node_restarted_has_its_partitions_subscribed_again() {
    init_tracing();
    let Some(mut cluster) = TlsCluster::start(3).await else {
        return;
    };
    let mut watched = Watched::start(|| recovering(&cluster, "tls-restart")).await;
    cluster.restart(0, Duration::from_millis(300)).await;
    watched
        .every_channel_is_delivered("after the restart")
        .await;
    assert!(
        watched.worker.stats().reconnects >= 1,
        "the lost connection was counted"
    );
    watched.shutdown().await;
}

/// A slot migration and failovers over TLS: a partition's slot moved to another primary, a
/// replica promoted by `CLUSTER FAILOVER`, then another primary SIGKILLed and its replica
/// elected. The worker subscribes the partitions again on their new owners, over TLS
/// connections that check their certificates, and every channel is delivered after each
/// change, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_migrates_a_slot_and_fails_over_and_every_channel_is_delivered_again() {
    init_tracing();
    let Some(mut cluster) = TlsCluster::start_with_replicas(3, 1).await else {
        return;
    };
    let mut watched = Watched::start(|| recovering(&cluster, "tls-failover")).await;
    watched.every_channel_is_delivered("at the start").await;

    let shards = cluster.shards().await;
    assert_eq!(shards.len(), 3, "three primaries, each with a replica");

    // A slot migration: the slot of `orders:0`'s partition moves to another primary, whose
    // node then carries the partition (and the old owner no longer does).
    let partition = recovering(&cluster, "tls-failover")
        .partition_channel("orders:0")
        .to_owned();
    let slot = cluster.slot_of(&partition).await;
    let from = cluster.owner_of_slot(slot).await;
    let to = shards.iter().map(|(p, _)| *p).find(|p| *p != from).unwrap();
    cluster.migrate_slot(slot, to).await;
    watched
        .every_channel_is_delivered("after the slot migration")
        .await;
    assert_eq!(cluster.shard_channels(to, &partition).await, 1);
    assert_eq!(cluster.shard_channels(from, &partition).await, 0);

    let (_, promoted) = shards[0];
    cluster.failover(promoted).await;
    watched
        .every_channel_is_delivered("after CLUSTER FAILOVER")
        .await;

    let (killed, elected) = shards[1];
    cluster.kill(killed);
    cluster.wait_for_primary(elected).await;
    watched
        .every_channel_is_delivered("after the SIGKILL")
        .await;
    // Redis's `sunsubscribe` on the migrated slot and on the demoted primary, and the killed
    // one's closed connection: each a recovery of the same worker.
    let reconnects = watched.worker.stats().reconnects;
    assert!(
        reconnects >= 3,
        "the migration and both failovers were recoveries: {reconnects}"
    );
    watched.shutdown().await;
}

/// Seeds reached as `localhost`, whose certificates name only `localhost`: the slot map is read,
/// but the nodes announce `127.0.0.1`, which their certificates do not name. The error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_whose_certificates_do_not_name_the_announced_addresses_says_so() {
    init_tracing();
    let Some(cluster) =
        TlsCluster::start_with(3, redis_tls::Certificates::for_names(&["localhost"])).await
    else {
        return;
    };
    let error = start_error(
        on_cluster(&cluster, "tls-names").connect_timeout(Duration::from_secs(1)),
        "a worker whose certificates do not name 127.0.0.1",
    )
    .await;
    eprintln!("the error: {error}");
    assert!(
        error.contains("127.0.0.1") && error.contains("subject alternative names"),
        "the error names the address and what to do: {error}"
    );
}

/// The fix for the case above: nodes that announce a host name their certificates carry
/// (`cluster-announce-hostname localhost`, `cluster-preferred-endpoint-type hostname`). The
/// broker reads host names from the slot map, connects to them, checks each node's certificate
/// against the name, and delivers on every partition; so do the `redis` crate's publishing
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_announcing_host_names_is_reached_by_name_and_delivers() {
    init_tracing();
    let Some(cluster) = TlsCluster::start_announcing(
        3,
        "localhost",
        redis_tls::Certificates::for_names(&["localhost"]),
    )
    .await
    else {
        return;
    };
    let slots: Vec<redis::Value> = redis_tls::query(
        &cluster.certificates,
        cluster.ports[0],
        redis::cmd("CLUSTER").arg("SLOTS"),
    )
    .await
    .unwrap();
    assert!(
        format!("{slots:?}").contains("localhost"),
        "the nodes announce their host name: {slots:?}"
    );
    let mut watched = Watched::start(|| on_cluster(&cluster, "tls-hostnames")).await;
    watched
        .every_channel_is_delivered("announcing host names")
        .await;
    watched.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_refuses_a_worker_that_trusts_another_ca_and_says_why() {
    init_tracing();
    let Some(cluster) = TlsCluster::start(3).await else {
        return;
    };
    let broker = || {
        RedisClusterBroker::from_urls(cluster.urls())
            .unwrap()
            .tls_root_certificates(unrelated_ca_pem())
            .unwrap()
            .publish_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
    };
    let error = start_error(
        broker(),
        "a worker that does not trust the nodes' certificates",
    )
    .await;
    assert_explains_the_certificate(&error);
    let error = broker()
        .publish("orders", "{}".into())
        .await
        .expect_err("the nodes' certificates are not trusted");
    assert_explains_the_certificate(&error.to_string());
}

#[test]
fn tls_configuration_errors_are_clear() {
    // No certificate in the PEM.
    for pem in ["", "not a certificate"] {
        let single = RedisBroker::from_url("rediss://127.0.0.1:6380")
            .unwrap()
            .tls_root_certificates(pem)
            .unwrap_err();
        assert!(
            matches!(&single, BrokerError::Config(m) if m.contains("no certificate")),
            "{single}"
        );
        let cluster = RedisClusterBroker::from_urls(["rediss://127.0.0.1:7000"])
            .unwrap()
            .tls_root_certificates(pem)
            .unwrap_err();
        assert!(
            matches!(&cluster, BrokerError::Config(m) if m.contains("no certificate")),
            "{cluster}"
        );
    }
    // Roots for a URL without TLS.
    let ca = unrelated_ca_pem();
    let plain = RedisBroker::from_url("redis://127.0.0.1:6379")
        .unwrap()
        .tls_root_certificates(&ca)
        .unwrap_err();
    assert!(
        matches!(&plain, BrokerError::Config(m) if m.contains("rediss://")),
        "{plain}"
    );
    let plain = RedisClusterBroker::from_urls(["redis://127.0.0.1:7000"])
        .unwrap()
        .tls_root_certificates(&ca)
        .unwrap_err();
    assert!(
        matches!(&plain, BrokerError::Config(m) if m.contains("rediss://")),
        "{plain}"
    );
    // Seeds that mix TLS and plain TCP.
    let mixed =
        RedisClusterBroker::from_urls(["rediss://127.0.0.1:7000", "redis://127.0.0.1:7001"])
            .unwrap_err();
    assert!(
        matches!(&mixed, BrokerError::Config(m) if m.contains("mix")),
        "{mixed}"
    );
    // No verification is not offered.
    let insecure = RedisBroker::from_url("rediss://127.0.0.1:6380/#insecure").unwrap_err();
    assert!(
        matches!(&insecure, BrokerError::Config(m) if m.contains("#insecure")),
        "{insecure}"
    );
    let insecure =
        RedisClusterBroker::from_urls(["rediss://127.0.0.1:7000/#insecure"]).unwrap_err();
    assert!(
        matches!(&insecure, BrokerError::Config(m) if m.contains("#insecure")),
        "{insecure}"
    );
}
