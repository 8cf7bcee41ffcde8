//! A real Redis Cluster of `redis-server` child processes, for the tests of the cluster broker:
//! slot migrations, manual failovers, and primaries killed and restarted.
//!
//! Include it the way `redis_server.rs` is included:
//! `#[path = "support/redis_cluster.rs"] mod redis_cluster;`.
//!
//! Every wait polls (every 50 ms) up to a deadline and panics naming what it waited for, with every
//! running node's `CLUSTER NODES`; each node logs to `redis.log` in its own directory, and the last
//! lines of every log are printed when the cluster is dropped during a panic.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "binaries.rs"]
mod binaries;
pub use binaries::{cluster_required, find_binary, free_cluster_port};

use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, RedisResult};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long the cluster may take to settle (creation, failovers, migrations, restarts).
const WAIT: Duration = Duration::from_secs(20);
/// How long one `redis-server` may take to answer after it was spawned.
const NODE_START: Duration = Duration::from_secs(10);
/// How often the waits poll.
const POLL: Duration = Duration::from_millis(50);
/// Connection and response timeout of every command the harness sends.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Redis's CRC16 (XMODEM: polynomial 0x1021, initial value 0, no reflection).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key, as `CLUSTER KEYSLOT` computes it: the CRC16 of the hash tag (between the
/// first `{` and the first `}` after it) when that tag is non-empty, else of the whole key.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) & (SLOTS - 1)
}

/// One line of `CLUSTER NODES`: a node as some node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's id (40 hex characters).
    pub id: String,
    /// Its client port (0 while the address is unknown, e.g. during a handshake).
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    pub flags: Vec<String>,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// Whether the cluster bus link to it is connected.
    pub connected: bool,
    /// The slot ranges it serves (inclusive), without the `[slot->-id]` migration markers.
    pub slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A primary (`master` flag).
    pub fn is_primary(&self) -> bool {
        self.has_flag("master")
    }

    /// Flagged as failing (`fail?`) or failed (`fail`) by the node that reported it.
    pub fn is_failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }

    /// The line of the node that answered.
    pub fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 8, "unexpected CLUSTER NODES line: {line:?}");
            // `ip:port@cport[,hostname]`
            let address = fields[1].split(['@', ',']).next().unwrap_or_default();
            let port = address
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .unwrap_or(0);
            let slots = fields[8..]
                .iter()
                .filter(|token| !token.starts_with('['))
                .map(|token| match token.split_once('-') {
                    Some((start, end)) => (start.parse().unwrap(), end.parse().unwrap()),
                    None => {
                        let slot = token.parse().unwrap();
                        (slot, slot)
                    }
                })
                .collect();
            NodeEntry {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                connected: fields[7] == "connected",
                slots,
            }
        })
        .collect()
}

/// A `redis-server` child process of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    /// Its cluster node id (kept across restarts by its `nodes.conf`).
    id: String,
    child: Option<Child>,
}

/// What every running node agrees on, see [`RedisCluster::wait_until_ok`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Agreement {
    /// Merged slot ranges and the port of their owner, in slot order, covering every slot.
    owners: Vec<(u16, u16, u16)>,
    /// The port of every running node and the port of its primary (`None` for a primary).
    roles: BTreeMap<u16, Option<u16>>,
}

/// A real Redis Cluster: `redis-server` children on free loopback ports, each in its own directory
/// under a fresh temporary directory. Dropping it kills every node and removes the directory.
#[derive(Debug)]
pub struct RedisCluster {
    server: PathBuf,
    root: PathBuf,
    nodes: Vec<Node>,
    /// The replicas of each primary killed through [`RedisCluster::kill`], as they were just before.
    replicas_before_kill: HashMap<u16, Vec<u16>>,
}

