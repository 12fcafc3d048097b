//! `[[route]]` (SPEC §11): prefixes in normal form and unique, upstream URLs, session
//! policies that make sense together, and a login page that a browser can reach.

use super::Validator;
use crate::config::{ConfigError, RawRoute, RouteSession, ServerSettings};
use crate::route::{Route, RouteTable, normalize};

impl Validator<'_> {
    /// Checks every `[[route]]` and builds the table, longest prefix first.
    pub(super) fn routes(
        &self,
        raw: Vec<RawRoute>,
        server: &ServerSettings,
    ) -> Result<RouteTable, ConfigError> {
        let ci = server.case_insensitive_paths;
        let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let at = |field: &str| format!("route[{i}].{field}");
            let prefix = self.prefix(i, &r.prefix, ci)?;
            if let Some(j) = routes
                .iter()
                .position(|o| o.prefix.as_ref() == Some(&prefix))
            {
                return Err(self.err(
                    &at("prefix"),
                    format!(
                        "{:?} is already the prefix of route[{j}]{}; give each prefix one route",
                        r.prefix,
                        if ci {
                            " (paths are case-insensitive)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            let upstream = if r.upstream.is_empty() {
                None
            } else {
                let url = self.upstream_url(&at("upstream"), &r.upstream)?;
                (url != server.upstream).then_some(url)
            };
            let required = r.session == RouteSession::Required;
            let only_required = |field: &str, what: &str| {
                self.err(
                    &at(field),
                    format!(
                        "{what} applies only to session = \"required\", and this route's session is {:?}",
                        r.session.as_str()
                    ),
                )
            };
            if !required && !r.require.is_empty() {
                return Err(only_required("require", "require"));
            }
            if !required && r.max_auth_age_sec > 0 {
                return Err(only_required("max_auth_age_sec", "max_auth_age_sec"));
            }
            if !required && !r.login_url.is_empty() {
                return Err(only_required("login_url", "login_url"));
            }
            let login_url = if r.login_url.is_empty() {
                None
            } else {
                self.login_url(&at("login_url"), &r.login_url)?;
                Some(r.login_url)
            };
            routes.push(Route {
                prefix: Some(prefix),
                upstream,
                session: r.session,
                login_url,
                require: r.require.into_iter().collect(),
                max_auth_age_sec: r.max_auth_age_sec,
                csrf: r.csrf,
            });
        }
        // A login page on this proxy must not itself require a session: the browser would
        // be sent round in circles.
        let table = RouteTable::new(routes.clone(), ci);
        for (i, r) in routes.iter().enumerate() {
            let Some(url) = &r.login_url else { continue };
            if !url.starts_with('/') {
                continue;
            }
            let path = url.split(['?', '#']).next().unwrap_or_default();
            let Ok(n) = normalize(path, ci) else { continue };
            let under = &table.routes()[table.find(&n.key)];
            if under.session == RouteSession::Required {
                let prefix = under.prefix.as_deref().unwrap_or("/");
                return Err(self.err(
                    &format!("route[{i}].login_url"),
                    format!(
                        "{path:?} is under the route for {prefix:?}, which requires a session, so a browser could never reach it; add a [[route]] with prefix = {path:?} and session = \"optional\""
                    ),
                ));
            }
        }
        Ok(table)
    }

    /// A route prefix: present, absolute, and in normal form (so that it can match).
    fn prefix(&self, i: usize, value: &str, ci: bool) -> Result<String, ConfigError> {
        let key = format!("route[{i}].prefix");
        if value.is_empty() {
            return Err(self.err_in(
                &format!("route[{i}]"),
                &key,
                "is required: the path prefix of this route, e.g. prefix = \"/admin\"",
            ));
        }
        if !value.starts_with('/') {
            return Err(self.err(&key, format!("{value:?} must start with \"/\"")));
        }
        let trimmed = match value.trim_end_matches('/') {
            "" => "/",
            t => t,
        };
        match normalize(trimmed, false) {
            Ok(n) if n.forward == trimmed && n.key == trimmed => {}
            Ok(n) => {
                return Err(self.err(
                    &key,
                    format!(
                        "{value:?} is not in normal form (no dot segments, repeated '/', ';' parameters or escapes of unreserved characters); write {:?}",
                        n.key.trim_end_matches('/')
                    ),
                ));
            }
            Err(e) => return Err(self.err(&key, format!("{value:?} can never match: {e}"))),
        }
        Ok(if ci {
            trimmed.to_ascii_lowercase()
        } else {
            trimmed.to_owned()
        })
    }

    /// `login_url`: a path on this proxy or an http(s) URL, usable as a `Location`.
    fn login_url(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let is_path = value.starts_with('/') && !value.starts_with("//");
        let is_url = value.starts_with("https://") || value.starts_with("http://");
        if !is_path && !is_url {
            return Err(self.err(
                key,
                format!(
                    "{value:?} must be a path (\"/login?next={{return_to}}\") or an http(s) URL"
                ),
            ));
        }
        let example = value.replace("{return_to}", "%2F");
        if http::HeaderValue::from_str(&example).is_err() || example.parse::<http::Uri>().is_err() {
            return Err(self.err(key, format!("{value:?} is not a valid URL")));
        }
        Ok(())
    }

    /// An error about `key` that points at the table `at` (the key itself is missing).
    fn err_in(&self, at: &str, key: &str, msg: &str) -> ConfigError {
        let msg = format!("{key}: {msg}");
        match self.span_of(at) {
            Some(span) => super::located(self.path, self.text, span, msg),
            None => ConfigError::Unlocated {
                path: self.path.to_owned(),
                msg,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RouteSession;
    use crate::config::tests::{MIN, parse_str};

    fn err(routes: &str) -> String {
        parse_str(&format!("{MIN}{routes}")).unwrap_err()
    }

    #[test]
    fn routes_parse_into_a_table_longest_prefix_first() {
        let c = parse_str(&format!(
            "{MIN}[[route]]\nprefix = \"/\"\n\n[[route]]\nprefix = \"/admin/\"\nsession = \"required\"\nupstream = \"http://127.0.0.1:4000\"\nrequire = {{ role = \"admin\", level = 3 }}\nmax_auth_age_sec = 300\ncsrf = false\n"
        ))
        .unwrap();
        let routes = c.routes.routes();
        assert_eq!(routes.len(), 3);
        let admin = &routes[0];
        assert_eq!(admin.prefix.as_deref(), Some("/admin"));
        assert_eq!(admin.session, RouteSession::Required);
        assert_eq!(
            admin.upstream.as_ref().unwrap().authority.as_str(),
            "127.0.0.1:4000"
        );
        assert_eq!(admin.require.len(), 2);
        assert_eq!(admin.max_auth_age_sec, 300);
        assert!(!admin.csrf);
        assert_eq!(routes[1].prefix.as_deref(), Some("/"));
        assert!(routes[1].csrf);
        assert_eq!(routes[2].prefix, None);
    }

    #[test]
    fn route_errors_are_located_and_name_the_key() {
        for (routes, want) in [
            (
                "[[route]]\nsession = \"required\"\n",
                "proxy.toml:3:1: route[0].prefix: is required",
            ),
            (
                "[[route]]\nprefix = \"admin\"\n",
                "proxy.toml:4:10: route[0].prefix: \"admin\" must start with \"/\"",
            ),
            (
                "[[route]]\nprefix = \"/a/../b\"\n",
                "proxy.toml:4:10: route[0].prefix: \"/a/../b\" is not in normal form",
            ),
            (
                "[[route]]\nprefix = \"/a%2Fb\"\n",
                "proxy.toml:4:10: route[0].prefix: \"/a%2Fb\" can never match",
            ),
            (
                "[[route]]\nprefix = \"/a\"\n[[route]]\nprefix = \"/b\"\n[[route]]\nprefix = \"/a/\"\n",
                "proxy.toml:8:10: route[2].prefix: \"/a/\" is already the prefix of route[0]",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nupstream = \"ftp://x\"\n",
                "proxy.toml:5:12: route[0].upstream: scheme \"ftp\" is not supported",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nupstream = \"http://x/path\"\n",
                "proxy.toml:5:12: route[0].upstream: \"http://x/path\" must not have a path",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nsession = \"maybe\"\n",
                "proxy.toml:5:11: unknown variant `maybe`",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nrequire = { role = \"admin\" }\n",
                "proxy.toml:5:11: route[0].require: require applies only to session = \"required\", and this route's session is \"optional\"",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nsession = \"off\"\nrequire = { role = \"admin\" }\n",
                "proxy.toml:6:11: route[0].require: require applies only to session = \"required\", and this route's session is \"off\"",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nmax_auth_age_sec = 5\n",
                "proxy.toml:5:20: route[0].max_auth_age_sec: max_auth_age_sec applies only",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nsession = \"required\"\nlogin_url = \"//evil.example/\"\n",
                "proxy.toml:6:13: route[0].login_url: \"//evil.example/\" must be a path",
            ),
            (
                "[[route]]\nprefix = \"/\"\nsession = \"required\"\nlogin_url = \"/login?next={return_to}\"\n",
                "proxy.toml:6:13: route[0].login_url: \"/login\" is under the route for \"/\", which requires a session",
            ),
            (
                "[[route]]\nprefix = \"/a\"\nsessions = \"required\"\n",
                "proxy.toml:5:1: unknown field `sessions`",
            ),
        ] {
            let got = err(routes);
            assert!(got.starts_with(want), "got:  {got}\nwant: {want}");
        }
    }

    #[test]
    fn an_exempt_login_page_and_case_folded_duplicates() {
        parse_str(&format!(
            "{MIN}[[route]]\nprefix = \"/\"\nsession = \"required\"\nlogin_url = \"/login?next={{return_to}}\"\n[[route]]\nprefix = \"/login\"\n"
        ))
        .unwrap();
        let got = parse_str(&format!(
            "{MIN}case_insensitive_paths = true\n[[route]]\nprefix = \"/Admin\"\n[[route]]\nprefix = \"/admin\"\n"
        ))
        .unwrap_err();
        assert!(
            got.starts_with("proxy.toml:7:10: route[1].prefix: \"/admin\" is already the prefix of route[0] (paths are case-insensitive)"),
            "{got}"
        );
    }
}
