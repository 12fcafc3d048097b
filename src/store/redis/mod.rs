//! The Redis store (SPEC §7): one Redis server (`store.url`), a Redis Cluster
//! (`store.cluster`) or the master Redis Sentinels name (`store.sentinel`, SPEC §15, see
//! [`sentinel`]), shared by any number of proxy instances and surviving their restarts.
//!
//! # Keys and values
//!
//! Sessions are stored sealed ([`seal`](super::seal), SPEC §14): the key is
//! `session.namespace` followed by the [`KeyHash`] of the ID (SHA-256 of its text, 43
//! characters of base64url), e.g. `session:6oZqdX5M…`, never the ID; the value is the
//! record in format 3 (format 4 for a device-bound session, SPEC §16): version and
//! timestamps in clear, the data encrypted and authenticated with ChaCha20-Poly1305 under
//! a key derived from the ID. Every write sets an expiry of `ttl` in whole seconds (rounded
//! up, at least 1), and stamps the record's `touched` with the time of the write.
//!
//! # One round trip per operation
//!
//! | operation | command |
//! |---|---|
//! | [`load`](SessionStore::load) | `GET key`; when the touch is due, also `EVALSHA` of the touch script (below) |
//! | [`create`](SessionStore::create) | `SET key value NX EX ttl` |
//! | [`replace`](SessionStore::replace) | `EVALSHA` of a compare-and-set script: `GET`; nil -> gone, another header -> changed, else `SET key new EX ttl` |
//! | [`delete`](SessionStore::delete) | `DEL key` |
//! | [`ping`](SessionStore::ping) | `PING` (every primary, for a cluster) |
//!
//! The script never writes a key that is absent, so an entry destroyed by one request is
//! never brought back by another that was in flight. It compares the clear header of the
//! stored value with the header of `expected` ([`SessionKeys::header`]): the same record
//! seals to other bytes on every write, and the header is what stays equal (see
//! [`seal`](super::seal)).
//!
//! # Reads (SPEC §15)
//!
//! A read is one `GET`; its expiry is extended at most once per `store.touch_interval_sec`,
//! and with `store.local_cache` it may be served from memory: see `reads.rs`.
//!
//! # The per-user index (SPEC §13)
//!
//! With `session.user_field`, a user's sessions are kept in a sorted set and a hash under
//! one Cluster hash tag, changed by scripts on that one slot; see `users.rs`. A `replace`
//! of a session whose data names a user, and a due touch of one, first refresh its index
//! entry: one more round trip, before the record's expiry is extended.
//!
//! # Connections and failures
//!
//! Connections are made on first use and every operation is bounded by
//! `store.timeout_ms`: see [`conn`].

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{RedisError, Value};

use self::conn::{Slot, Target, mask_password};
use self::reads::TOUCH_SCRIPT;
use super::seal::{KEY_HASH_TEXT_LEN, KeyHash, SessionKeys};
use super::{Cas, SessionStore, StoreError};
use crate::config::StoreSettings;
use crate::metrics::RedisReadMetrics;
use crate::session::{Record, SessionId};

/// Compare-and-set: `KEYS[1]` = key, `ARGV` = expected header, new value, TTL seconds.
/// Returns 0 when the key is absent, the current value when its header differs, 1 when
/// written.
const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  return 0
end
if string.sub(cur, 1, #ARGV[1]) ~= ARGV[1] then
  return cur
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
";

/// The Redis (or Redis Cluster) store. Cloning shares the same connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The connection once made, with its generation number.
    conn: Mutex<Slot>,
    /// Held while connecting, so that one attempt runs at a time.
    connecting: tokio::sync::Mutex<()>,
    namespace: Box<str>,
    timeout: Duration,
    /// The URL(s) with any password masked: the only form ever displayed.
    shown: String,
    cas: redis::Script,
    touch: redis::Script,
    /// Whole seconds between touches of one session (at least 1).
    touch_interval: u64,
    /// The local cache and what starts its tracking (taken on first use), when on.
    cache: reads::LocalCacheSetup,
    tracking_started: AtomicBool,
    metrics: RedisReadMetrics,
    /// The per-user index, when `session.user_field` is set (see `users.rs`).
    users: Option<users::Indexing>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner.target {
            Target::Single(..) => "single",
            Target::Cluster(_) => "cluster",
            Target::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("target", &self.inner.shown)
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.timeout)
            .field("touch_interval_sec", &self.inner.touch_interval)
            .field(
                "local_cache",
                &self.inner.cache.as_ref().map(|(c, _)| c.len()),
            )
            .field("connected", &self.lock().conn.is_some())
            .field("user_index", &self.inner.users.is_some())
            .finish()
    }
}

