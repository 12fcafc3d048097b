//! Hostile clients (SPEC §8, issue 6): request framing, slow clients, floods, h2c.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` and returns (response text, whether the server closed the connection).
async fn exchange(gate: &Gate, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_second_request() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    // RFC 9112 §6.1: Transfer-Encoding wins, Content-Length is dropped, the connection closes.
    let (res, closed) = exchange(
        &gate,
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(
        res.matches("HTTP/1.1").count(),
        1,
        "second request answered: {res}"
    );
    assert!(closed, "connection left open after CL+TE");
    let paths: Vec<String> = app.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, vec!["/a".to_owned()]);
    assert!(app.last().header("content-length").is_none());
    gate.join().await;
}

#[tokio::test]
async fn malformed_framing_is_refused_and_the_connection_closed() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cases: &[(&[u8], &str)] = &[
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", "conflicting Content-Length"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc", "signed Content-Length"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3x\r\n\r\nabc", "garbage Content-Length"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabc", "chunked not final"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;ext\nabc\r\n0\r\n\r\n", "bare LF in chunk extension"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n", "chunk size overflow"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\r\n folded\r\n\r\n", "obs-fold"),
        (b"GET / HTTP/1.1\r\nhost : x\r\n\r\n", "space before colon"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\rc\r\n\r\n", "bare CR in value"),
    ];
    for (req, what) in cases {
        let before = app.count();
        let (res, closed) = exchange(&gate, req).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{what}: {res}");
        assert!(closed, "{what}: connection left open");
        // A request that reached the upstream must not have carried a body it could misread.
        for seen in &app.seen()[before..] {
            assert!(seen.body.is_empty(), "{what}: body reached the upstream");
        }
    }
    assert_eq!(gate.get("/").await.status, 200, "still serving");
    gate.join().await;
}

#[tokio::test]
async fn an_over_long_request_head_is_431() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("max_header_bytes = 16384")
        .run()
        .await;
    let req = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (res, closed) = exchange(&gate, req.as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    assert!(closed);
    assert_eq!(app.count(), 0);
    gate.join().await;
}

#[tokio::test]
async fn a_slow_client_is_cut_off_after_header_read_timeout_ms() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("header_read_timeout_ms = 300")
        .run()
        .await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slowloris connection still open after 10 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(app.count(), 0);
    gate.join().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy() {
    trace_init();
    let app = upstream(|req| Reply::ok().body(format!("{} bytes", req.body.len()))).await;
    let gate = gate(app.addr).run().await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 25];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("5 bytes"));
    assert!(app.last().header("expect").is_none());
    gate.join().await;
}

#[tokio::test]
async fn h2c_requests_follow_the_same_rules() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let req = http::Request::get(gate.url("/h2"))
        .header("cookie", &cookie)
        .header("x-session", "forged")
        .header("x_session_set", "forged")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    let seen = app.last();
    assert_eq!(seen.path, "/h2");
    verify_token(seen.header("x-session").unwrap(), UPSTREAM_SECRET);
    assert!(seen.header("x_session_set").is_none());
    assert!(seen.header("cookie").is_none());
    assert!(
        seen.header("host").is_some(),
        "Host derived from :authority"
    );

    let req = http::Request::get(gate.url("/login"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.request(req).await.unwrap();
    assert!(res.headers().get("set-cookie").is_some());
    assert!(
        res.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("x-session"))
    );
    gate.join().await;
}

#[tokio::test]
async fn floods_stay_bounded() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml("[store]\nmax_sessions = 50")
        .run()
        .await;
    for _ in 0..300 {
        assert_eq!(gate.get("/").await.status, 200);
    }
    assert_eq!(
        gate.store_ops().await,
        0,
        "anonymous requests touched the store"
    );

    for _ in 0..300 {
        assert_eq!(gate.get("/login").await.status, 200);
    }
    let sessiongate::store::Store::Memory(m) = gate.store() else {
        panic!("memory store")
    };
    assert!(
        m.len() <= 50,
        "memory store grew past max_sessions: {}",
        m.len()
    );
    gate.join().await;
}
