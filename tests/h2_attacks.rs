//! HTTP/2 under attack (issue 17): rapid reset (CVE-2023-44487), CONTINUATION flood,
//! SETTINGS and PING floods, a stream-count flood, an over-long header list, and a client
//! that never reads. After each, the proxy serves another client normally, the attacking
//! connection was closed or its streams refused where hyper does that, and the process's
//! resident memory stayed bounded.
//!
//! What the `h2` client cannot send (CONTINUATION frames without end, streams past the
//! advertised limit, floods without reading) is written as raw frames (RFC 9113 §4.1).

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Memory the whole test process (proxy, upstream, attacker, and the tests running beside
/// it) may grow by during one attack.
const RSS_BOUND_KB: u64 = 256 * 1024;

/// A line of `/proc/self/status` in kB: `VmRSS` (now) or `VmHWM` (the peak so far).
fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kb() -> u64 {
    status_kb("VmRSS")
}

/// The peak resident memory since `before_kb` was read stayed within the bound.
fn assert_rss_bounded(before_kb: u64, what: &str) {
    let peak = status_kb("VmHWM");
    assert!(
        peak.saturating_sub(before_kb) < RSS_BOUND_KB,
        "{what}: RSS grew from {before_kb} kB to a peak of {peak} kB"
    );
}

/// Another client gets a normal answer.
async fn still_serving(gate: &Gate) {
    assert_eq!(gate.get("/").await.status, 200, "the proxy stopped serving");
}

// ---------------------------------------------------------------------------------------
// Raw frames.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1); `first` holds the flag bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | u8::try_from(n).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    n -= max;
    while n >= 128 {
        out.push(u8::try_from(n % 128).unwrap() | 0x80);
        n /= 128;
    }
    out.push(u8::try_from(n).unwrap());
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// `GET /` for authority `x`: :method GET, :scheme http, :path / (static table), then
/// :authority as a literal with an indexed name.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    hpack_int(&mut b, 0, 7, 1);
    b.push(b'x');
    b
}

/// A raw connection after the preface and an empty SETTINGS frame.
async fn raw_h2(gate: &Gate) -> TcpStream {
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// The frames the server sent, as (type, stream, error code of a RST_STREAM or GOAWAY),
/// until it sent GOAWAY, closed the connection (then `true`), or was quiet for `quiet`.
async fn server_frames(s: &mut TcpStream, quiet: Duration) -> (Vec<(u8, u32, u32)>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let code = match kind {
                RST_STREAM if len >= 4 => u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]),
                GOAWAY if len >= 8 => u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]),
                _ => 0,
            };
            frames.push((kind, stream, code));
            buf.drain(..9 + len);
        }
        if frames.iter().any(|f| f.0 == GOAWAY) || tokio::time::Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (frames, closed)
}

/// Writes `f` until the server stops reading (`write_all` blocks for a second), closes the
/// connection, or `max_bytes` are written.
async fn flood(s: &mut TcpStream, f: &[u8], max_bytes: usize) {
    let mut sent = 0;
    while sent < max_bytes {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(f)).await {
            Ok(Ok(())) => sent += f.len(),
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The h2 crate as the attacking client.

async fn h2_client(
    gate: &Gate,
    builder: &h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    let (send, conn) = builder.handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://x{path}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_proxy_keeps_serving() {
    // CVE-2023-44487: open a stream and reset it at once, in a loop.
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let before = rss_kb();
    let mut s = raw_h2(&gate).await;
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &get_block(),
        ));
        burst.extend(frame(RST_STREAM, 0, 2 * i + 1, &0x8u32.to_be_bytes()));
    }
    flood(&mut s, &burst, 64 << 20).await;
    let (frames, _) = server_frames(&mut s, Duration::from_secs(2)).await;
    // h2's `max_pending_accept_reset_streams`: GOAWAY with ENHANCE_YOUR_CALM (0xb).
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY && f.2 == 0xb),
        "the rapid-reset connection got no GOAWAY: {frames:?}"
    );
    assert!(
        app.count() < 1000,
        "every reset stream reached the upstream"
    );
    still_serving(&gate).await;
    assert_rss_bounded(before, "rapid reset");
    gate.join().await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    // CVE-2024-27316 and kin: a header block that never ends.
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let before = rss_kb();
    let mut s = raw_h2(&gate).await;
    s.write_all(&frame(HEADERS, END_STREAM, 1, &get_block()))
        .await
        .unwrap();
    let mut block = Vec::new();
    while block.len() < 16_000 {
        hpack_literal(&mut block, "x-flood", &"a".repeat(100));
    }
    let cont = frame(CONTINUATION, 0, 1, &block);
    flood(&mut s, &cont, 64 << 20).await;
    let (frames, _) = server_frames(&mut s, Duration::from_secs(2)).await;
    // h2 counts CONTINUATION frames against the header list limit: GOAWAY ENHANCE_YOUR_CALM.
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY && f.2 == 0xb),
        "no GOAWAY after 64 MiB of CONTINUATION: {frames:?}"
    );
    assert_eq!(
        app.count(),
        0,
        "the endless header block reached the upstream"
    );
    still_serving(&gate).await;
    assert_rss_bounded(before, "CONTINUATION flood");
    gate.join().await;
}