impl RedisStore {
    /// A store for `settings.url`, or for the Redis Cluster seeded by `settings.cluster`
    /// when that is not empty, with keys prefixed by `namespace`. Connects lazily: this
    /// checks the URLs but does not contact Redis (see [`SessionStore::ping`]).
    ///
    /// # Errors
    /// When a URL cannot be used (the message never contains a password).
    pub fn open(settings: &StoreSettings, namespace: &str) -> Result<Self, StoreError> {
        Self::open_with(settings, namespace, None, RedisReadMetrics::default())
    }

    /// [`open`](Self::open), keeping the per-user index (SPEC §13) of the sessions whose
    /// data names a user in `user_field`, for sessions of idle timeout `ttl`
    /// (`session.ttl_sec`). The touch interval is then at most a minute (see `users.rs`).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_indexed(
        settings: &StoreSettings,
        namespace: &str,
        user_field: &str,
        ttl: Duration,
    ) -> Result<Self, StoreError> {
        let users = users::Indexing::new(user_field, ttl);
        Self::open_with(
            settings,
            namespace,
            Some(users),
            RedisReadMetrics::default(),
        )
    }

    /// Another store like this one (namespace, user index), with its own connection and
    /// local cache, counting reads into the same metrics, so that `/metrics` shows both as
    /// one: for one runtime of `server.runtime = "per-core"`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_like(&self, settings: &StoreSettings) -> Result<Self, StoreError> {
        Self::open_with(
            settings,
            &self.inner.namespace,
            self.inner.users.clone(),
            self.read_metrics().clone(),
        )
    }

    fn open_with(
        settings: &StoreSettings,
        namespace: &str,
        users: Option<users::Indexing>,
        metrics: RedisReadMetrics,
    ) -> Result<Self, StoreError> {
        let timeout = settings.timeout;
        let target = Target::for_settings(settings)?;
        let shown = Self::describe(settings);
        let cache = reads::local_cache_for(settings, &target, namespace, &metrics)?;
        let mut touch_interval = settings.touch_interval.as_secs();
        if users.is_some() {
            touch_interval = users::Indexing::touch_interval(touch_interval);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                conn: Mutex::default(),
                connecting: tokio::sync::Mutex::new(()),
                namespace: namespace.into(),
                timeout,
                shown,
                cas: redis::Script::new(CAS_SCRIPT),
                touch: redis::Script::new(TOUCH_SCRIPT),
                touch_interval: touch_interval.max(1),
                cache,
                tracking_started: AtomicBool::new(false),
                metrics,
                users,
            }),
        })
    }

    /// `store.url`, or `store.cluster` as a list, or `store.sentinel` as a list with the
    /// master name, with passwords masked: the form that messages and logs may show.
    pub fn describe(settings: &StoreSettings) -> String {
        if !settings.sentinel.is_empty() {
            sentinel::describe(&settings.sentinel, &settings.sentinel_master)
        } else if settings.cluster.is_empty() {
            mask_password(&settings.url)
        } else {
            let seeds: Vec<String> = settings.cluster.iter().map(|u| mask_password(u)).collect();
            format!("[{}]", seeds.join(", "))
        }
    }

    /// `url` with any password masked, e.g. `redis://user:***@host`.
    pub fn masked(url: &str) -> String {
        mask_password(url)
    }

    /// The configured URL(s), passwords masked, for messages.
    pub fn target(&self) -> &str {
        &self.inner.shown
    }

    /// True when this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    /// With `store.sentinel`: the master name and the master in use (`host:port`), once
    /// one was found.
    pub fn sentinel_master(&self) -> Option<(&str, Option<String>)> {
        match &self.inner.target {
            Target::Sentinel(s) => Some((s.name(), s.in_use())),
            _ => None,
        }
    }

    /// The Redis key of `id`: the namespace followed by its key hash (never the ID).
    pub fn key(&self, id: &SessionId) -> String {
        self.key_at(&KeyHash::of(id))
    }

    fn key_at(&self, hash: &KeyHash) -> String {
        let mut key = String::with_capacity(self.inner.namespace.len() + KEY_HASH_TEXT_LEN);
        key.push_str(&self.inner.namespace);
        key.push_str(hash.as_str());
        key
    }
}

