//! The built binary under signals: SIGTERM drains in-flight requests and exits 0, JSON logs
//! parse, and a new process can take over the address while the old one drains (SO_REUSEPORT)
//! without a failed request.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

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

    let mut proc = spawn_binary(&config_file("drain.toml", "127.0.0.1:0", up));
    let addr = proc.listening().await;

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
        .log()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "sessiongate::access")
        .collect();
    assert_eq!(access.len(), 1, "{:?}", proc.log());
    let a = &access[0];
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/slow", "query must not be logged");
    assert_eq!(a["status"], 200);
    assert_eq!(a["session"], "invalid");
    assert!(a["duration_ms"].is_number());
    let all = proc.log().join("\n");
    for secret in ["token=abc", "forged", SECRET, UPSTREAM_SECRET] {
        assert!(!all.contains(secret), "log leaks {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_traffic_loses_no_request() {
    trace_init();
    let app = app().await;
    // The old process takes a port; the new one binds the port the old one still holds.
    let mut old = spawn_binary(&config_file("restart-old.toml", "127.0.0.1:0", app.addr));
    let listen = old.listening().await;
    let config = config_file("restart-new.toml", &listen.to_string(), app.addr);

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
    let mut new = spawn_binary(&config);
    assert_eq!(new.listening().await, listen);
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
