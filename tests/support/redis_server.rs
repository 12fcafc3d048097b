//! Real `redis-server` processes for tests: one server, or a three-primary Redis Cluster,
//! each on free loopback ports, in a temporary directory, without persistence, and killed
//! on drop. Readiness is awaited by polling with a deadline, never by sleeping.
//!
//! When `redis-server` is not on `PATH` the constructors print
//! `skipping: redis-server not found on PATH` and return `None` (the test returns early),
//! except under `CI=true`, where they panic: CI must run these tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server (or a cluster) may take to answer after it is started.
pub(super) const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two readiness probes.
pub(super) const POLL: Duration = Duration::from_millis(20);

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `Some(())` when `name` is an executable on `PATH`; otherwise skips or, in CI, panics.
pub(super) fn require(name: &str) -> Option<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if found {
        return Some(());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{name} not found on PATH; CI must install it (apt-get install redis-server redis-tools redis-sentinel)"
        );
    }
    println!("skipping: {name} not found on PATH");
    None
}

/// A loopback port nobody listens on right now.
pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

pub(super) fn temp_dir(tag: &str) -> PathBuf {
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sessiongate-{tag}-{}-{n}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    dir
}

/// Sends `signal` (e.g. `-STOP`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// One `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port; `None` (test skipped) without `redis-server`.
    pub fn start() -> Option<Self> {
        require("redis-server")?;
        Some(Self::start_with_args(|_, _| Vec::new(), "redis"))
    }

    /// Starts a server with extra arguments built from its port and directory; retries on
    /// another port if the chosen one was taken meanwhile.
    fn start_with_args(extra: impl Fn(u16, &Path) -> Vec<String>, tag: &str) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = temp_dir(tag);
            let mut server = Self {
                port,
                extra: extra(port, &dir),
                dir,
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Starts a server replicating the one on `master_port` (loopback); `None` (test
    /// skipped) without `redis-server`.
    pub fn start_replica_of(master_port: u16) -> Option<Self> {
        require("redis-server")?;
        Some(Self::start_with_args(
            |_, _| {
                vec![
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master_port.to_string(),
                ]
            },
            "redis-replica",
        ))
    }

    /// Starts a server that also serves TLS, with a fresh self-signed certificate for
    /// `localhost`, on [`tls_port`](Self::tls_port); `None` (test skipped) without
    /// `redis-server` or `openssl`.
    pub fn start_tls() -> Option<(Self, u16)> {
        require("redis-server")?;
        require("openssl")?;
        let tls_port = free_port();
        let server = Self::start_with_args(
            |_, dir| {
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                let out = Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
                    .args(["-subj", "/CN=localhost", "-days", "1"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stdin(Stdio::null())
                    .output()
                    .expect("openssl runs");
                assert!(
                    out.status.success(),
                    "openssl req failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                vec![
                    "--tls-port".into(),
                    tls_port.to_string(),
                    "--tls-cert-file".into(),
                    cert.display().to_string(),
                    "--tls-key-file".into(),
                    key.display().to_string(),
                    "--tls-ca-cert-file".into(),
                    cert.display().to_string(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]
            },
            "redis-tls",
        );
        Some((server, tls_port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client for inspecting what the store wrote.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a loopback URL is valid")
    }

    /// A synchronous connection, for inspection.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("the test server answers")
    }

    /// Every key and its value held by this server, from a `SCAN` and a `GET` of each key.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut conn = self.connection();
        let mut scan = redis::cmd("SCAN");
        scan.cursor_arg(0);
        let keys: Vec<Vec<u8>> = scan
            .iter(&mut conn)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys.into_iter()
            .map(|key| {
                let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
                (key, value)
            })
            .collect()
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        signal(self.pid().expect("the server runs"), "-STOP");
    }

    /// Thaws a server frozen by [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid().expect("the server runs"), "-CONT");
    }

    /// Starts the server again on the same port (killing it first if it still runs) and
    /// waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("no PING answer within {READY_DEADLINE:?}"));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three primaries (no replicas), every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them; `None` (test skipped) without
    /// `redis-server` and `redis-cli`.
    pub fn start() -> Option<Self> {
        require("redis-server")?;
        require("redis-cli")?;
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with_args(
                    |_, dir| {
                        vec![
                            "--cluster-enabled".into(),
                            "yes".into(),
                            "--cluster-config-file".into(),
                            dir.join("nodes.conf").display().to_string(),
                            // The bus port defaults to port + 10000, which may be taken or
                            // out of range; pick a free one.
                            "--cluster-port".into(),
                            free_port().to_string(),
                            // Every write on disk before it is acknowledged, so a node
                            // killed and restarted comes back with all it held.
                            "--appendonly".into(),
                            "yes".into(),
                            "--appendfsync".into(),
                            "always".into(),
                        ]
                    },
                    "redis-cluster",
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        Some(cluster)
    }

    /// Polls `CLUSTER INFO` on every node until each reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + READY_DEADLINE;
        for node in &self.nodes {
            let client = node.client();
            loop {
                let info = client
                    .get_connection_with_timeout(Duration::from_millis(500))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
                if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster on port {} not ok within {READY_DEADLINE:?}",
                    node.port
                );
                std::thread::sleep(POLL);
            }
        }
    }

    /// The seed URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The seeds as a TOML array: `["redis://127.0.0.1:P1", ...]`.
    pub fn toml_list(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// A synchronous cluster connection, for inspection (follows redirects).
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .and_then(|c| c.get_connection())
            .expect("the test cluster answers")
    }
}
