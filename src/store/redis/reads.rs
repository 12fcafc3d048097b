//! The Redis store's read path (SPEC §15): touch throttling and the local cache.
//!
//! # Reads do not write: touch throttling (SPEC §15)
//!
//! A read extends the session's expiry only when `store.touch_interval_sec` (`interval`)
//! has passed since the record's `touched`, the time its expiry was last set, kept in the
//! record itself so that every proxy sharing Redis takes the same decision. The touch is a
//! script on the one key: if the value is of format 3 or 4 and its `touched` is still what this
//! read saw, it rewrites `touched` in place (`SETRANGE`, which keeps the value otherwise and
//! keeps its TTL) and sets `EXPIRE key ttl`; if the key is gone it does nothing (it never
//! creates a key, so it never resurrects a destroyed session); if `touched` moved on
//! (another proxy touched, or a write replaced the value, which sets its own expiry) it
//! does nothing either, so concurrent reads of one session touch it once.
//!
//! Why a script over `SET ... KEEPTTL` guarded by compare-and-set: `touched` sits outside
//! the sealed header (see [`seal`](crate::store::seal)), so the touch changes neither the header
//! that compare-and-set compares nor the sealed bytes: no in-flight Update or cookie
//! refresh loses its compare-and-set to a touch, nothing is re-sealed, and the request
//! carries 8 bytes instead of the whole value.
//!
//! The guarantee: every write and every touch sets the expiry to `ttl` from then and
//! stamps `touched` with that moment (whole seconds, rounded down). A read at `t` finds
//! `touched > t - interval` (no touch: the expiry is already past `t - interval + ttl`) or
//! touches, so the session stays valid until at least `t + ttl - interval`. Clocks of the
//! proxies are assumed to agree to well under `interval`. A touch that fails is logged and
//! the read is still served; the next read tries again.
//!
//! With the per-user index (`session.user_field`), a due touch of a session whose data
//! names a user first refreshes that user's index (its `last_seen`, the index expiry; see
//! `users.rs`), and `interval` is at most a minute. A read that is not due does no more.
//!
//! # Local cache (SPEC §15)
//!
//! With `store.local_cache = N`, up to N opened sessions are kept in this proxy and served
//! without a round trip while Redis client tracking reports every write to them (see
//! [`cache`](super::cache) for the read/invalidation race, [`tracking`] for the connections). A hit still
//! sends the touch when it is due; the touch is a write, so it invalidates the entry in
//! every proxy, at most once per interval. This proxy's own writes drop its entry as soon
//! as they return (read your writes), before Redis's report arrives. A report that reached
//! this proxy but is not applied yet turns a hit into a miss (see [`wire`](super::wire)).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::warn;

use super::cache::{Entry, LocalCache};
use super::tracking::{self, Nodes, Tracker};
use super::{RedisStore, StoreError, Target, open, ttl_secs, unavailable};
use crate::config::StoreSettings;
use crate::metrics::RedisReadMetrics;
use crate::session::{Record, SessionId, unix_now};
use crate::store::seal::{BOUND_FORMAT_VERSION, FORMAT_VERSION, SessionKeys, TOUCHED_AT};

/// The touch (see the module docs): `KEYS[1]` = key, `ARGV` = the `touched` this read saw
/// (8 bytes), the new `touched` (8 bytes), TTL seconds. Returns 1 when touched, 0 when the
/// key is absent or not of format 3 or 4, 2 when `touched` moved on meanwhile.
pub(super) const TOUCH_SCRIPT: &str = r"
local head = redis.call('GETRANGE', KEYS[1], 0, 48)
if #head < 49 or (string.byte(head, 1) ~= 3 and string.byte(head, 1) ~= 4) then
  return 0
end
if string.sub(head, 42, 49) ~= ARGV[1] then
  return 2
