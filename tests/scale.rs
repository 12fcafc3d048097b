//! Scale and limits (issue 17): the connection ceiling and its gauge, keep-alive idle
//! timeout and request cap, over HTTP/1.1 and HTTP/2, through real sockets.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "admin_listen = \"127.0.0.1:0\"";

/// Sends `GET path` on `s` (keep-alive) and reads one whole response: its head and body.
async fn roundtrip(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(s).await
}

/// Reads one response with a Content-Length body, within 10 seconds.
async fn read_response(s: &mut TcpStream) -> String {
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

/// Waits (10 s at most) until the server closes `s`.
async fn closed_by_server(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("connection still open after 10 s")
        .unwrap();
    rest
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

async fn until_open_connections(gate: &Gate, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = open_connections(gate).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "open connections: want {want}, got {got}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("max_connections = 2")
        .server(ADMIN)
        .run()
        .await;
    until_open_connections(&gate, 0).await;
    let mut a = TcpStream::connect(gate.addr).await.unwrap();
    let mut b = TcpStream::connect(gate.addr).await.unwrap();
    assert!(roundtrip(&mut a, "/a").await.starts_with("HTTP/1.1 200"));
    assert!(roundtrip(&mut b, "/b").await.starts_with("HTTP/1.1 200"));
    until_open_connections(&gate, 2).await;

    // The kernel completes the third handshake (listen backlog); the proxy does not accept.
    let mut c = TcpStream::connect(gate.addr).await.unwrap();
    c.write_all(b"GET /third HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The proxy keeps serving the two it holds, while the third gets nothing.
    for _ in 0..3 {
        assert!(roundtrip(&mut a, "/a").await.starts_with("HTTP/1.1 200"));
        assert!(roundtrip(&mut b, "/b").await.starts_with("HTTP/1.1 200"));
    }
    let mut probe = [0u8; 1];
    assert!(
        matches!(c.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the third connection was answered past max_connections = 2"
    );
    assert!(app.seen().iter().all(|s| s.path != "/third"));
    assert_eq!(open_connections(&gate).await, 2);

    // One closes: the waiting connection is accepted and served.
    drop(a);
    let res = read_response(&mut c).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(app.seen().iter().any(|s| s.path == "/third"));
    until_open_connections(&gate, 2).await;
    drop(b);
    drop(c);
    until_open_connections(&gate, 0).await;
    gate.join().await;
}

#[tokio::test]
async fn the_gauge_counts_open_client_connections() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).server(ADMIN).run().await;
    let mut conns = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        assert!(roundtrip(&mut s, "/").await.starts_with("HTTP/1.1 200"));
        conns.push(s);
        until_open_connections(&gate, i + 1).await;
    }
    conns.truncate(2);
    until_open_connections(&gate, 2).await;
    drop(conns);
    until_open_connections(&gate, 0).await;
    gate.join().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout_ms() {
    trace_init();
    let app = app().await;
    // The header read timeout is long: the idle timeout is its own timer.
    let gate = gate(app.addr)
        .server("keepalive_timeout_ms = 200\nheader_read_timeout_ms = 60000")
        .run()
        .await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    assert!(roundtrip(&mut s, "/").await.starts_with("HTTP/1.1 200"));
    let rest = closed_by_server(&mut s).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(gate.get("/").await.status, 200, "still serving");
    gate.join().await;
}

#[tokio::test]
async fn the_header_read_timeout_does_not_close_an_idle_keep_alive_connection() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("keepalive_timeout_ms = 60000\nheader_read_timeout_ms = 200")
        .run()
        .await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    assert!(roundtrip(&mut s, "/1").await.starts_with("HTTP/1.1 200"));
    // Idle for longer than a header read may take: the connection is still served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(roundtrip(&mut s, "/2").await.starts_with("HTTP/1.1 200"));
    // A head that starts and stalls is still cut off by the header read timeout.
    s.write_all(b"GET /3 HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    closed_by_server(&mut s).await;
    assert!(app.seen().iter().all(|r| r.path != "/3"));
    gate.join().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout_ms() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("keepalive_timeout_ms = 60000\nheader_read_timeout_ms = 200")
        .run()
        .await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let rest = closed_by_server(&mut s).await;
    assert!(rest.is_empty());
    gate.join().await;
}

#[tokio::test]
async fn after_keepalive_requests_the_response_says_connection_close_and_the_connection_closes() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).server("keepalive_requests = 3").run().await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    for i in 1..=3 {
        let res = roundtrip(&mut s, &format!("/{i}")).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        let closes = res
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n");
        assert_eq!(closes, i == 3, "request {i}: {res}");
    }
    closed_by_server(&mut s).await;
    assert_eq!(app.count(), 3);
    gate.join().await;
}

