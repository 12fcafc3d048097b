//! Validation of the raw tables into [`Config`], one file per table. Every error names
//! the dotted key and points at its value in the file when the value is there.

mod csrf;
mod dbsc;
mod forward;
mod routes;
mod server;
mod session;
mod store;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError, RawConfig};

/// Validates `raw`, parsed from `text` that came from `path`.
pub(super) fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    Validator { path, text }.validate(raw)
}

/// An error at the 1-based line and column where `span` starts in `text`.
pub(super) fn located(path: &Path, text: &str, span: Range<usize>, msg: String) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    ConfigError::Located {
        path: path.to_owned(),
        line,
        col,
        msg,
    }
}

/// The file being validated, for pointing errors at the offending value.
struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    /// An error about `key` (dotted, e.g. `cookie.same_site`), pointing at its value in
    /// the file when it is there.
    fn err(&self, key: &str, msg: impl fmt::Display) -> ConfigError {
        let msg = format!("{key}: {msg}");
        match self.span_of(key) {
            Some(span) => located(self.path, self.text, span, msg),
            None => ConfigError::Unlocated {
                path: self.path.to_owned(),
                msg,
            },
        }
    }

    /// The span of the value at dotted `key` (a trailing `[i]` picks an array element, a
    /// trailing `{name}` picks a table key; `name[i]` before a dot steps into the i-th
    /// table of an array of tables, e.g. `route[2].prefix`), from the parsed document.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(self.text).ok()?;
        let last_dot = key.rfind('.').map_or(0, |i| i + 1);
        let (key, pick) = match key[last_dot..].find(['[', '{']) {
            Some(i) => (&key[..last_dot + i], Some(&key[last_dot + i..])),
            None => (key, None),
        };
        let mut table = doc.get_ref();
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let (part, index) = match part.split_once('[') {
                Some((name, i)) => (name, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
                None => (part, None),
            };
            let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
            if parts.peek().is_none() {
                return match (pick, v.get_ref()) {
                    (None, _) => Some(v.span()),
                    (Some(p), DeValue::Array(items)) if p.starts_with('[') => {
                        let i: usize = p.trim_matches(['[', ']']).parse().ok()?;
                        items.get(i).map(|item| item.span())
                    }
                    (Some(p), DeValue::Table(t)) if p.starts_with('{') => {
                        let name = p.trim_matches(['{', '}']);
                        t.iter()
                            .find(|(k, _)| k.get_ref().as_ref() == name)
                            .map(|(k, _)| k.span())
                    }
                    _ => Some(k.span()),
                };
            }
            let v = match (index, v.get_ref()) {
                (None, _) => v,
                (Some(i), DeValue::Array(items)) => items.get(i)?,
                _ => return None,
            };
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
        None
    }

    /// Checks the tables in SPEC §3 order and stops at the first error.
    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            server,
            session,
            cookie,
            store,
            forward,
            log,
            csrf,
            dbsc,
            route,
        } = raw;
        let https_routes = route.iter().any(|r| r.upstream.starts_with("https:"));
        let server = self.server(server, https_routes)?;
        let session = self.session(session)?;
        let cookie = self.cookie(cookie, &session.cookie_name)?;
        let mut store = self.store(store, session.ttl_sec)?;
        // The per-user index (SPEC §13): `last_seen` to within a minute. The Redis store
        // records it with the touch, so with `user_field` it touches at least this often.
        if session.user_field.is_some() {
            let every = Duration::from_secs(crate::config::LAST_SEEN_EVERY_SEC);
            store.touch_interval = store.touch_interval.min(every);
        }
        let forward = self.forward(forward)?;
        let csrf = self.csrf(csrf)?;
        let dbsc = self.dbsc(dbsc)?;
        let routes = self.routes(route, &server)?;
        Ok(Config {
            path: self.path.to_owned(),
            server,
            session,
            cookie,
            store,
            forward,
            log: log.format,
            csrf,
            dbsc,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn the_user_index_on_redis_touches_at_least_once_a_minute() {
        let store = |session: &str| {
            parse_str(&format!(
                "{MIN}[session]\nttl_sec = 86400\n{session}[store]\nkind = \"redis\"\n"
            ))
            .unwrap()
            .store
            .touch_interval
            .as_secs()
        };
        assert_eq!(store(""), 864);
        assert_eq!(store("user_field = \"userId\"\n"), 60);
    }

    #[test]
    fn semantic_errors_point_at_the_value_and_name_the_key() {
        let err = parse_str("[server]\nupstream = \"ftp://x\"\n").unwrap_err();
        assert_eq!(
            err,
            "proxy.toml:2:12: server.upstream: scheme \"ftp\" is not supported; use http:// or https://"
        );
        let err =
            parse_str("[server]\nlisten = \"nowhere\"\nupstream = \"http://a:1\"\n").unwrap_err();
        assert!(err.starts_with("proxy.toml:2:10: server.listen: "), "{err}");
        let err = parse_str(&format!(
            "{MIN}trusted_proxies = [\"10.0.0.0/8\", \"bad\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:3:34: server.trusted_proxies[1]: "),
            "{err}"
        );
        let err = parse_str(&format!(
            "{MIN}[forward.headers]\n\"Bad Header\" = \"userId\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:1: forward.headers{Bad Header}: "),
            "{err}"
        );
    }

    #[test]
    fn missing_upstream_has_no_fake_position() {
        let err = parse_str("").unwrap_err();
        assert!(
            err.starts_with("proxy.toml: server.upstream: is required"),
            "{err}"
        );
    }

    #[test]
    fn zero_and_inconsistent_durations_are_rejected() {
        for (text, key) in [
            ("[session]\nttl_sec = 0\n", "session.ttl_sec"),
            (
                "[session]\nttl_sec = 10\ncookie_refresh_sec = 11\n",
                "session.cookie_refresh_sec",
            ),
            ("[store]\ntimeout_ms = 0\n", "store.timeout_ms"),
            (
                "header_read_timeout_ms = 0\n",
                "server.header_read_timeout_ms",
            ),
            ("max_header_bytes = 100\n", "server.max_header_bytes"),
            ("[store]\nmax_sessions = 0\n", "store.max_sessions"),
            ("[forward]\ntoken_ttl_sec = 0\n", "forward.token_ttl_sec"),
        ] {
            let err = parse_str(&format!("{MIN}{text}")).unwrap_err();
            assert!(err.contains(&format!(": {key}: ")), "{err}");
        }
    }
}
