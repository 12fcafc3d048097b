//! `[session]` and `[cookie]`: the cookie's name and attributes, including the rules a
//! browser applies to `__Host-` and `__Secure-` names, and the session lifetimes.

use super::Validator;
use crate::config::{
    ConfigError, CookieSettings, RawCookie, RawSession, SameSite, SessionSettings,
};

impl Validator<'_> {
    /// Checks `[session]` and resolves `cookie_refresh_sec = 0` to half the idle TTL.
    pub(super) fn session(&self, raw: RawSession) -> Result<SessionSettings, ConfigError> {
        let name = &raw.cookie_name;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(self.err(
                "session.cookie_name",
                format!(
                    "{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        for (key, v) in [
            ("session.ttl_sec", raw.ttl_sec),
            ("session.max_bytes", raw.max_bytes as u64),
        ] {
            if v == 0 {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        let cookie_refresh_sec = match raw.cookie_refresh_sec {
            0 => (raw.ttl_sec / 2).max(1),
            n if n > raw.ttl_sec => {
                return Err(self.err(
                    "session.cookie_refresh_sec",
                    format!(
                        "{n} is longer than session.ttl_sec = {}: the cookie would expire before it is re-sent",
                        raw.ttl_sec
                    ),
                ));
            }
            n => n,
        };
        if raw.revalidate_sec == 0 {
            return Err(self.err("session.revalidate_sec", "must be greater than 0"));
        }
        if raw.max_per_user > 0 && raw.user_field.is_empty() {
            return Err(self.err(
                "session.max_per_user",
                "needs session.user_field: the limit counts the sessions of one user",
            ));
        }
        Ok(SessionSettings {
            cookie_name: raw.cookie_name,
            ttl_sec: raw.ttl_sec,
            absolute_ttl_sec: raw.absolute_ttl_sec,
            cookie_refresh_sec,
            namespace: raw.namespace,
            max_bytes: raw.max_bytes,
            regenerate_on_set: raw.regenerate_on_set,
            user_field: (!raw.user_field.is_empty()).then_some(raw.user_field),
            max_per_user: raw.max_per_user,
            revalidate_sec: raw.revalidate_sec,
        })
    }

    /// Checks `[cookie]` for a cookie called `name`.
    pub(super) fn cookie(&self, raw: RawCookie, name: &str) -> Result<CookieSettings, ConfigError> {
        if !raw.path.starts_with('/') || !raw.path.bytes().all(is_attr_byte) {
            return Err(self.err(
                "cookie.path",
                format!(
                    "{:?} must start with '/' and hold no ';' or control characters",
                    raw.path
                ),
            ));
        }
        if !raw
            .domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(self.err(
                "cookie.domain",
                format!("{:?} is not a domain name", raw.domain),
            ));
        }
        if raw.same_site == SameSite::None && !raw.secure {
            return Err(self.err(
                "cookie.same_site",
                "\"None\" requires cookie.secure = true (browsers reject it otherwise)",
            ));
        }
        // SPEC §10.9 and RFC 6265bis §4.1.3: the browser drops a prefixed cookie otherwise.
        if name.starts_with("__Host-") {
            if !raw.secure {
                return Err(self.err("cookie.secure", "must be true for a cookie named __Host-*"));
            }
            if raw.path != "/" {
                return Err(self.err("cookie.path", "must be \"/\" for a cookie named __Host-*"));
            }
            if !raw.domain.is_empty() {
                return Err(self.err("cookie.domain", "must be \"\" for a cookie named __Host-*"));
            }
        }
        if name.starts_with("__Secure-") && !raw.secure {
            return Err(self.err(
                "cookie.secure",
                "must be true for a cookie named __Secure-*",
            ));
        }
        Ok(CookieSettings {
            http_only: raw.http_only,
            secure: raw.secure,
            same_site: raw.same_site,
            path: raw.path,
            domain: raw.domain,
        })
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a cookie attribute value (RFC 6265 `av-octet`).
fn is_attr_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b';'
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn host_prefix_rules() {
        let base = format!("{MIN}[session]\ncookie_name = \"__Host-sid\"\n[cookie]\n");
        let err = parse_str(&format!("{base}secure = false\n")).unwrap_err();
        assert_eq!(
            err,
            "proxy.toml:6:10: cookie.secure: must be true for a cookie named __Host-*"
        );
        let err = parse_str(&format!("{base}path = \"/app\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:6:8: cookie.path: must be \"/\""),
            "{err}"
        );
        let err = parse_str(&format!("{base}domain = \"example.com\"\n")).unwrap_err();
        assert!(err.starts_with("proxy.toml:6:10: cookie.domain: "), "{err}");
        parse_str(&base).unwrap();
    }

    #[test]
    fn same_site_none_requires_secure() {
        let err = parse_str(&format!(
            "{MIN}[cookie]\nsecure = false\nsame_site = \"None\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5:13: cookie.same_site: "),
            "{err}"
        );
    }
}
