//! Real `redis-server` processes that speak only TLS (`--port 0 --tls-port P`), with a private CA
//! made at test time: one server, or a Redis Cluster of primaries (`--tls-cluster yes`) formed
//! with `redis-cli --tls --cluster create`.
//!
//! `None` where `redis-server` or `redis-cli` is not on `PATH`, unless
//! `SWITCHBOARD_REQUIRE_CLUSTER` is set (CI): then the start panics. Dropping a server or a
//! cluster kills its processes and removes its temporary directory.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "binaries.rs"]
mod binaries;
use binaries::{cluster_required, find_binary, free_cluster_port};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// How long a server may take to answer, and a cluster to settle.
const WAIT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `redis-server` and `redis-cli`, or `None` (a skip) unless they are required.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    match (find_binary("redis-server"), find_binary("redis-cli")) {
        (Some(server), Some(cli)) => Some((server, cli)),
        _ => {
            assert!(
                !cluster_required(),
                "SWITCHBOARD_REQUIRE_CLUSTER is set but redis-server or redis-cli is not on PATH \
                 (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server or redis-cli not found (set SWITCHBOARD_REQUIRE_CLUSTER=1 to fail instead)");
            None
        }
    }
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-tls-{what}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private CA and a server certificate it signed, for `127.0.0.1` and `localhost`, as PEM
/// files in a temporary directory.
#[derive(Debug)]
pub struct Certificates {
    pub dir: TempDir,
    /// The first name the server certificate is for: where the harness reaches the servers.
    pub host: String,
    /// The CA's certificate (PEM): what a client must trust.
    pub ca_pem: String,
}

impl Certificates {
    /// For `127.0.0.1` and `localhost`.
    pub fn new() -> Self {
        Self::for_names(&["127.0.0.1", "localhost"])
    }

