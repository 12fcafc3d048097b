//! The `X-Session-*` directives an upstream response carries (SPEC §6): parsed and
//! validated here, applied by the proxy. Nothing here ever holds or prints a value's
//! content in an error.

use http::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// `X-Session-Destroy`: delete the session.
pub static X_SESSION_DESTROY: HeaderName = HeaderName::from_static("x-session-destroy");
/// `X-Session-Set`: replace the session data.
pub static X_SESSION_SET: HeaderName = HeaderName::from_static("x-session-set");
/// `X-Session-Update`: merge-patch the session data.
pub static X_SESSION_UPDATE: HeaderName = HeaderName::from_static("x-session-update");

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
}
