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
    cluster: bool,
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
    cluster: bool,
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
    if cluster {
        command
            .args(["--cluster-enabled", "yes"])
            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .args(["--cluster-node-timeout", "2000"]);
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
        let (port, process) = spawn_server(&server, &certificates, dir.path(), false).await;
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
            false,
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

/// A Redis Cluster of TLS-only primaries (no replicas).
#[derive(Debug)]
pub struct TlsCluster {
    // Dropped in this order: the processes, then their files.
    processes: Vec<Option<Process>>,
    pub ports: Vec<u16>,
    binary: PathBuf,
    dirs: Vec<TempDir>,
    pub certificates: Certificates,
}

impl TlsCluster {
    pub async fn start(primaries: usize) -> Option<Self> {
        Self::start_with(primaries, Certificates::new()).await
    }

    /// A cluster whose nodes present certificates signed for these names.
    pub async fn start_with(primaries: usize, certificates: Certificates) -> Option<Self> {
        let (server, cli) = binaries()?;
        let mut cluster = Self {
            processes: Vec::new(),
            ports: Vec::new(),
            binary: server.clone(),
            dirs: Vec::new(),
            certificates,
        };
        for _ in 0..primaries {
            let dir = TempDir::new("node");
            let (port, process) =
                spawn_server(&server, &cluster.certificates, dir.path(), true).await;
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
            true,
            self.ports[index],
        )
        .await
        .unwrap_or_else(|log| panic!("TLS cluster node did not restart:\n{log}"));
        self.processes[index] = Some(process);
        self.wait_until_ok().await;
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
