//! The built binary under signals: SIGTERM drains in-flight requests and exits 0, JSON logs
//! parse, and a new process can take over the address while the old one drains (SO_REUSEPORT)
//! without a failed request.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

fn config_file(name: &str, listen: &str, upstream: SocketAddr) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sessiongate-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"http://{upstream}\"\nthreads = 1\n[cookie]\nsecure = false\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .arg("-c")
        .arg(config)
        .env("SESSION_SECRET", SECRET)
        .env("SESSION_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Proc {
        child,
        lines,
        log: Vec::new(),
    }
}

impl Proc {
    /// Reads log lines until one whose message is `msg`; returns it parsed.
    async fn wait_for(&mut self, msg: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
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

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exits within the grace period")
            .unwrap();
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        status.code().expect("exited, not killed by a signal")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    trace_init();
    // An upstream whose /slow answers only when released.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let arrived_tx = arrived_tx.clone();
            let released = released.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).starts_with("GET /slow") {
                    let _ = arrived_tx.send(());
                    released.notified().await;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone",
                    )
                    .await;
            });
        }
    });

    let mut proc = spawn(&config_file("drain.toml", "127.0.0.1:0", up));
    let started = proc.wait_for("sessiongate listening").await;
    let addr: SocketAddr = started["addr"].as_str().unwrap().parse().unwrap();

    let slow = tokio::spawn(async move {
        raw(
            addr,
            b"GET /slow?token=abc HTTP/1.1\r\nhost: x\r\ncookie: session=forged\r\n\r\n",
        )
        .await
    });
    arrived_rx
        .recv()
        .await
        .expect("slow request reached the upstream");
    proc.signal("-TERM");
    proc.wait_for("shutting down: draining connections").await;
    // New connections are refused once draining started.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    release.notify_one();
    let answer = slow.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "in-flight request lost: {answer}"
    );
    assert!(answer.ends_with("done"));
    assert_eq!(proc.exit_code().await, 0);

    // Every line is JSON; the access line has the SPEC fields and no secrets.
    let access: Vec<serde_json::Value> = proc
        .log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "sessiongate::access")
        .collect();
    assert_eq!(access.len(), 1, "{:?}", proc.log);
    let a = &access[0];
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/slow", "query must not be logged");
    assert_eq!(a["status"], 200);
    assert_eq!(a["session"], "invalid");
    assert!(a["duration_ms"].is_number());
    let all = proc.log.join("\n");
    for secret in ["token=abc", "forged", SECRET, UPSTREAM_SECRET] {
        assert!(!all.contains(secret), "log leaks {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_traffic_loses_no_request() {
    trace_init();
    let app = app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let config = config_file("restart.toml", &listen, app.addr);

    let mut old = spawn(&config);
    old.wait_for("sessiongate listening").await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = format!("http://{listen}/");
            tokio::spawn(async move {
                let client = support::client();
                // Bounded: at most 60 s of traffic.
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    match client.request(req).await {
                        Ok(res) if res.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(res) => failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", res.status())),
                        Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect();

    let served_before = |ok: &AtomicUsize| ok.load(Ordering::Relaxed);
    eventually(
        || served_before(&ok) > 200,
        "traffic through the old process",
    )
    .await;
    let mut new = spawn(&config);
    new.wait_for("sessiongate listening").await;
    old.signal("-TERM");
    assert_eq!(old.exit_code().await, 0);
    let after_old_exit = ok.load(Ordering::Relaxed);
    eventually(
        || ok.load(Ordering::Relaxed) > after_old_exit + 200,
        "traffic through the new process",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok.load(Ordering::Relaxed) + failed.len(),
        &failed[..failed.len().min(5)]
    );
    new.signal("-TERM");
    assert_eq!(new.exit_code().await, 0);
}