impl RedisCluster {
    /// Starts `primaries` primaries (at least 3, as `redis-cli --cluster create` requires) with
    /// `replicas_per_primary` replicas each, creates the cluster and waits until every node reports
    /// `cluster_state:ok`, every slot is served, every node agrees on the topology, and every
    /// replica's link to its primary is up.
    ///
    /// `None` when `redis-server` or `redis-cli` is not on `PATH`, unless `SWITCHBOARD_REQUIRE_CLUSTER`
    /// is set: then it panics.
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> Option<Self> {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs at least 3 primaries, not {primaries}"
        );
        let (Some(server), Some(cli)) = (find_binary("redis-server"), find_binary("redis-cli"))
        else {
            assert!(
                !cluster_required(),
                "SWITCHBOARD_REQUIRE_CLUSTER is set but redis-server or redis-cli is not on PATH \
                 (apt-get install redis-server)"
            );
            return None;
        };
        let root = std::env::temp_dir().join(format!(
            "switchboard-cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("the cluster's temporary directory");
        let root = root
            .canonicalize()
            .expect("the cluster's temporary directory");
        let mut cluster = Self {
            server,
            root,
            nodes: Vec::new(),
            replicas_before_kill: HashMap::new(),
        };

        let total = primaries * (1 + replicas_per_primary);
        for index in 0..total {
            let dir = cluster.root.join(format!("node-{index}"));
            std::fs::create_dir_all(&dir).expect("a node's directory");
            // A port taken between `free_cluster_port` and the bind (by another test) makes the
            // node exit: try another one.
            let mut attempts = 0;
            let (port, child) = loop {
                attempts += 1;
                let port = free_cluster_port();
                let mut child = spawn_node(&cluster.server, port, &dir);
                match wait_for_process(port, &mut child).await {
                    Ok(()) => break (port, child),
                    Err(error) if attempts < 5 => {
                        let _ = child.kill();
                        let _ = child.wait();
                        eprintln!("redis-server on port {port} did not start ({error}); retrying");
                    }
                    Err(error) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "redis-server on port {port} did not start: {error}\n{}",
                            log_tail(&dir, 30)
                        );
                    }
                }
            };
            cluster.nodes.push(Node {
                port,
                dir,
                id: String::new(),
                child: Some(child),
            });
        }

        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .arg("--cluster-replicas")
            .arg(replicas_per_primary.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || create.output())
            .await
            .expect("the redis-cli task")
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        for index in 0..cluster.nodes.len() {
            let port = cluster.nodes[index].port;
            let id: String = query(port, redis::cmd("CLUSTER").arg("MYID"))
                .await
                .unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"));
            cluster.nodes[index].id = id;
        }
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    /// The URL of every running node, `redis://127.0.0.1:P/`.
    pub fn urls(&self) -> Vec<String> {
        self.running_ports()
            .into_iter()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The port of every node, running or killed.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The port of every running node.
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    /// Whether the node on this port is running (not killed).
    pub fn is_running(&self, port: u16) -> bool {
        self.node(port).child.is_some()
    }

    /// The cluster node id of the node on this port.
    pub fn node_id(&self, port: u16) -> &str {
        &self.node(port).id
    }

    /// The current primaries (running, not flagged as failing), in port order, as the first running
    /// node that answers `CLUSTER NODES` sees them. Blocks the thread for that one command.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .entries_blocking()
            .iter()
            .filter(|entry| entry.is_primary() && !entry.is_failing())
            .map(|entry| entry.port)
            .filter(|&port| self.is_known_running(port))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The current replicas (running, not flagged as failing) of the primary on this port, in port
    /// order, as the first running node that answers `CLUSTER NODES` sees them. Blocks the thread
    /// for that one command.
    pub fn replicas_of(&self, primary_port: u16) -> Vec<u16> {
        let primary_id = self.node(primary_port).id.clone();
        let mut ports: Vec<u16> = self
            .entries_blocking()
            .iter()
            .filter(|entry| {
                entry.primary_id.as_deref() == Some(primary_id.as_str()) && !entry.is_failing()
            })
            .map(|entry| entry.port)
            .filter(|&port| self.is_known_running(port))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// A connection to one node (plain, not cluster-aware: it gets `MOVED` and `ASK` errors).
    pub async fn connection(&self, port: u16) -> MultiplexedConnection {
        connect(port)
            .await
            .unwrap_or_else(|e| panic!("connecting to the node on port {port}: {e}"))
    }

    /// The text of `CLUSTER NODES` on one node.
    pub async fn cluster_nodes(&self, port: u16) -> String {
        query(port, redis::cmd("CLUSTER").arg("NODES"))
            .await
            .unwrap_or_else(|e| panic!("CLUSTER NODES on {port}: {e}"))
    }

    /// The port of the primary that owns this slot, as the first running node that answers sees it.
    pub async fn owner_of_slot(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "no slot {slot}");
        let entries = self.entries().await;
        entries
            .iter()
            .find(|entry| {
                entry.is_primary()
                    && entry
                        .slots
                        .iter()
                        .any(|&(start, end)| (start..=end).contains(&slot))
            })
            .map(|entry| entry.port)
            .unwrap_or_else(|| panic!("no node owns slot {slot}:\n{}", format_entries(&entries)))
    }

    /// Moves a slot and its keys to the primary on `to_port`, the way `redis-cli --cluster reshard`
    /// does, and waits until every node agrees on the new owner.
    pub async fn migrate_slot(&self, slot: u16, to_port: u16) {
        self.begin_migration(slot, to_port).await.finish().await;
    }

    /// Starts moving a slot to the primary on `to_port`: the target is `IMPORTING` it and its owner
    /// `MIGRATING` it, no key moved yet. Clients get `ASK` redirections for the keys that are not
    /// (or no longer) on the source until [`Migration::finish`].
    pub async fn begin_migration(&self, slot: u16, to_port: u16) -> Migration<'_> {
        assert!(slot < SLOTS, "no slot {slot}");
        let source = self.owner_of_slot(slot).await;
        assert_ne!(
            source, to_port,
            "slot {slot} is already served by the node on port {to_port}"
        );
        let source_id = self.node(source).id.clone();
        let target_id = self.node(to_port).id.clone();
        let _: () = query(
            to_port,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&source_id),
        )
        .await
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} IMPORTING on {to_port}: {e}"));
        let _: () = query(
            source,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&target_id),
        )
        .await
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} MIGRATING on {source}: {e}"));
        Migration {
            cluster: self,
            slot,
            source,
            target: to_port,
            target_id,
        }
    }

    /// SIGKILLs the node on this port (its replicas, if it is a primary, are remembered for
    /// [`RedisCluster::wait_for_promotion`]). Asks the cluster for them first: blocks the thread
    /// for that one command.
    pub fn kill(&mut self, port: u16) {
        assert!(
            self.is_running(port),
            "the node on port {port} is not running"
        );
        let replicas = self.replicas_of(port);
        self.replicas_before_kill.insert(port, replicas);
        let node = self.node_mut(port);
        let mut child = node.child.take().expect("a running node");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a killed node again on the same port, in the same directory (same `nodes.conf`: it
    /// rejoins with the same id; a former primary whose replica was promoted comes back as a replica
    /// of it), then waits until it answers and the cluster is ok again.
    pub async fn restart(&mut self, port: u16) {
        assert!(
            !self.is_running(port),
            "the node on port {port} is still running"
        );
        let dir = self.node(port).dir.clone();
        let mut child = spawn_node(&self.server, port, &dir);
        if let Err(error) = wait_for_process(port, &mut child).await {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the restarted redis-server on port {port} did not start: {error}\n{}",
                log_tail(&dir, 30)
            );
        }
        self.node_mut(port).child = Some(child);
        self.replicas_before_kill.remove(&port);
        self.wait_until_ok().await;
    }

    /// A manual failover (`CLUSTER FAILOVER`) on this replica; waits until it is a primary and the
    /// cluster is ok again (its former primary a replica of it).
    pub async fn failover(&self, replica_port: u16) {
        let _: () = query(replica_port, redis::cmd("CLUSTER").arg("FAILOVER"))
            .await
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {replica_port}: {e}"));
        let this = self;
        self.wait_for(
            &format!("the node on port {replica_port} to be promoted by CLUSTER FAILOVER"),
            move || async move {
                let role = role(replica_port).await?;
                if role != "master" {
                    return Err(format!("its role is still {role}"));
                }
                let agreement = this.agreement().await?;
                match agreement.roles.get(&replica_port) {
                    Some(None) => Ok(()),
                    _ => Err(format!(
                        "not every node sees {replica_port} as a primary yet"
                    )),
                }
            },
        )
        .await;
    }

    /// Waits until every running node reports `cluster_state:ok` with every slot assigned and ok,
    /// every running node sees the same slot owners (all running) and the same primaries and
    /// replicas, no running node is flagged as failing, and every running replica's link to its
    /// primary is up.
    pub async fn wait_until_ok(&self) {
        let this = self;
        self.wait_for("the cluster to be ok", move || async move {
            this.agreement().await.map(drop)
        })
        .await;
    }

    /// Waits until one of the replicas that the primary on `killed_primary_port` had when it was
    /// killed (through [`RedisCluster::kill`]) serves slots and the cluster is ok; returns its port.
    pub async fn wait_for_promotion(&self, killed_primary_port: u16) -> u16 {
        let candidates = self
            .replicas_before_kill
            .get(&killed_primary_port)
            .unwrap_or_else(|| {
                panic!("the node on port {killed_primary_port} was not killed through kill()")
            })
            .clone();
        assert!(
            !candidates.is_empty(),
            "the node on port {killed_primary_port} had no replica when it was killed"
        );
        let (this, candidates) = (self, &candidates);
        self.wait_for(
            &format!(
                "one of {candidates:?} to replace the killed primary on port {killed_primary_port}"
            ),
            move || async move {
                let agreement = this.agreement().await?;
                candidates
                    .iter()
                    .copied()
                    .find(|port| agreement.owners.iter().any(|&(_, _, owner)| owner == *port))
                    .ok_or_else(|| "no former replica serves slots yet".to_owned())
            },
        )
        .await
    }

    /// Polls `check` every 50 ms until it succeeds, or panics after 20 s naming `what` with the
    /// last reason and every running node's `CLUSTER NODES`.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            let reason = match check().await {
                Ok(value) => return value,
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}: {reason}\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every running node's `CLUSTER NODES`.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for port in self.running_ports() {
            let nodes = query::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
                .await
                .unwrap_or_else(|e| format!("(error: {e})\n"));
            out.push_str(&format!("CLUSTER NODES on {port}:\n{nodes}"));
        }
        out
    }

    /// What every running node agrees on, or why they do not (yet).
    async fn agreement(&self) -> Result<Agreement, String> {
        let running = self.running_ports();
        let mut agreed: Option<(u16, Agreement)> = None;
        for &port in &running {
            let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .map_err(|e| format!("CLUSTER INFO on {port}: {e}"))?;
            for (field, expected) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let value = info_field(&info, field).unwrap_or_default();
                if value != expected {
                    return Err(format!("{port} reports {field}:{value}"));
                }
            }
            let text: String = query(port, redis::cmd("CLUSTER").arg("NODES"))
                .await
                .map_err(|e| format!("CLUSTER NODES on {port}: {e}"))?;
            let view = self.view_of(port, &parse_cluster_nodes(&text))?;
            match &agreed {
                None => agreed = Some((port, view)),
                Some((first, first_view)) if *first_view != view => {
                    return Err(format!(
                        "{port} and {first} disagree: {view:?} versus {first_view:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        let (_, agreement) = agreed.ok_or_else(|| "no node is running".to_owned())?;
        for (&port, primary) in &agreement.roles {
            let replication: String = query(port, redis::cmd("INFO").arg("replication"))
                .await
                .map_err(|e| format!("INFO replication on {port}: {e}"))?;
            let role = info_field(&replication, "role").unwrap_or_default();
            match primary {
                None if role != "master" => {
                    return Err(format!("{port} is a primary but its role is {role}"));
                }
                Some(primary) => {
                    let master_port = info_field(&replication, "master_port").unwrap_or_default();
                    let link = info_field(&replication, "master_link_status").unwrap_or_default();
                    if role != "slave" || master_port != primary.to_string() || link != "up" {
                        return Err(format!(
                            "{port} is a replica of {primary} but reports role:{role} \
                             master_port:{master_port} master_link_status:{link}"
                        ));
                    }
                }
                None => {}
            }
        }
        Ok(agreement)
    }

    /// One node's view of the running nodes, checked.
    fn view_of(&self, port: u16, entries: &[NodeEntry]) -> Result<Agreement, String> {
        let by_id: HashMap<&str, &NodeEntry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
        let port_of_id: HashMap<&str, u16> = self
            .nodes
            .iter()
            .map(|node| (node.id.as_str(), node.port))
            .collect();
        let mut roles = BTreeMap::new();
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let entry = by_id
                .get(node.id.as_str())
                .ok_or_else(|| format!("{port} does not know {} yet", node.port))?;
            if entry.is_failing() {
                return Err(format!(
                    "{port} flags {} as {}",
                    node.port,
                    entry.flags.join(",")
                ));
            }
            let primary = match (&entry.primary_id, entry.is_primary()) {
                (None, true) => None,
                (Some(primary_id), false) => {
                    Some(*port_of_id.get(primary_id.as_str()).ok_or_else(|| {
                        format!("{port} sees {} replicate an unknown node", node.port)
                    })?)
                }
                _ => {
                    return Err(format!(
                        "{port} sees {} as {} of {:?}",
                        node.port,
                        entry.flags.join(","),
                        entry.primary_id
                    ))
                }
            };
            roles.insert(node.port, primary);
        }
        let mut ranges: Vec<(u16, u16, &str)> = entries
            .iter()
            .filter(|e| e.is_primary())
            .flat_map(|e| e.slots.iter().map(|&(s, t)| (s, t, e.id.as_str())))
            .collect();
        ranges.sort_unstable();
        let mut owners: Vec<(u16, u16, u16)> = Vec::new();
        let mut next = 0u32;
        for (start, end, id) in ranges {
            if u32::from(start) != next {
                return Err(format!(
                    "{port} sees slot {next} unassigned or doubly assigned"
                ));
            }
            let owner = match port_of_id.get(id) {
                Some(&owner) if self.is_running(owner) => owner,
                _ => {
                    return Err(format!(
                        "{port} sees slots {start}-{end} served by {id}, not running"
                    ))
                }
            };
            match owners.last_mut() {
                Some(last) if last.2 == owner && u32::from(last.1) + 1 == u32::from(start) => {
                    last.1 = end;
                }
                _ => owners.push((start, end, owner)),
            }
            next = u32::from(end) + 1;
        }
        if next != u32::from(SLOTS) {
            return Err(format!("{port} sees slots from {next} unassigned"));
        }
        Ok(Agreement { owners, roles })
    }

    /// `CLUSTER NODES` of the first running node that answers.
    async fn entries(&self) -> Vec<NodeEntry> {
        let mut errors = Vec::new();
        for port in self.running_ports() {
            match query::<String>(port, redis::cmd("CLUSTER").arg("NODES")).await {
                Ok(text) => return parse_cluster_nodes(&text),
                Err(e) => errors.push(format!("{port}: {e}")),
            }
        }
        panic!("no running node answers CLUSTER NODES: {errors:?}");
    }

    /// [`Self::entries`], blocking the thread.
    fn entries_blocking(&self) -> Vec<NodeEntry> {
        let mut errors = Vec::new();
        for port in self.running_ports() {
            match query_blocking::<String>(port, redis::cmd("CLUSTER").arg("NODES")) {
                Ok(text) => return parse_cluster_nodes(&text),
                Err(e) => errors.push(format!("{port}: {e}")),
            }
        }
        panic!("no running node answers CLUSTER NODES: {errors:?}");
    }

    fn is_known_running(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|node| node.port == port && node.child.is_some())
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "--- redis-server on port {} ({}):\n{}",
                    node.port,
                    node.id,
                    log_tail(&node.dir, 30)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A slot being moved, see [`RedisCluster::begin_migration`].
#[derive(Debug)]
pub struct Migration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: u16,
    target: u16,
    target_id: String,
}

impl Migration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of its owner (`MIGRATING`).
    pub fn source(&self) -> u16 {
        self.source
    }

    /// The port of its new owner (`IMPORTING`).
    pub fn target(&self) -> u16 {
        self.target
    }

    /// Moves up to `count` of the slot's keys from the source to the target (`CLUSTER
    /// GETKEYSINSLOT` then `MIGRATE ... KEYS`); returns how many it moved.
    pub async fn move_keys(&self, count: usize) -> usize {
        let (slot, source, target) = (self.slot, self.source, self.target);
        let keys: Vec<Vec<u8>> = query(
            source,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(count),
        )
        .await
        .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {source}: {e}"));
        if keys.is_empty() {
            return 0;
        }
        let _: redis::Value = query(
            source,
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(target)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys),
        )
        .await
        .unwrap_or_else(|e| panic!("MIGRATE of slot {slot} from {source} to {target}: {e}"));
        keys.len()
    }

    /// Moves the remaining keys, assigns the slot to the target (`CLUSTER SETSLOT <slot> NODE` on
    /// the target, the source, then every other primary) and waits until every node agrees.
    pub async fn finish(self) {
        while self.move_keys(100).await > 0 {}
        let (slot, target) = (self.slot, self.target);
        let mut order = vec![self.target, self.source];
        order.extend(
            self.cluster
                .entries()
                .await
                .iter()
                .filter(|e| e.is_primary() && !e.is_failing())
                .map(|e| e.port)
                .filter(|port| !order.contains(port) && self.cluster.is_known_running(*port))
                .collect::<Vec<_>>(),
        );
        for port in order {
            let _: () = query(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&self.target_id),
            )
            .await
            .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} NODE on {port}: {e}"));
        }
        let (cluster, source) = (self.cluster, self.source);
        cluster
            .wait_for(
                &format!("every node to see slot {slot} served by {target}"),
                move || async move {
                    let agreement = cluster.agreement().await?;
                    let owner = agreement
                        .owners
                        .iter()
                        .find(|&&(start, end, _)| (start..=end).contains(&slot))
                        .map(|&(_, _, owner)| owner);
                    if owner != Some(target) {
                        return Err(format!("slot {slot} is still served by {owner:?}"));
                    }
                    // No `[slot-<-id]` / `[slot->-id]` marker left on either side.
                    for port in [source, target] {
                        let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES"))
                            .await
                            .map_err(|e| format!("CLUSTER NODES on {port}: {e}"))?;
                        if nodes.contains(&format!("[{slot}-")) {
                            return Err(format!("{port} still marks slot {slot} as moving"));
                        }
                    }
                    Ok(())
                },
            )
            .await;
    }
}

