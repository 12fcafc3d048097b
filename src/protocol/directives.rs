//! The `X-Session-*` directives an upstream response carries (SPEC §6): parsed and
//! validated here, applied by the proxy. Nothing here ever holds or prints a value's
//! content in an error.

use http::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

use crate::store::users::Handle;

/// `X-Session-Destroy`: delete the session.
pub static X_SESSION_DESTROY: HeaderName = HeaderName::from_static("x-session-destroy");
/// `X-Session-Set`: replace the session data.
pub static X_SESSION_SET: HeaderName = HeaderName::from_static("x-session-set");
/// `X-Session-Update`: merge-patch the session data.
pub static X_SESSION_UPDATE: HeaderName = HeaderName::from_static("x-session-update");

/// What `X-Session-Destroy` ends (SPEC §6, §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroy {
    /// Any value but the ones below: the current session.
    Current,
    /// `all`: every session of the current session's user, the current one included.
    All,
    /// `others`: every session of the current session's user but the current one.
    Others,
    /// `handle:<h>`: that session, when it belongs to the current session's user; `None`
    /// when `<h>` is no handle (then nothing ends).
    Handle(Option<Handle>),
}

impl Destroy {
    /// Reads one value: `all`, `others` and the `handle:` prefix in any case, around
    /// optional whitespace; anything else is the current session.
    fn parse(value: &[u8]) -> Self {
        let v = value.trim_ascii();
        if v.eq_ignore_ascii_case(b"all") {
            Self::All
        } else if v.eq_ignore_ascii_case(b"others") {
            Self::Others
        } else if v.len() >= 7 && v[..7].eq_ignore_ascii_case(b"handle:") {
            let h = std::str::from_utf8(&v[7..]).ok().map(str::trim);
            Self::Handle(h.and_then(|h| h.parse().ok()))
        } else {
            Self::Current
        }
    }

    /// True when the current session ends whatever its user (`Current`, `All`).
    pub fn ends_current(self) -> bool {
        matches!(self, Self::Current | Self::All)
    }
}

/// The session changes an upstream response asks for, validated but not yet applied.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    /// `X-Session-Destroy`, when present.
    pub destroy: Option<Destroy>,
    /// `X-Session-Set`: the new data.
    pub set: Option<Map<String, Value>>,
    /// `X-Session-Update`: the merge patch.
    pub update: Option<Map<String, Value>>,
}

impl Directives {
    /// True when the response changes nothing.
    pub fn is_empty(&self) -> bool {
        self.destroy.is_none() && self.set.is_none() && self.update.is_none()
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
        destroy: destroy(headers)?,
        set: object(headers, &X_SESSION_SET, "X-Session-Set")?,
        update: object(headers, &X_SESSION_UPDATE, "X-Session-Update")?,
    })
}

/// `X-Session-Destroy`: several lines are one directive only when they all say the same.
fn destroy(headers: &HeaderMap) -> Result<Option<Destroy>, DirectiveError> {
    let mut values = headers.get_all(&X_SESSION_DESTROY).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let d = Destroy::parse(first.as_bytes());
    if values.any(|v| Destroy::parse(v.as_bytes()) != d) {
        return Err(DirectiveError::Repeated {
            header: "X-Session-Destroy",
        });
    }
    Ok(Some(d))
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
        assert_eq!(d.destroy, Some(Destroy::Current));
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
    fn destroy_values_name_what_ends() {
        let handle = Handle::of(&crate::session::SessionId::random());
        let destroy = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-session-destroy", HeaderValue::from_str(v).unwrap());
            }
            parse_directives(&h).map(|d| d.destroy)
        };
        for (v, want) in [
            ("1", Destroy::Current),
            ("", Destroy::Current),
            ("true", Destroy::Current),
            ("all", Destroy::All),
            (" ALL ", Destroy::All),
            ("others", Destroy::Others),
            ("Others", Destroy::Others),
            ("all,others", Destroy::Current),
            ("handle:", Destroy::Handle(None)),
            ("handle:nope", Destroy::Handle(None)),
            ("handle:../../x", Destroy::Handle(None)),
        ] {
            assert_eq!(destroy(&[v]), Ok(Some(want)), "{v:?}");
        }
        assert_eq!(
            destroy(&[&format!("handle:{handle}")]),
            Ok(Some(Destroy::Handle(Some(handle))))
        );
        assert_eq!(
            destroy(&[&format!("HANDLE: {handle}")]),
            Ok(Some(Destroy::Handle(Some(handle))))
        );
        assert_eq!(destroy(&["all", "ALL"]), Ok(Some(Destroy::All)));
        assert_eq!(
            destroy(&["all", "others"]),
            Err(DirectiveError::Repeated {
                header: "X-Session-Destroy"
            })
        );
    }
}
