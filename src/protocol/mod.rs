//! The header protocol between client, proxy and upstream (SPEC §5, §6): which header names
//! are reserved for the proxy, hop-by-hop removal, upgrades, the cache rule for responses
//! that carry our cookie, and (in `protocol/directives.rs`) the `X-Session-*` directives the upstream
//! answers with.
//!
//! Header names arrive lower-cased from hyper, but `_` and `-` are different bytes to the
//! `http` crate while CGI, WSGI and PHP read them as one. Every comparison here therefore
//! reads `_` as `-` (CVE-2025-64484 in oauth2-proxy was this mistake).

mod directives;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use directives::{
    Destroy, DirectiveError, Directives, X_SESSION_DESTROY, X_SESSION_SET, X_SESSION_UPDATE,
    parse_directives,
};

const RESERVED_PREFIX: &[u8] = b"x-session";

/// Compares a lower-case header name with a lower-case pattern, reading `_` as `-`.
fn eq_folded(name: &[u8], pattern: &[u8]) -> bool {
    name.len() == pattern.len()
        && name
            .iter()
            .zip(pattern)
            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
}

/// True when `name`, read with `_` as `-`, starts with `x-session`.
pub fn has_reserved_prefix(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.len() >= RESERVED_PREFIX.len() && eq_folded(&n[..RESERVED_PREFIX.len()], RESERVED_PREFIX)
}

/// The request header names no client may send (SPEC §5, §10.1): the `x-session*`
/// namespace plus the configured forward header names, all compared with `_` as `-`.
#[derive(Debug, Clone)]
pub struct ReservedNames {
    extra: Vec<Box<[u8]>>,
}

impl ReservedNames {
    /// The namespace plus `names` (the token header and the `[forward.headers]` names).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        Self {
            extra: names
                .into_iter()
                .filter(|n| !has_reserved_prefix(n))
                .map(|n| n.as_str().replace('_', "-").into_bytes().into_boxed_slice())
                .collect(),
        }
    }

    /// True when a client must not send `name`.
    pub fn contains(&self, name: &HeaderName) -> bool {
        has_reserved_prefix(name)
            || self
                .extra
                .iter()
                .any(|e| eq_folded(name.as_str().as_bytes(), e))
    }
}

/// Hop-by-hop headers of RFC 9110 §7.6.1 and RFC 2616 §13.5.1, plus `proxy-connection`.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bytes(name.as_str().as_bytes())
}

fn hop_by_hop_bytes(lower: &[u8]) -> bool {
    matches!(
        lower,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
    )
}

/// True for a `Connection` token naming a hop-by-hop header (removed anyway), compared
/// without regard to case.
fn is_hop_by_hop_token(token: &str) -> bool {
    let mut buf = [0u8; 24];
    let Some(lower) = buf.get_mut(..token.len()) else {
        return false;
    };
    lower.copy_from_slice(token.as_bytes());
    lower.make_ascii_lowercase();
    hop_by_hop_bytes(lower)
}

/// Removes the hop-by-hop headers and every header that `Connection` nominates
/// (RFC 9110 §7.6.1). Returns the `Upgrade` value when the message asked to upgrade
/// (`Connection: upgrade`), so the caller can re-add it for a pass-through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<http::HeaderValue> {
    let mut upgrade = None;
    if headers.contains_key(header::CONNECTION) {
        // Hop-by-hop names go anyway, and a name no header has (`close`) needs no
        // removal: only other nominated names are collected, so the usual `keep-alive` or
        // `close` allocates nothing.
        let mut nominated: Vec<HeaderName> = Vec::new();
        let mut wants_upgrade = false;
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            } else if !is_hop_by_hop_token(token)
                && headers.contains_key(token)
                && let Ok(name) = HeaderName::try_from(token)
            {
                nominated.push(name);
            }
        }
        if wants_upgrade {
            upgrade = headers.get(header::UPGRADE).cloned();
        }
        for name in nominated {
            headers.remove(&name);
        }
    }
    // One scan over the (usually few) headers; nothing to remove is the common case.
    remove_where(headers, is_hop_by_hop);
    upgrade
}

/// Removes every `x-session*` header (any spelling) from an upstream response. The three
/// directives are removed by name first, so the usual response needs no further work.
pub fn strip_reserved(headers: &mut HeaderMap) {
    for name in [&X_SESSION_SET, &X_SESSION_UPDATE, &X_SESSION_DESTROY] {
        headers.remove(name);
    }
    remove_where(headers, has_reserved_prefix);
}

/// Removes every header for which `drop` is true. Allocates only when two or more match.
pub fn remove_where(headers: &mut HeaderMap, mut drop: impl FnMut(&HeaderName) -> bool) {
    let mut doomed = headers.keys().filter(|n| drop(n)).cloned();
    let Some(first) = doomed.next() else {
        return;
    };
    // A single match (the common case: `connection`) needs no list.
    let rest: Vec<HeaderName> = doomed.collect();
    headers.remove(first);
    for name in rest {
        headers.remove(name);
    }
}

/// True when the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// SPEC §6: a response that sets or clears our cookie is never stored by a shared cache:
/// `Cache-Control` loses `public` and gains `private` (unless it says `no-store`).
pub fn make_private(headers: &mut HeaderMap) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn name(s: &str) -> HeaderName {
        HeaderName::try_from(s).unwrap()
    }

    #[test]
    fn reserved_prefix_in_every_spelling() {
        for n in [
            "x-session",
            "x-session-set",
            "x_session_set",
            "x_session-update",
            "x-session_destroy",
            "x_session",
            "x-sessionid",
            "x-session-data",
        ] {
            assert!(has_reserved_prefix(&name(n)), "{n}");
        }
        for n in [
            "x-sessio",
            "x-sess",
            "session",
            "x-forwarded-for",
            "xx-session",
        ] {
            assert!(!has_reserved_prefix(&name(n)), "{n}");
        }
    }

    #[test]
    fn configured_names_are_reserved_with_underscores_folded() {
        let r = ReservedNames::new([&name("x-user-id"), &name("x-session")]);
        assert!(r.contains(&name("x-user-id")));
        assert!(r.contains(&name("x_user_id")));
        assert!(r.contains(&name("x-user_id")));
        assert!(r.contains(&name("x_session_anything")));
        assert!(!r.contains(&name("x-user-ids")));
        assert!(!r.contains(&name("accept")));
    }

    #[test]
    fn connection_nominated_headers_are_removed_with_the_hop_by_hop_set() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-forwarded-for, X-Custom"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-custom", HeaderValue::from_static("a"));
        // `close` is a token, but a header of that name is nominated like any other.
        h.insert("close", HeaderValue::from_static("b"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert_eq!(strip_hop_by_hop(&mut h), None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn an_upgrade_request_reports_its_protocol() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(
            strip_hop_by_hop(&mut h),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(h.is_empty());
    }

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

    #[test]
    fn remove_where_drops_only_matches() {
        let mut h = HeaderMap::new();
        h.insert("x_session_set", HeaderValue::from_static("{}"));
        h.insert("x-session-set", HeaderValue::from_static("{}"));
        h.insert("x-other", HeaderValue::from_static("1"));
        remove_where(&mut h, has_reserved_prefix);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));
    }
}
