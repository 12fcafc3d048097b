//! The request path (SPEC §5–§7), as four phases around a per-request context:
//!
//! 1. [`Gate::on_request`]: strip hop-by-hop, reserved and underscore headers, take our
//!    cookie out of `Cookie`, verify it, and load the session (only for a verified cookie).
//! 2. [`Gate::to_upstream`]: add the signed token, `[forward.headers]` and X-Forwarded-*.
//! 3. [`Gate::on_upstream_response`]: validate the directives, apply Destroy → Set → Update
//!    to the store, strip `x-session*` and our cookie from the response, set the cookie.
//! 4. [`Gate::finish`]: one access event.
//!
//! Bodies are streamed both ways; upgrades are bridged once the upstream answers 101.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tracing::{Level, debug, info, warn};

use crate::config::{Config, OnError};
use crate::cookie::{self, CookieCodec, SetCookieBuilder, Verified};
use crate::error::GateError;
use crate::metrics::{LookupResult, Metrics, StoreOp, UpstreamError};
use crate::protocol::{self, DirectiveError, Directives, ReservedNames};
use crate::secrets::Secrets;
use crate::session::{Record, SessionId, merge_object, unix_now};
use crate::store::{Cas, SessionStore, Store, StoreError};
use crate::token::{self, TokenSigner};
use crate::upstream::{Upstream, UpstreamBody};

/// The body of every response the proxy sends: the upstream's, streamed, or its own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// How often a compare-and-set is retried against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 8;
/// How often a fresh ID is drawn when `create` reports a collision.
const CREATE_ATTEMPTS: usize = 4;

/// The tracing target of the access line (SPEC §9).
const ACCESS_LOG: &str = "sessiongate::access";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// What became of the request's session; the `session` field of the access event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No cookie of ours.
    None,
    /// A verified cookie whose session is active.
    Hit,
    /// A verified cookie whose session is gone.
    Miss,
    /// A cookie that failed format or signature checks.
    Invalid,
    /// The store could not be read.
    Error,
    /// The response created a session.
    Created,
    /// The response destroyed the session.
    Destroyed,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
            Outcome::Created => "created",
            Outcome::Destroyed => "destroyed",
        }
    }
}

/// The session state of one request, after lookup.
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
    /// What the access line needs; only taken when that line is enabled.
    access: Option<Access>,
    /// Unix seconds, read on first use: an anonymous request needs no wall clock.
    now: Cell<Option<u64>>,
    tls: bool,
    lookup: Lookup,
    outcome: Outcome,
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

/// The fields of a request's access line that must be taken before it is forwarded.
struct Access {
    started: Instant,
    method: Method,
    /// The request target; only its path is ever logged.
    uri: Uri,
}

