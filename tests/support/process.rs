//! The built `sessiongate` binary as a child process: started with a config file, its JSON
//! log read line by line, signalled, and waited for.
//!
//! A binary is never handed a port the test found free and then released: another process
//! could take it in between, and the test would then talk to that one. The config listens on
//! `127.0.0.1:0` and [`GateProcess::listening`] reads the address the binary got from its
//! `sessiongate listening` log line; a second process that is to share that address (it is
//! bound with `SO_REUSEPORT`) is given the address the first one still holds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::gate::{SECRET, UPSTREAM_SECRET};

/// How long a log line or an exit may take to come.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running `sessiongate` binary, killed on drop. Its config must set
/// `[log] format = "json"`: every stdout line is parsed as JSON.
pub struct GateProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

/// Runs the binary with `-c config`, [`SECRET`], [`UPSTREAM_SECRET`] and `RUST_LOG=info`;
/// stdout is read as the JSON log, stderr goes to the test's.
pub fn spawn_binary(config: &Path) -> GateProcess {
    spawn(Command::new(env!("CARGO_BIN_EXE_sessiongate")), config)
}

/// [`spawn_binary`] with the descriptor limit (soft and hard) set to `nofile`, through
/// `sh`'s `ulimit`.
pub fn spawn_binary_with_nofile(config: &Path, nofile: u32) -> GateProcess {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_sessiongate"));
    spawn(sh, config)
}

fn spawn(mut command: Command, config: &Path) -> GateProcess {
    let mut child = command
        .arg("-c")
        .arg(config)
        .env_remove("SESSION_SECRET_PREVIOUS")
        .env("SESSION_SECRET", SECRET)
        .env("SESSION_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the sessiongate binary runs");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    GateProcess {
        child,
        lines,
        log: Vec::new(),
    }
}

impl GateProcess {
    /// Reads log lines until one whose message is `msg`; returns it parsed.
    pub async fn wait_for(&mut self, msg: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {msg:?} log line; saw {:?}", self.log))
                .unwrap_or_else(|| panic!("process exited before {msg:?}; saw {:?}", self.log));
            self.log.push(line.clone());
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["message"] == msg {
                return v;
            }
        }
    }

    /// Waits until the proxy listens and returns the address it is bound to.
    pub async fn listening(&mut self) -> SocketAddr {
        let line = self.wait_for("sessiongate listening").await;
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no socket address in {line}"))
    }

    /// Every log line read so far.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process has not been reaped")
    }

    /// Sends `sig` (e.g. `-TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(ok.success(), "kill {sig} failed");
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("the child can be polled")
            .is_none()
    }

    /// Waits for the process to exit (40 s at most), keeps the rest of its log, and returns
    /// its exit code.
    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("the child can be waited for");
        // The rest of stdout, up to its end.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            self.log.push(line);
        }
        status.code().expect("exited, not killed by a signal")
    }
}
