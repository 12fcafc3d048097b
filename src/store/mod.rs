//! Session stores (SPEC §7): the [`SessionStore`] contract and the [`Store`] the proxy uses.
//!
//! # The contract
//!
//! Every store, in memory or remote, behaves the same way; `tests/store_conformance.rs`
//! runs one suite against each.
//!
//! - Keys are session IDs. An entry is a [`Record`] and has an expiry.
//! - [`load`](SessionStore::load) returns `Ok(None)` for an ID that is missing, expired,
//!   evicted or deleted, and otherwise returns the record *and* slides its expiry (the
//!   idle timeout): the memory store moves it to `ttl` from now; the Redis store keeps it
//!   at least `ttl - store.touch_interval_sec` from now, extending it at most once per
//!   interval (SPEC §15), so that a read is not a write.
//! - [`create`](SessionStore::create) writes only when the ID is absent (`SET NX`) and
//!   says whether it did; a collision is never an overwrite.
//! - [`replace`](SessionStore::replace) writes only when the entry still holds exactly
//!   `expected` (compare-and-set). It never recreates a deleted entry, so a session
//!   destroyed by one request is never brought back by another that was in flight.
//! - [`delete`](SessionStore::delete) is idempotent.
//! - `Err` means the store could not answer; it never means "no such session", except
//!   [`StoreError::Corrupt`]: the store answered with a value that is no session (SPEC §14).
//! - When a call returns `Ok`, the change is visible to every later call (read your writes).
//!
//! ```
//! use std::time::Duration;
//! use sessiongate::session::{Record, SessionId};
//! use sessiongate::store::{Cas, MemoryStore, SessionStore};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::new(100);
//! let id = SessionId::random();
//! let rec = Record::new("{}".into(), 0);
//! let ttl = Duration::from_secs(60);
//! assert!(store.create(&id, &rec, ttl).await.unwrap());
//! let next = Record::new(r#"{"a":1}"#.into(), 0);
//! assert_eq!(store.replace(&id, &rec, &next, ttl).await.unwrap(), Cas::Applied);
//! store.delete(&id).await.unwrap();
//! assert_eq!(store.replace(&id, &next, &rec, ttl).await.unwrap(), Cas::Gone);
//! assert!(store.load(&id, ttl).await.unwrap().is_none());
//! # });
//! ```

mod memory;
mod redis;
pub mod seal;
pub mod users;

use std::future::Future;
use std::time::Duration;

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

use crate::session::{Record, SessionId};
use seal::{CorruptRecord, KeyHash};
use users::{Device, Handle, Joined, NewDevice, UserIndex};

/// Why a store operation failed.
///
/// Each message carries its cause in its own text, so no variant also reports it as
/// `source()`: a chain printer would otherwise print it twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation did not finish within `store.timeout_ms`.
    #[error("store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or refused the command.
    #[error("store unavailable: {0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// The store answered, but a write lost every compare-and-set round to concurrent
    /// writers (or every fresh ID collided): the store is up, the session is busy.
    #[error("store contention: {0}")]
    Contention(&'static str),
    /// The stored value is no session: it fails to open (altered in the store, moved from
    /// another key) or has a format version this version does not read (SPEC §14). Only the
    /// Redis store returns it; it names the value by its key hash, never by the session ID.
    #[error("stored session at key hash {key_hash}: {reason}")]
    Corrupt {
        /// The key hash of the session, as it appears in the store key (boxed: every
        /// store result carries this error's size).
        key_hash: Box<KeyHash>,
        /// Why the value is refused.
        reason: CorruptRecord,
    },
}

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The entry held `expected` and now holds the new record.
    Applied,
    /// The entry holds something else (returned); nothing was written.
    Changed(Record),
    /// The entry no longer exists; nothing was written.
    Gone,
}

/// The store contract; see the [module docs](self).
pub trait SessionStore: Send + Sync + 'static {
    /// The record for `id`, sliding its expiry (see the module docs); `None` when absent.
    fn load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Writes `rec` under `id` only if `id` is absent. `Ok(false)` on a collision.
    fn create(
        &self,
        id: &SessionId,
        rec: &Record,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Writes `new` only while the entry holds `expected`; never recreates a deleted entry.
    fn replace(
        &self,
        id: &SessionId,
        expected: &Record,
        new: &Record,
        ttl: Duration,
    ) -> impl Future<Output = Result<Cas, StoreError>> + Send;

    /// Removes the entry, if any.
    fn delete(&self, id: &SessionId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Succeeds when the store answers (for `/readyz` and `require_on_start`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured store.
///
/// Redis operations are boxed: their futures are large, and inline they would make every
/// request's future (memory store included) that large, to be copied on every request.
#[derive(Debug, Clone)]
pub enum Store {
    /// In-process bounded LRU.
    Memory(MemoryStore),
    /// Redis or Redis Cluster.
    Redis(RedisStore),
}

impl SessionStore for Store {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        match self {
            Store::Memory(s) => s.load(id, ttl).await,
            Store::Redis(s) => Box::pin(s.load(id, ttl)).await,
        }
    }

    async fn create(
        &self,
        id: &SessionId,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(s) => s.create(id, rec, ttl).await,
            Store::Redis(s) => Box::pin(s.create(id, rec, ttl)).await,
        }
    }

    async fn replace(
        &self,
        id: &SessionId,
        expected: &Record,
        new: &Record,
        ttl: Duration,
    ) -> Result<Cas, StoreError> {
        match self {
            Store::Memory(s) => s.replace(id, expected, new, ttl).await,
            Store::Redis(s) => Box::pin(s.replace(id, expected, new, ttl)).await,
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.delete(id).await,
            Store::Redis(s) => Box::pin(s.delete(id)).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.ping().await,
            Store::Redis(s) => Box::pin(s.ping()).await,
        }
    }
}

impl UserIndex for Store {
    async fn join(
        &self,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, &SessionId)>,
        max_per_user: usize,
    ) -> Result<Joined, StoreError> {
        match self {
            Store::Memory(s) => s.join(user, id, device, replacing, max_per_user).await,
            Store::Redis(s) => Box::pin(s.join(user, id, device, replacing, max_per_user)).await,
        }
    }

    async fn leave(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.leave(user, id).await,
            Store::Redis(s) => Box::pin(s.leave(user, id)).await,
        }
    }

    async fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, StoreError> {
        match self {
            Store::Memory(s) => s.revoke(user, keep).await,
            Store::Redis(s) => Box::pin(s.revoke(user, keep)).await,
        }
    }

    async fn revoke_handle(&self, user: Option<&str>, handle: &Handle) -> Result<bool, StoreError> {
        match self {
            Store::Memory(s) => s.revoke_handle(user, handle).await,
            Store::Redis(s) => Box::pin(s.revoke_handle(user, handle)).await,
        }
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, StoreError> {
        match self {
            Store::Memory(s) => s.devices(user).await,
            Store::Redis(s) => Box::pin(s.devices(user)).await,
        }
    }
}
