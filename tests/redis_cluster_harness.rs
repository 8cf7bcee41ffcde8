//! Tests of the Redis Cluster harness (`tests/support/redis_cluster.rs`) against real
//! `redis-server` nodes: slots, migrations, failovers, killed and restarted primaries.
//!
//! Skipped (with `SKIPPED` on stderr) without `redis-server` and `redis-cli` on `PATH`, unless
//! `SWITCHBOARD_REQUIRE_CLUSTER=1` (CI sets it): then they fail.

#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_cluster::{crc16, parse_cluster_nodes, slot_of, RedisCluster, SLOTS};

/// A cluster, or `None` (the test is skipped) without Redis.
async fn cluster(test: &str, primaries: usize, replicas: usize) -> Option<RedisCluster> {
    let cluster = RedisCluster::start(primaries, replicas).await;
    if cluster.is_none() {
        eprintln!(
            "SKIPPED {test}: no `redis-server`/`redis-cli` on PATH (install the redis-server package to run it)"
        );
    }
    cluster
}

/// The value of `key` read from the node on `port`, which must serve it.
async fn get(cluster: &RedisCluster, port: u16, key: &str) -> Option<String> {
    let mut connection = cluster.connection(port).await;
    connection
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("GET {key} on {port}: {e}"))
}

/// The redirection (`MOVED` or `ASK`) that the node on `port` answers to `GET key`.
async fn redirection(cluster: &RedisCluster, port: u16, key: &str) -> (String, u16) {
    let mut connection = cluster.connection(port).await;
    let error = connection
        .get::<_, Option<String>>(key)
        .await
        .expect_err("a redirection");
    let (address, slot) = error
        .redirect_node()
        .unwrap_or_else(|| panic!("GET {key} on {port}: {error} is not a redirection"));
    assert_eq!(slot, slot_of(key.as_bytes()), "{error}");
    let (host, to) = address.rsplit_once(':').unwrap();
    assert_eq!(host, "127.0.0.1", "{error}");
    let code = error.code().unwrap_or_default().to_owned();
    (code, to.parse().unwrap())
}

#[test]
fn crc16_and_slot_of_follow_redis() {
    // The CRC-16/XMODEM check value.
    assert_eq!(crc16(b"123456789"), 0x31C3);
    // The examples of the Redis Cluster specification.
    assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
    assert_eq!(slot_of(b"{user1000}.followers"), slot_of(b"user1000"));
    assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 16383);
    assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    assert_eq!(slot_of(b"{}{x}"), crc16(b"{}{x}") & 16383);
    assert_eq!(
        slot_of(b"no closing {brace"),
        crc16(b"no closing {brace") & 16383
    );
    assert_eq!(slot_of(b"foo"), 12182);
    assert_eq!(slot_of(b""), 0);
}

