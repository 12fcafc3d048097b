//! The real gate, in-process on `127.0.0.1:0` (bound before it is spawned), built from TOML
//! fragments, with a client to send it requests and read its admin listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use sessiongate::config::{self, Config};
use sessiongate::secrets::Secrets;
use sessiongate::server::{self, Running};
use sessiongate::store::Store;

use super::wire::{Res, client, raw};

/// `SESSION_SECRET` of every gate (and binary) a test starts.
pub const SECRET: &str = "test-session-secret-0123456789abcdef";
/// `SESSION_UPSTREAM_SECRET` of every gate (and binary) a test starts.
pub const UPSTREAM_SECRET: &str = "test-upstream-secret-0123456789abcdef";

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

/// A running gate and a client for it; [`join`](Gate::join) stops it.
pub struct Gate {
    pub addr: SocketAddr,
    pub running: Running,
    client: Client<HttpConnector, Full<Bytes>>,
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
        self.running.store()
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

    /// The value of the unlabelled metric `name` (e.g. `sessiongate_csrf_refused_total`).
    pub async fn counter(&self, name: &str) -> u64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    /// Stops the gate and re-raises any panic from its task.
    pub async fn join(self) {
        self.running.shutdown().await;
    }
}
