//! Test harness: a scripted upstream and the real gate, each on `127.0.0.1:0`, bound before
//! they are spawned, and a client. Nothing is shared between tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use sessiongate::config::{self, Config};
use sessiongate::secrets::Secrets;
use sessiongate::server::{self, Running};
use sessiongate::store::Store;

pub const SECRET: &str = "test-session-secret-0123456789abcdef";
pub const UPSTREAM_SECRET: &str = "test-upstream-secret-0123456789abcdef";

/// Installs a test subscriber once; `RUST_LOG` controls it.
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What the scripted upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from_static(b"ok"),
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A scripted upstream that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many TCP connections the upstream has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream that answers with `handler`.
pub async fn upstream(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let recorded = seen.clone();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let handler = handler.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let recorded = recorded.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method,
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or("/".into(), |p| p.to_string()),
                            headers: parts.headers,
                            body,
                        };
                        let reply = handler(&seen);
                        recorded.lock().unwrap().push(seen);
                        let mut res = Response::new(Full::new(reply.body));
                        *res.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                        for (k, v) in reply.headers {
                            res.headers_mut().append(
                                http::HeaderName::try_from(k).unwrap(),
                                HeaderValue::from_bytes(&v).unwrap(),
                            );
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
    Upstream {
        addr,
        seen,
        connections,
        task,
    }
}

/// The usual application: `/login` sets a session, `/logout` destroys it, `/update` patches
/// it with the request body, anything else answers `ok`.
pub async fn app() -> Upstream {
    upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1,"name":"alice"}"#),
        "/logout" => Reply::ok().header("x-session-destroy", "1"),
        "/update" => Reply::ok().header("x-session-update", req.body.clone()),
        _ => Reply::ok(),
    })
    .await
}

/// Builds a gate config from TOML fragments.
pub struct GateBuilder {
    upstream: SocketAddr,
    server: String,
    rest: String,
    env: HashMap<String, String>,
    store: Option<Store>,
}

pub fn gate(upstream: SocketAddr) -> GateBuilder {
    let env = [
        ("SESSION_SECRET", SECRET),
        ("SESSION_UPSTREAM_SECRET", UPSTREAM_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    GateBuilder {
        upstream,
        server: String::new(),
        rest: "[cookie]\nsecure = false\n".into(),
        env,
        store: None,
    }
}

impl GateBuilder {
    /// Extra `[server]` keys.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    /// Extra tables (not `[server]` or `[cookie]`; use `cookie()` for the latter).
    pub fn toml(mut self, text: &str) -> Self {
        self.rest.push_str(text);
        self.rest.push('\n');
        self
    }

    /// Replaces the `[cookie]` table.
    pub fn cookie(mut self, lines: &str) -> Self {
        self.rest = self.rest.replace("[cookie]\nsecure = false\n", "");
        self.rest.push_str("[cookie]\n");
        self.rest.push_str(lines);
        self.rest.push('\n');
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Uses `store` instead of the one the config describes (to share one between gates).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    pub fn config(&self) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\n{}\n{}",
            self.upstream, self.server, self.rest
        );
        config::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    pub async fn run(self) -> Gate {
        let config = self.config();
        let secrets = Secrets::from_env(&self.env).unwrap();
        let store = match self.store {
            Some(s) => s,
            None => server::build_store(&config).await.unwrap(),
        };
        let listener = server::bind(config.server.listen, "server.listen").unwrap();
        let admin = config
            .server
            .admin_listen
            .map(|a| server::bind(a, "server.admin_listen").unwrap());
        let running = server::start_on(listener, admin, &config, &secrets, store).unwrap();
        Gate {
            addr: running.addr,
            running,
            client: client(),
        }
    }
}

pub struct Gate {
    pub addr: SocketAddr,
    pub running: Running,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response, fully read.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Every `Set-Cookie` for `name`.
    pub fn set_cookies(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| v.starts_with(&format!("{name}=")))
            .collect()
    }

    /// The value of the one `Set-Cookie` for `name`, if any.
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        let all = self.set_cookies(name);
        assert!(
            all.len() <= 1,
            "more than one Set-Cookie for {name}: {all:?}"
        );
        all.first().map(|c| {
            let first = c.split(';').next().unwrap();
            first[name.len() + 1..].to_owned()
        })
    }

    /// `session=VALUE` for a `Cookie` header, from this response's `Set-Cookie`.
    pub fn session_cookie(&self) -> String {
        format!(
            "session={}",
            self.cookie_value("session")
                .expect("a session cookie was set")
        )
    }

    pub fn is_clear(&self, name: &str) -> bool {
        self.set_cookies(name)
            .iter()
            .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl Gate {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send(Method::GET, path, &[], "").await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Res {
        self.send(Method::GET, path, headers, "").await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Res {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("response within 10s")
            .expect("request succeeds");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Res {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub fn store(&self) -> &Store {
        self.running.gate().store()
    }

    /// `GET path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self.running.admin_addr.expect("admin listener configured");
        let res = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status = res[9..12].parse().unwrap();
        let body = res
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Session store operations so far, from `sessiongate_store_seconds_count`.
    pub async fn store_ops(&self) -> u64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("sessiongate_store_seconds_count"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Stops the gate and re-raises any panic from its task.
    pub async fn join(self) {
        self.running.shutdown().await;
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it or `deadline`.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it holds or 10 seconds pass.
pub async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Decodes the claims of an X-Session token after checking its HS256 signature.
pub fn verify_token(token: &str, key: &str) -> serde_json::Value {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let (signing_input, sig) = token.rsplit_once('.').expect("three parts");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap())
        .expect("token signature verifies");
    let (header, claims) = signing_input.split_once('.').unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(header).unwrap(),
        br#"{"alg":"HS256","typ":"JWT"}"#
    );
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
}
pub mod redis_server;