/// An HTTP/2 (prior knowledge, h2c) connection to the gate.
async fn h2_connect(
    gate: &Gate,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

async fn h2_get(send: &mut h2::client::SendRequest<bytes::Bytes>, path: &str) -> u16 {
    let req = http::Request::get(format!("http://x{path}"))
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (res, _) = ready.send_request(req, true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), res)
        .await
        .expect("no HTTP/2 response within 10 s")
        .unwrap();
    let status = res.status().as_u16();
    let mut body = res.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

#[tokio::test]
async fn http2_after_keepalive_requests_streams_the_connection_gets_goaway() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).server("keepalive_requests = 3").run().await;
    let (mut send, conn) = h2_connect(&gate).await;
    for i in 1..=3 {
        assert_eq!(h2_get(&mut send, &format!("/{i}")).await, 200);
    }
    // GOAWAY: the client connection ends once the server has closed it.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "HTTP/2 connection still open after 3 requests"
    );
    assert_eq!(app.count(), 3);
    gate.join().await;
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_keepalive_timeout_ms() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("keepalive_timeout_ms = 200")
        .run()
        .await;
    let (mut send, conn) = h2_connect(&gate).await;
    assert_eq!(h2_get(&mut send, "/").await, 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open");
    gate.join().await;
}

#[tokio::test]
async fn pipelined_requests_are_all_served_across_idle_parking() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    // A request, then an idle pause long enough for the connection to be parked (the pause
    // is the condition under test, not a wait for something to happen).
    assert!(roundtrip(&mut s, "/0").await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(sessiongate::conn::PARK_AFTER * 3).await;
    // Two whole requests and the start of a third in one write; the rest of it later.
    s.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\nGET /3 HTTP/1.1\r\nho")
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    }
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // A request with a body, then one without, on the same connection.
    s.write_all(b"POST /4 HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nbody")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert!(roundtrip(&mut s, "/5").await.starts_with("HTTP/1.1 200"));
    let paths: Vec<String> = app.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/0", "/1", "/2", "/3", "/4", "/5"]);
    assert_eq!(app.seen()[4].body, &b"body"[..]);
    gate.join().await;
}

/// Out of descriptors (a low limit and an explicit max_connections above what it allows),
/// accept fails with EMFILE: the proxy logs it once, backs off instead of spinning, and
/// serves again once connections close.
#[tokio::test]
async fn out_of_descriptors_accept_backs_off_and_recovers() {
    trace_init();
    let app = app().await;
    let dir = std::env::temp_dir().join(format!("sessiongate-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nthreads = 1\nmax_connections = 1000\n[cookie]\nsecure = false\n[log]\nformat = \"json\"\n",
            app.addr
        ),
    )
    .unwrap();
    let mut proxy = spawn_binary_with_nofile(&config, 48);
    let addr = proxy.listening().await;
    // Idle connections until the proxy has no descriptor left to accept with.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    proxy
        .wait_for("accept failed: out of descriptors or memory; retrying with backoff (raise the descriptor limit or lower server.max_connections)")
        .await;
    drop(held);
    proxy.wait_for("accepting again").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(
        roundtrip(&mut s, "/after")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let warnings = proxy
        .log()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode: {:?}", proxy.log());
    proxy.signal("-TERM");
    assert_eq!(proxy.exit_code().await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
