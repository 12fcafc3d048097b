//! A client that goes away mid-request: hyper then drops the request's future. The in-flight
//! gauge must come back down, the request must still be counted and logged (status 499),
//! and session directives the upstream already answered with must be applied whole.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use support::redis_server::RedisServer;
use support::*;

/// Every access line this test binary's gates write, as text.
fn access_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "sessiongate::access=info",
            ))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        log
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&access_log().lock().unwrap()).contains(needle)
}

/// The value of the metric line that starts with `series `, or 0 when absent.
async fn metric(gate: &Gate, series: &str) -> f64 {
    let (_, text) = gate.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn eventually_async<F: Future<Output = bool>>(mut cond: impl FnMut() -> F, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_is_counted_logged_and_not_left_in_flight() {
    let _ = access_log();
    // An upstream that accepts the request and never answers.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = upstream.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let gate = gate(upstream_addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;

    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    client
        .write_all(b"GET /slow/left-early?secret=1 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    eventually(
        || !held.lock().unwrap().is_empty(),
        "the upstream got the request",
    )
    .await;
    eventually_async(
        || async { metric(&gate, "sessiongate_in_flight_requests").await == 1.0 },
        "the request is in flight",
    )
    .await;

    drop(client);
    eventually_async(
        || async { metric(&gate, "sessiongate_in_flight_requests").await == 0.0 },
        "the in-flight gauge returns to 0",
    )
    .await;
    assert_eq!(
        metric(&gate, "sessiongate_requests_total{status=\"499\"}").await,
        1.0
    );
    eventually(
        || logged("path=\"/slow/left-early\" status=499"),
        "the access line of the abandoned request",
    )
    .await;
    assert!(!logged("secret=1"), "the query is never logged");
}

// Multi-threaded: the scripted upstream holds its answer by blocking one worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_login_whose_client_left_during_the_store_write_is_applied_whole() {
    let _ = access_log();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // `/relogin` tells the test it has the request, then answers a login once released.
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (arrived_tx, release_rx) = (Mutex::new(arrived_tx), Mutex::new(release_rx));
    let app = upstream(move |req| match req.path.as_str() {
        "/relogin" => {
            arrived_tx.lock().unwrap().send(()).unwrap();
            release_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
            Reply::ok().header("x-session-set", r#"{"userId":1}"#)
        }
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1}"#),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 10000\n",
            redis.url()
        ))
        .run()
        .await;
    let mut redis_conn = redis.connection();
    let keys = |conn: &mut redis::Connection| -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(conn).unwrap()
    };

    let first = gate.get("/login").await;
    assert_eq!(first.status, 200);
    let old_cookie = first.session_cookie();
    let old_keys = keys(&mut redis_conn);
    assert_eq!(old_keys.len(), 1);

    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    client
        .write_all(
            format!("GET /relogin HTTP/1.1\r\nhost: app\r\ncookie: {old_cookie}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || arrived_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the upstream got the request");
    // Writes now wait in Redis: the proxy's login (create the new session, then delete the
    // old one) is under way when its client leaves.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query(&mut redis_conn)
        .unwrap();
    release_tx.send(()).unwrap();
    eventually_async(
        || async {
            let series = format!(
                "sessiongate_upstream_seconds_count{{upstream=\"http://{}\"}}",
                app.addr
            );
            metric(&gate, &series).await >= 2.0
        },
        "the upstream answered the second login",
    )
    .await;
    drop(client);
    // hyper drops the request's future; the guard still counts and logs it.
    eventually(
        || logged("path=\"/relogin\" status=499"),
        "the abandoned login is logged as 499",
    )
    .await;
    assert_eq!(metric(&gate, "sessiongate_in_flight_requests").await, 0.0);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut redis_conn)
        .unwrap();

    // The upstream logged the user in afresh: the new session exists and the old ID is
    // retired, exactly as if the client had stayed. Nothing is half-applied.
    eventually(
        || {
            let now = keys(&mut redis_conn);
            now.len() == 1 && now != old_keys
        },
        "the new session replaced the old one in Redis",
    )
    .await;
    let res = gate.get_with("/me", &[("cookie", &old_cookie)]).await;
    assert!(res.is_clear("session"), "the old session is gone");
}
