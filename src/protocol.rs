//! The header protocol between client, proxy and upstream (SPEC §5, §6): which header names
//! are reserved for the proxy, hop-by-hop removal, and the `X-Session-*` directives the
//! upstream answers with.
//!
//! Header names arrive lower-cased from hyper, but `_` and `-` are different bytes to the
//! `http` crate while CGI, WSGI and PHP read them as one. Every comparison here therefore
//! reads `_` as `-` (CVE-2025-64484 in oauth2-proxy was this mistake).

use http::header::{self, HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// `X-Session-Destroy`: delete the session.
pub static X_SESSION_DESTROY: HeaderName = HeaderName::from_static("x-session-destroy");
/// `X-Session-Set`: replace the session data.
pub static X_SESSION_SET: HeaderName = HeaderName::from_static("x-session-set");
/// `X-Session-Update`: merge-patch the session data.
pub static X_SESSION_UPDATE: HeaderName = HeaderName::from_static("x-session-update");

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

/// The session changes an upstream response asks for, validated but not yet applied.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    /// `X-Session-Destroy` was present.
    pub destroy: bool,
    /// `X-Session-Set`: the new data.
    pub set: Option<Map<String, Value>>,
    /// `X-Session-Update`: the merge patch.
    pub update: Option<Map<String, Value>>,
}

impl Directives {
    /// True when the response changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.destroy && self.set.is_none() && self.update.is_none()
    }
}

/// Why an upstream directive was refused. Never carries the header's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    /// The header appeared more than once.
    #[error("{header} appears more than once")]
    Repeated {
        /// The header.
        header: &'static str,
    },
    /// The value is not UTF-8 JSON.
    #[error("{header} is not valid JSON: {reason}")]
    NotJson {
        /// The header.
        header: &'static str,
        /// The parser's complaint (position and kind, no content).
        reason: String,
    },
    /// The value is JSON but not an object.
    #[error("{header} is not a JSON object")]
    NotObject {
        /// The header.
        header: &'static str,
    },
    /// The resulting session data is larger than `max_bytes`.
    #[error("{header} makes the session {size} bytes, over session.max_bytes = {max}")]
    TooLarge {
        /// The header.
        header: &'static str,
        /// Resulting size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Reads the directives from an upstream response's headers. Headers in the namespace that
/// are not one of the three exact names are ignored here (and stripped by the caller).
///
/// # Errors
/// When a directive is repeated, not JSON, or not a JSON object.
pub fn parse_directives(headers: &HeaderMap) -> Result<Directives, DirectiveError> {
    Ok(Directives {
        destroy: headers.contains_key(&X_SESSION_DESTROY),
        set: object(headers, &X_SESSION_SET, "X-Session-Set")?,
        update: object(headers, &X_SESSION_UPDATE, "X-Session-Update")?,
    })
}

fn object(
    headers: &HeaderMap,
    name: &HeaderName,
    header: &'static str,
) -> Result<Option<Map<String, Value>>, DirectiveError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(DirectiveError::Repeated { header });
    }
    match serde_json::from_slice::<Value>(value.as_bytes()) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(DirectiveError::NotObject { header }),
        Err(e) => Err(DirectiveError::NotJson {
            header,
            reason: format!("{:?} at column {}", e.classify(), e.column()),
        }),
    }
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
    fn directives_parse_and_reject() {
        let mut h = HeaderMap::new();
        h.insert("x-session-destroy", HeaderValue::from_static("1"));
        h.insert("x-session-set", HeaderValue::from_static(r#"{"userId":1}"#));
        h.insert(
            "x-session-update",
            HeaderValue::from_bytes("{\"name\":\"Zoë\"}".as_bytes()).unwrap(),
        );
        let d = parse_directives(&h).unwrap();
        assert!(d.destroy);
        assert_eq!(d.set.unwrap()["userId"], 1);
        assert_eq!(d.update.unwrap()["name"], "Zoë");

        for (v, want) in [
            ("[1]", "X-Session-Set is not a JSON object"),
            ("\"x\"", "X-Session-Set is not a JSON object"),
            ("null", "X-Session-Set is not a JSON object"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-session-set", HeaderValue::from_static(v));
            assert_eq!(parse_directives(&h).unwrap_err().to_string(), want);
        }
        let mut h = HeaderMap::new();
        h.insert("x-session-update", HeaderValue::from_static("{nope"));
        assert!(matches!(
            parse_directives(&h),
            Err(DirectiveError::NotJson {
                header: "X-Session-Update",
                ..
            })
        ));
        let mut h = HeaderMap::new();
        h.insert(
            "x-session-update",
            HeaderValue::from_bytes(b"{\"a\":\"\xff\"}").unwrap(),
        );
        assert!(matches!(
            parse_directives(&h),
            Err(DirectiveError::NotJson { .. })
        ));
        let mut h = HeaderMap::new();
        h.append("x-session-set", HeaderValue::from_static("{}"));
        h.append("x-session-set", HeaderValue::from_static("{}"));
        assert_eq!(
            parse_directives(&h),
            Err(DirectiveError::Repeated {
                header: "X-Session-Set"
            })
        );
        assert!(parse_directives(&HeaderMap::new()).unwrap().is_empty());
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
