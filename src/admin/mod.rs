//! The admin listener (`server.admin_listen`, SPEC §9). Endpoints:
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /readyz` | `200 ready` when the store answers a ping within `store.timeout_ms`, else `503`; with `store.sentinel`, a second line names the master in use |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//!
//! With `SESSION_ADMIN_TOKEN` set, also (SPEC §13; without it these paths answer `404`):
//!
//! | path | answer |
//! |---|---|
//! | `GET /` (and `/page.js`, `/page.css`) | the operator page (`page.rs`) |
//! | `GET`, `DELETE /sessions?user=U`; `DELETE /sessions/HANDLE` | the admin API (`sessions.rs`), with `Authorization: Bearer <token>` (`auth.rs`), else `401` |
//!
//! It is a separate listener: the proxy port forwards every path to the upstream and
//! never answers these itself.

mod auth;
mod page;
mod sessions;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::proxy::Upgrades;
use crate::store::{SessionStore, Store};

pub use self::auth::AdminToken;

/// What the admin endpoints need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// The store `/readyz` pings.
    pub store: Store,
    /// How long `/readyz` waits for the store.
    pub store_timeout: Duration,
    /// `SESSION_ADMIN_TOKEN`: with it, the admin API and the operator page are served.
    pub token: Option<AdminToken>,
    /// This proxy's upgraded connections, closed when the API ends their sessions.
    pub upgrades: Upgrades,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let admin = Arc::new(admin);
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" | "/readyz" | "/metrics" => self.operations(req).await,
            _ => match &self.token {
                Some(token) => self.users(token, req).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }

    /// `/healthz`, `/readyz` and `/metrics` (SPEC §9), never authenticated.
    async fn operations(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match tokio::time::timeout(self.store_timeout, self.store.ping()).await {
                Ok(Ok(())) => match self.sentinel_master() {
                    Some(line) => owned_text(StatusCode::OK, format!("ready\n{line}\n")),
                    None => text(StatusCode::OK, "ready\n"),
                },
                Ok(Err(e)) => {
                    warn!(error = %e, "readiness check: store unavailable");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
                }
                Err(_) => {
                    warn!("readiness check: store did not answer in time");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
                }
            },
            "/metrics" => {
                let mut res = Response::new(Full::new(Bytes::from(self.metrics.render())));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The operator page and the admin API (SPEC §13), served with `SESSION_ADMIN_TOKEN`.
    async fn users(&self, token: &AdminToken, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method();
        let is_read = method == Method::GET || method == Method::HEAD;
        let path = req.uri().path();
        if let Some(res) = page::asset(path) {
            return if is_read {
                res
            } else {
                not_allowed("GET, HEAD")
            };
        }
        let handle = match path {
            "/sessions" => None,
            _ => match path.strip_prefix("/sessions/") {
                Some(handle) => Some(handle),
                None => return text(StatusCode::NOT_FOUND, "not found\n"),
            },
        };
        let allowed = match handle {
            None if is_read || method == Method::DELETE => None,
            None => Some(sessions::COLLECTION_METHODS),
            Some(_) if method == Method::DELETE => None,
            Some(_) => Some(sessions::MEMBER_METHODS),
        };
        if let Some(allow) = allowed {
            return not_allowed(allow);
        }
        if !token.admits(req.headers()) {
            warn!(%method, "admin api call refused: missing or wrong bearer token");
            let mut res = no_store(text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token\n",
            ));
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"sessiongate admin\""),
            );
            return res;
        }
        match handle {
            None => self.sessions(method, req.uri().query()).await,
            Some(handle) => self.session(handle).await,
        }
    }
}

impl Admin {
    /// With `store.sentinel`: `master NAME at HOST:PORT`, the master in use.
    fn sentinel_master(&self) -> Option<String> {
        let Store::Redis(redis) = &self.store else {
            return None;
        };
        let (name, in_use) = redis.sentinel_master()?;
        Some(match in_use {
            Some(addr) => format!("master {name} at {addr}"),
            None => format!("master {name} not found yet"),
        })
    }
}

/// `405` with the `Allow` list (RFC 9110 §15.5.6).
fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    res.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    res
}

/// Marks `res` as never to be stored by any cache, and never to be sniffed.
fn no_store(mut res: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    res
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    owned_text(status, Bytes::from_static(body.as_bytes()))
}

fn owned_text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
