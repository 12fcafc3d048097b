//! The per-user index on Redis, Redis Cluster and Redis Sentinel (SPEC §13; the contract
//! and the race argument are in [`users`](crate::store::users)).
//!
//! # Keys
//!
//! With `ns` the namespace, `T` the first 22 characters of the base64url SHA-256 of the user
//! name, `H` a session's [`Handle`] and `K` its key hash (the record key is `ns` + `K`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns` `u:{T}` | sorted set | the user's members: `H`, scored by `last_seen` (Unix seconds) |
//! | `ns` `u:{T}:d` | hash | `H` -> device facts `created|K|ip|user_agent` |
//! | `ns` `h:` `H` | string | the user name, for `revoke_handle` without a user (the admin API) |
//!
//! `{T}` is a Redis Cluster hash tag: both keys of one user are in one slot, so every script
//! below runs on that user's keys alone. Records stay in their own slots. Neither keys nor
//! values hold a session ID or anything a cookie can be made from: the handle and the key
//! hash are one-way hashes of the ID under distinct labels (SPEC §14); the user name and the
//! device facts are in clear, as SPEC §14 allows. None of these keys can be taken for a
//! record key (`:` and `{` are not base64url).
//!
//! # Scripts (each one atomic step on the user's slot)
//!
//! - **join**: when replacing a session of the same user, check that it is a member (else
//!   answer "gone", adding nothing); it stays one until the caller has deleted its record
//!   and makes it leave. Prune members not seen for the index lifetime (below); add the
//!   new member and its facts; set both keys' expiry; past `max_per_user` (the replaced
//!   session not counted), take the least recently seen others (lowest score, then oldest
//!   `created`) and return them.
//! - **take**: remove one member, returning its score and facts (nil when it is none):
//!   `leave`, `revoke_handle`, the old user's half of a user switch, pruning.
//! - **revoke**: take every member but the one kept, returning them.
//! - **refresh**: if the session is a member, raise its score to now and reset both keys'
//!   expiry (the touch and every write, below); sent together with an `EXPIRE` of the
//!   session's handle key.
//! - **restore**: put taken members back (after their records could not be deleted).
//!
//! Taken members' records are then deleted with `DEL` (split per slot by the cluster
//! client) *before* `revoke`, `revoke_handle` or the eviction of a `join` returns. If that
//! `DEL` fails, the members are restored to the index, so that a retry finds them, and the
//! call returns the error.
//!
//! # Why this is race-free on a Cluster
//!
//! The contract's argument needs two atomic steps, and both are scripts on one slot: `join`
//! checks the replaced member and adds the new one in one script, `revoke` takes every
//! member in one script. A rotation (create the record, join replacing, delete the old
//! record, then the old member leaves) that runs against a revocation is therefore either
//! wholly before the revoke script as far as the index goes (both the new and the replaced
//! session are members, and both are taken) or after it (the join answers
//! [`Joined::SourceGone`] and the rotation deletes its own new record). Records living in
//! other slots do not matter: a record is only trusted once it is a member, a member leaves
//! only after its record is gone, and a taken member's record is deleted before `revoke`
//! returns; nothing recreates a deleted record.
//!
//! A **user switch** (replacing a session of another user, e.g. a login as somebody else
//! from a session that named a user) needs two slots: the join first checks (`ZSCORE`) that
//! the old session is still a member of the old user's index, answering "gone" otherwise,
//! then adds the new one to the new user's. The old session stays a member of the old
//! user's index until the rotation has deleted its record. A revocation of the old user
//! between the check and the add deletes the old session but not the new one, which is a
//! fresh member of the new user: as any login as that user, a revocation of the *old* user
//! does not cover it.
//!
//! A join that **fails** (Redis did not answer in time) leaves the replaced session a
//! member with its record: the caller deletes the new record and nothing is half-applied.
//! If the script did run, the new member names a record that no longer exists and is
//! pruned like any other.
//!
//! # last_seen, expiry and pruning
//!
//! `last_seen` is the member's score. It is raised by the **refresh** script, which runs
//! *before* the record's expiry is extended, on every touch (a read that extends the
//! expiry, at most once per `store.touch_interval_sec`) and on every write (`replace`) of a
//! session whose data names a user. With the index on, the touch interval is at most
//! [`LAST_SEEN_EVERY_SEC`], so `last_seen` lags by less than a minute. A read that is not
//! due for a touch does nothing more than before; a due touch and a write each cost one
//! more round trip (two commands sent at once: the refresh and the `EXPIRE` of the handle
//! key, which lives in another slot).
//!
//! The refresh sets the index keys and the handle key to expire `session.ttl_sec` +
//! [`SLACK_SEC`] from then. Because it runs before the record's own expiry is set to
//! `ttl_sec` from then, the index of a user outlives each of its members' records (unless
//! the refresh fails, in which case the touch is not made, or the write fails). Members
//! whose score is older than that lifetime have no record any more (expired in Redis
//! without the proxy seeing it): the join script drops them. [`devices`] checks each
//! member's record with `EXISTS` and drops those whose record is gone (evicted by Redis
//! under `maxmemory`, or expired). So the index never grows past the live sessions of
//! users seen within the lifetime, and the keys of a user who never comes back expire.
//! Proxy clocks are assumed to agree to well within [`SLACK_SEC`].
//!
//! # Sentinel and the local cache
//!
//! Every command goes through the store's connection, so with Sentinel each write (the
//! scripts, `SET`, `DEL`) is acknowledged only once a replica holds it (`WAIT 1`), like a
//! record write. The index keys are under the namespace, so with `store.local_cache` every
//! proxy hears of their changes: an invalidation of a key that is never cached only
//! refuses one pending insert in its bucket (see `cache.rs`), never a stale entry. This
//! proxy drops its cached copy of every record it deletes here at once.
//!
//! [`devices`]: crate::store::users::UserIndex::devices

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::{FromRedisValue, Value};
use sha2::{Digest as _, Sha256};
use tracing::warn;

