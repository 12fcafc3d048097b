//! Upgraded connections (WebSocket) and the end of their session (SPEC §13): closed at once
//! when this proxy destroys, regenerates or expires the session, within
//! `session.revalidate_sec` when another proxy sharing the store destroyed it, kept open
//! through a store outage, and gone from the registry once closed.
//!
//! The upstream is a real hyper server that answers `GET /ws` with `101` and then echoes
//! the raw upgraded stream; the client is a raw TCP connection through the proxy.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::redis_server::RedisServer;
use support::*;

/// The application: `/login` sets a session of user 1 (a new one per call), `/logout`
/// destroys it, `/logout-others` ends the user's other sessions,
/// `/ws` upgrades and echoes (`/ws?login` also sets a session on its `101`); anything
/// else answers `ok`.
struct App {
    addr: SocketAddr,
    /// Upgraded connections the application holds open.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(upgraded: hyper::upgrade::Upgraded, open: Arc<AtomicUsize>) {
    open.fetch_add(1, Ordering::SeqCst);
    let mut io = TokioIo::new(upgraded);
    let mut buf = [0u8; 256];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

async fn app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                        let h = res.headers_mut();
                        match req.uri().path() {
                            "/login" => {
                                h.insert("x-session-set", r#"{"userId":1}"#.parse().unwrap());
                            }
                            "/logout" => {
                                h.insert("x-session-destroy", "1".parse().unwrap());
                            }
                            "/logout-others" => {
                                h.insert("x-session-destroy", "others".parse().unwrap());
                            }
                            "/ws" => {
                                let upgrade = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    if let Ok(upgraded) = upgrade.await {
                                        echo(upgraded, counter).await;
                                    }
                                });
                                *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                                let h = res.headers_mut();
                                h.insert("connection", "upgrade".parse().unwrap());
                                h.insert("upgrade", "websocket".parse().unwrap());
                                if req.uri().query() == Some("login") {
                                    h.insert("x-session-set", r#"{"userId":2}"#.parse().unwrap());
                                }
                            }
                            _ => {}
                        }
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    App { addr, open, task }
}

/// A fresh session through `gate`: its `session=...` cookie.
async fn login(gate: &Gate) -> String {
    gate.get("/login").await.session_cookie()
}

/// Opens a WebSocket through `gate` (with `cookie`, if any) and checks that it echoes.
async fn websocket(gate: &Gate, cookie: Option<&str>) -> TcpStream {
    websocket_at(gate, "/ws", cookie).await.0
}

/// Opens a WebSocket on `path` and checks that it echoes; also returns the `101` head.
async fn websocket_at(gate: &Gate, path: &str, cookie: Option<&str>) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let cookie = cookie
        .map(|c| format!("cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{cookie}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_echoes(&mut s).await;
    (s, head)
}

/// The connection still carries bytes both ways.
async fn assert_echoes(s: &mut TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo within 10s")
        .expect("the connection is open");
    assert_eq!(&buf, b"ping");
}

/// Reads until the proxy closes the connection (EOF or reset); fails after 10 seconds.
async fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after 10s");
}

/// Upgraded connections the gate has registered under a session.
fn registered(gate: &Gate) -> usize {
    gate.running.gate().upgrades().open()
}

#[tokio::test]
async fn a_destroyed_session_closes_its_websockets_at_once_and_only_those() {
    trace_init();
    let app = app().await;
    // A revalidation interval far beyond the test: only the immediate path can close.
    let gate = gate(app.addr)
        .toml("[session]\nrevalidate_sec = 3600")
        .run()
        .await;
    let (a, b) = (login(&gate).await, login(&gate).await);
    let mut a1 = websocket(&gate, Some(&a)).await;
    let mut a2 = websocket(&gate, Some(&a)).await;
    let mut b1 = websocket(&gate, Some(&b)).await;
    let mut anonymous = websocket(&gate, None).await;
    assert_eq!(registered(&gate), 3, "the anonymous one is not registered");
    assert_eq!(app.open.load(Ordering::SeqCst), 4);

    let res = gate.get_with("/logout", &[("cookie", &a)]).await;
    assert!(res.is_clear("session"));
    assert_closed(&mut a1, "first WebSocket of the destroyed session").await;
    assert_closed(&mut a2, "second WebSocket of the destroyed session").await;
    // The upstream's side of both is closed as well.
    eventually(
        || app.open.load(Ordering::SeqCst) == 2,
        "the application's ends of the closed WebSockets close",
    )
    .await;

    assert_echoes(&mut b1).await;
    assert_echoes(&mut anonymous).await;
    assert_eq!(registered(&gate), 1);

    drop((b1, anonymous));
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    eventually(
        || app.open.load(Ordering::SeqCst) == 0,
        "the application's ends close",
    )
    .await;
    gate.join().await;
}

