//! `server.runtime` (README, Threads and runtimes): with `"per-core"` and `threads = 2`, two
//! current-thread runtimes each accept on their own listener of the shared address. Which
//! runtime accepted a connection is read from `sessiongate_runtime_accepted_connections_total`
//! around it, so every test knows it used both: a memory session created through one is
//! seen through the other, shutdown drains in-flight requests on both, the connection
//! ceiling counts both, and the binary restarts and reloads its certificate on both.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const PER_CORE: &str = "threads = 2\nruntime = \"per-core\"\nadmin_listen = \"127.0.0.1:0\"";

/// Connections accepted so far by each runtime, from the admin listener at `admin`.
async fn accepted_at(admin: SocketAddr) -> Vec<u64> {
    let res = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    let mut per_runtime: Vec<(usize, u64)> = res
        .lines()
        .filter_map(|l| {
            let rest =
                l.strip_prefix("sessiongate_runtime_accepted_connections_total{runtime=\"")?;
            let (runtime, value) = rest.split_once("\"} ")?;
            Some((runtime.parse().unwrap(), value.trim().parse().unwrap()))
        })
        .collect();
    per_runtime.sort_unstable();
    per_runtime.into_iter().map(|(_, n)| n).collect()
}

async fn accepted(gate: &Gate) -> Vec<u64> {
    accepted_at(gate.running.admin_addr.expect("admin listener configured")).await
}

/// The one runtime whose count went up between `before` and `after`.
fn which(before: &[u64], after: &[u64]) -> usize {
    let grew: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] > before.get(i).copied().unwrap_or(0))
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "one connection, one runtime: {before:?} -> {after:?}"
    );
    assert_eq!(after[grew[0]], before[grew[0]] + 1);
    grew[0]
}

/// `request` on a fresh connection (read until the server closes it) and the runtime that
/// accepted it.
async fn exchange(gate: &Gate, request: &str) -> (String, usize) {
    let before = accepted(gate).await;
    let res = raw(gate.addr, request.as_bytes()).await;
    (res, which(&before, &accepted(gate).await))
}

/// The `session=...` pair of a raw response's `Set-Cookie`.
fn session_pair(res: &str) -> String {
    res.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case("set-cookie") && v.trim().starts_with("session="))
                .then(|| v.trim().split(';').next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no session cookie in {res}"))
}

/// Sends `GET path` on `s` (keep-alive) and reads one whole response, within 10 seconds.
async fn roundtrip(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if body.len() >= len {
                    return text;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no response within 10 s")
}

async fn open_connections(gate: &Gate) -> i64 {
    let (_, text) = gate.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("sessiongate_client_connections "))
        .expect("the gauge is exported")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_memory_session_created_through_one_runtime_is_seen_through_the_other() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).server(PER_CORE).run().await;
    assert_eq!(accepted(&gate).await, vec![0, 0], "two runtimes");

    // A login through each runtime (the kernel picks the listener: try until both did).
    let mut cookies: [Option<String>; 2] = [None, None];
    for _ in 0..200 {
        let (res, runtime) = exchange(
            &gate,
            "GET /login HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        cookies[runtime].get_or_insert_with(|| session_pair(&res));
        if cookies.iter().all(Option::is_some) {
            break;
        }
    }
    let cookies = cookies.map(|c| c.expect("200 connections all went to one runtime"));

    // Each session is read through the runtime that did not create it.
    let mut read_through_other = [false, false];
    for i in 0..200 {
        for (created, cookie) in cookies.iter().enumerate() {
            let path = format!("/read-{i}-{created}");
            let (res, runtime) = exchange(
                &gate,
                &format!("GET {path} HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"),
            )
            .await;
            assert!(res.starts_with("HTTP/1.1 200"), "{res}");
            let seen = app.seen().into_iter().find(|s| s.path == path).unwrap();
            let token = seen.header("x-session").unwrap_or_else(|| {
                panic!("session of runtime {created} unknown to runtime {runtime}")
            });
            assert_eq!(verify_token(token, UPSTREAM_SECRET)["data"]["userId"], 1);
            if runtime != created {
                read_through_other[created] = true;
            }
        }
        if read_through_other.iter().all(|r| *r) {
            break;
        }
    }
    assert_eq!(read_through_other, [true, true]);
    gate.join().await;
}

