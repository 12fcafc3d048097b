//! A Redis master, one replica and `redis-sentinel` processes watching them (three with
//! quorum 2 unless asked otherwise), all on free loopback ports in temporary directories and killed on drop. Readiness
//! is awaited by polling with a deadline, never by sleeping.
//!
//! Without `redis-server`, `redis-sentinel` or `redis-cli` on `PATH` the constructor prints
//! `skipping: ... not found on PATH` and returns `None`, except under `CI=true`, where it
//! panics (see [`redis_server`](super::redis_server)).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{POLL, READY_DEADLINE, RedisServer, free_port, require, temp_dir};

/// The master name the Sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";
/// How long a failover may take, from the command to the Sentinels naming the new master.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);

/// One `redis-sentinel` child process.
pub struct SentinelProcess {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelProcess {
    /// Starts a Sentinel monitoring the master on `master_port` with `quorum`, and waits
    /// until it names that master.
    fn start(master_port: u16, quorum: u32) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = temp_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            let log = dir.join("sentinel.log");
            // Sentinel rewrites its file, so it lives in the temp dir.
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                 sentinel failover-timeout {MASTER_NAME} 20000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).expect("the temp dir is writable");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel runs");
            let mut sentinel = Self {
                port,
                dir,
                child: Some(child),
            };
            match sentinel.wait_ready(master_port) {
                Ok(()) => return sentinel,
                Err(e) => last = e,
            }
        }
        panic!("redis-sentinel did not start: {last}");
    }

    fn wait_ready(&mut self, master_port: u16) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if self.master_port().ok() == Some(master_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no master named within {READY_DEADLINE:?}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// The port of the master this Sentinel names now.
    pub fn master_port(&self) -> Result<u16, String> {
        let (_host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .query(&mut self.connection().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(port)
    }

    /// The ports of the replicas this Sentinel lists for the master and sees up.
    fn replica_ports(&self) -> Result<Vec<u16>, String> {
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(MASTER_NAME)
            .query(&mut self.connection().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(replicas
            .iter()
            .filter(|r| r.get("flags").is_some_and(|f| f == "slave"))
            .filter_map(|r| r.get("port")?.parse().ok())
            .collect())
    }

    /// `SENTINEL FAILOVER mymaster` with `redis-cli`: `Ok` once accepted, else the answer
    /// (e.g. `NOGOODSLAVE` while the replica is not known yet).
    fn failover(&self) -> Result<(), String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["sentinel", "failover", MASTER_NAME])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && answer == "OK" {
            Ok(())
        } else {
            Err(format!("{answer}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, its replica, and Sentinels watching them.
pub struct SentinelGroup {
    /// Index 0 starts as the master, index 1 as its replica.
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

impl SentinelGroup {
    /// Starts the servers and three Sentinels (quorum 2) and waits until every Sentinel
    /// names the master; `None` (test skipped) without the programs.
    pub fn start() -> Option<Self> {
        Self::start_with(3)
    }

    /// As [`start`](Self::start) with `count` Sentinels, the quorum a majority of them.
    pub fn start_with(count: u32) -> Option<Self> {
        require("redis-server")?;
        require("redis-sentinel")?;
        require("redis-cli")?;
        let master = RedisServer::start()?;
        // The replica's first sync starts at once rather than after the default 5 s.
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg(0)
            .query(&mut master.connection())
            .expect("the master takes CONFIG SET");
        let replica = RedisServer::start_replica_of(master.port)?;
        let sentinels = (0..count)
            .map(|_| SentinelProcess::start(master.port, count / 2 + 1))
            .collect();
        let group = Self {
            nodes: vec![master, replica],
            sentinels,
        };
        group.wait_replicated();
        Some(group)
    }

    /// The Sentinel URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProcess::url).collect()
    }

    /// The port of the master the first Sentinel names.
    pub fn master_port(&self) -> u16 {
        self.sentinels[0]
            .master_port()
            .expect("the sentinel answers")
    }

    /// The group's node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("the port is one of the group's nodes")
    }

    /// `INFO replication` of the server on `port`, as `field:value` lines.
    fn replication(&self, port: u16) -> String {
        redis::cmd("INFO")
            .arg("replication")
            .query(&mut self.node(port).connection())
            .unwrap_or_default()
    }

    /// Polls until the replica of the current master is linked to it and has processed
    /// every byte the master has written: what the master holds, the replica holds.
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let master = self.master_port();
            let field = |info: &str, name: &str| -> Option<String> {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            };
            let info = self.replication(master);
            let offset = field(&info, "master_repl_offset");
            let replica = self.nodes.iter().find(|n| n.port != master).map(|n| n.port);
            let caught_up = replica.is_some_and(|port| {
                let r = self.replication(port);
                field(&r, "master_link_status").as_deref() == Some("up")
                    && field(&r, "master_port") == Some(master.to_string())
                    && field(&r, "slave_repl_offset") == offset
            });
            if caught_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not catch up with the master on port {master} within {READY_DEADLINE:?}: {info}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Polls until every Sentinel lists the replica of the current master, up (they find
    /// replicas by asking the master, every 10 seconds).
    pub fn wait_replica_listed(&self) {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        loop {
            let master = self.master_port();
            let replica = self.nodes.iter().find(|n| n.port != master).map(|n| n.port);
            let listed: Vec<Result<Vec<u16>, String>> = self
                .sentinels
                .iter()
                .map(SentinelProcess::replica_ports)
                .collect();
            if listed.iter().all(|l| {
                l.as_ref()
                    .is_ok_and(|ports| replica.is_some_and(|r| ports.contains(&r)))
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not list the replica {replica:?} within {FAILOVER_DEADLINE:?}: {listed:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Asks a Sentinel for a failover (again while it has no suitable replica yet) and
    /// waits until every Sentinel names the new master; returns its port.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        while let Err(answer) = self.sentinels[0].failover() {
            assert!(
                Instant::now() < deadline,
                "SENTINEL FAILOVER not accepted: {answer}"
            );
            std::thread::sleep(POLL);
        }
        self.wait_master_other_than(old)
    }

    /// Polls until every Sentinel names the same master, other than the one on port
    /// `old`; returns its port.
    pub fn wait_master_other_than(&self, old: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        loop {
            let ports: Vec<Result<u16, String>> = self
                .sentinels
                .iter()
                .map(SentinelProcess::master_port)
                .collect();
            if let Ok(new) = &ports[0]
                && *new != old
                && ports.iter().all(|p| p == &ports[0])
            {
                return *new;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not agree on a new master within {FAILOVER_DEADLINE:?}: {ports:?}"
            );
            std::thread::sleep(POLL);
        }
    }
}
