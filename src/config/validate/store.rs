//! `[store]`: bounds and timeouts, and Redis URLs checked by the Redis client's own parser.

use std::time::Duration;

use super::Validator;
use crate::config::{ConfigError, RawStore, StoreKind, StoreSettings};

impl Validator<'_> {
    /// Checks `[store]`; Redis URLs only when `kind = "redis"`. `ttl_sec` is
    /// `session.ttl_sec`, which `touch_interval_sec` must stay below.
    pub(super) fn store(&self, raw: RawStore, ttl_sec: u64) -> Result<StoreSettings, ConfigError> {
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
            self.sentinel(&raw)?;
            if raw.cluster.is_empty() && raw.sentinel.is_empty() {
                check("store.url", &raw.url)?;
            }
            for (i, url) in raw.cluster.iter().enumerate() {
                check(&format!("store.cluster[{i}]"), url)?;
            }
            for (i, url) in raw.sentinel.iter().enumerate() {
                check(&format!("store.sentinel[{i}]"), url)?;
            }
        }
        let touch_interval = self.touch_interval(&raw, ttl_sec)?;
        if raw.local_cache > 0 && raw.kind != StoreKind::Redis {
            return Err(self.err(
                "store.local_cache",
                "applies to kind = \"redis\" only; the memory store needs no cache",
            ));
        }
        if raw.local_cache > MAX_LOCAL_CACHE {
            return Err(self.err(
                "store.local_cache",
                format!("must be at most {MAX_LOCAL_CACHE}, got {}", raw.local_cache),
            ));
        }
        Ok(StoreSettings {
            kind: raw.kind,
            max_sessions: raw.max_sessions,
            url: raw.url,
            cluster: raw.cluster,
            timeout: Duration::from_millis(raw.timeout_ms),
            on_error: raw.on_error,
            require_on_start: raw.require_on_start,
            sentinel: raw.sentinel,
            sentinel_master: raw.sentinel_master,
            touch_interval,
            local_cache: raw.local_cache,
        })
    }

    /// `store.sentinel` replaces `url` and `cluster`, so neither may be written beside it;
    /// `store.sentinel_master` is a name the Sentinels can be asked about.
    fn sentinel(&self, raw: &RawStore) -> Result<(), ConfigError> {
        if raw.sentinel.is_empty() {
            return Ok(());
        }
        if !raw.cluster.is_empty() {
            return Err(self.err(
                "store.sentinel",
                "cannot be combined with store.cluster; use one of url, cluster, sentinel",
            ));
        }
        if self.span_of("store.url").is_some() {
            return Err(self.err(
                "store.sentinel",
                "cannot be combined with store.url (the Sentinels name the master); remove store.url",
            ));
        }
        let name = &raw.sentinel_master;
        if name.is_empty() {
            return Err(self.err(
                "store.sentinel_master",
                "must name the master the Sentinels monitor, found an empty string",
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(
                "store.sentinel_master",
                format!("must be a master name without spaces or control characters, found {c:?}"),
            ));
        }
        Ok(())
    }

    /// `store.touch_interval_sec`, resolved: 0 means max(1, ttl_sec / 100). It must stay
    /// below `ttl_sec`, or "valid until t + ttl_sec - touch_interval_sec" (SPEC §15) would
    /// promise nothing.
    fn touch_interval(&self, raw: &RawStore, ttl_sec: u64) -> Result<Duration, ConfigError> {
        let key = "store.touch_interval_sec";
        if raw.touch_interval_sec > 0 && raw.kind != StoreKind::Redis {
            return Err(self.err(
                key,
                "applies to kind = \"redis\" only; the memory store slides on every read",
            ));
        }
        if raw.touch_interval_sec > 0 && raw.touch_interval_sec >= ttl_sec {
            return Err(self.err(
                key,
                format!(
                    "must be less than session.ttl_sec ({ttl_sec}), got {}",
                    raw.touch_interval_sec
                ),
            ));
        }
        let secs = match raw.touch_interval_sec {
            0 => (ttl_sec / 100).max(1),
            n => n,
        };
        Ok(Duration::from_secs(secs))
    }
}

