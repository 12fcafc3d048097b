//! Test harness: a scripted upstream and the real gate, each on `127.0.0.1:0`, bound before
//! they are spawned, and a client. Nothing is shared between tests.
//!
//! One module per concern, all re-exported here, so a test needs only `use support::*;`:
//! [`upstream`] (the scripted application), [`gate`] (the proxy in-process), [`wire`]
//! (client, responses, raw bytes), [`process`] (the built binary), [`jwt`] (the upstream
//! token), [`redis_server`] (real `redis-server` processes, used by path),
//! [`redis_sentinel`] (a master, a replica and Sentinels watching them, used by path),
//! [`stores`] (a store under test on memory or real Redis, used by path),
//! [`cache_proxy`] (a proxy whose local cache is watched from outside, used by path),
//! [`chromium`] (a headless browser, used by path) and [`cdp`] (a headless browser driven
//! over the DevTools protocol, used by path).

#![allow(dead_code, unreachable_pub)]

pub mod cache_proxy;
pub mod cdp;
pub mod chromium;
pub mod gate;
pub mod jwt;
pub mod process;
pub mod redis_sentinel;
pub mod redis_server;
pub mod stores;
pub mod upstream;
pub mod wire;

use std::time::Duration;

// Each test binary uses only part of the harness.
#[allow(unused_imports)]
pub use self::{gate::*, jwt::*, process::*, upstream::*, wire::*};

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

/// Polls `check` (async) until it holds, failing the test with `what` after `within`.
pub async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