/// A redis error as a store error, keeping it as the source.
fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// Whole seconds for `EX`: rounded up, so an entry never expires early, and at least 1.
fn ttl_secs(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// Opens a stored value of the session `keys` belong to, with its `touched`.
fn open(keys: &SessionKeys, value: Vec<u8>) -> Result<(Record, u64), StoreError> {
    keys.open_touched(value)
        .map_err(|reason| StoreError::Corrupt {
            key_hash: Box::new(*keys.key_hash()),
            reason,
        })
}

/// An answer the command never gives, as a store error.
fn unexpected(what: &'static str, v: &Value) -> StoreError {
    let kind = match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a bulk string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a simple string",
        Value::Okay => "OK",
        _ => "another type",
    };
    StoreError::Unavailable(format!("unexpected reply to {what}: {kind}").into())
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        self.read(id, ttl).await
    }

    async fn create(
        &self,
        id: &SessionId,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let keys = SessionKeys::derive(id);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key_at(keys.key_hash()))
            .arg(keys.seal(rec))
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs(ttl));
        self.run(|mut conn| async move {
            let value: Value = cmd.query_async(&mut conn).await.map_err(unavailable)?;
            match value {
                Value::Okay => Ok(true),
                Value::SimpleString(ref s) if s == "OK" => Ok(true),
                Value::Nil => Ok(false),
                other => Err(unexpected("SET NX", &other)),
            }
        })
        .await
    }

    async fn replace(
        &self,
        id: &SessionId,
        expected: &Record,
        new: &Record,
        ttl: Duration,
    ) -> Result<Cas, StoreError> {
        // The user index first, so that it outlives the record (see `users`).
        self.refresh_member(id, new).await?;
        let keys = SessionKeys::derive(id);
        let key = self.key_at(keys.key_hash());
        let expected = keys.header(expected);
        let new = keys.seal(new);
        let secs = ttl_secs(ttl);
        let script = &self.inner.cas;
        let target = &key;
        let result: Result<Value, StoreError> = self
            .run(|mut conn| async move {
                script
                    .key(target)
                    .arg(&expected[..])
                    .arg(new)
                    .arg(secs)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await;
        // Also after a failure: a write that timed out may still be applied.
        self.written(&key);
        match result? {
            Value::Int(0) => Ok(Cas::Gone),
            Value::Int(1) => Ok(Cas::Applied),
            Value::BulkString(current) => Ok(Cas::Changed(open(&keys, current)?.0)),
            other => Err(unexpected("the compare-and-set script", &other)),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let key = self.key(id);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&key);
        let result = self
            .run(|mut conn| async move {
                let _removed: i64 = cmd.query_async(&mut conn).await.map_err(unavailable)?;
                Ok(())
            })
            .await;
        self.written(&key);
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            let _pong: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

mod cache;
mod conn;
mod reads;
mod sentinel;
#[cfg(test)]
mod tests;
mod tracking;
mod users;
mod wire;