/// The largest `store.local_cache`: the cache's table is allocated up front.
const MAX_LOCAL_CACHE: usize = 10_000_000;

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn sentinel_is_read_with_its_master_name() {
        let c = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nsentinel = [\"redis://:pw@10.0.0.1:26379\", \"rediss://10.0.0.2:26379\"]\n"
        ))
        .unwrap();
        assert_eq!(c.store.sentinel.len(), 2);
        assert_eq!(c.store.sentinel_master, "mymaster");
        let c = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nsentinel = [\"redis://s:26379\"]\nsentinel_master = \"sessions\"\n"
        ))
        .unwrap();
        assert_eq!(c.store.sentinel_master, "sessions");
    }

    #[test]
    fn sentinel_errors_point_at_the_key() {
        for (store, want) in [
            (
                "sentinel = [\"redis://s:26379\"]\ncluster = [\"redis://c:7000\"]\n",
                "proxy.toml:5:12: store.sentinel: cannot be combined with store.cluster",
            ),
            (
                "url = \"redis://r:6379\"\nsentinel = [\"redis://s:26379\"]\n",
                "proxy.toml:6:12: store.sentinel: cannot be combined with store.url",
            ),
            (
                "sentinel = [\"redis://s:26379\"]\nsentinel_master = \"\"\n",
                "proxy.toml:6:19: store.sentinel_master: must name the master",
            ),
            (
                "sentinel = [\"redis://s:26379\"]\nsentinel_master = \"my master\"\n",
                "proxy.toml:6:19: store.sentinel_master: must be a master name without spaces",
            ),
            (
                "sentinel = [\"redis://s:26379\", \"http://s2:26379\"]\n",
                "proxy.toml:5:32: store.sentinel[1]: must start with redis:// or rediss://",
            ),
            (
                "sentinel = [\"redis://s:notaport\"]\n",
                "proxy.toml:5:13: store.sentinel[0]: is not a valid Redis URL",
            ),
        ] {
            let err = parse_str(&format!("{MIN}[store]\nkind = \"redis\"\n{store}")).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn touch_interval_defaults_to_a_hundredth_of_the_ttl_and_at_least_one_second() {
        let redis = |extra: &str| {
            parse_str(&format!(
                "{MIN}[session]\nttl_sec = 86400\n[store]\nkind = \"redis\"\n{extra}"
            ))
            .unwrap()
            .store
        };
        assert_eq!(redis("").touch_interval, Duration::from_secs(864));
        assert_eq!(
            redis("touch_interval_sec = 30\nlocal_cache = 5000\n").touch_interval,
            Duration::from_secs(30)
        );
        assert_eq!(redis("local_cache = 5000\n").local_cache, 5000);
        let short = parse_str(&format!("{MIN}[session]\nttl_sec = 50\n"))
            .unwrap()
            .store;
        assert_eq!(short.touch_interval, Duration::from_secs(1));
        assert_eq!(short.local_cache, 0);
    }

    #[test]
    fn touch_interval_and_local_cache_are_checked() {
        let err = parse_str(&format!(
            "{MIN}[session]\nttl_sec = 60\n[store]\nkind = \"redis\"\ntouch_interval_sec = 60\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with(
                "proxy.toml:7:22: store.touch_interval_sec: must be less than session.ttl_sec (60), got 60"
            ),
            "{err}"
        );
        let err = parse_str(&format!("{MIN}[store]\nlocal_cache = 10\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:15: store.local_cache: applies to kind = \"redis\" only"),
            "{err}"
        );
        let with_sentinel = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nsentinel = [\"redis://s:26379\"]\nlocal_cache = 10\n"
        ))
        .unwrap();
        assert_eq!(with_sentinel.store.local_cache, 10);
        let err = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nlocal_cache = 10000001\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5:15: store.local_cache: must be at most 10000000"),
            "{err}"
        );
    }
}