/// The proxy: configuration turned into ready-to-use parts, shared by every connection.
pub struct Gate {
    upstream: Arc<Upstream>,
    upstream_authority: HeaderValue,
    upstream_timeout: Duration,
    trusted_proxies: Vec<crate::config::Cidr>,
    underscores_in_headers: bool,
    cookie_name: String,
    ttl: Duration,
    ttl_sec: u64,
    absolute_ttl_sec: u64,
    cookie_refresh_sec: u64,
    max_bytes: usize,
    regenerate_on_set: bool,
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
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// Builds the proxy from validated config, secrets, a store and the metrics it updates.
    ///
    /// # Errors
    /// When the `server.upstream_ca` bundle of an https upstream cannot be loaded.
    pub fn new(
        config: &Config,
        secrets: &Secrets,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = if config.server.upstream.scheme == http::uri::Scheme::HTTPS {
            crate::tls::client_config(config.server.upstream_ca.as_deref())?
        } else {
            // Never used: the upstream is plain http.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let upstream = &config.server.upstream;
        let forward_names = std::iter::once(&config.forward.header)
            .chain(config.forward.headers.iter().map(|(h, _)| h));
        Ok(Self {
            upstream: Arc::new(Upstream::new(
                &upstream.scheme,
                upstream.authority.clone(),
                tls,
            )),
            upstream_authority: HeaderValue::from_str(upstream.authority.as_str())
                .expect("a URI authority is a valid header value"),
            upstream_timeout: config.server.upstream_timeout,
            trusted_proxies: config.server.trusted_proxies.clone(),
            underscores_in_headers: config.server.underscores_in_headers,
            cookie_name: config.session.cookie_name.clone(),
            ttl: Duration::from_secs(config.session.ttl_sec),
            ttl_sec: config.session.ttl_sec,
            absolute_ttl_sec: config.session.absolute_ttl_sec,
            cookie_refresh_sec: config.session.cookie_refresh_sec,
            max_bytes: config.session.max_bytes,
            regenerate_on_set: config.session.regenerate_on_set,
            on_error: config.store.on_error,
            forward_header: config.forward.header.clone(),
            forward_headers: config.forward.headers.clone(),
            reserved: ReservedNames::new(forward_names),
            codec: CookieCodec::new(&secrets.session, &secrets.previous),
            signer: TokenSigner::new(&secrets.upstream, config.forward.token_ttl_sec),
            set_cookie: SetCookieBuilder::new(
                &config.session.cookie_name,
                config.cookie.clone(),
                config.session.ttl_sec,
            ),
            store,
            metrics,
            draining: AtomicBool::new(false),
        })
    }

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
        let tls = peer.tls;
        let http1 = req.version() <= Version::HTTP_11;
        let access = tracing::enabled!(target: ACCESS_LOG, Level::INFO).then(|| Access {
            started: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
        });
        let mut ctx = Ctx {
            access,
            now: Cell::new(None),
            tls,
            lookup: Lookup::Anonymous,
            outcome: Outcome::None,
        };
        self.metrics.in_flight().inc();
        let res = match self.proxy(&mut ctx, req, peer).await {
            Ok(res) => res,
            Err(err) => {
                match &err {
                    GateError::Upstream(_) => {
                        self.metrics.upstream_error(UpstreamError::unreachable)
                    }
                    GateError::UpstreamTimeout(_) => {
                        self.metrics.upstream_error(UpstreamError::timeout)
                    }
                    GateError::BadDirective(_) => {
                        self.metrics.upstream_error(UpstreamError::bad_directive)
                    }
                    GateError::ClientBody(_) | GateError::Store(_) => {}
                }
                match &err {
                    GateError::Store(_) => tracing::error!(error = %err, "request failed"),
                    _ => warn!(error = %err, "request failed"),
                }
                plain(err.status(), err.public_message())
            }
        };
        let mut res = res;
        if http1 && self.draining.load(Ordering::Relaxed) {
            // Shutting down: tell keep-alive clients to take their next request elsewhere,
            // so no connection is closed under a request the client is already sending.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.metrics.in_flight().dec();
        self.finish(&ctx, res.status());
        Ok(res)
    }

    async fn proxy(
        self: &Arc<Self>,
        ctx: &mut Ctx,
        mut req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, GateError> {
        let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        self.on_request(ctx, &mut parts.headers).await?;
        let upstream_req = self.to_upstream(ctx, parts, body, peer);

        let sent = Instant::now();
        let mut res = match tokio::time::timeout_at(
            tokio::time::Instant::from_std(sent) + self.upstream_timeout,
            self.upstream.send(upstream_req),
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
        self.metrics.upstream(sent.elapsed());

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
            (res.status(), client_upgrade)
        {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            tokio::spawn(bridge(client_upgrade, upstream_upgrade));
        }
        let (mut parts, body) = res.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            // The upstream's hop-by-hop headers (and those its `Connection` names) end here.
            protocol::strip_hop_by_hop(&mut parts.headers);
        }
        self.on_upstream_response(ctx, &mut parts.headers).await?;
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// Phase 1: sanitize the client's headers and look the session up.
    async fn on_request(&self, ctx: &mut Ctx, headers: &mut HeaderMap) -> Result<(), GateError> {
        // SPEC §5: hop-by-hop first (so a client's `Connection` cannot remove what we add),
        // then the reserved namespace and underscore names, before anything else is read.
        let upgrade = protocol::strip_hop_by_hop(headers);
        let keep_underscores = self.underscores_in_headers;
        protocol::remove_where(headers, |name| {
            self.reserved.contains(name)
                || (!keep_underscores && name.as_str().contains('_'))
                || name == header::EXPECT
        });
        if let Some(proto) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }

        let verified = match cookie::take_ours(headers, &self.cookie_name) {
            None => return Ok(()),
            Some(found) => {
                let verified = found.values.iter().find_map(|v| self.codec.verify(v));
                let rest = found.rest.map(HeaderValue::from_maybe_shared);
                headers.remove(header::COOKIE);
                if let Some(Ok(rest)) = rest {
                    headers.insert(header::COOKIE, rest);
                }
                verified
            }
        };
        let Some(Verified { id, rotated }) = verified else {
            self.metrics.lookup(LookupResult::invalid);
            ctx.outcome = Outcome::Invalid;
            debug!("session cookie failed verification");
            return Ok(());
        };

        match self
            .timed(StoreOp::load, self.store.load(&id, self.ttl))
            .await
        {
            Ok(Some(rec)) if self.is_past_absolute(&rec, ctx.now()) => {
                debug!("session reached absolute_ttl_sec");
                self.timed(StoreOp::delete, self.store.delete(&id)).await?;
                self.metrics.lookup(LookupResult::miss);
                self.metrics.destroyed();
                ctx.lookup = Lookup::Gone;
                ctx.outcome = Outcome::Miss;
            }
            Ok(Some(rec)) => {
                self.metrics.lookup(LookupResult::hit);
                ctx.lookup = Lookup::Active { id, rec, rotated };
                ctx.outcome = Outcome::Hit;
            }
            Ok(None) => {
                self.metrics.lookup(LookupResult::miss);
                ctx.lookup = Lookup::Gone;
                ctx.outcome = Outcome::Miss;
            }
            Err(e) => {
                self.metrics.lookup(LookupResult::error);
                ctx.outcome = Outcome::Error;
                match self.on_error {
                    OnError::Fail => return Err(e.into()),
                    OnError::Anonymous => {
                        warn!(error = %e, "session store read failed; forwarding as anonymous");
                    }
                }
            }
        }
        Ok(())
    }

    fn is_past_absolute(&self, rec: &Record, now: u64) -> bool {
        self.absolute_ttl_sec > 0 && now.saturating_sub(rec.created) >= self.absolute_ttl_sec
    }

    /// The store TTL for `rec`: the idle timeout, capped by what the absolute limit leaves.
    fn ttl_for(&self, rec: &Record, now: u64) -> Duration {
        if self.absolute_ttl_sec == 0 {
            return self.ttl;
        }
        let left = (rec.created + self.absolute_ttl_sec)
            .saturating_sub(now)
            .max(1);
        Duration::from_secs(left.min(self.ttl_sec))
    }

    /// Phase 2: the request the upstream receives.
    fn to_upstream(
        &self,
        ctx: &Ctx,
        mut parts: http::request::Parts,
        body: Incoming,
        peer: Peer,
    ) -> Request<Incoming> {
        let headers = &mut parts.headers;
        // The client's Host (HTTP/2: its :authority) goes on; without one, the upstream's.
        let host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if headers.get(header::HOST).is_none() {
            let h = host
                .clone()
                .unwrap_or_else(|| self.upstream_authority.clone());
            headers.insert(header::HOST, h);
        }

        let trusted = self
            .trusted_proxies
            .iter()
            .any(|c| c.contains(peer.addr.ip()));
        let peer_ip = peer.ip_header;
        let xff = match headers.get(&X_FORWARDED_FOR) {
            Some(prev) if trusted => {
                let mut v = prev.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer_ip.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or(peer_ip)
            }
            _ => peer_ip,
        };
        // Replace (never extend) unless the peer is a trusted proxy. `insert` replaces
        // every value the client sent under the name.
        let proto = HeaderValue::from_static(if ctx.tls { "https" } else { "http" });
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        if trusted {
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO.clone(), proto);
            }
            if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
        } else {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
            match host {
                Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
                None => headers.remove(&X_FORWARDED_HOST),
            };
        }

        if let Lookup::Active { id, rec, .. } = &ctx.lookup {
            headers.insert(
                self.forward_header.clone(),
                self.signer.mint(id, &rec.data, ctx.now()),
            );
            if !self.forward_headers.is_empty()
                && let Ok(data) = serde_json::from_str::<Value>(&rec.data)
            {
                for (name, field) in &self.forward_headers {
                    if let Some(v) = token::field_value(&data, field) {
                        headers.insert(name.clone(), v);
                    }
                }
            }
        }

        // Origin form: the connection already goes to the upstream.
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
            Some(pq) if pq.as_str() == "*" => Uri::from(pq.clone()),
            _ => Uri::from_static("/"),
        };
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// Phase 3: apply the upstream's directives and shape the response headers.
    async fn on_upstream_response(
        &self,
        ctx: &mut Ctx,
        headers: &mut HeaderMap,
    ) -> Result<(), GateError> {
        // One scan first: most responses carry no `x-session*` header at all.
        let directives = if headers.keys().any(protocol::has_reserved_prefix) {
            let directives = protocol::parse_directives(headers);
            protocol::strip_reserved(headers);
            directives
        } else {
            Ok(Directives::default())
        };
        self.drop_upstream_session_cookie(headers);
        let directives = directives?;

        // The store-writing paths are boxed: inline, their state would enlarge (and be
        // copied with) every request's future, though most requests take neither.
        let cookie_out = if !directives.is_empty() {
            Box::pin(self.apply(ctx, directives)).await?
        } else {
            match &ctx.lookup {
                Lookup::Anonymous => CookieOut::Keep,
                Lookup::Gone => CookieOut::Clear,
                Lookup::Active { id, rec, rotated }
                    if self.cookie_due(rec, *rotated, ctx.now()) =>
                {
                    Box::pin(self.refresh(*id, rec.clone(), ctx.now())).await
                }
                Lookup::Active { .. } => CookieOut::Keep,
            }
        };

        let value = match cookie_out {
            CookieOut::Keep => return Ok(()),
            CookieOut::Set(id) => self.set_cookie.set(self.codec.sign(&id)),
            CookieOut::Clear => self.set_cookie.clear(),
        };
        headers.append(header::SET_COOKIE, value);
        make_private(headers);
        Ok(())
    }

