//! Routes (SPEC §11): per-path upstream and session policy.
//!
//! A request's path is normalized once ([`normalize()`]); its matching key picks the route
//! with the longest prefix that matches on a segment boundary (`/admin` matches `/admin`,
//! `/admin/` and `/admin/x`, never `/administrator`); a path under no route gets the
//! default route (session optional, `server.upstream`, cross-origin check on). The
//! upstream then receives the normalized path, so that what was checked is what the
//! application routes.
//!
//! This module is pure: the table, the match, the `require` and `max_auth_age_sec` rules
//! and the login redirect's `Location`. The proxy glue answers with them.

pub mod normalize;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

pub use self::normalize::{Normalized, PathError, normalize};
use crate::upstream::UpstreamUrl;

/// `route.session`
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSession {
    /// As without routes: the session is used when there is one.
    Optional,
    /// No request reaches the upstream without a session that meets the route's policy.
    Required,
    /// No session at all: the cookie is not read, the store not touched.
    Off,
}

impl RouteSession {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSession::Optional => "optional",
            RouteSession::Required => "required",
            RouteSession::Off => "off",
        }
    }
}

/// One `[[route]]`, validated.
#[derive(Debug, Clone)]
pub struct Route {
    /// The prefix in normal form (lower-cased when paths are case-insensitive); `None` for
    /// the default route of paths under no `[[route]]`.
    pub prefix: Option<String>,
    /// Its application; `None` = `server.upstream`.
    pub upstream: Option<UpstreamUrl>,
    /// `session`.
    pub session: RouteSession,
    /// `login_url`, with `{return_to}` still in it; `None` = answer 401.
    pub login_url: Option<String>,
    /// `require`: top-level session field = JSON value, in the file's order.
    pub require: Vec<(String, Value)>,
    /// `max_auth_age_sec`, 0 = no limit.
    pub max_auth_age_sec: u64,
    /// `csrf`: whether the cross-origin check of `[csrf]` applies on this route.
    pub csrf: bool,
}

impl Route {
    /// The route of paths under no `[[route]]`.
    pub fn default_route() -> Self {
        Self {
            prefix: None,
            upstream: None,
            session: RouteSession::Optional,
            login_url: None,
            require: Vec::new(),
            max_auth_age_sec: 0,
            csrf: true,
        }
    }

    /// True when `key` (a matching key from [`normalize()`]) is under this route's prefix.
    pub fn matches(&self, key: &str) -> bool {
        let Some(prefix) = &self.prefix else {
            return true;
        };
        match key.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
            None => false,
        }
    }

    /// Judges an active session against `session = "required"`: its data (a JSON
    /// object's text), the time of its last `X-Session-Set`, and the time now.
    pub fn judge(&self, data: &str, auth_time: Option<u64>, now: u64) -> Verdict {
        if self.session != RouteSession::Required {
            return Verdict::Allow;
        }
        if !self.require.is_empty() {
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if !self
                .require
                .iter()
                .all(|(field, want)| holds(&data, field, want))
            {
                return Verdict::Forbidden;
            }
        }
        if self.max_auth_age_sec > 0 {
            match auth_time {
                Some(t) if now.saturating_sub(t) <= self.max_auth_age_sec => {}
                _ => return Verdict::NoSession,
            }
        }
        Verdict::Allow
    }

    /// The `Location` of the login redirect for a request whose normalized path and query
    /// are `path_and_query`, when this route has a `login_url`.
    pub fn login_location(&self, path_and_query: &str) -> Option<String> {
        let url = self.login_url.as_ref()?;
        let encoded = utf8_percent_encode(path_and_query, RETURN_TO).to_string();
        Some(url.replace("{return_to}", &encoded))
    }
}

/// What `{return_to}` leaves as it is: the unreserved characters of RFC 3986 §2.3.
const RETURN_TO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `require`: the field equals `want` exactly (`3` is not `"3"`), or is an array that
/// contains it.
fn holds(data: &Value, field: &str, want: &Value) -> bool {
    match data.get(field) {
        Some(v) if v == want => true,
        Some(Value::Array(items)) => items.contains(want),
        _ => false,
    }
}

/// A route's judgement of a request's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request.
    Allow,
    /// No session, or not fresh enough: 401, or 302 to the login page.
    NoSession,
    /// A session that fails `require`: 403.
    Forbidden,
}

/// The routes, searched longest prefix first, then the default route.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Longest prefix first; the default route last.
    routes: Vec<Route>,
    case_insensitive: bool,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new(Vec::new(), false)
    }
}

