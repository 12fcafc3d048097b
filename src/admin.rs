//! The admin listener (`server.admin_listen`, SPEC §9). Endpoints:
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /readyz` | `200 ready` when the store answers a ping within `store.timeout_ms`, else `503`; with `store.sentinel`, a second line names the master in use |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//!
//! It is a separate listener: the proxy port forwards every path to the upstream and
//! never answers these itself.

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
use crate::store::{SessionStore, Store};

/// What the admin endpoints need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// The store `/readyz` pings.
    pub store: Store,
    /// How long `/readyz` waits for the store.
    pub store_timeout: Duration,
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
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
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