#[tokio::test]
async fn revoking_a_users_other_sessions_closes_their_websockets_at_once() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nrevalidate_sec = 3600\nuser_field = \"userId\"")
        .run()
        .await;
    let (phone, laptop) = (login(&gate).await, login(&gate).await);
    let mut phone_ws = websocket(&gate, Some(&phone)).await;
    let mut laptop_ws = websocket(&gate, Some(&laptop)).await;
    let res = gate
        .get_with("/logout-others", &[("cookie", &laptop)])
        .await;
    assert!(res.set_cookies("session").is_empty());
    assert_closed(&mut phone_ws, "the revoked session's WebSocket").await;
    assert_echoes(&mut laptop_ws).await;
    assert_eq!(registered(&gate), 1);
    drop(laptop_ws);
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    gate.join().await;
}

#[tokio::test]
async fn a_login_that_regenerates_the_id_closes_the_old_sessions_websocket() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nrevalidate_sec = 3600\nregenerate_on_set = true")
        .run()
        .await;
    let old = login(&gate).await;
    let mut ws = websocket(&gate, Some(&old)).await;
    let new = gate
        .get_with("/login", &[("cookie", &old)])
        .await
        .session_cookie();
    assert_ne!(new, old);
    assert_closed(&mut ws, "the WebSocket of the retired ID").await;

    let mut again = websocket(&gate, Some(&new)).await;
    assert_echoes(&mut again).await;
    drop(again);
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    gate.join().await;
}

#[tokio::test]
async fn a_websocket_whose_101_logs_in_belongs_to_the_new_session() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nrevalidate_sec = 3600")
        .run()
        .await;
    let (mut ws, head) = websocket_at(&gate, "/ws?login", None).await;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: session="))
        .and_then(|v| v.split(';').next())
        .map(|v| format!("session={v}"))
        .unwrap_or_else(|| panic!("the 101 sets the session cookie: {head}"));
    assert_eq!(registered(&gate), 1);

    gate.get_with("/logout", &[("cookie", &cookie)]).await;
    assert_closed(&mut ws, "the WebSocket of the session its 101 created").await;
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    gate.join().await;
}

#[tokio::test]
async fn a_session_reaching_absolute_ttl_closes_its_websocket() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nabsolute_ttl_sec = 3\nrevalidate_sec = 3600")
        .run()
        .await;
    let cookie = login(&gate).await;
    let mut ws = websocket(&gate, Some(&cookie)).await;
    assert_eq!(registered(&gate), 1);
    assert_closed(&mut ws, "the WebSocket of the expired session").await;
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    // The session itself is destroyed on its next use.
    let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert!(res.is_clear("session"));
    gate.join().await;
}

fn redis_toml(redis: &RedisServer) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 300\n[session]\nrevalidate_sec = 1",
        redis.url()
    )
}

#[tokio::test]
async fn a_session_destroyed_through_another_proxy_closes_the_websocket_within_revalidate_sec() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app().await;
    let proxy_a = gate(app.addr).toml(&redis_toml(&redis)).run().await;
    let proxy_b = gate(app.addr).toml(&redis_toml(&redis)).run().await;
    let (doomed, other) = (login(&proxy_a).await, login(&proxy_a).await);
    let mut ws = websocket(&proxy_b, Some(&doomed)).await;
    let mut kept = websocket(&proxy_b, Some(&other)).await;

    let res = proxy_a.get_with("/logout", &[("cookie", &doomed)]).await;
    assert!(res.is_clear("session"));
    assert_closed(&mut ws, "the WebSocket held through the other proxy").await;
    assert_echoes(&mut kept).await;
    assert_eq!(registered(&proxy_b), 1);

    drop(kept);
    eventually(|| registered(&proxy_b) == 0, "the registry empties").await;
    proxy_a.join().await;
    proxy_b.join().await;
}

#[tokio::test]
async fn a_store_outage_keeps_websockets_open() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&redis_toml(&redis))
        .run()
        .await;
    let cookie = login(&gate).await;
    let mut ws = websocket(&gate, Some(&cookie)).await;

    // Two re-checks fail while Redis is frozen; the WebSocket stays.
    let before = gate.store_ops().await;
    redis.pause();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.store_ops().await < before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-check within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_echoes(&mut ws).await;

    // Back again: the session is still there, so is the WebSocket.
    redis.resume();
    let resumed = gate.store_ops().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.store_ops().await < resumed + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-check within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_echoes(&mut ws).await;
    assert_eq!(registered(&gate), 1);

    drop(ws);
    eventually(|| registered(&gate) == 0, "the registry empties").await;
    gate.join().await;
}
