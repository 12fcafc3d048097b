//! `[store]`: bounds and timeouts, and Redis URLs checked by the Redis client's own parser.

use std::time::Duration;

use super::Validator;
use crate::config::{ConfigError, RawStore, StoreKind, StoreSettings};

impl Validator<'_> {
    /// Checks `[store]`; Redis URLs only when `kind = "redis"`.
    pub(super) fn store(&self, raw: RawStore) -> Result<StoreSettings, ConfigError> {
        if raw.max_sessions == 0 {
            return Err(self.err("store.max_sessions", "must be greater than 0"));
        }
        if raw.timeout_ms == 0 {
            return Err(self.err("store.timeout_ms", "must be greater than 0"));
        }
        if raw.kind == StoreKind::Redis {
            let check = |key: &str, url: &str| {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(self.err(key, "must start with redis:// or rediss://"));
                }
                redis::Client::open(url).map(drop).map_err(|e| {
                    self.err(
                        key,
                        format!(
                            "is not a valid Redis URL: {}",
                            e.detail().unwrap_or("bad URL")
                        ),
                    )
                })
            };
            if raw.cluster.is_empty() {
                check("store.url", &raw.url)?;
            }
            for (i, url) in raw.cluster.iter().enumerate() {
                check(&format!("store.cluster[{i}]"), url)?;
            }
        }
        Ok(StoreSettings {
            kind: raw.kind,
            max_sessions: raw.max_sessions,
            url: raw.url,
            cluster: raw.cluster,
            timeout: Duration::from_millis(raw.timeout_ms),
            on_error: raw.on_error,
            require_on_start: raw.require_on_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn redis_urls_are_checked() {
        let err = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nurl = \"http://x\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5:7: store.url: must start with redis://"),
            "{err}"
        );
        parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\"]\n"
        ))
        .unwrap();
    }
}