#[test]
fn cluster_nodes_lines_parse() {
    let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,host replica 3c3a0c74aae0b56170ccb03a76b60cfe7dc1912e 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master,fail - 0 1426238316232 2 disconnected 5461-10922 11000
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";
    let entries = parse_cluster_nodes(text);
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].port, 30004);
    assert_eq!(
        entries[0].primary_id.as_deref(),
        Some("3c3a0c74aae0b56170ccb03a76b60cfe7dc1912e")
    );
    assert!(!entries[0].is_primary());
    assert!(entries[1].is_primary() && entries[1].is_failing() && !entries[1].connected);
    assert_eq!(entries[1].slots, vec![(5461, 10922), (11000, 11000)]);
    assert!(entries[2].is_myself());
    assert_eq!(entries[2].slots, vec![(0, 5460)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_of_matches_cluster_keyslot() {
    let Some(cluster) = cluster("slot_of_matches_cluster_keyslot", 3, 0).await else {
        return;
    };
    let mut keys: Vec<Vec<u8>> = [
        "foo",
        "bar",
        "",
        "{user1000}.following",
        "{user1000}.followers",
        "user1000",
        "a{}b",
        "{}{x}",
        "{}",
        "{",
        "}",
        "}{",
        "{a",
        "a}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{{}}",
        "{partition:7}:events",
        "switchboard:{room:42}",
    ]
    .iter()
    .map(|key| key.as_bytes().to_vec())
    .collect();
    for n in 0..30u32 {
        keys.push(format!("key:{}", n.wrapping_mul(2654435761)).into_bytes());
        if n % 3 == 0 {
            keys.push(format!("x{{tag{n}}}y{{z}}").into_bytes());
        }
    }
    keys.push(vec![0xff, b'{', 0x00, 0x80, b'}', 0x7f]);
    keys.push(vec![0xc3, 0xa9, 0xe2, 0x82, 0xac]);
    assert!(keys.len() >= 50, "{} keys", keys.len());
    let mut connection = cluster.connection(cluster.ports()[0]).await;
    for key in &keys {
        let expected: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(
            slot_of(key),
            expected,
            "slot of {:?}",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_primaries_with_one_replica_each_cover_every_slot() {
    let started = Instant::now();
    let Some(cluster) = cluster(
        "three_primaries_with_one_replica_each_cover_every_slot",
        3,
        1,
    )
    .await
    else {
        return;
    };
    eprintln!("start(3, 1) took {:?}", started.elapsed());
    assert_eq!(cluster.ports().len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    assert!(cluster
        .urls()
        .iter()
        .all(|url| url.starts_with("redis://127.0.0.1:")));

    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "primaries {primaries:?}");
    let mut replicas = Vec::new();
    for &primary in &primaries {
        let of = cluster.replicas_of(primary);
        assert_eq!(of.len(), 1, "replicas of {primary}: {of:?}");
        replicas.extend(of);
    }
    replicas.sort_unstable();
    replicas.dedup();
    assert_eq!(replicas.len(), 3);
    let mut all: Vec<u16> = primaries.iter().chain(&replicas).copied().collect();
    all.sort_unstable();
    let mut ports = cluster.ports();
    ports.sort_unstable();
    assert_eq!(all, ports);

    // Every node sees every slot served by one of the primaries, exactly once.
    for port in cluster.ports() {
        let entries = parse_cluster_nodes(&cluster.cluster_nodes(port).await);
        let mut served = vec![0u8; usize::from(SLOTS)];
        for entry in entries.iter().filter(|e| e.is_primary()) {
            assert!(primaries.contains(&entry.port), "{entry:?}");
            for &(start, end) in &entry.slots {
                for slot in start..=end {
                    served[usize::from(slot)] += 1;
                }
            }
        }
        assert!(
            served.iter().all(|&n| n == 1),
            "{port} sees a slot unserved or served twice"
        );
    }
    for slot in [0, 5460, 5461, 10922, 10923, 16383] {
        assert!(primaries.contains(&cluster.owner_of_slot(slot).await));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_slot_takes_its_keys_to_the_new_owner() {
    let Some(cluster) = cluster("a_migrated_slot_takes_its_keys_to_the_new_owner", 3, 1).await
    else {
        return;
    };
    let slot = slot_of(b"{migrating}");
    let keys: Vec<String> = (0..5).map(|n| format!("{{migrating}}:{n}")).collect();
    let source = cluster.owner_of_slot(slot).await;
    let target = *cluster
        .primaries()
        .iter()
        .find(|&&port| port != source)
        .unwrap();
    let mut connection = cluster.connection(source).await;
    for key in &keys {
        let _: () = connection
            .set(key, format!("value of {key}"))
            .await
            .unwrap();
    }
    // A key of another slot stays where it is.
    let other = "{elsewhere}";
    assert_ne!(slot_of(other.as_bytes()), slot);
    let other_owner = cluster.owner_of_slot(slot_of(other.as_bytes())).await;
    let mut other_connection = cluster.connection(other_owner).await;
    let _: () = other_connection.set(other, "stays").await.unwrap();

    // In two steps: traffic while the slot is between the two.
    let migration = cluster.begin_migration(slot, target).await;
    assert_eq!((migration.source(), migration.target()), (source, target));
    assert!(cluster
        .cluster_nodes(source)
        .await
        .contains(&format!("[{slot}->-{}]", cluster.node_id(target))));
    assert!(cluster
        .cluster_nodes(target)
        .await
        .contains(&format!("[{slot}-<-{}]", cluster.node_id(source))));
    // Keys still on the source are served there; missing ones are asked of the target.
    assert_eq!(
        get(&cluster, source, &keys[0]).await.as_deref(),
        Some("value of {migrating}:0")
    );
    assert_eq!(
        redirection(&cluster, source, "{migrating}:missing").await,
        ("ASK".to_owned(), target)
    );
    assert_eq!(migration.move_keys(2).await, 2);
    let mut source_connection = cluster.connection(source).await;
    let left: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(100)
        .query_async(&mut source_connection)
        .await
        .unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    let moved = keys.iter().find(|key| !left.contains(key)).unwrap();
    assert_eq!(
        redirection(&cluster, source, moved).await,
        ("ASK".to_owned(), target)
    );
    // The target serves it only to an ASKING client until the slot is its own.
    assert_eq!(
        redirection(&cluster, target, moved).await,
        ("MOVED".to_owned(), source)
    );
    let mut target_connection = cluster.connection(target).await;
    let ((), value): ((), Option<String>) = redis::pipe()
        .cmd("ASKING")
        .cmd("GET")
        .arg(moved)
        .query_async(&mut target_connection)
        .await
        .unwrap();
    assert_eq!(value, Some(format!("value of {moved}")));
    migration.finish().await;

    assert_eq!(cluster.owner_of_slot(slot).await, target);
    for port in cluster.ports() {
        let nodes = parse_cluster_nodes(&cluster.cluster_nodes(port).await);
        let owner = nodes
            .iter()
            .find(|e| e.is_primary() && e.slots.iter().any(|&(s, t)| (s..=t).contains(&slot)))
            .unwrap();
        assert_eq!(owner.port, target, "as {port} sees it");
    }
    let keyslot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&keys[0])
        .query_async(&mut target_connection)
        .await
        .unwrap();
    assert_eq!(keyslot, slot);
    for key in &keys {
        assert_eq!(
            get(&cluster, target, key).await,
            Some(format!("value of {key}"))
        );
        assert_eq!(
            redirection(&cluster, source, key).await,
            ("MOVED".to_owned(), target)
        );
    }
    let left: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(100)
        .query_async(&mut source_connection)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        get(&cluster, other_owner, other).await.as_deref(),
        Some("stays")
    );

    // And back in one call.
    cluster.migrate_slot(slot, source).await;
    assert_eq!(cluster.owner_of_slot(slot).await, source);
    for key in &keys {
        assert_eq!(
            get(&cluster, source, key).await,
            Some(format!("value of {key}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_promotes_the_replica() {
    let Some(cluster) = cluster("a_manual_failover_promotes_the_replica", 3, 1).await else {
        return;
    };
    let slot = slot_of(b"{failover}");
    let primary = cluster.owner_of_slot(slot).await;
    let replica = cluster.replicas_of(primary)[0];
    let mut connection = cluster.connection(primary).await;
    let _: () = connection.set("{failover}", "kept").await.unwrap();

    let started = Instant::now();
    cluster.failover(replica).await;
    eprintln!("CLUSTER FAILOVER took {:?}", started.elapsed());

    let primaries = cluster.primaries();
    assert!(primaries.contains(&replica), "primaries {primaries:?}");
    assert!(!primaries.contains(&primary), "primaries {primaries:?}");
    assert_eq!(cluster.replicas_of(replica), vec![primary]);
    assert_eq!(cluster.owner_of_slot(slot).await, replica);
    assert_eq!(
        get(&cluster, replica, "{failover}").await.as_deref(),
        Some("kept")
    );
    assert_eq!(
        redirection(&cluster, primary, "{failover}").await,
        ("MOVED".to_owned(), replica)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_rejoins_as_a_replica() {
    let Some(mut cluster) = cluster(
        "a_killed_primary_is_replaced_and_rejoins_as_a_replica",
        3,
        1,
    )
    .await
    else {
        return;
    };
    let slot = slot_of(b"{killed}");
    let primary = cluster.owner_of_slot(slot).await;
    let replica = cluster.replicas_of(primary)[0];
    let mut connection = cluster.connection(primary).await;
    let _: () = connection.set("{killed}", "replicated").await.unwrap();
    let acknowledged: u32 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(acknowledged, 1);
    drop(connection);

    cluster.kill(primary);
    assert!(!cluster.is_running(primary));
    assert_eq!(cluster.urls().len(), 5);
    let started = Instant::now();
    let promoted = cluster.wait_for_promotion(primary).await;
    let took = started.elapsed();
    eprintln!("promotion after SIGKILL took {took:?}");
    assert_eq!(promoted, replica);
    assert!(took < Duration::from_secs(10), "promotion took {took:?}");
    assert_eq!(cluster.owner_of_slot(slot).await, promoted);
    assert!(cluster.primaries().contains(&promoted));
    assert_eq!(
        get(&cluster, promoted, "{killed}").await.as_deref(),
        Some("replicated")
    );

    let started = Instant::now();
    cluster.restart(primary).await;
    eprintln!(
        "restart until the cluster is ok took {:?}",
        started.elapsed()
    );
    assert!(cluster.is_running(primary));
    assert_eq!(cluster.urls().len(), 6);
    assert!(!cluster.primaries().contains(&primary));
    assert_eq!(cluster.replicas_of(promoted), vec![primary]);
    let mut rejoined = cluster.connection(primary).await;
    let replication: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut rejoined)
        .await
        .unwrap();
    assert!(replication.contains("role:slave"), "{replication}");
    assert!(
        replication.contains(&format!("master_port:{promoted}")),
        "{replication}"
    );
    assert_eq!(
        redirection(&cluster, primary, "{killed}").await,
        ("MOVED".to_owned(), promoted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_at_once_serves_its_slots_again() {
    let Some(mut cluster) =
        cluster("a_primary_restarted_at_once_serves_its_slots_again", 3, 1).await
    else {
        return;
    };
    let slot = slot_of(b"{bounced}");
    let primary = cluster.owner_of_slot(slot).await;
    let replica = cluster.replicas_of(primary)[0];
    cluster.kill(primary);
    let started = Instant::now();
    cluster.restart(primary).await;
    eprintln!(
        "restart of a primary at once until the cluster is ok took {:?}",
        started.elapsed()
    );
    // Back before its replica took over, or rejoined as the replica of its replica: either way
    // one of the two serves the slot, with the other as its replica.
    let owner = cluster.owner_of_slot(slot).await;
    assert!(
        owner == primary || owner == replica,
        "slot {slot} on {owner}"
    );
    let other = if owner == primary { replica } else { primary };
    assert_eq!(cluster.replicas_of(owner), vec![other]);
    assert_eq!(cluster.urls().len(), 6);
    assert_eq!(cluster.primaries().len(), 3);
    let mut connection = cluster.connection(owner).await;
    let _: () = connection.set("{bounced}", "again").await.unwrap();
    assert_eq!(
        get(&cluster, owner, "{bounced}").await.as_deref(),
        Some("again")
    );
}