#[tokio::test]
async fn settings_and_ping_floods_leave_memory_bounded() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let before = rss_kb();
    for (what, f) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 0x3, 0, 0, 0, 100])),
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        let mut s = raw_h2(&gate).await;
        // 100 frames per write, never reading the ACKs.
        let burst = f.repeat(100);
        flood(&mut s, &burst, 32 << 20).await;
        still_serving(&gate).await;
        assert_rss_bounded(before, what);
    }
    gate.join().await;
}

#[tokio::test]
async fn streams_past_h2_max_concurrent_streams_are_refused() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("h2_max_concurrent_streams = 10")
        .run()
        .await;
    let before = rss_kb();
    let mut s = raw_h2(&gate).await;
    // Requests whose bodies never come: each stream stays open.
    let mut burst = Vec::new();
    for i in 0..50u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &get_block()));
    }
    s.write_all(&burst).await.unwrap();
    let (frames, _) = server_frames(&mut s, Duration::from_secs(1)).await;
    let refused = frames
        .iter()
        .filter(|f| f.0 == RST_STREAM && f.2 == 0x7)
        .count();
    let goaway = frames.iter().any(|f| f.0 == GOAWAY);
    assert!(
        refused >= 40 || goaway,
        "streams past the limit were not refused: {frames:?}"
    );
    still_serving(&gate).await;
    assert_rss_bounded(before, "stream-count flood");
    // Its streams wait for bodies that never come: close it rather than wait out the grace.
    drop(s);
    gate.join().await;
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_before_the_upstream() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("max_header_bytes = 16384")
        .run()
        .await;
    let before = rss_kb();
    let mut s = raw_h2(&gate).await;
    let mut block = get_block();
    hpack_literal(&mut block, "x-big", &"a".repeat(40_000));
    // Split into frames of at most 16384 bytes (the default SETTINGS_MAX_FRAME_SIZE).
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, flags | END_STREAM, 1, c));
        } else {
            out.extend(frame(CONTINUATION, flags, 1, c));
        }
    }
    s.write_all(&out).await.unwrap();
    let (frames, closed) = server_frames(&mut s, Duration::from_secs(1)).await;
    // h2 answers 431 (a HEADERS frame on stream 1), resets the stream, or ends the connection.
    assert!(
        closed
            || frames
                .iter()
                .any(|f| f.1 == 1 && (f.0 == HEADERS || f.0 == RST_STREAM) || f.0 == GOAWAY),
        "no answer to an over-long header list: {frames:?}"
    );
    assert_eq!(app.count(), 0, "the request reached the upstream");
    still_serving(&gate).await;
    assert_rss_bounded(before, "over-long header list");
    drop(s);
    gate.join().await;
}

#[tokio::test]
async fn a_client_that_never_reads_holds_bounded_memory() {
    // Zero window: the server may not send a byte of body; every response stalls.
    trace_init();
    let big = Bytes::from(vec![b'a'; 1 << 20]);
    let app = upstream(move |_| Reply::ok().body(big.clone())).await;
    let gate = gate(app.addr).run().await;
    let before = rss_kb();
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let mut held = Vec::new();
    for _ in 0..5 {
        let (send, conn) = h2_client(&gate, &builder).await;
        let mut responses = Vec::new();
        for _ in 0..50 {
            let mut ready = send.clone().ready().await.unwrap();
            let (res, _) = ready.send_request(get("/big"), true).unwrap();
            responses.push(res);
        }
        held.push((send, conn, responses));
    }
    eventually(
        || app.count() == 250,
        "every stalled request reached the upstream",
    )
    .await;
    still_serving(&gate).await;
    assert_rss_bounded(before, "zero-window clients");
    drop(held);
    gate.join().await;
}

#[test]
fn frame_layout_matches_rfc_9113() {
    let f = frame(DATA, END_STREAM, 3, b"hi");
    assert_eq!(f, [0, 0, 2, 0, 1, 0, 0, 0, 3, b'h', b'i']);
    let mut n = Vec::new();
    hpack_int(&mut n, 0, 5, 1337);
    assert_eq!(n, [31, 154, 10], "RFC 7541 C.1.2");
}