mod ops;
mod scripts;

use self::scripts::{
    DROP_HANDLE_SCRIPT, Facts, JOIN_SCRIPT, REFRESH_SCRIPT, RESTORE_SCRIPT, REVOKE_SCRIPT,
    TAKE_SCRIPT, Taken, text,
};
use super::{RedisStore, unavailable, unexpected};
use crate::session::{Record, SessionId, unix_now};
use crate::store::StoreError;
use crate::store::users::{Handle, LAST_SEEN_EVERY_SEC, user_in};

/// Seconds the index of a member outlives the member's record at least, to cover the
/// moment between a refresh and the record write after it, and clock differences.
const SLACK_SEC: u64 = 300;
/// Characters of the user's hash in the hash tag.
const USER_TAG_LEN: usize = 22;

/// What a store that keeps the index needs (`session.user_field` set).
#[derive(Clone)]
pub(super) struct Indexing {
    /// `session.user_field`.
    field: Box<str>,
    /// Seconds the index keys and handle keys live after a member's last refresh:
    /// `session.ttl_sec` + [`SLACK_SEC`].
    lifetime: u64,
    join: redis::Script,
    take: redis::Script,
    revoke: redis::Script,
    refresh: redis::Script,
    restore: redis::Script,
    drop_handle: redis::Script,
}

impl Indexing {
    /// The index of the sessions naming a user in `field`, for sessions of idle
    /// timeout `ttl`.
    pub(super) fn new(field: &str, ttl: Duration) -> Self {
        Self {
            field: field.into(),
            lifetime: super::ttl_secs(ttl).saturating_add(SLACK_SEC),
            join: redis::Script::new(JOIN_SCRIPT),
            take: redis::Script::new(TAKE_SCRIPT),
            revoke: redis::Script::new(REVOKE_SCRIPT),
            refresh: redis::Script::new(REFRESH_SCRIPT),
            restore: redis::Script::new(RESTORE_SCRIPT),
            drop_handle: redis::Script::new(DROP_HANDLE_SCRIPT),
        }
    }

    /// The touch interval with the index on: `last_seen` is kept to within a minute.
    pub(super) fn touch_interval(configured: u64) -> u64 {
        configured.min(LAST_SEEN_EVERY_SEC)
    }
}

/// The user `rec`'s data names in `field`, if any.
fn user_of(rec: &Record, field: &str) -> Option<String> {
    let data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&rec.data).ok()?;
    user_in(&data, field)
}

impl RedisStore {
    fn indexing(&self) -> Result<&Indexing, StoreError> {
        self.inner.users.as_ref().ok_or_else(|| {
            StoreError::Unavailable("the per-user index needs session.user_field".into())
        })
    }

