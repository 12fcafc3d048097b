//! The memory store's per-user index (SPEC §13): its own lock, taken before a shard's and
//! never after (see the parent module), so that `join` and `revoke` are each one atomic step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::MemoryStore;
use crate::session::{SessionId, unix_now};
use crate::store::StoreError;
use crate::store::users::{Device, Handle, Joined, NewDevice, UserIndex};

/// The per-user index (SPEC §13).
#[derive(Default)]
pub(super) struct Index {
    /// user -> that user's members and their device facts.
    pub(super) users: HashMap<Arc<str>, HashMap<SessionId, NewDevice>>,
    /// member -> its user.
    pub(super) member_of: HashMap<SessionId, Arc<str>>,
    /// handle -> member, for the admin API's `DELETE /sessions/HANDLE`.
    pub(super) handles: HashMap<Handle, SessionId>,
}

impl Index {
    /// Forgets `id`'s membership, if any.
    pub(super) fn unindex(&mut self, id: &SessionId) {
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
        let mut index = self.index();
        if let Some((old_user, old)) = replacing
            && index.member_of.get(old).map(|u| &**u) != Some(old_user)
        {
            return Ok(Joined::SourceGone);
        }
        index.unindex(id);
        let user: Arc<str> = Arc::from(user);
        index.member_of.insert(*id, user.clone());
        index.handles.insert(Handle::of(id), *id);
        let members = index.users.entry(user).or_default();
        members.insert(*id, device.clone());
        // The replaced session is about to leave: it neither counts nor is evicted.
        let replaced = replacing.map(|(_, old)| *old);
        let counted =
            members.len() - usize::from(replaced.is_some_and(|o| members.contains_key(&o)));
        let mut evicted = Vec::new();
        if max_per_user > 0 && counted > max_per_user {
            let others: Vec<(u64, SessionId)> = members
                .iter()
                .filter(|(m, _)| *m != id && Some(**m) != replaced)
                .map(|(m, d)| (d.created, *m))
                .collect();
            // Least recently seen first, then oldest created; a member whose record is
            // gone counts as never seen, so it goes first.
            let mut others: Vec<(Option<Instant>, u64, SessionId)> = others
                .into_iter()
                .map(|(created, m)| {
                    let seen = self
                        .shard(&m)
                        .peek(&m)
                        .filter(|e| e.expires > now)
                        .map(|e| e.seen);
                    (seen, created, m)
                })
                .collect();
            others.sort_by_key(|(seen, created, _)| (*seen, *created));
            for (_, _, victim) in others.into_iter().take(counted - max_per_user) {
                self.destroy_held(&mut index, &victim);
                evicted.push(Handle::of(&victim));
            }
        }
        Ok(Joined::Member { evicted })
    }

    async fn leave(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let mut index = self.index();
        if index.member_of.get(id).map(|u| &**u) == Some(user) {
            index.unindex(id);
        }
        Ok(())
    }

    async fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, StoreError> {
        // The index's lock is held until every record is gone: a join meanwhile waits,
        // and then finds the session it replaces no longer a member.
        let mut index = self.index();
        let victims: Vec<SessionId> = index
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
                self.destroy_held(&mut index, victim);
                Handle::of(victim)
            })
            .collect())
    }

    async fn revoke_handle(&self, user: Option<&str>, handle: &Handle) -> Result<bool, StoreError> {
        let mut index = self.index();
        let Some(&id) = index.handles.get(handle) else {
            return Ok(false);
        };
        if user.is_some_and(|u| index.member_of.get(&id).map(|m| &**m) != Some(u)) {
            return Ok(false);
        }
        let live = self
            .shard(&id)
            .pop(&id)
            .is_some_and(|e| e.expires > Instant::now());
        index.unindex(&id);
        Ok(live)
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, StoreError> {
        let now = Instant::now();
        let unix = unix_now();
        let mut index = self.index();
        let Some(members) = index.users.get(user) else {
            return Ok(Vec::new());
        };
        let mut devices = Vec::with_capacity(members.len());
        // Members whose record is gone (true: expired in place, to be counted).
        let mut dead = Vec::new();
        for (id, d) in members {
            let shard = self.shard(id);
            match shard.peek(id) {
                Some(e) if e.expires > now => devices.push(Device {
                    handle: Handle::of(id),
                    created: d.created,
                    last_seen: unix.saturating_sub(now.duration_since(e.seen).as_secs()),
                    user_agent: d.user_agent.clone(),
                    ip: d.ip.clone(),
                }),
                Some(_) => dead.push((*id, true)),
                None => dead.push((*id, false)),
            }
        }
        for (id, expired) in dead {
            if expired {
                self.destroy_held(&mut index, &id);
                self.ended.expired.inc();
            } else {
                index.unindex(&id);
            }
        }
        devices.sort_by_key(|d| (d.created, d.handle));
        Ok(devices)
    }
}
