//! The in-memory store: one strict LRU (the `lru` crate) bounded by `store.max_sessions`,
//! with a per-entry expiry checked on every access. Lost on restart (SPEC §7).
//!
//! Because every use slides an entry's expiry by the same `ttl`, the least recently used
//! entry is also the first to expire; each write therefore reclaims a few expired entries
//! from the LRU end, so memory held by expired sessions is returned without a sweeper task.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::users::{Device, Handle, Joined, NewDevice, UserIndex};
use super::{Cas, SessionStore, StoreError};
use crate::session::{Record, SessionId, unix_now};

/// How many expired entries one write reclaims at most, so a write never stalls.
const RECLAIM_PER_WRITE: usize = 8;

struct Entry {
    rec: Record,
    expires: Instant,
    /// The last load (the device list's `last_seen`).
    seen: Instant,
}

/// Everything behind the one lock: the sessions and the per-user index (SPEC §13), so
/// every index operation is atomic with the records it names.
struct Inner {
    map: LruCache<SessionId, Entry>,
    /// user -> that user's members and their device facts.
    users: HashMap<Arc<str>, HashMap<SessionId, NewDevice>>,
    /// member -> its user.
    member_of: HashMap<SessionId, Arc<str>>,
    /// handle -> member, for the admin API's `DELETE /sessions/HANDLE`.
    handles: HashMap<Handle, SessionId>,
}

impl Inner {
    /// Forgets `id`'s membership, if any.
    fn unindex(&mut self, id: &SessionId) {
        if let Some(user) = self.member_of.remove(id) {
            self.handles.remove(&Handle::of(id));
            if let Some(members) = self.users.get_mut(&user) {
                members.remove(id);
                if members.is_empty() {
                    self.users.remove(&user);
                }
            }
        }
    }

    /// Deletes `id`'s record and membership.
    fn destroy(&mut self, id: &SessionId) {
        self.map.pop(id);
        self.unindex(id);
    }

    fn is_live(&self, id: &SessionId, now: Instant) -> bool {
        self.map.peek(id).is_some_and(|e| e.expires > now)
    }
}

/// Sessions that ended without the proxy ending them, by reason (SPEC §13 metrics).
#[derive(Debug, Default, Clone)]
struct Ended {
    expired: Counter,
    evicted: Counter,
}