#[tokio::test]
async fn work_stealing_serves_on_one_listener() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("threads = 2\nruntime = \"work-stealing\"\nadmin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert!(app.last().header("x-session").is_some());
    let (res, runtime) = exchange(
        &gate,
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(runtime, 0);
    assert_eq!(accepted(&gate).await.len(), 1, "one listener");
    gate.join().await;
}

/// An upstream whose `/slow...` requests answer `done` only once `release` says so; every
/// arrival is sent on the returned channel.
async fn held_upstream(
    release: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let arrived_tx = arrived_tx.clone();
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                if path.starts_with("/slow") {
                    let _ = arrived_tx.send(path);
                    let _ = release.wait_for(|go| *go).await;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone",
                    )
                    .await;
            });
        }
    });
    (addr, arrived_rx)
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_on_every_runtime() {
    trace_init();
    let (release, released) = tokio::sync::watch::channel(false);
    let (up, mut arrived) = held_upstream(released).await;
    let gate = gate(up).server(PER_CORE).run().await;

    // Requests in flight on both runtimes: each on its own connection, held upstream.
    let mut in_flight = Vec::new();
    let mut runtimes = [0; 2];
    for i in 0..200 {
        let before = accepted(&gate).await;
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        s.write_all(format!("GET /slow-{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let path = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .expect("the request reaches the upstream within 10 s")
            .unwrap();
        assert_eq!(path, format!("/slow-{i}"));
        runtimes[which(&before, &accepted(&gate).await)] += 1;
        in_flight.push(s);
        if runtimes.iter().all(|n| *n > 0) {
            break;
        }
    }
    assert!(runtimes.iter().all(|n| *n > 0), "{runtimes:?}");

    let addr = gate.addr;
    let stopping = tokio::spawn(gate.join());
    // Both listeners close: a new connection is refused while the requests are still held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting 10 s after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.send_replace(true);
    for mut s in in_flight {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answered and closed within 10 s")
            .unwrap();
        let res = String::from_utf8_lossy(&out);
        assert!(
            res.starts_with("HTTP/1.1 200"),
            "in-flight request lost: {res}"
        );
        assert!(res.ends_with("done"), "{res}");
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the runtimes stop once drained")
        .unwrap();
}

#[tokio::test]
async fn the_connection_ceiling_holds_across_runtimes() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server(PER_CORE)
        .server("max_connections = 3")
        .run()
        .await;
    // Three keep-alive connections take the whole ceiling.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        assert!(
            roundtrip(&mut s, &format!("/held-{i}"))
                .await
                .starts_with("HTTP/1.1 200")
        );
        held.push(s);
    }
    // Many more, spread by the kernel over both listeners: none is served, although each
    // runtime alone holds fewer than three.
    let mut waiting = Vec::new();
    for i in 0..29 {
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        s.write_all(
            format!("GET /waiting-{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        waiting.push(s);
    }
    for _ in 0..3 {
        for (i, s) in held.iter_mut().enumerate() {
            assert!(
                roundtrip(s, &format!("/held-{i}"))
                    .await
                    .starts_with("HTTP/1.1 200")
            );
        }
    }
    assert!(
        app.seen().iter().all(|s| !s.path.starts_with("/waiting")),
        "a connection was served past max_connections = 3"
    );
    assert_eq!(open_connections(&gate).await, 3);
    assert_eq!(accepted(&gate).await.iter().sum::<u64>(), 3);

    // Room frees: every waiting connection is served in turn, never more than 3 at once.
    drop(held);
    for mut s in waiting {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("served once room freed, within 10 s")
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(open_connections(&gate).await <= 3);
    }
    let per_runtime = accepted(&gate).await;
    assert_eq!(per_runtime.iter().sum::<u64>(), 32);
    assert!(per_runtime.iter().all(|n| *n > 0), "{per_runtime:?}");
    gate.join().await;
}

// --- the binary ---------------------------------------------------------------------------

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sessiongate-cores-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A per-core config with two runtimes and an admin listener, `extra` appended to `[server]`.
fn config_file(dir: &Path, listen: &str, upstream: SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join(format!("proxy-{}.toml", listen.replace([':', '.'], "-")));
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"http://{upstream}\"\nthreads = 2\nruntime = \"per-core\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n[cookie]\nsecure = false\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    path
}

/// The binary's admin and proxy addresses, from its log.
async fn addresses(proc: &mut GateProcess) -> (SocketAddr, SocketAddr) {
    let admin = proc.wait_for("admin listening").await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (admin, proc.listening().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_traffic_loses_no_request_with_two_runtimes_each() {
    trace_init();
    let app = app().await;
    let dir = test_dir("restart");
    let mut old = spawn_binary(&config_file(&dir, "127.0.0.1:0", app.addr, ""));
    let (_, listen) = addresses(&mut old).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = format!("http://{listen}/");
            tokio::spawn(async move {
                let client = support::client();
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
    eventually(
        || ok.load(Ordering::Relaxed) > 200,
        "traffic through the old process",
    )
    .await;

    let mut new = spawn_binary(&config_file(&dir, &listen.to_string(), app.addr, ""));
    let (new_admin, new_listen) = addresses(&mut new).await;
    assert_eq!(new_listen, listen);
    old.signal("-TERM");
    assert_eq!(old.exit_code().await, 0);
    let after_old_exit = ok.load(Ordering::Relaxed);
    eventually(
        || ok.load(Ordering::Relaxed) > after_old_exit + 200,
        "traffic through the new process",
    )
    .await;
    // Fresh connections reach both of the new process's runtimes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepted_at(new_admin).await.contains(&0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a runtime accepted nothing"
        );
        let _ = raw(
            listen,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
    }
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
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new CA, a leaf for localhost it signed (written to `dir` as cert.pem and key.pem), and
/// a client that trusts only that CA.
fn issue(dir: &Path) -> TlsConnector {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(client))
}

/// Whether a TLS handshake with `addr` verifies against `connector`'s CA.
async fn handshake_ok(addr: SocketAddr, connector: &TlsConnector) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = "localhost".try_into().expect("a valid server name");
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("a handshake within 10 s")
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_every_runtime() {
    trace_init();
    let app = app().await;
    let dir = test_dir("tls");
    let old_ca = issue(&dir);
    let tls = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    );
    let mut proc = spawn_binary(&config_file(&dir, "127.0.0.1:0", app.addr, &tls));
    let (admin, addr) = addresses(&mut proc).await;
    assert!(handshake_ok(addr, &old_ca).await);

    let new_ca = issue(&dir);
    proc.signal("-HUP");
    proc.wait_for("reloaded the TLS certificate and key").await;
    // Every connection, through either runtime, gets the new certificate.
    let mut runtimes = [0; 2];
    for _ in 0..200 {
        let before = accepted_at(admin).await;
        assert!(
            handshake_ok(addr, &new_ca).await,
            "the old certificate after SIGHUP"
        );
        runtimes[which(&before, &accepted_at(admin).await)] += 1;
        if runtimes.iter().all(|n| *n > 0) {
            break;
        }
    }
    assert!(runtimes.iter().all(|n| *n > 0), "{runtimes:?}");
    assert!(!handshake_ok(addr, &old_ca).await);
    proc.signal("-TERM");
    assert_eq!(proc.exit_code().await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Out of descriptors for the runtimes (their listeners fit, their event queues do not):
/// start-up fails with one line naming the setting, and the runtimes already built are
/// shut down without a panic.
#[test]
fn runtimes_that_cannot_start_are_one_line_and_no_panic() {
    let dir = test_dir("nofile");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nthreads = 60\nruntime = \"per-core\"\n[cookie]\nsecure = false\n",
    )
    .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 100 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_sessiongate"))
        .arg("-c")
        .arg(&config)
        .env("SESSION_SECRET", SECRET)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("cannot start runtime ")
            && stderr.contains(" of 60 (server.threads with server.runtime = \"per-core\"): ")
            && stderr.trim_end().ends_with("; lower server.threads"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