    /// The members and facts keys of `user` (one hash tag: one slot).
    fn user_keys(&self, user: &str) -> (String, String) {
        let digest = Sha256::digest(user.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(digest);
        let members = format!("{}u:{{{}}}", self.inner.namespace, &tag[..USER_TAG_LEN]);
        let facts = format!("{members}:d");
        (members, facts)
    }

    /// The key naming the user of the member `handle` (its text).
    fn handle_key(&self, handle: &str) -> String {
        format!("{}h:{handle}", self.inner.namespace)
    }

    /// The record key of a member, from its facts.
    fn record_key(&self, facts: &str) -> Option<String> {
        Facts::parse(facts).map(|f| format!("{}{}", self.inner.namespace, f.key_hash))
    }

    async fn command<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await.map_err(unavailable) })
            .await
    }

    async fn eval(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, StoreError> {
        self.run(|mut conn| async move {
            let mut call = script.prepare_invoke();
            for key in keys {
                call.key(*key);
            }
            for arg in args {
                call.arg(*arg);
            }
            call.invoke_async(&mut conn).await.map_err(unavailable)
        })
        .await
    }

    /// Takes member `handle` out of `user`'s index: its (score, facts), `None` when it was
    /// no member.
    async fn take(
        &self,
        ix: &Indexing,
        user: &str,
        handle: &str,
    ) -> Result<Option<Taken>, StoreError> {
        let (members, facts) = self.user_keys(user);
        match self.eval(&ix.take, &[&members, &facts], &[handle]).await? {
            Value::Nil => Ok(None),
            Value::Array(items) => {
                let mut items = items.into_iter();
                match (items.next(), items.next()) {
                    (Some(score), Some(facts)) => Ok(Some(Taken {
                        handle: handle.to_owned(),
                        score: text(score)?,
                        facts: text(facts)?,
                    })),
                    _ => Err(StoreError::Unavailable(
                        "unexpected reply to the take script: a short array".into(),
                    )),
                }
            }
            other => Err(unexpected("the take script", &other)),
        }
    }

    /// Deletes the handle key `key` while it names `user`. A failure is logged: the key
    /// expires by itself, and one naming a session that is no member is ignored.
    async fn drop_handle(&self, ix: &Indexing, key: &str, user: &str) {
        if let Err(e) = self.eval(&ix.drop_handle, &[key], &[user]).await {
            warn!(error = %e, "could not delete a session handle's entry; it expires by itself");
        }
    }

    /// Deletes the records of members taken from `user`'s index, then their handle keys.
    /// Returns their handles and how many records existed. When the records cannot be
    /// deleted, puts the members back (see the module docs) and returns the error.
    async fn destroy_taken(
        &self,
        ix: &Indexing,
        user: &str,
        taken: &[Taken],
    ) -> Result<(Vec<Handle>, u64), StoreError> {
        if taken.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let records: Vec<String> = taken
            .iter()
            .filter_map(|t| self.record_key(&t.facts))
            .collect();
        let mut deleted = 0;
        if !records.is_empty() {
            let mut del = redis::cmd("DEL");
            del.arg(&records);
            let result: Result<u64, StoreError> = self.command(del).await;
            // Also after a failure: a delete that timed out may still be applied.
            for key in &records {
                self.written(key);
            }
            match result {
                Ok(n) => deleted = n,
                Err(e) => {
                    self.restore(ix, user, taken).await;
                    return Err(e);
                }
            }
        }
        let handle_keys: Vec<String> = taken.iter().map(|t| self.handle_key(&t.handle)).collect();
        let mut del = redis::cmd("DEL");
        del.arg(&handle_keys);
        if let Err(e) = self.command::<u64>(del).await {
            warn!(error = %e, "could not delete the handle entries of destroyed sessions; they expire by themselves");
        }
        let handles = taken.iter().filter_map(|t| t.handle.parse().ok()).collect();
        Ok((handles, deleted))
    }

    /// Puts taken members back into `user`'s index; a failure is logged.
    async fn restore(&self, ix: &Indexing, user: &str, taken: &[Taken]) {
        let (members, facts) = self.user_keys(user);
        let lifetime = ix.lifetime.to_string();
        let mut args: Vec<&str> = vec![&lifetime];
        for t in taken {
            args.extend([t.handle.as_str(), t.score.as_str(), t.facts.as_str()]);
        }
        if let Err(e) = self.eval(&ix.restore, &[&members, &facts], &args).await {
            warn!(error = %e, sessions = taken.len(), "could not put sessions whose records were not deleted back into their user's index");
        }
    }

    /// Before the expiry of the record of `id` is extended (a touch, a write of `rec`):
    /// raises its `last_seen` and the expiry of its user's index and handle key, when
    /// the index is on and `rec` names a user that has it as a member.
    pub(super) async fn refresh_member(
        &self,
        id: &SessionId,
        rec: &Record,
    ) -> Result<(), StoreError> {
        let Some(ix) = &self.inner.users else {
            return Ok(());
        };
        let Some(user) = user_of(rec, &ix.field) else {
            return Ok(());
        };
        let handle = Handle::of(id).to_string();
        let (members, facts) = self.user_keys(&user);
        let (now, lifetime) = (unix_now().to_string(), ix.lifetime.to_string());
        // Both at once (one round trip of latency): the handle key lives in its own slot,
        // and extending it when the session is no member only keeps a stale entry a while.
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(self.handle_key(&handle)).arg(ix.lifetime);
        let (keys, args) = ([&*members, &*facts], [&*handle, &*now, &*lifetime]);
        let (index, handle_key) = tokio::join!(
            self.eval(&ix.refresh, &keys, &args),
            self.command::<i64>(expire),
        );
        index?;
        handle_key?;
        Ok(())
    }
}
