//! Keep-alive connections to the upstream: reused once a response has been read to its
//! end, retired when the upstream closes them or breaks a response, so a client never
//! pays for a connection the upstream already gave up.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    for _ in 0..20 {
        let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
        assert_eq!(res.status, 200);
    }
    assert_eq!(app.count(), 21);
    assert_eq!(
        app.connections(),
        1,
        "the upstream connection was not reused"
    );
    gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_no_more_connections_than_are_in_flight() {
    let app = app().await;
    let gate = Arc::new(gate(app.addr).run().await);
    for _ in 0..5 {
        let wave: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.get("/").await.status })
            })
            .collect();
        for task in wave {
            assert_eq!(task.await.unwrap(), 200);
        }
    }
    assert_eq!(app.count(), 40);
    assert!(app.connections() <= 8, "{} connections", app.connections());
    Arc::try_unwrap(gate).ok().unwrap().join().await;
}

/// A raw HTTP/1.1 upstream: reads request heads and answers each with `reply(n)` (`n`
/// counts requests over all connections); the connection ends when `reply` says so.
/// Returns its address and the count of accepted connections.
async fn raw_upstream(
    reply: impl Fn(usize) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let reply = Arc::new(reply);
    let requests = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_raw(stream, reply.clone(), requests.clone()));
        }
    });
    (addr, connections)
}

async fn serve_raw(
    mut stream: TcpStream,
    reply: Arc<impl Fn(usize) -> (Vec<u8>, bool)>,
    requests: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        let (bytes, close) = reply(requests.fetch_add(1, Ordering::SeqCst));
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

#[tokio::test]
async fn an_upstream_that_closes_after_every_response_costs_no_request() {
    // No `Connection: close`: the upstream just hangs up once it has answered.
    let (addr, connections) = raw_upstream(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let gate = gate(addr).run().await;
    for i in 0..10 {
        let res = gate.get("/").await;
        assert_eq!((i, res.status, res.text()), (i, 200, "ok"));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 10);
    gate.join().await;
}

#[tokio::test]
async fn chunked_responses_are_streamed_whole_and_the_connection_reused() {
    let (addr, connections) = raw_upstream(|n| {
        let mut res = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in 0..50 {
            let text = format!("{n}:{part};");
            res.extend_from_slice(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes());
        }
        res.extend_from_slice(b"0\r\n\r\n");
        (res, false)
    })
    .await;
    let gate = gate(addr).run().await;
    for n in 0..5 {
        let res = gate.get("/").await;
        assert_eq!(res.status, 200);
        let want: String = (0..50).map(|part| format!("{n}:{part};")).collect();
        assert_eq!(res.text(), want);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    gate.join().await;
}

#[tokio::test]
async fn a_response_cut_short_retires_its_connection() {
    // The first response promises 100 bytes, sends 2 and hangs up; the next ones are whole.
    let (addr, connections) = raw_upstream(|n| {
        if n == 0 {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok".to_vec(),
                true,
            )
        } else {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nwhole".to_vec(),
                false,
            )
        }
    })
    .await;
    let gate = gate(addr).run().await;
    // The client sees the truncation as a broken body (the status line was already sent).
    let raw_answer = raw(gate.addr, b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert!(raw_answer.starts_with("HTTP/1.1 200"), "{raw_answer}");
    assert!(!raw_answer.contains("whole"));
    for _ in 0..3 {
        let res = gate.get("/").await;
        assert_eq!((res.status, res.text()), (200, "whole"));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    gate.join().await;
}

#[tokio::test]
async fn a_connection_still_sending_a_request_body_is_not_handed_to_the_next_request() {
    // The upstream answers the upload at once, without reading its body; the client keeps
    // the rest of that body back. The upstream connection is busy until the body is sent,
    // so the next request must get another connection, not wait for this one (and time out).
    let (addr, connections) = raw_upstream(|n| {
        let body: &[u8] = if n == 0 { b"early" } else { b"whole" };
        let mut res =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        res.extend_from_slice(body);
        (res, false)
    })
    .await;
    let gate = gate(addr).server("upstream_timeout_ms = 2000").run().await;
    let mut upload = TcpStream::connect(gate.addr).await.unwrap();
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).ends_with("early") {
        let mut chunk = [0u8; 1024];
        let n = upload.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gate closed the upload: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    let res = gate.get("/").await;
    assert_eq!((res.status, res.text()), (200, "whole"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    drop(upload);
    gate.join().await;
}
