//! The in-memory store: LRU maps (the `lru` crate) bounded by `store.max_sessions`, with a
//! per-entry expiry checked on every access, and the per-user index (SPEC §13). Lost on
//! restart (SPEC §7).
//!
//! Because every use slides an entry's expiry by the same `ttl`, the least recently used
//! entry is also the first to expire; each write therefore reclaims a few expired entries
//! from the LRU end, so memory held by expired sessions is returned without a sweeper task.
//!
//! # Shards
//!
//! With `server.runtime = "per-core"` every thread reads this one store, so the sessions are
//! split over up to `MAX_SHARDS` (16) maps, each behind its own lock, by the first byte of
//! the session ID (uniformly random: only IDs the proxy minted and signed reach the store).
//! One count of the sessions held, shared by the shards, bounds the store: a create that
//! takes it past `max_sessions` evicts the least recently used entry of the shard it went
//! into, so the store holds `max_sessions` sessions before it evicts any (not fewer, as
//! shards of a fixed `max_sessions / shards` each would, the fullest evicting first), and
//! eviction is LRU per shard, not across the store. A store of fewer than `MIN_PER_SHARD`
//! (4,096) sessions per shard keeps one shard: an exact LRU.
//!
//! # The index and its lock order
//!
//! The per-user index has a lock of its own, the point of serialisation of `join` and
//! `revoke` (see [`users`](super::users)). Index operations take a shard's lock while
//! holding the index's (to read `last_seen`, to delete a revoked record); record operations
//! take only a shard's lock, and forget a session they expired or evicted in the index
//! after they released it. Never the other way round, so no two callers wait on each other.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

mod users;

use self::users::Index;
use super::{Cas, SessionStore, StoreError};
use crate::session::{Record, SessionId};

/// How many expired entries one write reclaims at most, so a write never stalls.
const RECLAIM_PER_WRITE: usize = 8;
/// The most shards the sessions are split over.
const MAX_SHARDS: usize = 16;
/// Fewer sessions per shard than this, and the store keeps fewer shards (at least one).
const MIN_PER_SHARD: usize = 4096;

struct Entry {
    rec: Record,
    expires: Instant,
    /// The last load (the device list's `last_seen`).
    seen: Instant,
}

/// One shard's map, locked, with the store's count of sessions held: every insert and
/// removal goes through here, so the count stays exact.
struct Shard<'a> {
    map: MutexGuard<'a, LruCache<SessionId, Entry>>,
    held: &'a AtomicUsize,
}

impl Shard<'_> {
    fn get_mut(&mut self, id: &SessionId) -> Option<&mut Entry> {
        self.map.get_mut(id)
    }

    fn peek(&self, id: &SessionId) -> Option<&Entry> {
        self.map.peek(id)
    }

    fn pop(&mut self, id: &SessionId) -> Option<Entry> {
        let e = self.map.pop(id);
        if e.is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        e
    }

    /// Pops the least recently used entry, unless it is `keep`.
    fn pop_lru_unless(&mut self, keep: Option<&SessionId>) -> Option<(SessionId, Entry)> {
        if keep.is_some() && self.map.peek_lru().map(|(id, _)| id) == keep {
            return None;
        }
        let e = self.map.pop_lru();
        if e.is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        e
    }

    fn lru_expired(&self, now: Instant) -> bool {
        self.map.peek_lru().is_some_and(|(_, e)| e.expires <= now)
    }
}

/// Sessions that ended without the proxy ending them, by reason (SPEC §13 metrics).
#[derive(Debug, Default, Clone)]
struct Ended {
    expired: Counter,
    evicted: Counter,
}

/// Why a record operation removed an entry other than the one asked for.
#[derive(Clone, Copy)]
enum Gone {
    Expired,
    Evicted,
}

/// The in-memory store. Cloning shares the same entries.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<LruCache<SessionId, Entry>>]>,
    /// Entries held, in all shards together.
    held: Arc<AtomicUsize>,
    max: usize,
    index: Arc<Mutex<Index>>,
    ended: Ended,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// No code path panics while holding a lock; if one ever did, the map itself is still