    /// A server certificate whose subject alternative names are `names` (IP addresses or DNS
    /// names).
    pub fn for_names(names: &[&str]) -> Self {
        let dir = TempDir::new("certs");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut server_params = CertificateParams::new(names.clone()).unwrap();
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redis test server");
        let server_key = KeyPair::generate().unwrap();
        let server = server_params.signed_by(&server_key, &ca).unwrap();
        let ca_pem = ca.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Self {
            dir,
            host: names[0].clone(),
            ca_pem,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn tls_args(&self) -> Vec<String> {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// The PEM of a CA certificate that signed nothing the servers use.
pub fn unrelated_ca_pem() -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap())
        .unwrap()
        .pem()
}

/// One `redis-server` child, killed on drop.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a TLS-only `redis-server` on a free port in `dir` and waits until it answers a TLS
/// `PING`; retries on another port if it could not bind.
async fn spawn_server(
    binary: &Path,
    certificates: &Certificates,
    dir: &Path,
    cluster: Option<&[String]>,
) -> (u16, Process) {
    for attempt in 1..=5 {
        let port = free_cluster_port();
        match spawn_on(binary, certificates, dir, cluster, port).await {
            Ok(process) => return (port, process),
            Err(log) => eprintln!(
                "TLS redis-server on port {port} did not start (attempt {attempt}):\n{log}"
            ),
        }
    }
    panic!("TLS redis-server did not start");
}

/// Spawns a TLS-only `redis-server` on `port` in `dir` and waits until it answers a TLS `PING`;
/// its log when it does not.
async fn spawn_on(
    binary: &Path,
    certificates: &Certificates,
    dir: &Path,
    cluster: Option<&[String]>,
    port: u16,
) -> Result<Process, String> {
    let mut command = Command::new(binary);
    command
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(certificates.tls_args())
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"));
    if let Some(extra) = cluster {
        command
            .args(["--cluster-enabled", "yes"])
            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .args(["--cluster-node-timeout", "2000"])
            // Replicas sync at once (the default diskless sync waits 5 s for more replicas), and
            // may always take over, however long they were cut off.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(extra);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let mut process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = process.0.try_wait() {
            break;
        }
        if query::<String>(certificates, port, &mut redis::cmd("PING"))
            .await
            .is_ok()
        {
            return Ok(process);
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Err(std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default())
}

/// One command on the TLS node at `port`, reached at the certificates' first name and trusting
/// their CA.
pub async fn query<T: redis::FromRedisValue>(
    certificates: &Certificates,
    port: u16,
    command: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::build_with_tls(
        format!("rediss://{}:{port}/", certificates.host),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(certificates.ca_pem.as_bytes().to_vec()),
        },
    )?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    command.query_async(&mut connection).await
}

/// A TLS-only `redis-server`.
#[derive(Debug)]
pub struct TlsRedis {
    // Dropped in this order: the process, then its files.
    process: Option<Process>,
    pub port: u16,
    binary: PathBuf,
    dir: TempDir,
    pub certificates: Certificates,
}

impl TlsRedis {
    pub async fn start() -> Option<Self> {
        let (server, _) = binaries()?;
        let certificates = Certificates::new();
        let dir = TempDir::new("server");
        let (port, process) = spawn_server(&server, &certificates, dir.path(), None).await;
        Some(Self {
            process: Some(process),
            port,
            binary: server,
            dir,
            certificates,
        })
    }

    /// Kills the server (its clients' connections are closed).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port (empty: nothing is saved).
    pub async fn restart(&mut self) {
        self.stop();
        let process = spawn_on(
            &self.binary,
            &self.certificates,
            self.dir.path(),
            None,
            self.port,
        )
        .await
        .unwrap_or_else(|log| panic!("TLS redis-server did not restart:\n{log}"));
        self.process = Some(process);
    }

    /// `rediss://127.0.0.1:P/`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

/// A Redis Cluster of TLS-only nodes.
#[derive(Debug)]
pub struct TlsCluster {
    // Dropped in this order: the processes, then their files.
    processes: Vec<Option<Process>>,
    pub ports: Vec<u16>,
    binary: PathBuf,
    dirs: Vec<TempDir>,
    pub certificates: Certificates,
    /// More arguments for every node.
    extra: Vec<String>,
}

impl TlsCluster {
    pub async fn start(primaries: usize) -> Option<Self> {
        Self::create(primaries, 0, Certificates::new(), Vec::new()).await
    }

    /// `primaries`, each with `replicas` replicas (replicating over TLS).
    pub async fn start_with_replicas(primaries: usize, replicas: usize) -> Option<Self> {
        Self::create(primaries, replicas, Certificates::new(), Vec::new()).await
    }

    /// A cluster whose nodes present certificates signed for these names.
    pub async fn start_with(primaries: usize, certificates: Certificates) -> Option<Self> {
        Self::create(primaries, 0, certificates, Vec::new()).await
    }

    /// A cluster whose nodes announce `hostname` instead of their IP address
    /// (`cluster-announce-hostname`, `cluster-preferred-endpoint-type hostname`).
    pub async fn start_announcing(
        primaries: usize,
        hostname: &str,
        certificates: Certificates,
    ) -> Option<Self> {
        let extra = ["--cluster-announce-hostname", hostname]
            .into_iter()
            .chain(["--cluster-preferred-endpoint-type", "hostname"])
            .map(str::to_owned)
            .collect();
        Self::create(primaries, 0, certificates, extra).await
    }

    async fn create(
        primaries: usize,
        replicas: usize,
        certificates: Certificates,
        extra: Vec<String>,
    ) -> Option<Self> {
        let (server, cli) = binaries()?;
        let mut cluster = Self {
            processes: Vec::new(),
            ports: Vec::new(),
            binary: server.clone(),
            dirs: Vec::new(),
            certificates,
            extra,
        };
        for _ in 0..primaries * (1 + replicas) {
            let dir = TempDir::new("node");
            let (port, process) = spawn_server(
                &server,
                &cluster.certificates,
                dir.path(),
                Some(&cluster.extra),
            )
            .await;
            cluster.ports.push(port);
            cluster.processes.push(Some(process));
            cluster.dirs.push(dir);
        }
        let mut create = Command::new(&cli);
        create
            .arg("--tls")
            .arg("--cacert")
            .arg(cluster.certificates.ca_file())
            .args(["--cluster", "create"]);
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || create.output())
            .await
            .unwrap()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --tls --cluster create failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_ok().await;
        if replicas > 0 {
            cluster
                .wait_until_replicas_synced(primaries * replicas)
                .await;
        }
        Some(cluster)
    }

    /// `rediss://<host>:P/` for every node, `<host>` the certificates' first name.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("rediss://{}:{port}/", self.certificates.host))
            .collect()
    }

    /// Kills node `index` and starts it again on its port, with its `nodes.conf` (so the same
    /// node, serving the same slots, empty), and waits until the cluster is whole again.
    pub async fn restart(&mut self, index: usize, down_for: Duration) {
        self.processes[index] = None;
        tokio::time::sleep(down_for).await;
        let process = spawn_on(
            &self.binary,
            &self.certificates,
            self.dirs[index].path(),
            Some(&self.extra),
            self.ports[index],
        )
        .await
        .unwrap_or_else(|log| panic!("TLS cluster node did not restart:\n{log}"));
        self.processes[index] = Some(process);
        self.wait_until_ok().await;
    }

    /// `(primary, replica)` ports, one pair per primary that has a replica, as the first
    /// running node sees them.
    pub async fn shards(&self) -> Vec<(u16, u16)> {
        let port = self.running_ports()[0];
        let nodes: String = query(&self.certificates, port, redis::cmd("CLUSTER").arg("NODES"))
            .await
            .expect("CLUSTER NODES over TLS");
        // `<id> <host>:<port>@<bus> <flags> <primary id or -> ...`
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        let port_of = |id: &str| -> u16 {
            let line = lines.iter().find(|l| l[0] == id).expect("a known node");
            let address = line[1].split('@').next().unwrap();
            address.rsplit(':').next().unwrap().parse().unwrap()
        };
        let mut shards: Vec<(u16, u16)> = lines
            .iter()
            .filter(|l| l[2].contains("slave") && l[3] != "-")
            .map(|l| (port_of(l[3]), port_of(l[0])))
            .collect();
        shards.sort_unstable();
        shards
    }

    /// Kills the node on `port` (SIGKILL; it stays down).
    pub fn kill(&mut self, port: u16) {
        let index = self.index_of(port);
        self.processes[index] = None;
    }

    /// `CLUSTER FAILOVER` on the replica at `port`, and waits until it is a primary.
    pub async fn failover(&self, port: u16) {
        let _: String = query(
            &self.certificates,
            port,
            redis::cmd("CLUSTER").arg("FAILOVER"),
        )
        .await
        .expect("CLUSTER FAILOVER over TLS");
        self.wait_for_primary(port).await;
    }

    /// Until the node on `port` says it is a primary (`ROLE`) and the others agree
    /// (`cluster_state:ok` everywhere that runs).
    pub async fn wait_for_primary(&self, port: u16) {
        let deadline = Instant::now() + WAIT;
        loop {
            let role: Vec<redis::Value> = query(&self.certificates, port, &mut redis::cmd("ROLE"))
                .await
                .unwrap_or_default();
            let primary =
                matches!(role.first(), Some(redis::Value::BulkString(kind)) if kind == b"master");
            let mut ok = primary;
            for other in self.running_ports() {
                let info: String =
                    query(&self.certificates, other, redis::cmd("CLUSTER").arg("INFO"))
                        .await
                        .unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let nodes: String = query(
                    &self.certificates,
                    self.running_ports()[0],
                    redis::cmd("CLUSTER").arg("NODES"),
                )
                .await
                .unwrap_or_default();
                let log = std::fs::read_to_string(
                    self.dirs[self.index_of(port)].path().join("redis.log"),
                )
                .unwrap_or_default();
                panic!("the TLS node on port {port} did not become a primary (role {role:?}):\n{nodes}\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        query(
            &self.certificates,
            self.running_ports()[0],
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
        .expect("CLUSTER KEYSLOT over TLS")
    }

    /// The port of the primary that serves `slot`, as the node on `port` sees it.
    async fn owner_seen_by(&self, port: u16, slot: u16) -> Option<u16> {
        let ranges: Vec<Vec<redis::Value>> =
            query(&self.certificates, port, redis::cmd("CLUSTER").arg("SLOTS"))
                .await
                .ok()?;
        ranges.iter().find_map(|range| {
            let int = |value: &redis::Value| match value {
                redis::Value::Int(n) => Some(*n),
                _ => None,
            };
            let (start, end) = (int(range.first()?)?, int(range.get(1)?)?);
            if !(start..=end).contains(&i64::from(slot)) {
                return None;
            }
            let redis::Value::Array(primary) = range.get(2)? else {
                return None;
            };
            u16::try_from(int(primary.get(1)?)?).ok()
        })
    }

    /// The primary that serves `slot`, as the first running node sees it.
    pub async fn owner_of_slot(&self, slot: u16) -> u16 {
        self.owner_seen_by(self.running_ports()[0], slot)
            .await
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// Moves `slot` (holding no key) to the primary on `to`: `SETSLOT IMPORTING` and
    /// `MIGRATING`, then `SETSLOT NODE` on every primary; waits until every running node agrees.
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of_slot(slot).await;
        let id = |port: u16| async move {
            query::<String>(&self.certificates, port, redis::cmd("CLUSTER").arg("MYID"))
                .await
                .expect("CLUSTER MYID over TLS")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let setslot = |port: u16, args: Vec<String>| async move {
            let mut command = redis::cmd("CLUSTER");
            command.arg("SETSLOT").arg(slot).arg(args);
            let _: String = query(&self.certificates, port, &mut command)
                .await
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT on {port}: {e}"));
        };
        setslot(to, vec!["IMPORTING".into(), from_id]).await;
        setslot(from, vec!["MIGRATING".into(), to_id.clone()]).await;
        setslot(to, vec!["NODE".into(), to_id.clone()]).await;
        setslot(from, vec!["NODE".into(), to_id.clone()]).await;
        let primaries: Vec<u16> = self.shards().await.iter().map(|(p, _)| *p).collect();
        for port in self.running_ports() {
            if port != to && port != from && (primaries.is_empty() || primaries.contains(&port)) {
                setslot(port, vec!["NODE".into(), to_id.clone()]).await;
            }
        }
        let deadline = Instant::now() + WAIT;
        for port in self.running_ports() {
            while self.owner_seen_by(port, slot).await != Some(to) {
                assert!(
                    Instant::now() < deadline,
                    "node {port} does not see slot {slot} on {to}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// How many sharded channels matching `pattern` the node on `port` has subscribers for.
    pub async fn shard_channels(&self, port: u16, pattern: &str) -> usize {
        let channels: Vec<String> = query(
            &self.certificates,
            port,
            redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(pattern),
        )
        .await
        .expect("PUBSUB SHARDCHANNELS over TLS");
        channels.len()
    }

    /// Until the first node knows `count` replicas (`redis-cli` makes them replicas after the
    /// cluster says ok, and the news travels by gossip) and every replica's link to its primary
    /// is up (a manual failover waits for it).
    async fn wait_until_replicas_synced(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        let shards = loop {
            let shards = self.shards().await;
            if shards.len() == count {
                break shards;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS cluster knows {} of {count} replicas",
                shards.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (_, replica) in shards {
            loop {
                let info: String = query(
                    &self.certificates,
                    replica,
                    redis::cmd("INFO").arg("replication"),
                )
                .await
                .unwrap_or_default();
                if info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the TLS replica on port {replica} did not sync:\n{info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn index_of(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|p| *p == port)
            .unwrap_or_else(|| panic!("no TLS node on port {port}"))
    }

    fn running_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.processes)
            .filter(|(_, process)| process.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// Until every node says `cluster_state:ok` and knows every other node.
    async fn wait_until_ok(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut ok = true;
            for &port in &self.ports {
                let info: String =
                    query(&self.certificates, port, redis::cmd("CLUSTER").arg("INFO"))
                        .await
                        .unwrap_or_default();
                let known = format!("cluster_known_nodes:{}", self.ports.len());
                ok &= info.contains("cluster_state:ok") && info.contains(&known);
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS cluster on ports {:?} did not settle",
                self.ports
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
