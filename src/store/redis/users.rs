//! The per-user index on Redis: not built yet. `check` refuses `session.user_field` with
//! `store.kind = "redis"`, so these answers are never reached from a valid config.

use super::RedisStore;
use crate::session::SessionId;
use crate::store::StoreError;
use crate::store::users::{Device, Handle, Joined, NewDevice, UserIndex};

fn not_built() -> StoreError {
    StoreError::Unavailable("the per-user index is not available on Redis yet".into())
}

impl UserIndex for RedisStore {
    async fn join(
        &self,
        _user: &str,
        _id: &SessionId,
        _device: &NewDevice,
        _replacing: Option<(&str, &SessionId)>,
        _max_per_user: usize,
    ) -> Result<Joined, StoreError> {
        Err(not_built())
    }

    async fn leave(&self, _user: &str, _id: &SessionId) -> Result<(), StoreError> {
        Err(not_built())
    }

    async fn revoke(
        &self,
        _user: &str,
        _keep: Option<&SessionId>,
    ) -> Result<Vec<Handle>, StoreError> {
        Err(not_built())
    }

    async fn revoke_handle(
        &self,
        _user: Option<&str>,
        _handle: &Handle,
    ) -> Result<bool, StoreError> {
        Err(not_built())
    }

    async fn devices(&self, _user: &str) -> Result<Vec<Device>, StoreError> {
        Err(not_built())
    }
}
