//! Failures the proxy answers itself (SPEC §8), upgrades, and hostile bytes.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn unreachable_upstream_is_502_with_one_line() {
    trace_init();
    // Bind and drop: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = gate(dead).run().await;
    let res = gate.get("/").await;
    assert_eq!(res.status, 502);
    assert_eq!(res.text(), "bad gateway: upstream unreachable\n");
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    gate.join().await;
}

#[tokio::test]
async fn silent_upstream_is_504() {
    trace_init();
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gate = gate(addr).server("upstream_timeout_ms = 200").run().await;
    let res = gate.get("/").await;
    assert_eq!(res.status, 504);
    assert_eq!(
        res.text(),
        "gateway timeout: upstream did not answer in time\n"
    );
    gate.join().await;
    hold.abort();
}

/// A raw upstream that answers an upgrade with 101 (plus headers it must not leak) and
/// then echoes bytes. Returns the request head it saw.
async fn echo_upgrade_upstream() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await;
        tx.send(head).unwrap();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\nx-session-set: {\"x\":1}\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn upgrades_pass_through_with_the_session_headers_applied() {
    trace_init();
    let app = app().await;
    let (ws, head_rx) = echo_upgrade_upstream().await;
    let login_gate = gate(app.addr).run().await;
    let cookie = login_gate.get("/login").await.session_cookie();
    let store = login_gate.store().clone();
    login_gate.join().await;

    let gate = gate(ws).store(store).run().await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: echo\r\ncookie: {cookie}\r\nx-session: forged\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        !head.contains("x-session"),
        "directive leaked on 101: {head}"
    );

    let upstream_head = head_rx.await.unwrap().to_ascii_lowercase();
    assert!(upstream_head.contains("upgrade: echo"));
    assert!(!upstream_head.contains("forged"));
    let token = upstream_head
        .lines()
        .find_map(|l| l.strip_prefix("x-session: "))
        .expect("session token on the upgrade request");
    assert!(!token.is_empty());

    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(s);
    gate.join().await;
}

#[tokio::test]
async fn hostile_bytes_never_crash_the_proxy() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let long_header = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let cases: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"
            .to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\nhello".to_vec(),
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\nx: a\r\n folded\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost : a\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncookie: session=\xff\xfe\x80; x=\xc3\r\n\r\n".to_vec(),
        long_header.into_bytes(),
    ];
    for req in &cases {
        let res = raw(gate.addr, req).await;
        assert!(
            res.is_empty() || res.starts_with("HTTP/1.1 4") || res.starts_with("HTTP/1.1 200"),
            "unexpected answer to {:?}: {res}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    // Still serving.
    assert_eq!(gate.get("/").await.status, 200);
    gate.join().await;
}

#[tokio::test]
async fn http10_and_pipelined_requests_are_served_with_the_same_rules() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let res = raw(
        gate.addr,
        b"GET /a HTTP/1.0\r\nhost: x\r\nx-session: forged\r\n\r\n",
    )
    .await;
    assert!(
        res.starts_with("HTTP/1.0 200") || res.starts_with("HTTP/1.1 200"),
        "{res}"
    );
    assert!(app.last().header("x-session").is_none());

    let res = raw(
        gate.addr,
        b"GET /1 HTTP/1.1\r\nhost: x\r\nx_session: forged\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.matches("HTTP/1.1 200").count(), 2, "{res}");
    let paths: Vec<String> = app.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        paths.ends_with(&["/1".to_owned(), "/2".to_owned()]),
        "{paths:?}"
    );
    gate.join().await;
}