/// The nodes' `cluster-node-timeout`: `SWITCHBOARD_CLUSTER_NODE_TIMEOUT_MS`, else 1,000 ms.
fn node_timeout_ms() -> String {
    std::env::var("SWITCHBOARD_CLUSTER_NODE_TIMEOUT_MS")
        .ok()
        .filter(|v| v.parse::<u64>().is_ok())
        .unwrap_or_else(|| "1000".to_owned())
}

fn spawn_node(server: &Path, port: u16, dir: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("a node's log file");
    Command::new(server)
        .current_dir(dir)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        // 1 s: failovers within about 2 s. A benchmark sets a longer one
        // (`SWITCHBOARD_CLUSTER_NODE_TIMEOUT_MS`), so that the cluster bus costs next to nothing.
        .args(["--cluster-node-timeout", &node_timeout_ms()])
        // A replica may always take over, however long it was cut off from its primary.
        .args(["--cluster-replica-validity-factor", "0"])
        // No replica moves to another primary, no emptied primary turns into a replica.
        .args(["--cluster-allow-replica-migration", "no"])
        // Replicas sync at once: the default diskless sync waits 5 s for more replicas to come.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a node's log file"))
        .stderr(log)
        .spawn()
        .expect("redis-server starts")
}

/// Waits until the node on `port` answers, and is this child (not another test's server).
async fn wait_for_process(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + NODE_START;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("it exited ({status})"));
        }
        if let Ok(info) = query::<String>(port, redis::cmd("INFO").arg("server")).await {
            if info_field(&info, "process_id") == Some(child.id().to_string().as_str()) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("it did not answer within {NODE_START:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `role` of `INFO replication`.
async fn role(port: u16) -> Result<String, String> {
    let replication: String = query(port, redis::cmd("INFO").arg("replication"))
        .await
        .map_err(|e| format!("INFO replication on {port}: {e}"))?;
    Ok(info_field(&replication, "role")
        .unwrap_or_default()
        .to_owned())
}

/// A field of an `INFO` or `CLUSTER INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

async fn connect(port: u16) -> RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One command on a fresh connection to one node.
async fn query<T: FromRedisValue>(port: u16, cmd: &Cmd) -> RedisResult<T> {
    let mut connection = connect(port).await?;
    cmd.query_async(&mut connection).await
}

/// [`query`], blocking the thread.
fn query_blocking<T: FromRedisValue>(port: u16, cmd: &Cmd) -> RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut connection = client.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    cmd.query(&mut connection)
}

fn format_entries(entries: &[NodeEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{e:?}\n"))
        .collect::<String>()
}

/// The last `lines` lines of a node's log.
fn log_tail(dir: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