    /// A `Set-Cookie` for our cookie name from the upstream is dropped: only we set it.
    fn drop_upstream_session_cookie(&self, headers: &mut HeaderMap) {
        let ours = |v: &HeaderValue| {
            let b = v.as_bytes();
            let name = b.split(|c| *c == b'=').next().unwrap_or_default();
            name.trim_ascii() == self.cookie_name.as_bytes()
        };
        if !headers.get_all(header::SET_COOKIE).iter().any(ours) {
            return;
        }
        warn!("dropped a Set-Cookie for the session cookie sent by the upstream");
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
    }

    /// No directives, and the cookie is due (signed with an old key, or `cookie_refresh_sec`
    /// has passed): record the refresh and re-send the cookie; clear it if the session is gone.
    async fn refresh(&self, id: SessionId, rec: Record, now: u64) -> CookieOut {
        let mut expected = rec;
        for _ in 0..CAS_ATTEMPTS {
            let next = Record {
                cookie_sent: now,
                ..expected.clone()
            };
            let ttl = self.ttl_for(&next, now);
            match self
                .timed(
                    StoreOp::replace,
                    self.store.replace(&id, &expected, &next, ttl),
                )
                .await
            {
                Ok(Cas::Applied) => return CookieOut::Set(id),
                Ok(Cas::Changed(current)) => expected = current,
                Ok(Cas::Gone) => return CookieOut::Clear,
                Err(e) => {
                    // Bookkeeping only: the request itself succeeded and the session is
                    // intact, so the cookie is simply re-sent on a later request.
                    warn!(error = %e, "could not record the cookie refresh; will retry on a later request");
                    return CookieOut::Keep;
                }
            }
        }
        CookieOut::Keep
    }