impl RouteTable {
    /// The table of `routes` (prefixes in normal form, no two equal).
    pub fn new(mut routes: Vec<Route>, case_insensitive: bool) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.as_ref().map_or(0, String::len)));
        routes.push(Route::default_route());
        Self {
            routes,
            case_insensitive,
        }
    }

    /// `server.case_insensitive_paths`.
    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    /// The index (into [`routes`](Self::routes)) of the route for matching key `key`.
    pub fn find(&self, key: &str) -> usize {
        self.routes
            .iter()
            .position(|r| r.matches(key))
            .unwrap_or(self.routes.len() - 1)
    }

    /// Every route in the order they are tried, the default route last.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(prefix: &str, session: RouteSession) -> Route {
        Route {
            prefix: Some(prefix.into()),
            session,
            ..Route::default_route()
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let r = route("/admin", RouteSession::Required);
        for key in ["/admin", "/admin/", "/admin/x", "/admin/x/y"] {
            assert!(r.matches(key), "{key}");
        }
        for key in ["/administrator", "/admin-x", "/", "/x/admin", "/ADMIN"] {
            assert!(!r.matches(key), "{key}");
        }
        assert!(route("/", RouteSession::Off).matches("/anything"));
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::new(
            vec![
                route("/", RouteSession::Optional),
                route("/admin", RouteSession::Required),
                route("/admin/public", RouteSession::Off),
            ],
            false,
        );
        let session = |key: &str| t.routes()[t.find(key)].session;
        assert_eq!(session("/admin/x"), RouteSession::Required);
        assert_eq!(session("/admin/public/a"), RouteSession::Off);
        assert_eq!(session("/admin/publicity"), RouteSession::Required);
        assert_eq!(session("/elsewhere"), RouteSession::Optional);
        let none = RouteTable::default();
        assert_eq!(none.routes()[none.find("/x")].prefix, None);
    }

    #[test]
    fn require_compares_json_exactly_and_looks_inside_arrays() {
        let mut r = route("/a", RouteSession::Required);
        r.require = vec![("role".into(), json!("admin")), ("level".into(), json!(3))];
        let judge = |data: &str| r.judge(data, None, 0);
        assert_eq!(judge(r#"{"role":"admin","level":3}"#), Verdict::Allow);
        assert_eq!(
            judge(r#"{"role":["user","admin"],"level":3}"#),
            Verdict::Allow
        );
        assert_eq!(judge(r#"{"role":"admin","level":"3"}"#), Verdict::Forbidden);
        assert_eq!(judge(r#"{"role":"Admin","level":3}"#), Verdict::Forbidden);
        assert_eq!(judge(r#"{"level":3}"#), Verdict::Forbidden);
        assert_eq!(judge(r#"{"role":["user"],"level":3}"#), Verdict::Forbidden);
        assert_eq!(judge("not json"), Verdict::Forbidden);
    }

    #[test]
    fn max_auth_age_counts_from_the_last_set() {
        let mut r = route("/a", RouteSession::Required);
        r.max_auth_age_sec = 300;
        assert_eq!(r.judge("{}", Some(1000), 1300), Verdict::Allow);
        assert_eq!(r.judge("{}", Some(1000), 1301), Verdict::NoSession);
        assert_eq!(r.judge("{}", None, 1000), Verdict::NoSession);
        r.require = vec![("role".into(), json!("admin"))];
        // A session that fails `require` is forbidden, fresh or not.
        assert_eq!(r.judge("{}", None, 1000), Verdict::Forbidden);
    }

    #[test]
    fn optional_and_off_routes_allow_anything() {
        let mut r = route("/a", RouteSession::Optional);
        r.require = vec![("role".into(), json!("admin"))];
        assert_eq!(r.judge("{}", None, 0), Verdict::Allow);
    }

    #[test]
    fn login_location_encodes_path_and_query() {
        let mut r = route("/a", RouteSession::Required);
        assert_eq!(r.login_location("/a"), None);
        r.login_url = Some("/login?next={return_to}".into());
        assert_eq!(
            r.login_location("/a/b?x=1&y=é").unwrap(),
            "/login?next=%2Fa%2Fb%3Fx%3D1%26y%3D%C3%A9"
        );
        r.login_url = Some("https://sso.example/login".into());
        assert_eq!(r.login_location("/a").unwrap(), "https://sso.example/login");
    }
}
