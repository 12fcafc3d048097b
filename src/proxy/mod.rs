//! The request path (SPEC §5–§7, §11): [`Gate::handle`] runs four phases around a
//! per-request context, one file each:
//!
//! 0. `proxy/route.rs`: one `Host`, the path normalized (or 400) and its route; after
//!    phase 1, a `session = "required"` route answers 401/302/403 itself;
//! 1. `proxy/request.rs`: strip hop-by-hop, reserved and underscore headers, refuse a
//!    cross-origin unsafe request ([`csrf`], SPEC §12) on routes that want the check, take
//!    our cookie out of `Cookie`, verify it, and load the session (only for a verified
//!    cookie);
//! 2. `proxy/request.rs`: add `Host`, `X-Forwarded-*`, the signed token and `[forward.headers]`;
//!    the upstream exchange itself is [`crate::upstream`];
//! 3. `proxy/response.rs`: validate the directives, apply Destroy → Set → Update to the store,
//!    strip `x-session*` and our cookie from the response, set the cookie;
//! 4. here: one access event and the metrics, written by a drop guard, so that a request
//!    whose client went away (hyper then drops this future) is still counted and logged.
//!
//! Bodies are streamed both ways; upgrades are bridged once the upstream answers 101, and
//! one opened with a session closes when that session ends ([`Upgrades`], SPEC §13).
//!
//! `proxy/build.rs` turns the configuration into a [`Gate`] ([`Gate::new`]).

mod build;
pub mod csrf;
mod dbsc;
mod request;
mod response;
mod route;
mod upgrades;
mod users;

pub use upgrades::Upgrades;

use std::cell::Cell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::warn;

use crate::config::{OnError, RouteSession};
use crate::cookie::{CookieCodec, SetCookieBuilder};
use crate::error::GateError;
use crate::metrics::{Metrics, StoreOp, UpstreamFailure, UpstreamMetrics};
use crate::protocol::{self, ReservedNames};
use crate::route::RouteTable;
use crate::session::{Lifetime, Record, SessionId, unix_now};
use crate::store::users::Handle;
use crate::store::{Store, StoreError};
use crate::telemetry::{Access, Outcome};
use crate::token::TokenSigner;
use crate::upstream::{UpstreamBody, UpstreamPool};

/// The body of every response the proxy sends: the upstream's, streamed, or its own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// The client end of a connection, as every request on it needs it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its IP as a header value, for `X-Forwarded-For` (formatted once per connection).
    ip_header: HeaderValue,
    /// True when the connection is TLS.
    pub tls: bool,
}

impl Peer {
    /// The peer at `addr`, over TLS when `tls`.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self {
            addr,
            ip_header,
            tls,
        }
    }
}

/// The session state of one request, after lookup.
#[derive(Clone)]
enum Lookup {
    /// No usable session: none sent, bad cookie, or store unreadable with `on_error = anonymous`.
    Anonymous,
    /// An active session.
    Active {
        id: SessionId,
        rec: Record,
        rotated: bool,
    },
    /// A verified cookie whose session no longer exists: clear the cookie.
    Gone,
}

/// What the response does with the cookie.
enum CookieOut {
    Keep,
    Set(SessionId),
    Clear,
}

/// Per-request context carried through the phases.
struct Ctx {
    /// Unix seconds, read on first use: an anonymous request needs no wall clock.
    now: Cell<Option<u64>>,
    tls: bool,
    lookup: Lookup,
    outcome: Outcome,
    /// The route says `session = "off"`: no cookie read, no directive applied.
    session_off: bool,
    /// Index of the upstream the request goes to, into [`Gate::upstreams`].
    upstream: usize,
    /// With `session.user_field`: the request's device facts, for a session it creates.
    device: Option<DeviceSeen>,
}

/// The request's `User-Agent` and client address (SPEC §13 device facts), kept for the
/// response's directives.
struct DeviceSeen {
    user_agent: Option<HeaderValue>,
    ip: IpAddr,
}

impl Ctx {
    /// The request's wall-clock time in Unix seconds (one reading per request).
    fn now(&self) -> u64 {
        if let Some(now) = self.now.get() {
            return now;
        }
        let now = unix_now();
        self.now.set(Some(now));
        now
    }
}