end
redis.call('SETRANGE', KEYS[1], 41, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";
// The script's offsets: formats 3 and 4, `touched` at bytes 41..49 (1-based 42..49 in Lua).
const _: () = assert!(FORMAT_VERSION == 3 && BOUND_FORMAT_VERSION == 4 && TOUCHED_AT == 41);

impl RedisStore {
    /// The read-path counters (touches, local cache), for `/metrics`.
    pub fn read_metrics(&self) -> &RedisReadMetrics {
        &self.inner.metrics
    }

    /// True when `store.local_cache` is on.
    pub fn has_local_cache(&self) -> bool {
        self.inner.cache.is_some()
    }

    /// True while the local cache serves (its invalidation tracking is up on every node);
    /// false without a local cache.
    pub fn local_cache_is_live(&self) -> bool {
        self.inner.cache.as_ref().is_some_and(|(c, _)| c.is_live())
    }

    /// The local cache, its tracking started on first use (this needs a runtime).
    pub(super) fn local_cache(&self) -> Option<&LocalCache> {
        let (cache, tracker) = self.inner.cache.as_ref()?;
        if !self.inner.tracking_started.swap(true, Ordering::AcqRel) {
            let taken = tracker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(tracker) = taken {
                tracking::spawn(tracker, cache);
            }
        }
        Some(cache)
    }

    /// This proxy wrote `key`: drop its cached copy now (read your writes), and refuse
    /// inserts of reads made before.
    pub(super) fn written(&self, key: &str) {
        if let Some((cache, _)) = &self.inner.cache {
            cache.invalidate(key);
        }
    }

    /// Extends the expiry of `key` to `ttl_secs` when `interval` has passed since
    /// `touched` (see the module docs). A failure is logged, not returned: the session
    /// is valid now, and the next read tries again.
    /// With the per-user index, the session's index entry is refreshed first (see
    /// `users.rs`); when that fails, the expiry is not extended either.
    pub(super) async fn touch_if_due(
        &self,
        (id, rec): (&SessionId, &Record),
        key: &str,
        touched: u64,
        now: u64,
        ttl_secs: u64,
    ) {
        if now.saturating_sub(touched) < self.inner.touch_interval {
            return;
        }
        if let Err(e) = self.refresh_member(id, rec).await {
            warn!(error = %e, "could not refresh a session's user index entry; will retry on a later read");
            return;
        }
        let script = &self.inner.touch;
        let result: Result<i64, StoreError> = self
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(&touched.to_be_bytes()[..])
                    .arg(&now.to_be_bytes()[..])
                    .arg(ttl_secs)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await;
        match result {
            Ok(1) => {
                self.inner.metrics.touches.inc();
                self.written(key);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "could not extend a session's expiry; will retry on a later read");
            }
        }
    }

    /// [`SessionStore::load`](crate::store::SessionStore::load): the local cache, else a
    /// `GET`; then the touch if it is due.
    pub(super) async fn read(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let keys = SessionKeys::derive(id);
        let key = self.key_at(keys.key_hash());
        let (now, ttl) = (unix_now(), ttl_secs(ttl));
        let cache = self.local_cache();
        let ticket = match cache.map(|c| c.get(&key, now, ttl)) {
            Some(Ok(hit)) => {
                self.touch_if_due((id, &hit.rec), &key, hit.touched, now, ttl)
                    .await;
                return Ok(Some(hit.rec));
            }
            Some(Err(ticket)) => ticket,
            None => None,
        };
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let value: Option<Vec<u8>> = self
            .run(|mut conn| async move { cmd.query_async(&mut conn).await.map_err(unavailable) })
            .await?;
        let Some(bytes) = value else {
            return Ok(None);
        };
        let (rec, touched) = open(&keys, bytes)?;
        if let (Some(cache), Some(ticket)) = (cache, ticket) {
            let entry = Entry {
                rec: rec.clone(),
                touched,
            };
            cache.insert(key.clone(), ticket, entry);
        }
        self.touch_if_due((id, &rec), &key, touched, now, ttl).await;
        Ok(Some(rec))
    }
}

/// The local cache and what starts its tracking (taken on first use).
pub(super) type LocalCacheSetup = Option<(Arc<LocalCache>, Mutex<Option<Tracker>>)>;

/// The local cache for `settings`, when `store.local_cache` is on.
pub(super) fn local_cache_for(
    settings: &StoreSettings,
    target: &Target,
    namespace: &str,
    metrics: &RedisReadMetrics,
) -> Result<LocalCacheSetup, StoreError> {
    let timeout = settings.timeout;
    let cache = match settings.local_cache {
        0 => None,
        n => {
            let nodes = match &target {
                Target::Single(client, _) => {
                    Nodes::Single(Box::new(client.get_connection_info().clone()))
                }
                Target::Cluster(_) => Nodes::Cluster(
                    settings
                        .cluster
                        .iter()
                        .map(|u| u.parse::<redis::ConnectionInfo>())
                        .collect::<Result<_, _>>()
                        .map_err(unavailable)?,
                ),
                Target::Sentinel(sentinel) => Nodes::Sentinel(sentinel.clone()),
            };
            let tracker = Tracker {
                nodes,
                prefix: namespace.into(),
                timeout,
            };
            let cache = Arc::new(LocalCache::new(n, metrics.clone()));
            Some((cache, Mutex::new(Some(tracker))))
        }
    };
    Ok(cache)
}
