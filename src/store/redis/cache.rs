//! The local cache (`store.local_cache`, SPEC §15): up to N opened sessions in this
//! proxy's memory, least recently used evicted, served without a Redis round trip and kept
//! exact by Redis client tracking (see [`tracking`](super::tracking)).
//!
//! # When an entry may be served
//!
//! Only while tracking is *live*: every invalidation connection is up and has
//! `CLIENT TRACKING ON` in effect. Until then, and from the moment one of them drops, every
//! lookup misses and nothing is inserted; a drop empties the cache ([`LocalCache::drop_session`]).
//!
//! # The read/invalidation race
//!
//! A miss reads Redis and then inserts what it read. An invalidation for that key may be
//! applied between the read and the insert (the reply and the push cross); inserting after
//! it would keep a value Redis has already replaced, with no further invalidation to come.
//! So a miss takes a [`Ticket`] before it reads: the cache's epoch (bumped by every flush
//! and every change of tracking session) and the generation of the key's bucket (bumped by
//! every invalidation of any key in that bucket, 4096 buckets). The insert happens only if
//! both are unchanged, under the same lock that invalidations take: either the insert comes
//! first and the invalidation removes it, or the invalidation comes first and the insert is
//! refused. A bucket is shared by about 1/4096 of the keys, so an unrelated write at worst
//! costs one refused insert (the next read inserts), never a stale entry.
//!
//! # An invalidation received but not applied yet
//!
//! A hit is served only if, after it was found, every tracking connection's [`Wire`] is
//! quiet (nothing received waits to be applied), and the entry is still there when looked
//! up again after that check ([`LocalCache::get`]; see [`wire`](super::wire)). Otherwise
//! it is a miss: Redis is read, never waited for.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use super::wire::Wire;

use crate::metrics::RedisReadMetrics;
use crate::session::Record;

/// Buckets of invalidation generations (a power of two).
const BUCKETS: usize = 4096;

/// The live session's tracking connections, checked before a hit is served.
type Wires = Arc<[Arc<Wire>]>;

/// A cached session: the record and its `touched` (Unix seconds), as read from Redis.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) rec: Record,
    pub(super) touched: u64,
}

/// Taken by a miss before it reads Redis; see the module docs.
pub(super) struct Ticket {
    epoch: u64,
    bucket: usize,
    generation: u64,
}

/// Where the tracking session stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting and enabling tracking; nothing is served or inserted.
    Starting,
    /// Every invalidation connection is up: entries are served.
    Live,
    /// A connection dropped: empty until the next session is live.
    Down,
}

impl State {
    fn ticket(&self, bucket: usize) -> Ticket {
        Ticket {
            epoch: self.epoch,
            bucket,
            generation: self.generations[bucket],
        }
    }
}

struct State {
    entries: LruCache<String, Entry>,
    /// The current tracking session.
    session: u64,
    phase: Phase,
    epoch: u64,
    generations: Box<[u64]>,
    /// The live session's tracking connections (none unless live).
    wires: Wires,
}

/// The cache; shared by the store and its tracking task.
pub(super) struct LocalCache {
    state: Mutex<State>,
    hasher: RandomState,
    metrics: RedisReadMetrics,
}

impl LocalCache {
    /// An empty cache of at most `capacity` sessions (at least one), not yet live.
    pub(super) fn new(capacity: usize, metrics: RedisReadMetrics) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            state: Mutex::new(State {
                entries: LruCache::new(capacity),
                session: 0,
                phase: Phase::Down,
                epoch: 0,
                generations: vec![0; BUCKETS].into_boxed_slice(),
                wires: Arc::new([]),
            }),
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bucket(&self, key: &str) -> usize {
        // BUCKETS is a power of two; the mask keeps the low bits of a 64-bit hash.
        (self.hasher.hash_one(key) as usize) & (BUCKETS - 1)
    }