/// One application behind the proxy: `server.upstream`, or a route's own.
struct Upstream {
    /// Its keep-alive connections.
    pool: Arc<UpstreamPool>,
    /// Its host:port, the `Host` of a request that came without one.
    authority: HeaderValue,
    /// Its series of the upstream metrics.
    metrics: UpstreamMetrics,
}

/// The proxy: configuration turned into ready-to-use parts, shared by every connection.
pub struct Gate {
    /// `server.upstream` first, then each other application a route names, once.
    upstreams: Vec<Upstream>,
    /// The route table (SPEC §11).
    routes: RouteTable,
    /// For each route (by index into `routes`), the index of its upstream.
    route_upstream: Vec<usize>,
    upstream_timeout: Duration,
    trusted_proxies: Vec<crate::config::Cidr>,
    underscores_in_headers: bool,
    cookie_name: String,
    lifetime: Lifetime,
    max_bytes: usize,
    regenerate_on_set: bool,
    /// `session.user_field` (SPEC §13).
    user_field: Option<String>,
    /// `session.max_per_user`, 0 = no limit.
    max_per_user: usize,
    on_error: OnError,
    forward_header: HeaderName,
    forward_headers: Vec<(HeaderName, String)>,
    reserved: ReservedNames,
    codec: CookieCodec,
    signer: TokenSigner,
    set_cookie: SetCookieBuilder,
    store: Store,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// `[csrf]`: the policy when enabled.
    csrf: Option<csrf::CsrfPolicy>,
    /// `csrf.report_only`: forward what the policy refuses, logged and counted.
    csrf_report_only: bool,
    /// Upgraded connections opened with a session, closed when it ends (SPEC §13).
    upgrades: Upgrades,
    /// `session.revalidate_sec`: how often an upgraded connection re-checks its session.
    revalidate_sec: u64,
    /// `[dbsc]` when enabled (SPEC §16).
    dbsc: Option<crate::dbsc::Dbsc>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pools: Vec<_> = self.upstreams.iter().map(|u| &u.pool).collect();
        f.debug_struct("Gate")
            .field("upstreams", &pools)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// From now on, every HTTP/1 response asks the client to close its connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The store this gate uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics this gate updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This gate registers its upgraded connections in `upgrades`, shared with other gates
    /// of the process (one per runtime) and the admin API, so that ending a session closes
    /// its connections whichever runtime holds them.
    pub fn sharing_upgrades(mut self, upgrades: Upgrades) -> Self {
        self.upgrades = upgrades;
        self
    }

    /// The upgraded connections open through this gate: [`Upgrades::ended`] closes those of
    /// sessions ended elsewhere than the request path (revocations, the admin API).
    pub fn upgrades(&self) -> &Upgrades {
        &self.upgrades
    }

    /// Runs a store operation and records its latency.
    async fn timed<T>(
        &self,
        op: StoreOp,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = fut.await;
        self.metrics.store(op, started.elapsed());
        result
    }

    /// Serves one request from `peer`. Never fails: errors become short plain responses.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, Infallible> {
        let http1 = req.version() <= Version::HTTP_11;
        self.metrics.in_flight().inc();
        let mut done = Finish {
            gate: &self,
            access: Access::take(req.method(), req.uri()),
            ctx: Ctx {
                now: Cell::new(None),
                tls: peer.tls,
                lookup: Lookup::Anonymous,
                outcome: Outcome::None,
                session_off: false,
                upstream: 0,
                device: None,
            },
            status: None,
        };
        let mut res = match self.proxy(&mut done.ctx, req, peer).await {
            Ok(res) => res,
            Err(err) => {
                let upstream = &self.upstreams[done.ctx.upstream].metrics;
                let failure = match &err {
                    GateError::Upstream(_) => Some(UpstreamFailure::unreachable),
                    GateError::UpstreamTimeout(_) => Some(UpstreamFailure::timeout),
                    GateError::BadDirective(_) => Some(UpstreamFailure::bad_directive),
                    GateError::ClientBody(_) | GateError::Store(_) | GateError::BadRequest(_) => {
                        None
                    }
                };
                if let Some(kind) = failure {
                    self.metrics.upstream_error(upstream, kind);
                }
                match &err {
                    GateError::Store(StoreError::Contention(_)) => {
                        warn!(error = %err, "request failed")
                    }
                    GateError::Store(_) => tracing::error!(error = %err, "request failed"),
                    _ => warn!(error = %err, "request failed"),
                }
                plain(err.status(), err.public_message())
            }
        };
        if http1 && self.draining.load(Ordering::Relaxed) {
            // Shutting down: tell keep-alive clients to take their next request elsewhere,
            // so no connection is closed under a request the client is already sending.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        done.status = Some(res.status());
        Ok(res)
    }