    /// Applies Destroy, Set and Update, in that order, after validating all of them.
    async fn apply(&self, ctx: &mut Ctx, d: Directives) -> Result<CookieOut, GateError> {
        let (old_id, current) = match &ctx.lookup {
            Lookup::Active { id, rec, .. } => (Some(*id), (!d.destroy).then(|| (*id, rec.clone()))),
            _ => (None, None),
        };
        // Keep the ID only for an Update, or a Set with `regenerate_on_set = false`.
        let in_place = current.is_some() && (d.set.is_none() || !self.regenerate_on_set);

        // Validate everything before the first write (SPEC §6: nothing half-applied).
        let data = self.new_data(&d, current.as_ref().map(|(_, rec)| &*rec.data))?;

        if let Some((id, rec)) = current.filter(|_| in_place) {
            return self.apply_in_place(ctx, id, rec, &d, data).await;
        }
        if d.set.is_none() && d.update.is_none() {
            // Destroy alone.
            if let Some(id) = old_id {
                self.timed(StoreOp::delete, self.store.delete(&id)).await?;
            }
            ctx.outcome = Outcome::Destroyed;
            return Ok(CookieOut::Clear);
        }

        // A new session, under a new ID. Create it first, then retire the old ID: if the
        // delete fails, the old session is exactly as it was and the new one is removed
        // again (best effort), so nothing half-applied is visible.
        let rec = Record::new(data.into(), ctx.now());
        let new_id = self.create(&rec, ctx.now()).await?;
        if let Some(old) = old_id
            && let Err(e) = self.timed(StoreOp::delete, self.store.delete(&old)).await
        {
            if let Err(cleanup) = self
                .timed(StoreOp::delete, self.store.delete(&new_id))
                .await
            {
                warn!(error = %cleanup, "could not remove the half-created session");
            }
            return Err(e.into());
        }
        ctx.outcome = Outcome::Created;
        Ok(CookieOut::Set(new_id))
    }

