//! The per-user index contract ([`UserIndex`]) on Redis: each operation as the scripts of
//! `scripts.rs` run on the user's slot, with the steps around them (see the module docs of
//! `users`).

use std::collections::HashMap;

use redis::Value;

use super::scripts::{Facts, taken};
use super::{Indexing, RedisStore};
use crate::session::{SessionId, unix_now};
use crate::store::StoreError;
use crate::store::users::{Device, Handle, Joined, NewDevice, UserIndex};

impl RedisStore {
    async fn join_indexed(
        &self,
        ix: &Indexing,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, &SessionId)>,
        max_per_user: usize,
    ) -> Result<Joined, StoreError> {
        let handle = Handle::of(id).to_string();
        let handle_key = self.handle_key(&handle);
        // The handle names its user before it is a member, so that every member is found
        // by its handle alone.
        let mut set = redis::cmd("SET");
        set.arg(&handle_key)
            .arg(user)
            .arg("EX")
            .arg(ix.lifetime)
            .arg("GET");
        let before: Option<String> = self.command(set).await?;
        let replaced = replacing.map(|(u, old)| (u, Handle::of(old).to_string()));
        if let Some(before) = before.as_deref()
            && before != user
            && replaced.as_ref().is_none_or(|(_, old)| *old != handle)
        {
            // A member of another user's index until now: no longer.
            self.take(ix, before, &handle).await?;
        }
        let mut same_user = "";
        if let Some((old_user, old)) = &replaced {
            if *old_user == user {
                same_user = old;
            } else {
                // A user switch: the replaced session must still be a member of its own
                // user's index (another slot); it stays one until it leaves.
                let (old_members, _) = self.user_keys(old_user);
                let mut score = redis::cmd("ZSCORE");
                score.arg(&old_members).arg(old);
                if self.command::<Option<f64>>(score).await?.is_none() {
                    self.drop_handle(ix, &handle_key, user).await;
                    return Ok(Joined::SourceGone);
                }
            }
        }
        let (members, facts) = self.user_keys(user);
        let now = unix_now();
        let args = [
            handle.clone(),
            Facts::encode(device, id),
            now.to_string(),
            now.saturating_sub(ix.lifetime).to_string(),
            ix.lifetime.to_string(),
            max_per_user.to_string(),
            same_user.to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = self.eval(&ix.join, &[&members, &facts], &args).await?;
        if reply == Value::Int(0) {
            self.drop_handle(ix, &handle_key, user).await;
            return Ok(Joined::SourceGone);
        }
        let victims = taken(reply)?;
        let (evicted, _) = self.destroy_taken(ix, user, &victims).await?;
        Ok(Joined::Member { evicted })
    }
}

impl UserIndex for RedisStore {
    async fn join(
        &self,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, &SessionId)>,
        max_per_user: usize,
    ) -> Result<Joined, StoreError> {
        let ix = self.indexing()?;
        self.join_indexed(ix, user, id, device, replacing, max_per_user)
            .await
    }

    async fn leave(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let ix = self.indexing()?;
        let handle = Handle::of(id).to_string();
        self.take(ix, user, &handle).await?;
        self.drop_handle(ix, &self.handle_key(&handle), user).await;
        Ok(())
    }

    async fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, StoreError> {
        let ix = self.indexing()?;
        let (members, facts) = self.user_keys(user);
        let keep = keep.map(|k| Handle::of(k).to_string()).unwrap_or_default();
        let reply = self.eval(&ix.revoke, &[&members, &facts], &[&keep]).await?;
        let victims = taken(reply)?;
        Ok(self.destroy_taken(ix, user, &victims).await?.0)
    }

    async fn revoke_handle(&self, user: Option<&str>, handle: &Handle) -> Result<bool, StoreError> {
        let ix = self.indexing()?;
        let handle = handle.to_string();
        let user = match user {
            Some(user) => user.to_owned(),
            None => {
                let mut get = redis::cmd("GET");
                get.arg(self.handle_key(&handle));
                match self.command::<Option<String>>(get).await? {
                    Some(user) => user,
                    None => return Ok(false),
                }
            }
        };
        let Some(taken) = self.take(ix, &user, &handle).await? else {
            return Ok(false);
        };
        let (_, deleted) = self.destroy_taken(ix, &user, &[taken]).await?;
        Ok(deleted > 0)
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, StoreError> {
        let ix = self.indexing()?;
        let (members, facts) = self.user_keys(user);
        let mut range = redis::cmd("ZRANGE");
        range.arg(&members).arg(0).arg(-1).arg("WITHSCORES");
        let scored: Vec<(String, f64)> = self.command(range).await?;
        if scored.is_empty() {
            return Ok(Vec::new());
        }
        let mut all = redis::cmd("HGETALL");
        all.arg(&facts);
        let known: HashMap<String, String> = self.command(all).await?;
        let mut devices = Vec::with_capacity(scored.len());
        let mut dead = Vec::new();
        for (member, score) in scored {
            let (Ok(handle), Some(f)) = (
                member.parse::<Handle>(),
                known.get(&member).and_then(|f| Facts::parse(f)),
            ) else {
                // Joined after the facts were read, or not ours: left as it is.
                continue;
            };
            let mut exists = redis::cmd("EXISTS");
            exists.arg(format!("{}{}", self.inner.namespace, f.key_hash));
            if self.command::<i64>(exists).await? == 0 {
                dead.push(member);
                continue;
            }
            devices.push(Device {
                handle,
                created: f.created,
                // Scores are whole seconds written by the proxy.
                last_seen: score as u64,
                user_agent: f.user_agent.to_owned(),
                ip: f.ip.to_owned(),
            });
        }
        // Members whose record is gone (expired or evicted in Redis) leave the index.
        for member in dead {
            self.take(ix, user, &member).await?;
            self.drop_handle(ix, &self.handle_key(&member), user).await;
        }
        devices.sort_by_key(|d| (d.created, d.handle));
        Ok(devices)
    }
}
