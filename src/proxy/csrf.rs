//! Cross-origin (CSRF) protection (SPEC §12): the algorithm of Go 1.25's
//! `net/http.CrossOriginProtection`, as a pure function of the request head.
//!
//! 1. `GET`, `HEAD` and `OPTIONS` pass (methods are case-sensitive tokens: `post` and `get`
//!    are checked like any other method).
//! 2. `Sec-Fetch-Site: same-origin` or `none` passes.
//! 3. An `Origin` equal, byte for byte, to one of `trusted_origins` passes.
//! 4. Any other `Sec-Fetch-Site` value is refused.
//! 5. Without `Sec-Fetch-Site`: no `Origin` passes (not a browser); an `Origin` whose
//!    host\[:port\] equals the request's host passes; anything else is refused.
//!
//! As in Go, a header sent on several lines counts by its first line, and an empty value is
//! no header. The request's host is the target's authority (HTTP/2 `:authority`, or an
//! absolute-form target) and else the `Host` header, compared byte for byte. The Origin's
//! host is what Go's `url.Parse(origin).Host` is: after any `user@`, before any path, so
//! the scheme is not compared (Go fails open there; modern browsers send `Sec-Fetch-Site`).
//!
//! Two deviations, both on the refusing side, for values no browser sends: an Origin whose
//! host holds a percent-escape (Go decodes it) never matches, and neither does any Origin
//! when the request has no host at all (Go lets `Origin: null` through then).

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Uri};

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// What the check needs from `[csrf]`.
#[derive(Debug, Clone, Default)]
pub struct CsrfPolicy {
    /// Origins that pass whatever `Sec-Fetch-Site` says, each exactly as a browser sends it
    /// (`scheme://host[:port]`, lowercase, no default port, no path).
    pub trusted_origins: Vec<String>,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request may go on.
    Pass,
    /// The request is cross-origin.
    Refuse(Refusal),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Sec-Fetch-Site` names another origin (or a value the check does not know).
    SecFetchSite,
    /// No `Sec-Fetch-Site`, and the `Origin` names another host.
    Origin,
}

impl Refusal {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SecFetchSite => "sec-fetch-site",
            Refusal::Origin => "origin",
        }
    }
}

/// The request's host as the check compares it: the target's authority (HTTP/2
/// `:authority`, or an absolute-form HTTP/1 target), else the first `Host` header.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => headers.get(header::HOST).map(|h| h.as_bytes()),
    }
}

/// Judges one request: its method, its headers, its host (see [`request_host`]).
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    host: Option<&[u8]>,
    policy: &CsrfPolicy,
) -> Verdict {
    if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        return Verdict::Pass;
    }
    let first = |name: &HeaderName| {
        headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
    };
    let origin = first(&header::ORIGIN);
    let trusted =
        || origin.is_some_and(|o| policy.trusted_origins.iter().any(|t| t.as_bytes() == o));
    match first(&SEC_FETCH_SITE) {
        Some(b"same-origin" | b"none") => return Verdict::Pass,
        Some(_) if trusted() => return Verdict::Pass,
        Some(_) => return Verdict::Refuse(Refusal::SecFetchSite),
        None => {}
    }
    let Some(origin) = origin else {
        return Verdict::Pass;
    };
    let same_host = match (origin_host(origin), host) {
        (Some(o), Some(h)) => !h.is_empty() && o == h,
        _ => false,
    };
    if same_host || trusted() {
        Verdict::Pass
    } else {
        Verdict::Refuse(Refusal::Origin)
    }
}

/// The host\[:port\] of an `Origin` value, as Go's `url.Parse(origin).Host`; `None` where
/// that parse fails or finds no host.
fn origin_host(origin: &[u8]) -> Option<&[u8]> {
    // url.Parse refuses ASCII control characters anywhere.
    if origin.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let url = origin.split(|&b| b == b'#').next().unwrap_or_default();
    let rest = match scheme_len(url) {
        Scheme::Missing => return None,
        Scheme::Found(n) => &url[n + 1..],
        Scheme::None if url.starts_with(b"///") => return None,
        Scheme::None => url,
    };
    let rest = rest.split(|&b| b == b'?').next().unwrap_or_default();
    let rest = rest.strip_prefix(b"//")?;
    let (authority, path) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => rest.split_at(i),
        None => (rest, &b""[..]),
    };
    if !valid_escapes(path) {
        return None;
    }
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(i) => {
            let userinfo = &authority[..i];
            if !userinfo.iter().all(|&b| is_userinfo_byte(b)) || !valid_escapes(userinfo) {
                return None;
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    let port = if host.starts_with(b"[") {
        let close = host.iter().rposition(|&b| b == b']')?;
        &host[close + 1..]
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => &host[i..],
            None => b"",
        }
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    (port_ok && host.iter().all(|&b| is_host_byte(b))).then_some(host)
}

/// What precedes the first `:` of a URL, as Go's `getScheme` reads it.
enum Scheme {
    /// `scheme:` whose name is this many bytes long.
    Found(usize),
    /// No scheme: the URL is a path (or a scheme-relative `//host`).
    None,
    /// A leading `:`: Go's "missing protocol scheme" error.
    Missing,
}

