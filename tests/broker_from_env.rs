//! `Builder::broker_from_env` reads `REDIS_CLUSTER_URLS`, `REDIS_URL`, `REDIS_NAMESPACE` and
//! `REDIS_TLS_CA_FILE`. Environment variables belong
//! to the whole process, so this is its own test binary with a single test that sets them in turn.

use switchboard::testing::MockRedis;
use switchboard::{BrokerError, Error, Switchboard};

fn broker_kind(app: &Switchboard) -> String {
    // `Switchboard`'s Debug output names the broker kind.
    let debug = format!("{app:?}");
    let start = debug.find("broker: \"").expect("debug names the broker") + "broker: \"".len();
    debug[start..].split('"').next().unwrap().to_owned()
}

fn builder() -> switchboard::Builder {
    Switchboard::builder().without_linked_handlers()
}

#[tokio::test]
async fn broker_from_env_picks_redis_or_the_in_process_broker() {
    // Unset or blank: the in-process broker.
    std::env::remove_var("REDIS_CLUSTER_URLS");
    std::env::remove_var("REDIS_URL");
    let app = builder().broker_from_env().unwrap().build().unwrap();
    assert_eq!(broker_kind(&app), "memory");
    std::env::set_var("REDIS_URL", "   ");
    let app = builder().broker_from_env().unwrap().build().unwrap();
    assert_eq!(broker_kind(&app), "memory");

    // Not a Redis URL: a typed configuration error, before anything connects.
    std::env::set_var("REDIS_URL", "http://example.invalid/");
    match builder().broker_from_env() {
        Err(Error::Broker(BrokerError::Config(reason))) => assert!(!reason.is_empty()),
        other => panic!("expected a configuration error, got {other:?}"),
    }

    // A Redis URL (here the mock), with a namespace: a Redis broker that really connects.
    let redis = MockRedis::start().await;
    std::env::set_var("REDIS_URL", redis.url());
    std::env::set_var("REDIS_NAMESPACE", "envtest");
    let app = builder()
        .listen(["env:probe"])
        .broker_from_env()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(broker_kind(&app), "redis");
    let running = app.start().await.unwrap();
    running
        .publisher()
        .publish("env:probe", &serde_json::json!({}))
        .await
        .unwrap();
    assert!(redis.published_count() >= 1);
    running.shutdown().await;
    std::env::remove_var("REDIS_URL");
    std::env::remove_var("REDIS_NAMESPACE");

    // Cluster seed nodes win over REDIS_URL.
    std::env::set_var("REDIS_URL", redis.url());
    std::env::set_var(
        "REDIS_CLUSTER_URLS",
        "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
    );
    let app = builder().broker_from_env().unwrap().build().unwrap();
    assert_eq!(broker_kind(&app), "redis-cluster");
    std::env::set_var("REDIS_CLUSTER_PARTITIONS", "many");
    match builder().broker_from_env() {
        Err(Error::Broker(BrokerError::Config(reason))) => {
            assert!(reason.contains("REDIS_CLUSTER_PARTITIONS"), "{reason}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    std::env::set_var("REDIS_CLUSTER_PARTITIONS", "64");
    let app = builder().broker_from_env().unwrap().build().unwrap();
    assert_eq!(broker_kind(&app), "redis-cluster");
    std::env::set_var("REDIS_CLUSTER_URLS", "redis://127.0.0.1:7000,http://nope/");
    match builder().broker_from_env() {
        Err(Error::Broker(BrokerError::Config(reason))) => {
            assert!(reason.contains("http://nope/"), "{reason}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    std::env::remove_var("REDIS_CLUSTER_URLS");
    std::env::remove_var("REDIS_CLUSTER_PARTITIONS");
    std::env::remove_var("REDIS_URL");

    tls_ca_file();
}

/// `REDIS_TLS_CA_FILE`: the CA file of `rediss://` URLs, read when the broker is built (the
/// connections themselves are tested on real TLS servers in `tests/redis_tls.rs`).
fn tls_ca_file() {
    let config_error = |what: &str| match builder().broker_from_env() {
        Err(Error::Broker(BrokerError::Config(reason))) => reason,
        other => panic!("expected a configuration error for {what}, got {other:?}"),
    };
    let dir = std::env::temp_dir().join(format!("switchboard-env-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pem");
    std::env::set_var("REDIS_TLS_CA_FILE", &missing);
    for (name, url) in [
        ("REDIS_URL", "rediss://127.0.0.1:6380/"),
        (
            "REDIS_CLUSTER_URLS",
            "rediss://127.0.0.1:7000,rediss://127.0.0.1:7001",
        ),
    ] {
        std::env::set_var(name, url);
        let reason = config_error("a CA file that does not exist");
        if cfg!(feature = "tls") {
            assert!(
                reason.contains("REDIS_TLS_CA_FILE") && reason.contains("cannot be read"),
                "{reason}"
            );
            let empty = dir.join("empty.pem");
            std::fs::write(&empty, "no certificate here\n").unwrap();
            std::env::set_var("REDIS_TLS_CA_FILE", &empty);
            let reason = config_error("a CA file without a certificate");
            assert!(reason.contains("no certificate"), "{reason}");
            std::env::set_var("REDIS_TLS_CA_FILE", &missing);
        } else {
            // The `rediss://` URL itself is refused.
            assert!(reason.contains("`tls` feature"), "{reason}");
        }
        std::env::remove_var(name);
    }
    // A CA file for a URL without TLS.
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:6379/");
    let reason = config_error("a CA file with a `redis://` URL");
    if cfg!(feature = "tls") {
        assert!(reason.contains("cannot be read"), "{reason}");
    } else {
        assert!(
            reason.contains("REDIS_TLS_CA_FILE") && reason.contains("`tls` feature"),
            "{reason}"
        );
    }
    std::env::remove_var("REDIS_URL");
    std::env::remove_var("REDIS_TLS_CA_FILE");
    let _ = std::fs::remove_dir_all(&dir);
}
