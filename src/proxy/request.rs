//! Phases 1 and 2 of the request path: what the client sent becomes what the upstream
//! receives (SPEC §5).
//!
//! 1. [`Gate::sanitize`]: hop-by-hop, reserved and underscore headers removed before
//!    anything is read; [`Gate::cross_origin`]: the CSRF check (SPEC §12), before any
//!    session is read; [`Gate::on_request`]: our cookie taken out of `Cookie` and verified;
//!    the session loaded (only for a verified cookie: a bad cookie never costs a store
//!    access). On a `session = "off"` route the cookie is taken out unread.
//! 2. [`Gate::to_upstream`]: `Host`, `X-Forwarded-*`, the signed token and
//!    `[forward.headers]`; the target is already the origin form phase 0 made.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::csrf::{self, Verdict};
use super::{Body, Ctx, Gate, Lookup, Peer, plain};
use crate::config::OnError;
use crate::cookie::{self, Verified};
use crate::error::GateError;
use crate::metrics::{DestroyReason, LookupResult, StoreOp};
use crate::protocol;
use crate::store::{SessionStore, StoreError};
use crate::telemetry::Outcome;
use crate::token;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// How much of `Origin` and `Sec-Fetch-Site` a CSRF log line shows.
const LOGGED_HEADER_BYTES: usize = 128;

impl Gate {
    /// Phase 1, first: sanitize the client's headers.
    pub(super) fn sanitize(&self, headers: &mut HeaderMap) {
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
    }

    /// Phase 1, then (SPEC §12): the `403` to answer when `[csrf]` refuses the request as
    /// cross-origin, `None` to go on. Under `report_only` the request goes on, logged and
    /// counted. The log line names the method, path, reason and the two headers judged
    /// (clipped), never a cookie.
    pub(super) fn cross_origin(
        &self,
        ctx: &mut Ctx,
        parts: &http::request::Parts,
    ) -> Option<Response<Body>> {
        let policy = self.csrf.as_ref()?;
        let host = csrf::request_host(&parts.uri, &parts.headers);
        let Verdict::Refuse(why) = csrf::check(&parts.method, &parts.headers, host, policy) else {
            return None;
        };
        let shown = |name: &str| {
            parts.headers.get(name).map(|v| {
                let v = v.as_bytes();
                String::from_utf8_lossy(&v[..v.len().min(LOGGED_HEADER_BYTES)]).into_owned()
            })
        };
        let (origin, sec_fetch_site) = (shown("origin"), shown("sec-fetch-site"));
        if self.csrf_report_only {
            self.metrics.csrf(true);
            warn!(
                method = %parts.method,
                path = parts.uri.path(),
                reason = why.as_str(),
                origin,
                sec_fetch_site,
                "cross-origin request forwarded (csrf.report_only); it would be refused"
            );
            return None;
        }
        self.metrics.csrf(false);
        info!(
            method = %parts.method,
            path = parts.uri.path(),
            reason = why.as_str(),
            origin,
            sec_fetch_site,
            "cross-origin request refused"
        );
        ctx.outcome = Outcome::Csrf;
        Some(plain(StatusCode::FORBIDDEN, "cross-origin request refused"))
    }

    /// Phase 1, last: take our cookie out of `Cookie`, verify it and look the session up.
    pub(super) async fn on_request(
        &self,
        ctx: &mut Ctx,
        headers: &mut HeaderMap,
    ) -> Result<(), GateError> {
        let verified = match cookie::split_ours(headers, &self.cookie_name) {
            None => return Ok(()),
            Some(found) => {
                // SPEC §11 `session = "off"`: the cookie is removed, never verified.
                let verified = if ctx.session_off {
                    None
                } else {
                    found.values.iter().find_map(|v| self.codec.verify(v))
                };
                let rest = found.rest.map(HeaderValue::from_maybe_shared);
                headers.remove(header::COOKIE);
                if let Some(Ok(rest)) = rest {
                    headers.insert(header::COOKIE, rest);
                }
                verified
            }
        };
        if ctx.session_off {
            return Ok(());
        }
        let Some(Verified { id, rotated }) = verified else {
            self.metrics.lookup(LookupResult::invalid);
            ctx.outcome = Outcome::Invalid;
            debug!("session cookie failed verification");
            return Ok(());
        };

        match self
            .timed(StoreOp::load, self.store.load(&id, self.lifetime.ttl()))
            .await
        {
            Ok(Some(rec)) if self.lifetime.is_past_absolute(&rec, ctx.now()) => {
                debug!("session reached absolute_ttl_sec");
                self.timed(StoreOp::delete, self.store.delete(&id)).await?;
                self.metrics.lookup(LookupResult::miss);
                self.metrics.destroyed(DestroyReason::expired, 1);
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
            Err(e @ StoreError::Corrupt { .. }) => {
                // SPEC §14: a value that does not open (altered, moved from another key, or
                // of an unknown format) is no session. It is left in the store: it may be a
                // newer version's during a rolling upgrade, and it expires with its TTL.
                warn!(error = %e, "stored session refused; treated as no session");
                self.metrics.lookup(LookupResult::invalid);
                ctx.lookup = Lookup::Gone;
                ctx.outcome = Outcome::Invalid;
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

    /// The client's address as the proxy resolves it: the peer, or, behind trusted
    /// proxies, the nearest `X-Forwarded-For` entry that is not one of them.
    pub(super) fn client_ip(&self, headers: &HeaderMap, peer: &Peer) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|c| c.contains(ip));
        let mut client = peer.addr.ip();
        if !trusted(client) {
            return client;
        }
        let lines: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        let entries = lines
            .iter()
            .rev()
            .flat_map(|line| line.to_str().unwrap_or_default().rsplit(','));
        for entry in entries {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !trusted(ip) {
                break;
            }
        }
        client
    }

    /// Phase 2: the request the upstream (whose host:port is `authority`) receives.
    pub(super) fn to_upstream(
        &self,
        ctx: &Ctx,
        mut parts: http::request::Parts,
        body: Incoming,
        peer: Peer,
        authority: &HeaderValue,
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
            let h = host.clone().unwrap_or_else(|| authority.clone());
            headers.insert(header::HOST, h);
        }

        let trusted = self
            .trusted_proxies
            .iter()
            .any(|c| c.contains(peer.addr.ip()));
        let peer_ip = peer.ip_header;
        // A list sent on several lines is one list (RFC 9110 §5.3): a trusted peer's
        // `X-Forwarded-For` lines are joined in order, then extended.
        let xff = match headers.get(&X_FORWARDED_FOR) {
            Some(_) if trusted => {
                let mut v = Vec::new();
                for line in headers.get_all(&X_FORWARDED_FOR) {
                    v.extend_from_slice(line.as_bytes());
                    v.extend_from_slice(b", ");
                }
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
                self.signer.mint(id, &rec.data, rec.auth_time, ctx.now()),
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

        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }
}
