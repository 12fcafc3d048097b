//! A proxy with a local cache (SPEC §15), watched from outside: its own app, so that
//! `app.last()` is this proxy's last request, and its `/metrics` counters. Used by the
//! local-cache tests on one Redis, a Cluster and Sentinel.

use std::time::Duration;

use hyper::Method;

use super::{Gate, Res, UPSTREAM_SECRET, Upstream, app, gate, until, verify_token};

/// Local cache lookups served from the cache.
pub const HITS: &str = "sessiongate_local_cache_lookups_total{result=\"hit\"}";
/// Times the local cache was emptied.
pub const FLUSHES: &str = "sessiongate_local_cache_flushes_total";

pub struct Proxy {
    pub app: Upstream,
    pub gate: Gate,
}

impl Proxy {
    /// A proxy with an admin listener and `toml` (its `[store]`, `[session]`…) on an app of
    /// its own.
    pub async fn start(toml: &str) -> Self {
        let app = app().await;
        let gate = gate(app.addr)
            .server("admin_listen = \"127.0.0.1:0\"")
            .toml(toml)
            .run()
            .await;
        Self { app, gate }
    }

    /// A new session's cookie, from `GET /login`.
    pub async fn login(&self) -> String {
        let res = self.gate.get("/login").await;
        assert_eq!(res.status, 200);
        res.session_cookie()
    }

    /// `GET /me` with `cookie`: true when the upstream got the session.
    pub async fn served(&self, cookie: &str) -> bool {
        let res = self.gate.get_with("/me", &[("cookie", cookie)]).await;
        assert_eq!(res.status, 200);
        self.app.last().header("x-session").is_some()
    }

    /// The session data the upstream got on `GET /me` with `cookie`.
    pub async fn data(&self, cookie: &str) -> Option<serde_json::Value> {
        let res = self.gate.get_with("/me", &[("cookie", cookie)]).await;
        assert_eq!(res.status, 200);
        self.app
            .last()
            .header("x-session")
            .map(|t| verify_token(t, UPSTREAM_SECRET)["data"].clone())
    }

    /// `POST path` with `cookie` and `body`.
    pub async fn send(&self, path: &str, cookie: &str, body: &str) -> Res {
        self.gate
            .send(Method::POST, path, &[("cookie", cookie)], body)
            .await
    }

    /// The counter `name` (with its labels) in `/metrics`; 0 when absent.
    pub async fn counter(&self, name: &str) -> u64 {
        let (_, text) = self.gate.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (at most `within`) until the local cache serves (its tracking is up) and
    /// holds `cookie`'s session.
    pub async fn until_cached(&self, cookie: &str, within: Duration) {
        until(
            within,
            "the session to be served from the local cache",
            || async {
                let before = self.counter(HITS).await;
                assert!(self.served(cookie).await);
                self.counter(HITS).await > before
            },
        )
        .await;
    }
}