    /// The entry for `key` if tracking is live, the entry is younger than `ttl_secs` since
    /// its last touch at `now`, and no tracking connection holds an invalidation not applied
    /// yet (see the module docs); otherwise a ticket to insert what a read of Redis returns
    /// (`None`: do not insert, tracking is not live). Counts the hit or miss.
    pub(super) fn get(&self, key: &str, now: u64, ttl_secs: u64) -> Result<Entry, Option<Ticket>> {
        let found = match self.lookup(key, now, ttl_secs) {
            Ok((_, wires)) if wires.iter().all(|w| w.is_quiet()) => {
                self.lookup(key, now, ttl_secs).map(|(entry, _)| entry)
            }
            Ok(_) => Err(self.ticket(key)),
            Err(miss) => Err(miss),
        };
        if found.is_ok() {
            self.metrics.cache_hits.inc();
        } else {
            self.metrics.cache_misses.inc();
        }
        found
    }

    /// The entry for `key` and the wires to check before it is served, or what
    /// [`get`](Self::get) answers for a miss.
    fn lookup(&self, key: &str, now: u64, ttl_secs: u64) -> Result<(Entry, Wires), Option<Ticket>> {
        let bucket = self.bucket(key);
        let mut st = self.lock();
        if st.phase != Phase::Live {
            return Err(None);
        }
        match st.entries.get(key) {
            Some(e) if now < e.touched.saturating_add(ttl_secs) => {
                return Ok((e.clone(), st.wires.clone()));
            }
            Some(_) => {
                // Past the expiry its last touch gave it: Redis decides.
                st.entries.pop(key);
            }
            None => {}
        }
        Err(Some(st.ticket(bucket)))
    }

    /// A ticket for a read of `key` that starts now (`None` unless live).
    fn ticket(&self, key: &str) -> Option<Ticket> {
        let bucket = self.bucket(key);
        let st = self.lock();
        (st.phase == Phase::Live).then(|| st.ticket(bucket))
    }

    /// Inserts what a read that took `ticket` returned, unless an invalidation, a flush or
    /// a new tracking session came in between.
    pub(super) fn insert(&self, key: String, ticket: Ticket, entry: Entry) {
        let mut st = self.lock();
        if st.phase == Phase::Live
            && st.epoch == ticket.epoch
            && st.generations[ticket.bucket] == ticket.generation
        {
            st.entries.put(key, entry);
        }
    }

    /// `key` was written (by any proxy): drop it, and refuse inserts of reads taken before.
    pub(super) fn invalidate(&self, key: &str) {
        let bucket = self.bucket(key);
        let mut st = self.lock();
        st.generations[bucket] = st.generations[bucket].wrapping_add(1);
        if st.entries.pop(key).is_some() {
            drop(st);
            self.metrics.invalidations.inc();
        }
    }

    /// Redis invalidated every key (`FLUSHALL`, `FLUSHDB`): empty the cache, stay live.
    pub(super) fn invalidate_all(&self) {
        let mut st = self.lock();
        let dropped = st.entries.len();
        st.entries.clear();
        st.epoch = st.epoch.wrapping_add(1);
        drop(st);
        self.metrics.invalidations.inc_by(dropped as u64);
    }

    /// Starts tracking session number `session`: empty, serving nothing until
    /// [`go_live`](Self::go_live).
    pub(super) fn begin(&self, session: u64) {
        let mut st = self.lock();
        st.entries.clear();
        st.epoch = st.epoch.wrapping_add(1);
        st.session = session;
        st.phase = Phase::Starting;
        st.wires = Arc::new([]);
    }

    /// Every connection of `session` tracks: serve from the cache while all of `wires` are
    /// quiet. False when the session already dropped (or was replaced) while it was being
    /// set up.
    pub(super) fn go_live(&self, session: u64, wires: Vec<Arc<Wire>>) -> bool {
        let mut st = self.lock();
        if st.session != session || st.phase != Phase::Starting {
            return false;
        }
        st.phase = Phase::Live;
        st.wires = wires.into();
        true
    }

    /// A connection of `session` dropped or failed its health check: empty the cache and
    /// serve nothing from it until the next session is live. A drop reported by the
    /// connection of an older session changes nothing.
    pub(super) fn drop_session(&self, session: u64) {
        let mut st = self.lock();
        if st.session != session || st.phase == Phase::Down {
            return;
        }
        let was_live = st.phase == Phase::Live;
        st.entries.clear();
        st.epoch = st.epoch.wrapping_add(1);
        st.phase = Phase::Down;
        st.wires = Arc::new([]);
        drop(st);
        if was_live {
            self.metrics.flushes.inc();
        }
    }

