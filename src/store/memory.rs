//! The in-memory store: one strict LRU (the `lru` crate) bounded by `store.max_sessions`,
//! with a per-entry expiry checked on every access. Lost on restart (SPEC §7).
//!
//! Because every use slides an entry's expiry by the same `ttl`, the least recently used
//! entry is also the first to expire; each write therefore reclaims a few expired entries
//! from the LRU end, so memory held by expired sessions is returned without a sweeper task.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{Cas, SessionStore, StoreError};
use crate::session::{Record, SessionId};

/// How many expired entries one write reclaims at most, so a write never stalls.
const RECLAIM_PER_WRITE: usize = 8;

struct Entry {
    rec: Record,
    expires: Instant,
}

/// The in-memory store. Cloning shares the same entries.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<LruCache<SessionId, Entry>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// A store that holds at most `max_sessions` entries (at least 1).
    pub fn new(max_sessions: usize) -> Self {
        let cap = NonZeroUsize::new(max_sessions).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Mutex::new(LruCache::new(cap))),
        }
    }

    /// Number of entries held, expired ones not yet reclaimed included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<SessionId, Entry>> {
        // No code path panics while holding the lock; if one ever did, the map itself is
        // still consistent, so keep serving rather than poison every later request.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reclaim(map: &mut LruCache<SessionId, Entry>, now: Instant) {
        for _ in 0..RECLAIM_PER_WRITE {
            match map.peek_lru() {
                Some((_, e)) if e.expires <= now => {
                    map.pop_lru();
                }
                _ => break,
            }
        }
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                Ok(Some(e.rec.clone()))
            }
            Some(_) => {
                map.pop(id);
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
        let mut map = self.lock();
        Self::reclaim(&mut map, now);
        let entry = Entry {
            rec: rec.clone(),
            expires: now + ttl,
        };
        // One lookup: `push` hands back what it displaced, an evicted LRU entry or a live
        // session under this very ID, which (a collision) is put back untouched.
        match map.push(*id, entry) {
            Some((displaced, old)) if displaced == *id && old.expires > now => {
                map.push(displaced, old);
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    async fn replace(
        &self,
        id: &SessionId,
        expected: &Record,
        new: &Record,
        ttl: Duration,
    ) -> Result<Cas, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Self::reclaim(&mut map, now);
        match map.get_mut(id) {
            Some(e) if e.expires > now => {
                if e.rec != *expected {
                    return Ok(Cas::Changed(e.rec.clone()));
                }
                e.rec = new.clone();
                e.expires = now + ttl;
                Ok(Cas::Applied)
            }
            Some(_) => {
                map.pop(id);
                Ok(Cas::Gone)
            }
            None => Ok(Cas::Gone),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.lock().pop(id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