    async fn proxy(
        self: &Arc<Self>,
        ctx: &mut Ctx,
        mut req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, GateError> {
        let client_upgrade =
            protocol::wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        self.sanitize(&mut parts.headers);
        let target = self.target(&parts)?;
        // SPEC §16: the DBSC endpoints are the proxy's own, before any route applies.
        if let Some(dbsc) = &self.dbsc
            && target.uri.path().starts_with(crate::dbsc::PREFIX)
        {
            return self
                .dbsc_endpoint(ctx, dbsc, &mut parts, target.uri.path())
                .await;
        }
        let route = &self.routes.routes()[target.route];
        ctx.session_off = route.session == RouteSession::Off;
        ctx.upstream = self.route_upstream[target.route];
        // SPEC §11, the order of checks: the path (400, above), then the cross-origin check
        // of §12 for routes whose `route.csrf` is true (403), before any session is read,
        // then the session requirement.
        if route.csrf
            && let Some(refused) = self.cross_origin(ctx, &parts)
        {
            return Ok(refused);
        }
        self.on_request(ctx, &mut parts.headers).await?;
        self.dbsc_check(ctx, &mut parts.headers);
        if let Some(denied) = self.gatekeep(ctx, route, &parts, &target.uri) {
            return Ok(denied);
        }
        parts.uri = target.uri;
        if self.user_field.is_some() {
            ctx.device = Some(DeviceSeen {
                user_agent: parts.headers.get(header::USER_AGENT).cloned(),
                ip: self.client_ip(&parts.headers, &peer),
            });
        }
        let upstream = &self.upstreams[ctx.upstream];
        let upstream_req = self.to_upstream(ctx, parts, body, peer, &upstream.authority);

        let sent = Instant::now();
        let mut res = match tokio::time::timeout_at(
            tokio::time::Instant::from_std(sent) + self.upstream_timeout,
            upstream.pool.send(upstream_req),
        )
        .await
        {
            Err(_) => return Err(GateError::UpstreamTimeout(self.upstream_timeout)),
            Ok(Err(e)) if e.is_client_body() => {
                return Err(GateError::ClientBody(Box::new(e)));
            }
            Ok(Err(e)) => return Err(GateError::Upstream(Box::new(e))),
            Ok(Ok(res)) => res,
        };
        upstream.metrics.answered(sent.elapsed());

        let upgrade = match (res.status(), client_upgrade) {
            (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) => {
                Some((client_upgrade, hyper::upgrade::on(&mut res)))
            }
            _ => None,
        };
        let (mut parts, body) = res.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            // The upstream's hop-by-hop headers (and those its `Connection` names) end here.
            protocol::strip_hop_by_hop(&mut parts.headers);
        }
        self.on_upstream_response(ctx, &mut parts.headers).await?;
        if let Some((client_upgrade, upstream_upgrade)) = upgrade {
            // Registered before the 101 leaves: a session ended from now on closes it.
            let session = self
                .upgraded_session(ctx, &parts.headers)
                .map(|id| (id, self.upgrades.register(Handle::of(&id))));
            tokio::spawn(
                self.clone()
                    .bridge(client_upgrade, upstream_upgrade, session),
            );
        }
        Ok(Response::from_parts(parts, Either::Left(body)))
    }
}

/// Phase 4, as a drop guard: the in-flight gauge, the request metrics and the access line
/// (SPEC §9). hyper drops a request's future when its client goes away; the guard then
/// still brings the gauge down and writes the line, with status 499 (nginx's "client
/// closed request") and the session outcome reached so far.
struct Finish<'a> {
    gate: &'a Gate,
    access: Option<Access>,
    ctx: Ctx,
    /// The status sent; `None` while the response is not ready.
    status: Option<StatusCode>,
}

/// The status logged and counted for a request whose client went away before its answer.
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let status = self.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        let metrics = &self.gate.metrics;
        metrics.in_flight().dec();
        metrics.request(status, self.ctx.outcome);
        if let Some(access) = &self.access {
            access.log(status, self.ctx.outcome);
        }
    }
}

/// A short plain-text response from the proxy itself.
pub fn plain(status: StatusCode, line: &'static str) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        line.as_bytes(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