fn scheme_len(url: &[u8]) -> Scheme {
    for (i, &b) in url.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Scheme::Missing,
            b':' => return Scheme::Found(i),
            _ => return Scheme::None,
        }
    }
    Scheme::None
}

/// Every `%` is followed by two hex digits.
fn valid_escapes(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Go's `validUserinfo`.
fn is_userinfo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b)
}

/// A byte Go keeps unescaped in a host (no `%`: see the module doc).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80 || b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const HOST: &[u8] = b"app.example:8080";

    fn judge(method: &str, headers: &[(&str, &[u8])], trusted: &[&str]) -> Verdict {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let policy = CsrfPolicy {
            trusted_origins: trusted.iter().map(|s| (*s).to_owned()).collect(),
        };
        check(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &map,
            Some(HOST),
            &policy,
        )
    }

    const PASS: Verdict = Verdict::Pass;
    const BY_SITE: Verdict = Verdict::Refuse(Refusal::SecFetchSite);
    const BY_ORIGIN: Verdict = Verdict::Refuse(Refusal::Origin);

    #[test]
    fn safe_methods_pass_and_method_names_are_case_sensitive() {
        let cross: &[(&str, &[u8])] = &[("sec-fetch-site", b"cross-site")];
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(judge(m, cross, &[]), PASS, "{m}");
        }
        for m in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "PURGE", "post", "get",
        ] {
            assert_eq!(judge(m, cross, &[]), BY_SITE, "{m}");
        }
    }

    #[test]
    fn sec_fetch_site_decides_when_present() {
        for (value, want) in [
            (&b"same-origin"[..], PASS),
            (b"none", PASS),
            (b"same-site", BY_SITE),
            (b"cross-site", BY_SITE),
            (b"Same-Origin", BY_SITE),
            (b"same-origin, cross-site", BY_SITE),
            (b"garbage", BY_SITE),
            (b"\xff", BY_SITE),
        ] {
            let h: &[(&str, &[u8])] = &[
                ("sec-fetch-site", value),
                ("origin", b"http://app.example:8080"),
            ];
            assert_eq!(judge("POST", h, &[]), want, "{value:?}");
        }
        // Several lines: the first counts, as Go's Header.Get reads it.
        let two: &[(&str, &[u8])] = &[
            ("sec-fetch-site", b"same-origin"),
            ("sec-fetch-site", b"cross-site"),
        ];
        assert_eq!(judge("POST", two, &[]), PASS);
        let two: &[(&str, &[u8])] = &[
            ("sec-fetch-site", b"cross-site"),
            ("sec-fetch-site", b"same-origin"),
        ];
        assert_eq!(judge("POST", two, &[]), BY_SITE);
        // An empty value is no header: the Origin decides.
        let empty: &[(&str, &[u8])] = &[("sec-fetch-site", b""), ("origin", b"http://evil")];
        assert_eq!(judge("POST", empty, &[]), BY_ORIGIN);
        let empty: &[(&str, &[u8])] = &[("sec-fetch-site", b"")];
        assert_eq!(judge("POST", empty, &[]), PASS);
    }

    #[test]
    fn trusted_origins_pass_exactly() {
        let t = &["https://admin.example"];
        let with = |site: Option<&'static [u8]>, origin: &'static [u8]| {
            let mut h: Vec<(&str, &[u8])> = vec![("origin", origin)];
            if let Some(s) = site {
                h.push(("sec-fetch-site", s));
            }
            judge("POST", &h, t)
        };
        assert_eq!(with(Some(b"cross-site"), b"https://admin.example"), PASS);
        assert_eq!(with(Some(b"same-site"), b"https://admin.example"), PASS);
        assert_eq!(with(None, b"https://admin.example"), PASS);
        for other in [
            &b"https://admin.example/"[..],
            b"https://ADMIN.example",
            b"http://admin.example",
            b"https://admin.example:443",
            b"https://admin.example.evil",
        ] {
            assert_eq!(with(Some(b"cross-site"), other), BY_SITE, "{other:?}");
        }
    }

    #[test]
    fn without_sec_fetch_site_the_origin_host_decides() {
        for (origin, want) in [
            (&b"http://app.example:8080"[..], PASS),
            (b"https://app.example:8080", PASS),
            (b"http://app.example:8080/", PASS),
            (b"http://app.example:8080/some/path?q#f", PASS),
            (b"http://user:pw@app.example:8080", PASS),
            (b"http://evil@app.example:8080", PASS),
            (b"//app.example:8080", PASS),
            (b"null", BY_ORIGIN),
            (b"http://app.example", BY_ORIGIN),
            (b"http://app.example:9090", BY_ORIGIN),
            (b"http://APP.example:8080", BY_ORIGIN),
            (b"http://app.example:8080@evil.example", BY_ORIGIN),
            (b"http://app.example:8080.evil.example", BY_ORIGIN),
            (b"http://app%2eexample:8080", BY_ORIGIN),
            (b"http://app.example:8080/%zz", BY_ORIGIN),
            (b"http://bad user@app.example:8080", BY_ORIGIN),
            (b"app.example:8080", BY_ORIGIN),
            (b"http:app.example:8080", BY_ORIGIN),
            (b"///app.example:8080", BY_ORIGIN),
            (b":app.example:8080", BY_ORIGIN),
            (b"http://app.example:8080\t", BY_ORIGIN),
            (b"http://app.example:80a", BY_ORIGIN),
        ] {
            let h: &[(&str, &[u8])] = &[("origin", origin)];
            assert_eq!(
                judge("POST", h, &[]),
                want,
                "{:?}",
                String::from_utf8_lossy(origin)
            );
        }
        assert_eq!(judge("POST", &[], &[]), PASS, "no Origin: not a browser");
        assert_eq!(judge("POST", &[("origin", b"")], &[]), PASS, "empty Origin");
        // Several Origin lines: the first counts.
        let two: &[(&str, &[u8])] = &[
            ("origin", b"http://app.example:8080"),
            ("origin", b"http://evil.example"),
        ];
        assert_eq!(judge("POST", two, &[]), PASS);
        let two: &[(&str, &[u8])] = &[
            ("origin", b"http://evil.example"),
            ("origin", b"http://app.example:8080"),
        ];
        assert_eq!(judge("POST", two, &[]), BY_ORIGIN);
    }

    #[test]
    fn ipv6_hosts_and_a_missing_host() {
        let policy = CsrfPolicy::default();
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://[::1]:8080"),
        );
        assert_eq!(check(&Method::POST, &h, Some(b"[::1]:8080"), &policy), PASS);
        assert_eq!(check(&Method::POST, &h, Some(b"[::1]"), &policy), BY_ORIGIN);
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(check(&Method::POST, &h, None, &policy), BY_ORIGIN);
        assert_eq!(check(&Method::POST, &h, Some(b""), &policy), BY_ORIGIN);
    }

    #[test]
    fn the_request_host_is_the_authority_then_the_host_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("from-header:1"));
        let abs: Uri = "http://from-target:2/x".parse().unwrap();
        assert_eq!(request_host(&abs, &h), Some(&b"from-target:2"[..]));
        let origin_form: Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin_form, &h), Some(&b"from-header:1"[..]));
        assert_eq!(request_host(&origin_form, &HeaderMap::new()), None);
    }
}
