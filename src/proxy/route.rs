//! Phase 0 and the route's session requirement (SPEC §5 first bullet, §11).
//!
//! [`Gate::target`] runs before anything else: one `Host`, agreeing with an absolute-form
//! target (or HTTP/2 `:authority`); the path normalized ([`crate::route::normalize`]) or
//! refused with 400; the route picked on the normalized path; and the target the upstream
//! will receive (normalized path, query as sent).
//!
//! [`Gate::gatekeep`] runs once the session is looked up: a `session = "required"` route
//! answers 401, 302 (a browser navigation, to `login_url`) or 403 itself, and the upstream
//! is never called.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

use super::{Body, Ctx, Gate, Lookup};
use crate::config::RouteSession;
use crate::error::BadRequest;
use crate::route::{PathError, Route, Verdict, normalize};

/// A request's place in the route table.
pub(super) struct Target {
    /// Index into the gate's route table.
    pub(super) route: usize,
    /// What the upstream receives: the normalized path and the query as sent.
    pub(super) uri: Uri,
}

/// Body of the 401 of a `session = "required"` route.
const SESSION_REQUIRED: &str = r#"{"error":"session required"}"#;
/// Body of the 403 of a session that fails `require`.
const FORBIDDEN: &str = r#"{"error":"forbidden"}"#;

impl Gate {
    /// Phase 0: the Host rules, the normalized path and its route.
    pub(super) fn target(&self, parts: &Parts) -> Result<Target, BadRequest> {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(BadRequest::DuplicateHost);
        }
        if let (Some(host), Some(authority)) = (host, parts.uri.authority())
            && !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(BadRequest::HostMismatch);
        }

        let uri = &parts.uri;
        // The authority form (CONNECT) has no path: it is matched, and sent, as "/".
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        if path == "*" && parts.method != Method::OPTIONS {
            return Err(PathError::NotAbsolute.into());
        }
        let n = normalize(path, self.routes.case_insensitive())?;
        let route = self.routes.find(&n.key);
        let uri = match (uri.path_and_query(), uri.query()) {
            (Some(pq), _) if n.forward == path => Uri::from(pq.clone()),
            (_, Some(q)) => {
                Uri::try_from(format!("{}?{q}", n.forward)).map_err(|_| PathError::NotAbsolute)?
            }
            (_, None) => {
                Uri::try_from(n.forward.into_owned()).map_err(|_| PathError::NotAbsolute)?
            }
        };
        Ok(Target { route, uri })
    }

    /// The route's session requirement, once the session is looked up: `None` to forward
    /// the request, or the proxy's own answer.
    pub(super) fn gatekeep(
        &self,
        ctx: &Ctx,
        route: &Route,
        parts: &Parts,
        target: &Uri,
    ) -> Option<Response<Body>> {
        if route.session != RouteSession::Required {
            return None;
        }
        let verdict = match &ctx.lookup {
            Lookup::Active { rec, .. } => route.judge(&rec.data, rec.auth_time, ctx.now()),
            Lookup::Anonymous | Lookup::Gone => Verdict::NoSession,
        };
        let mut res = match verdict {
            Verdict::Allow => return None,
            Verdict::Forbidden => json(StatusCode::FORBIDDEN, FORBIDDEN),
            Verdict::NoSession => match route
                .login_location(target.path_and_query().map_or("/", |pq| pq.as_str()))
                .filter(|_| is_navigation(parts))
                .and_then(|l| HeaderValue::try_from(l).ok())
            {
                Some(location) => {
                    let mut res = Response::new(Either::Right(Full::new(Bytes::new())));
                    *res.status_mut() = StatusCode::FOUND;
                    res.headers_mut().insert(header::LOCATION, location);
                    res
                }
                None => json(StatusCode::UNAUTHORIZED, SESSION_REQUIRED),
            },
        };
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Lookup::Gone = ctx.lookup {
            // The cookie names a session that is no more: clear it, as any response would.
            res.headers_mut()
                .append(header::SET_COOKIE, self.set_cookie.clear());
        }
        Some(res)
    }
}

/// A browser navigation: GET or HEAD whose `Accept` contains `text/html`.
fn is_navigation(parts: &Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && parts.headers.get_all(header::ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(b"text/html".len())
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
