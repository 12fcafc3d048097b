//! End to end, in process: a hyper upstream and the gate, both on `127.0.0.1:0`, driven
//! one request at a time by a keep-alive hyper client on the same current-thread runtime
//! (so each figure is the client + gate + upstream cost of one round trip on one core).
//!
//! `cargo bench --bench proxy -- --warm-up-time 1 --measurement-time 3`
//!
//! - `proxy/anonymous_get`: no cookie; the store is never touched.
//! - `proxy/session_get`: a valid cookie (memory store): verify, load, mint the token.
//! - `proxy/login`: the upstream answers `X-Session-Set`: a new session and `Set-Cookie`.
//!
//! No tracing subscriber is installed, so the access event costs what a disabled
//! `RUST_LOG=warn` one does. For throughput against nginx, see `benches/load/run.sh`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessiongate::secrets::Secrets;
use sessiongate::server::{self, Running};
use tokio::net::TcpListener;

const SECRET: &str = "bench-session-secret-0123456789abcdef";
const UPSTREAM_SECRET: &str = "bench-upstream-secret-0123456789abcdef";
/// The small body every upstream answer carries.
const BODY: &[u8] = b"hello from the upstream\n";

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

/// The application: `/login` sets a session, anything else answers 200 with [`BODY`].
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
                    if req.uri().path() == "/login" {
                        res.headers_mut()
                            .insert("x-session-set", HeaderValue::from_static(r#"{"userId":1}"#));
                    }
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The gate in front of `upstream`, with a memory store, served on the benchmark's own
/// runtime (`"work-stealing"` serves on the caller's), so the client and the proxy share
/// one thread as in the earlier figures.
async fn gate(upstream: SocketAddr) -> Running {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
         runtime = \"work-stealing\"\n[cookie]\nsecure = false\n"
    );
    let config = sessiongate::config::parse(Path::new("bench.toml"), &text).unwrap();
    let env: HashMap<String, String> = [
        ("SESSION_SECRET", SECRET),
        ("SESSION_UPSTREAM_SECRET", UPSTREAM_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let secrets = Secrets::from_env(&env).unwrap();
    let store = server::build_store(&config).await.unwrap();
    let listener = server::bind(config.server.listen, "server.listen").unwrap();
    server::start_on(listener, None, &config, &secrets, store).expect("gate starts")
}

fn client() -> BenchClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One GET, body read to the end; returns the response head.
async fn get(
    client: &BenchClient,
    url: &str,
    cookie: Option<&HeaderValue>,
) -> http::response::Parts {
    let mut req = Request::get(url);
    if let Some(c) = cookie {
        req = req.header(http::header::COOKIE, c);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), BODY.len());
    parts
}

fn proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (running, client) = rt.block_on(async {
        let up = upstream().await;
        (gate(up).await, client())
    });
    let base = format!("http://{}", running.addr);
    let plain_url = format!("{base}/");
    let login_url = format!("{base}/login");

    // A valid session cookie for `proxy/session_get`.
    let cookie = rt.block_on(async {
        let parts = get(&client, &login_url, None).await;
        assert_eq!(parts.status, StatusCode::OK);
        let set = parts.headers[http::header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap().to_owned();
        HeaderValue::from_str(&pair).unwrap()
    });
    rt.block_on(async {
        let parts = get(&client, &plain_url, Some(&cookie)).await;
        assert!(
            !parts.headers.contains_key(http::header::SET_COOKIE),
            "the session is active and not due for a refresh"
        );
    });

    c.bench_function("proxy/anonymous_get", |b| {
        b.to_async(&rt).iter(|| get(&client, &plain_url, None))
    });
    c.bench_function("proxy/session_get", |b| {
        b.to_async(&rt)
            .iter(|| get(&client, &plain_url, Some(&cookie)))
    });
    c.bench_function("proxy/login", |b| {
        b.to_async(&rt).iter(|| async {
            let parts = get(&client, &login_url, None).await;
            debug_assert!(parts.headers.contains_key(http::header::SET_COOKIE));
            parts
        })
    });

    drop(client);
    rt.block_on(running.shutdown());
}

criterion_group!(benches, proxy);
criterion_main!(benches);