/// consistent, so keep serving rather than poison every later request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// A store that holds at most `max_sessions` entries (at least 1).
    pub fn new(max_sessions: usize) -> Self {
        let max = max_sessions.max(1);
        let count = (max / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        // A shard's table is sized (and capped) at its share and an eighth: IDs spread
        // uniformly, so a shard of at least 4,096 entries holds that much more than its
        // share with a chance far below 10^-9; the count above is what bounds the store.
        let share = max / count;
        let cap = if count == 1 { max } else { share + share / 8 };
        let cap = NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..count).map(|_| Mutex::new(LruCache::new(cap))).collect(),
            held: Arc::default(),
            max,
            index: Arc::default(),
            ended: Ended::default(),
        }
    }

    /// Counts the sessions this store sees expire, and those it evicts, on these counters
    /// (the proxy's `sessiongate_sessions_destroyed_total{reason}`).
    pub fn counting(mut self, expired: Counter, evicted: Counter) -> Self {
        self.ended = Ended { expired, evicted };
        self
    }

    /// Number of entries held, expired ones not yet reclaimed included.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many shards the sessions are split over.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, id: &SessionId) -> Shard<'_> {
        Shard {
            map: lock(&self.shards[usize::from(id.as_bytes()[0]) % self.shards.len()]),
            held: &self.held,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Pops up to [`RECLAIM_PER_WRITE`] expired entries from `shard`'s LRU end into `gone`.
    fn reclaim(shard: &mut Shard<'_>, now: Instant, gone: &mut Vec<(SessionId, Gone)>) {
        for _ in 0..RECLAIM_PER_WRITE {
            if !shard.lru_expired(now) {
                break;
            }
            if let Some((id, _)) = shard.pop_lru_unless(None) {
                gone.push((id, Gone::Expired));
            }
        }
    }

    /// Counts entries a record operation removed, and forgets them in the index. Called
    /// with no shard lock held (see the lock order in the module docs).
    fn forget(&self, gone: &[(SessionId, Gone)]) {
        if gone.is_empty() {
            return;
        }
        let mut index = self.index();
        for (id, why) in gone {
            index.unindex(id);
            match why {
                Gone::Expired => self.ended.expired.inc(),
                Gone::Evicted => self.ended.evicted.inc(),
            };
        }
    }

    /// Deletes the record of `id`, with the index's lock held.
    fn destroy_held(&self, index: &mut Index, id: &SessionId) {
        self.shard(id).pop(id);
        index.unindex(id);
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let mut shard = self.shard(id);
        match shard.get_mut(id) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                e.seen = now;
                Ok(Some(e.rec.clone()))
            }
            Some(_) => {
                shard.pop(id);
                drop(shard);
                self.forget(&[(*id, Gone::Expired)]);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn create(
        &self,
        id: &SessionId,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut shard = self.shard(id);
        Self::reclaim(&mut shard, now, &mut gone);
        let entry = Entry {
            rec: rec.clone(),
            expires: now + ttl,
            seen: now,
        };
        let gone_as = |old: &Entry| {
            if old.expires > now {
                Gone::Evicted
            } else {
                Gone::Expired
            }
        };
        // One lookup: `push` hands back what it displaced, a live session under this very
        // ID, which (a collision) is put back untouched, or, from a shard at its table's
        // cap, its least recently used entry.
        let created = match shard.map.push(*id, entry) {
            Some((displaced, old)) if displaced == *id && old.expires > now => {
                shard.map.push(displaced, old);
                false
            }
            Some((displaced, old)) => {
                if displaced != *id {
                    gone.push((displaced, gone_as(&old)));
                }
                true
            }
            None => {
                // One more held: past `max`, this shard's least recently used goes.
                if shard.held.fetch_add(1, Ordering::Relaxed) >= self.max
                    && let Some((evicted, old)) = shard.pop_lru_unless(Some(id))
                {
                    gone.push((evicted, gone_as(&old)));
                }
                true
            }
        };
        drop(shard);
        self.forget(&gone);
        Ok(created)
    }

    async fn replace(
        &self,
        id: &SessionId,
        expected: &Record,
        new: &Record,
        ttl: Duration,
    ) -> Result<Cas, StoreError> {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut shard = self.shard(id);
        Self::reclaim(&mut shard, now, &mut gone);
        let cas = match shard.get_mut(id) {
            Some(e) if e.expires > now => {
                if e.rec == *expected {
                    e.rec = new.clone();
                    e.expires = now + ttl;
                    Cas::Applied
                } else {
                    Cas::Changed(e.rec.clone())
                }
            }
            Some(_) => {
                shard.pop(id);
                gone.push((*id, Gone::Expired));
                Cas::Gone
            }
            None => Cas::Gone,
        };
        drop(shard);
        self.forget(&gone);
        Ok(cas)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.shard(id).pop(id);
        self.index().unindex(id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::users::{NewDevice, UserIndex};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn small_stores_keep_one_exact_lru_and_large_ones_are_sharded() {
        assert_eq!(MemoryStore::new(0).shards(), 1);
        assert_eq!(MemoryStore::new(MIN_PER_SHARD * 2 - 1).shards(), 1);
        assert_eq!(MemoryStore::new(MIN_PER_SHARD * 2).shards(), 2);
        assert_eq!(MemoryStore::new(1_000_000).shards(), MAX_SHARDS);
        // One shard: the least recently used goes first, exactly.
        run(async {
            let store = MemoryStore::new(2);
            let ttl = Duration::from_secs(60);
            let ids: Vec<SessionId> = (0..3).map(|_| SessionId::random()).collect();
            let rec = Record::new("{}".into(), 0);
            store.create(&ids[0], &rec, ttl).await.unwrap();
            store.create(&ids[1], &rec, ttl).await.unwrap();
            store.load(&ids[0], ttl).await.unwrap();
            store.create(&ids[2], &rec, ttl).await.unwrap();
            assert!(store.load(&ids[1], ttl).await.unwrap().is_none());
            assert!(store.load(&ids[0], ttl).await.unwrap().is_some());
        });
    }

    #[test]
    fn a_sharded_store_holds_max_sessions_before_it_evicts_one() {
        run(async {
            let max = MIN_PER_SHARD * 4;
            let (expired, evicted) = (Counter::default(), Counter::default());
            let store = MemoryStore::new(max).counting(expired, evicted.clone());
            assert_eq!(store.shards(), 4);
            let ttl = Duration::from_secs(60);
            let rec = Record::new("{}".into(), 0);
            let ids: Vec<SessionId> = (0..max).map(|_| SessionId::random()).collect();
            for id in &ids {
                assert!(store.create(id, &rec, ttl).await.unwrap());
            }
            assert_eq!(store.len(), max);
            assert_eq!(evicted.get(), 0);
            for id in &ids {
                assert!(store.load(id, ttl).await.unwrap().is_some());
            }
            // One more: one goes, and it is not the new one.
            let last = SessionId::random();
            assert!(store.create(&last, &rec, ttl).await.unwrap());
            assert_eq!((store.len(), evicted.get()), (max, 1));
            assert!(store.load(&last, ttl).await.unwrap().is_some());
            // A delete frees a place: the next create evicts nothing.
            store.delete(&last).await.unwrap();
            assert!(store.create(&SessionId::random(), &rec, ttl).await.unwrap());
            assert_eq!((store.len(), evicted.get()), (max, 1));
        });
    }

    #[test]
    fn a_sharded_store_holds_at_most_max_sessions_and_forgets_evicted_members() {
        run(async {
            let max = MIN_PER_SHARD * 2;
            let store = MemoryStore::new(max);
            assert_eq!(store.shards(), 2);
            let ttl = Duration::from_secs(60);
            let rec = Record::new(r#"{"u":1}"#.into(), 0);
            let device = NewDevice::new(0, "test", "127.0.0.1".parse().unwrap());
            for _ in 0..max * 2 {
                let id = SessionId::random();
                assert!(store.create(&id, &rec, ttl).await.unwrap());
                store.join("u", &id, &device, None, 0).await.unwrap();
            }
            assert!(store.len() <= max);
            // Every evicted session left the index: the user's members are exactly the
            // sessions still held.
            let members = store.index().member_of.len();
            assert_eq!(members, store.len());
            assert_eq!(store.devices("u").await.unwrap().len(), members);
        });
    }
}
