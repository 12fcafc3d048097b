//! `[csrf]` (SPEC §12): each trusted origin must be written as a browser sends it in
//! `Origin`, since the check compares the two byte for byte. Scheme and host are lowercased
//! (browsers send them so); anything a browser would never send is an error that says how
//! to write it instead.

use std::net::Ipv6Addr;

use super::Validator;
use crate::config::{ConfigError, CsrfSettings, RawCsrf};

impl Validator<'_> {
    /// Checks `[csrf]`.
    pub(super) fn csrf(&self, raw: RawCsrf) -> Result<CsrfSettings, ConfigError> {
        let mut trusted_origins = Vec::with_capacity(raw.trusted_origins.len());
        for (i, origin) in raw.trusted_origins.iter().enumerate() {
            let normal = trusted_origin(origin)
                .map_err(|msg| self.err(&format!("csrf.trusted_origins[{i}]"), msg))?;
            trusted_origins.push(normal);
        }
        Ok(CsrfSettings {
            enabled: raw.enabled,
            trusted_origins,
            report_only: raw.report_only,
        })
    }
}

/// `origin` as a browser serializes it (`scheme://host[:port]`, lowercase), or what is wrong.
fn trusted_origin(origin: &str) -> Result<String, String> {
    let form = "an origin is scheme://host[:port], e.g. \"https://admin.example.com\"";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{origin:?} is not an origin; {form}"));
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => {
            return Err(format!(
                "scheme {scheme:?} is not supported; use http:// or https://"
            ));
        }
    };
    if let Some(bare) = rest.strip_suffix('/')
        && !bare.contains(['/', '?', '#'])
    {
        return Err(format!(
            "{origin:?} ends with \"/\", which an Origin header never does; write \"{scheme}://{bare}\""
        ));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!("{origin:?} has a path, query or fragment; {form}"));
    }
    if rest.contains('@') {
        return Err(format!("{origin:?} has user information; {form}"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{origin:?} has no \"]\" after its IPv6 address"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{addr}] is not an IPv6 address"));
        }
        match after {
            "" => (&rest[..addr.len() + 2], None),
            p => match p.strip_prefix(':') {
                Some(port) => (&rest[..addr.len() + 2], Some(port)),
                None => return Err(format!("{origin:?} has {p:?} after its IPv6 address")),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{origin:?} has no host; {form}"));
    }
    if host.contains('*') {
        return Err(format!(
            "{origin:?}: wildcards are not supported; list each origin"
        ));
    }
    if !host.is_ascii() {
        return Err(format!(
            "host {host:?} is not ASCII; write the punycode (xn--) form browsers send"
        ));
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "host {host:?} may hold only letters, digits, '-' and '.'"
        ));
    }
    let host = host.to_ascii_lowercase();
    let port = match port {
        None => String::new(),
        Some(p) => {
            let n = p
                .parse::<u16>()
                .ok()
                .filter(|n| *n != 0 && n.to_string() == p)
                .ok_or_else(|| format!("port {p:?} is not a port number from 1 to 65535"))?;
            if n == default_port {
                return Err(format!(
                    "{origin:?} names the default port {n}, which a browser leaves out; write \"{scheme}://{host}\""
                ));
            }
            format!(":{n}")
        }
    };
    Ok(format!("{scheme}://{host}{port}"))
}

#[cfg(test)]
mod tests {
    use super::trusted_origin;
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn defaults_are_on_with_no_trusted_origin() {
        let c = parse_str(MIN).unwrap();
        assert!(c.csrf.enabled);
        assert!(!c.csrf.report_only);
        assert!(c.csrf.trusted_origins.is_empty());
    }

    #[test]
    fn origins_are_normalized_to_what_a_browser_sends() {
        for (given, want) in [
            ("https://admin.example.com", "https://admin.example.com"),
            ("HTTPS://Admin.Example.COM", "https://admin.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            (
                "https://xn--bcher-kva.example",
                "https://xn--bcher-kva.example",
            ),
        ] {
            assert_eq!(trusted_origin(given).as_deref(), Ok(want), "{given}");
        }
    }

    #[test]
    fn what_a_browser_never_sends_is_refused_with_the_fix() {
        for (given, says) in [
            ("admin.example.com", "is not an origin"),
            ("ftp://admin.example.com", "scheme \"ftp\" is not supported"),
            (
                "https://admin.example.com/",
                "write \"https://admin.example.com\"",
            ),
            ("https://admin.example.com/app", "has a path"),
            (
                "https://admin.example.com?x",
                "has a path, query or fragment",
            ),
            ("https://u:p@admin.example.com", "has user information"),
            ("https://", "has no host"),
            ("https://*.example.com", "wildcards are not supported"),
            ("https://bücher.example", "punycode"),
            ("https://admin_x.example", "may hold only letters"),
            (
                "https://admin.example.com:443",
                "write \"https://admin.example.com\"",
            ),
            ("http://admin.example.com:80", "default port 80"),
            ("https://admin.example.com:0", "not a port number"),
            ("https://admin.example.com:08443", "not a port number"),
            ("https://admin.example.com:99999", "not a port number"),
            ("http://[::1", "no \"]\""),
            ("http://[nope]:1", "not an IPv6 address"),
        ] {
            let err = trusted_origin(given).unwrap_err();
            assert!(err.contains(says), "{given}: {err}");
        }
    }

    #[test]
    fn errors_point_at_the_element() {
        let err = parse_str(&format!(
            "{MIN}[csrf]\ntrusted_origins = [\"https://a.example\", \"https://b.example/\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:41: csrf.trusted_origins[1]: "),
            "{err}"
        );
        let err = parse_str(&format!("{MIN}[csrf]\nenable = true\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:1: unknown field `enable`"),
            "{err}"
        );
    }
}