    /// Set (without regeneration) or Update on the current session, keeping its ID.
    /// A compare-and-set loop, so concurrent updates are merged, never lost, and a
    /// concurrent Destroy wins. `data` is the result already computed for `expected`.
    async fn apply_in_place(
        &self,
        ctx: &mut Ctx,
        id: SessionId,
        mut expected: Record,
        d: &Directives,
        mut data: String,
    ) -> Result<CookieOut, GateError> {
        let send_cookie = match &ctx.lookup {
            Lookup::Active { rotated, rec, .. } => self.cookie_due(rec, *rotated, ctx.now()),
            _ => false,
        };
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                data = self.new_data(d, Some(&expected.data))?;
            }
            let next = Record {
                created: expected.created,
                cookie_sent: if send_cookie {
                    ctx.now()
                } else {
                    expected.cookie_sent
                },
                data: Arc::from(data.as_str()),
            };
            let ttl = self.ttl_for(&next, ctx.now());
            match self
                .timed(
                    StoreOp::replace,
                    self.store.replace(&id, &expected, &next, ttl),
                )
                .await?
            {
                Cas::Applied => {
                    return Ok(if send_cookie {
                        CookieOut::Set(id)
                    } else {
                        CookieOut::Keep
                    });
                }
                Cas::Changed(current) => expected = current,
                Cas::Gone => {
                    // SPEC §6: a concurrent Destroy wins; the change is not applied.
                    warn!("session vanished before its update could be applied; update dropped");
                    ctx.outcome = Outcome::Miss;
                    return Ok(CookieOut::Clear);
                }
            }
        }
        Err(GateError::Store(StoreError::Unavailable(
            "session kept changing under concurrent updates".into(),
        )))
    }

    /// True when the cookie must be re-sent on this response: it was signed with a
    /// previous key, or `cookie_refresh_sec` has passed since it was last sent.
    fn cookie_due(&self, rec: &Record, rotated: bool, now: u64) -> bool {
        rotated || now.saturating_sub(rec.cookie_sent) >= self.cookie_refresh_sec
    }

    /// The session data after `d`'s Set and Update, starting from `current` data (none
    /// for a new session), serialized and checked against `max_bytes`.
    fn new_data(&self, d: &Directives, current: Option<&str>) -> Result<String, DirectiveError> {
        let Some(update) = &d.update else {
            return match &d.set {
                Some(set) => self.sized(set, "X-Session-Set"),
                None => self.sized(
                    &current.map(parse_data).unwrap_or_default(),
                    "X-Session-Set",
                ),
            };
        };
        let mut data = match (&d.set, current) {
            (Some(set), _) => set.clone(),
            (None, Some(data)) => parse_data(data),
            (None, None) => Map::new(),
        };
        merge_object(&mut data, update);
        self.sized(&data, "X-Session-Update")
    }

    fn sized(
        &self,
        data: &Map<String, Value>,
        header: &'static str,
    ) -> Result<String, DirectiveError> {
        let text = serde_json::to_string(data).expect("a JSON map always serializes");
        if text.len() > self.max_bytes {
            return Err(DirectiveError::TooLarge {
                header,
                size: text.len(),
                max: self.max_bytes,
            });
        }
        Ok(text)
    }

    /// Stores `rec` under a fresh ID, drawing again on the (astronomically unlikely) collision.
    async fn create(&self, rec: &Record, now: u64) -> Result<SessionId, GateError> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = SessionId::random();
            if self
                .timed(
                    StoreOp::create,
                    self.store.create(&id, rec, self.ttl_for(rec, now)),
                )
                .await?
            {
                return Ok(id);
            }
            warn!("session ID collision; drawing a new one");
        }
        Err(GateError::Store(StoreError::Unavailable(
            "could not find an unused session ID".into(),
        )))
    }

    /// Phase 4: the access event (SPEC §9): never the query, a cookie, a token or data.
    fn finish(&self, ctx: &Ctx, status: StatusCode) {
        self.metrics.request(status.as_u16(), ctx.outcome);
        if let Some(access) = &ctx.access {
            info!(
                target: ACCESS_LOG,
                method = %access.method,
                path = access.uri.path(),
                status = status.as_u16(),
                duration_ms = access.started.elapsed().as_micros() as f64 / 1000.0,
                session = ctx.outcome.as_str(),
            );
        }
    }
}

/// Stored session data as a map. It is always an object we serialized ourselves; a
/// corrupt value (impossible short of a foreign writer) reads as empty.
fn parse_data(data: &str) -> Map<String, Value> {
    serde_json::from_str(data).unwrap_or_default()
}

/// True when the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

async fn bridge(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => debug!(error = %e, "upgrade did not complete"),
    }
}

/// SPEC §6: a response that sets or clears our cookie is never stored by a shared cache.
fn make_private(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        return;
    }
    let mut directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
        .collect();
    let has = |name: &str| directives.iter().any(|d| d.eq_ignore_ascii_case(name));
    if !has("private") && !has("no-store") {
        directives.push("private".into());
    }
    let value = directives.join(", ");
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("private")),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_private_drops_public_and_adds_private() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        );
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "max-age=600, private");

        let mut h = HeaderMap::new();
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "private");

        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn upgrade_detection_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }
}
