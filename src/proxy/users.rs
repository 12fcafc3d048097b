//! The per-user index as the response phase keeps it (SPEC §13): which user a session's
//! data names, joining and leaving that user's index, revoking, and ending the upgraded
//! connections of what was revoked. The order of these steps against the records is the
//! store contract's (`store/users.rs`); `proxy/response.rs` calls them.

use super::response::parse_data;
use super::{DeviceSeen, Gate};
use crate::error::GateError;
use crate::metrics::{DestroyReason, StoreOp};
use crate::session::{Record, SessionId};
use crate::store::SessionStore;
use crate::store::users::{Handle, Joined, NewDevice, UserIndex, user_in};
use tracing::warn;

impl Gate {
    /// The user `data` names, when `session.user_field` is set (SPEC §13).
    pub(super) fn user_of(&self, data: &str) -> Option<String> {
        let field = self.user_field.as_deref()?;
        user_in(&parse_data(data), field)
    }

    /// Destroys `id` (of `user`, if indexed): the record, then its place in the index.
    pub(super) async fn destroy(
        &self,
        id: &SessionId,
        user: Option<&str>,
    ) -> Result<(), GateError> {
        self.timed(StoreOp::delete, self.store.delete(id)).await?;
        self.close_upgrades(id);
        if let Some(user) = user {
            self.leave(user, id).await;
        }
        Ok(())
    }

    /// Takes `id` out of `user`'s index. The record is already gone or no longer names
    /// the user, so a failure leaves a stale entry that names nothing live: logged only.
    pub(super) async fn leave(&self, user: &str, id: &SessionId) {
        if let Err(e) = self.timed(StoreOp::index, self.store.leave(user, id)).await {
            warn!(error = %e, "could not remove a session from its user's index");
        }
    }

    /// Makes `id` a member of `user`'s index. False when the session it replaces was
    /// revoked meanwhile (SPEC §13); sessions past `max_per_user` are ended and counted.
    pub(super) async fn join(
        &self,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, SessionId)>,
    ) -> Result<bool, GateError> {
        let replacing = replacing.as_ref().map(|(u, old)| (*u, old));
        let joined = self
            .timed(
                StoreOp::index,
                self.store
                    .join(user, id, device, replacing, self.max_per_user),
            )
            .await?;
        match joined {
            Joined::Member { evicted } => {
                if !evicted.is_empty() {
                    self.metrics
                        .destroyed(DestroyReason::limit, evicted.len() as u64);
                    self.upgrades.ended(&evicted);
                }
                Ok(true)
            }
            Joined::SourceGone => Ok(false),
        }
    }

    /// Ends every session of `user` but `keep`, counting them as revoked.
    pub(super) async fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, GateError> {
        let ended = self
            .timed(StoreOp::index, self.store.revoke(user, keep))
            .await?;
        self.metrics
            .destroyed(DestroyReason::revoke, ended.len() as u64);
        self.upgrades.ended(&ended);
        Ok(ended)
    }

    /// After an in-place change from `before` to `after`: when the user the data names
    /// changed, the session leaves the old user's index and joins the new one's.
    pub(super) async fn reindex(
        &self,
        id: &SessionId,
        before: &Record,
        after: &Record,
        device: Option<&DeviceSeen>,
    ) -> Result<(), GateError> {
        if self.user_field.is_none() {
            return Ok(());
        }
        let (old, new) = (self.user_of(&before.data), self.user_of(&after.data));
        if old == new {
            return Ok(());
        }
        if let Some(old) = &old {
            self.leave(old, id).await;
        }
        if let Some(new) = &new {
            self.join(new, id, &device_facts(after.created, device), None)
                .await?;
        }
        Ok(())
    }
}

/// The device facts of a session created at `created` by the request `seen` describes.
pub(super) fn device_facts(created: u64, seen: Option<&DeviceSeen>) -> NewDevice {
    match seen {
        Some(seen) => NewDevice::new(
            created,
            seen.user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            seen.ip,
        ),
        None => NewDevice::new(created, "", std::net::Ipv4Addr::UNSPECIFIED.into()),
    }
}