/// The in-memory store. Cloning shares the same entries.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    ended: Ended,
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
            inner: Arc::new(Mutex::new(Inner {
                map: LruCache::new(cap),
                users: HashMap::new(),
                member_of: HashMap::new(),
                handles: HashMap::new(),
            })),
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
        self.lock().map.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics while holding the lock; if one ever did, the map itself is
        // still consistent, so keep serving rather than poison every later request.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reclaim(&self, inner: &mut Inner, now: Instant) {
        for _ in 0..RECLAIM_PER_WRITE {
            match inner.map.peek_lru() {
                Some((_, e)) if e.expires <= now => {
                    if let Some((id, _)) = inner.map.pop_lru() {
                        inner.unindex(&id);
                        self.ended.expired.inc();
                    }
                }
                _ => break,
            }
        }
    }

    /// Removes the expired entry `id`.
    fn expire(&self, inner: &mut Inner, id: &SessionId) {
        inner.destroy(id);
        self.ended.expired.inc();
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.map.get_mut(id) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                e.seen = now;
                Ok(Some(e.rec.clone()))
            }
            Some(_) => {
                self.expire(&mut inner, id);
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
        let mut inner = self.lock();
        self.reclaim(&mut inner, now);
        let entry = Entry {
            rec: rec.clone(),
            expires: now + ttl,
            seen: now,
        };
        // One lookup: `push` hands back what it displaced, an evicted LRU entry or a live
        // session under this very ID, which (a collision) is put back untouched.
        match inner.map.push(*id, entry) {
            Some((displaced, old)) if displaced == *id && old.expires > now => {
                inner.map.push(displaced, old);
                Ok(false)
            }
            Some((displaced, old)) => {
                if displaced != *id {
                    inner.unindex(&displaced);
                    let reason = if old.expires > now {
                        &self.ended.evicted
                    } else {
                        &self.ended.expired
                    };
                    reason.inc();
                }
                Ok(true)
            }
            None => Ok(true),
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
        let mut inner = self.lock();
        self.reclaim(&mut inner, now);
        match inner.map.get_mut(id) {
            Some(e) if e.expires > now => {
                if e.rec != *expected {
                    return Ok(Cas::Changed(e.rec.clone()));
                }
                e.rec = new.clone();
                e.expires = now + ttl;
                Ok(Cas::Applied)
            }
            Some(_) => {
                self.expire(&mut inner, id);
                Ok(Cas::Gone)
            }
            None => Ok(Cas::Gone),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.lock().destroy(id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl UserIndex for MemoryStore {
    async fn join(
        &self,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, &SessionId)>,
        max_per_user: usize,
    ) -> Result<Joined, StoreError> {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some((old_user, old)) = replacing
            && inner.member_of.get(old).map(|u| &**u) != Some(old_user)
        {
            return Ok(Joined::SourceGone);
        }
        inner.unindex(id);
        let user: Arc<str> = Arc::from(user);
        inner.member_of.insert(*id, user.clone());
        inner.handles.insert(Handle::of(id), *id);
        let members = inner.users.entry(user.clone()).or_default();
        members.insert(*id, device.clone());
        let mut evicted = Vec::new();
        // The replaced session is about to leave: it neither counts nor is evicted.
        let replaced = replacing.map(|(_, old)| *old);
        let counted =
            members.len() - usize::from(replaced.is_some_and(|o| members.contains_key(&o)));
        if max_per_user > 0 && counted > max_per_user {
            // Least recently seen first, then oldest created; a member whose record is
            // gone counts as never seen, so it goes first.
            let mut others: Vec<(Option<Instant>, u64, SessionId)> = members
                .iter()
                .filter(|(m, _)| *m != id && Some(**m) != replaced)
                .map(|(m, d)| {
                    let seen = inner
                        .map
                        .peek(m)
                        .filter(|e| e.expires > now)
                        .map(|e| e.seen);
                    (seen, d.created, *m)
                })
                .collect();
            others.sort_by_key(|(seen, created, _)| (*seen, *created));
            let excess = counted - max_per_user;
            for (_, _, victim) in others.into_iter().take(excess) {
                inner.destroy(&victim);
                evicted.push(Handle::of(&victim));
            }
        }
        Ok(Joined::Member { evicted })
    }

    async fn leave(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.member_of.get(id).map(|u| &**u) == Some(user) {
            inner.unindex(id);
        }
        Ok(())
    }

    async fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, StoreError> {
        let mut inner = self.lock();
        let victims: Vec<SessionId> = inner
            .users
            .get(user)
            .map(|members| {
                members
                    .keys()
                    .filter(|m| Some(*m) != keep)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        Ok(victims
            .iter()
            .map(|victim| {
                inner.destroy(victim);
                Handle::of(victim)
            })
            .collect())
    }

    async fn revoke_handle(&self, user: Option<&str>, handle: &Handle) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(&id) = inner.handles.get(handle) else {
            return Ok(false);
        };
        if user.is_some_and(|u| inner.member_of.get(&id).map(|m| &**m) != Some(u)) {
            return Ok(false);
        }
        let live = inner.is_live(&id, Instant::now());
        inner.destroy(&id);
        Ok(live)
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, StoreError> {
        let now = Instant::now();
        let unix = unix_now();
        let mut inner = self.lock();
        let Some(members) = inner.users.get(user) else {
            return Ok(Vec::new());
        };
        // Members whose record is gone (true: expired in place, to be counted).
        let mut dead = Vec::new();
        let mut devices = Vec::with_capacity(members.len());
        for (id, d) in members {
            match inner.map.peek(id).filter(|e| e.expires > now) {
                Some(e) => devices.push(Device {
                    handle: Handle::of(id),
                    created: d.created,
                    last_seen: unix.saturating_sub(now.duration_since(e.seen).as_secs()),
                    user_agent: d.user_agent.clone(),
                    ip: d.ip.clone(),
                }),
                None => dead.push((*id, inner.map.contains(id))),
            }
        }
        for (id, expired) in dead {
            if expired {
                self.expire(&mut inner, &id);
            } else {
                inner.unindex(&id);
            }
        }
        devices.sort_by_key(|d| (d.created, d.handle));
        Ok(devices)
    }
}