    /// True while entries are served.
    pub(super) fn is_live(&self) -> bool {
        self.lock().phase == Phase::Live
    }

    /// Sessions held now.
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const TTL: u64 = 3600;

    fn entry(data: &str) -> Entry {
        Entry {
            rec: Record::new(data.into(), NOW),
            touched: NOW,
        }
    }

    fn live(capacity: usize) -> LocalCache {
        let cache = LocalCache::new(capacity, RedisReadMetrics::default());
        cache.begin(1);
        assert!(cache.go_live(1, Vec::new()));
        cache
    }

    fn ticket(cache: &LocalCache, key: &str) -> Ticket {
        match cache.get(key, NOW, TTL) {
            Err(Some(t)) => t,
            Ok(_) => panic!("{key} was cached"),
            Err(None) => panic!("not live"),
        }
    }

    #[test]
    fn a_miss_then_insert_then_hit() {
        let cache = live(10);
        let t = ticket(&cache, "k");
        cache.insert("k".into(), t, entry("{}"));
        assert_eq!(
            cache.get("k", NOW, TTL).ok().unwrap().rec.data.as_ref(),
            "{}"
        );
    }

    #[test]
    fn a_read_that_crossed_an_invalidation_is_not_inserted() {
        let cache = live(10);
        let t = ticket(&cache, "k");
        cache.invalidate("k");
        cache.insert("k".into(), t, entry("{\"old\":1}"));
        assert!(cache.get("k", NOW, TTL).is_err());
        // A read taken after the invalidation inserts.
        let t = ticket(&cache, "k");
        cache.insert("k".into(), t, entry("{}"));
        assert!(cache.get("k", NOW, TTL).is_ok());
    }

    #[test]
    fn an_invalidation_after_the_insert_removes_it() {
        let cache = live(10);
        let t = ticket(&cache, "k");
        cache.insert("k".into(), t, entry("{}"));
        cache.invalidate("k");
        assert!(cache.get("k", NOW, TTL).is_err());
    }

    #[test]
    fn nothing_is_served_or_inserted_unless_live() {
        let cache = LocalCache::new(10, RedisReadMetrics::default());
        assert!(matches!(cache.get("k", NOW, TTL), Err(None)));
        cache.begin(1);
        assert!(matches!(cache.get("k", NOW, TTL), Err(None)));
        assert!(cache.go_live(1, Vec::new()));
        let t = ticket(&cache, "k");
        // The session drops between the read and the insert.
        cache.drop_session(1);
        cache.insert("k".into(), t, entry("{}"));
        assert!(matches!(cache.get("k", NOW, TTL), Err(None)));
        // A drop during set-up keeps the next go_live from serving.
        cache.begin(2);
        cache.drop_session(2);
        assert!(!cache.go_live(2, Vec::new()));
        assert!(!cache.is_live());
    }

    #[test]
    fn a_drop_empties_the_cache_and_an_old_sessions_drop_is_ignored() {
        let cache = live(10);
        let t = ticket(&cache, "k");
        cache.insert("k".into(), t, entry("{}"));
        cache.drop_session(0);
        assert!(cache.get("k", NOW, TTL).is_ok(), "an older session's drop");
        cache.drop_session(1);
        assert_eq!(cache.len(), 0);
        cache.begin(2);
        assert!(cache.go_live(2, Vec::new()));
        assert!(cache.get("k", NOW, TTL).is_err());
    }

    #[test]
    fn an_entry_past_its_touch_plus_ttl_is_a_miss() {
        let cache = live(10);
        let t = ticket(&cache, "k");
        cache.insert("k".into(), t, entry("{}"));
        assert!(cache.get("k", NOW + TTL - 1, TTL).is_ok());
        assert!(cache.get("k", NOW + TTL, TTL).is_err());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_least_recently_used_is_evicted_past_capacity() {
        let cache = live(2);
        for k in ["a", "b"] {
            let t = ticket(&cache, k);
            cache.insert(k.into(), t, entry("{}"));
        }
        assert!(cache.get("a", NOW, TTL).is_ok());
        let t = ticket(&cache, "c");
        cache.insert("c".into(), t, entry("{}"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a", NOW, TTL).is_ok());
        assert!(cache.get("b", NOW, TTL).is_err());
    }
}
