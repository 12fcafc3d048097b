//! Phase 3 of the request path: the upstream's answer (SPEC §6, §7). Its `X-Session-*`
//! directives are validated, then applied to the store (Destroy → Set → Update) in a task
//! that finishes even if the client leaves; every `x-session*` header and any upstream
//! `Set-Cookie` for our cookie are removed; the cookie is set, refreshed or cleared, and a
//! response that carries it is made private.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tracing::warn;

use super::users::device_facts;
use super::{CookieOut, Ctx, DeviceSeen, Gate, Lookup};
use crate::error::GateError;
use crate::metrics::{DestroyReason, StoreOp};
use crate::protocol::{self, Destroy, DirectiveError, Directives};
use crate::session::{Record, SessionId, merge_object};
use crate::store::users::{Handle, UserIndex};
use crate::store::{Cas, SessionStore, StoreError};
use crate::telemetry::Outcome;

/// How often a compare-and-set is retried against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 8;
/// How often a fresh ID is drawn when `create` reports a collision.
const CREATE_ATTEMPTS: usize = 4;

impl Gate {
    /// Phase 3: apply the upstream's directives and shape the response headers.
    pub(super) async fn on_upstream_response(
        self: &Arc<Self>,
        ctx: &mut Ctx,
        headers: &mut HeaderMap,
    ) -> Result<(), GateError> {
        // One scan first: most responses carry no `x-session*` header at all.
        let directives = if headers.keys().any(protocol::has_reserved_prefix) {
            let directives = protocol::parse_directives(headers);
            protocol::strip_reserved(headers);
            directives
        } else {
            Ok(Directives::default())
        };
        self.drop_upstream_session_cookie(headers);
        if ctx.session_off {
            // SPEC §11 `session = "off"`: directives are stripped (above) and ignored.
            if !directives.as_ref().is_ok_and(Directives::is_empty) {
                warn!("session directives from the upstream on a session = \"off\" route; ignored");
            }
            return Ok(());
        }
        let directives = directives?;

        // The store-writing paths are boxed: inline, their state would enlarge (and be
        // copied with) every request's future, though most requests take neither.
        let cookie_out = if !directives.is_empty() {
            // The upstream has acted on this request (logged a user in or out): its
            // directives are applied whole in a task of their own, which runs to the end
            // even when the client goes away and this future is dropped.
            let task = tokio::spawn(self.clone().apply(
                ctx.lookup.clone(),
                ctx.now(),
                directives,
                ctx.device.take(),
            ));
            let (out, outcome) = match task.await {
                Ok(applied) => applied?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {
                    return Err(GateError::Store(StoreError::Unavailable(
                        "the runtime stopped while session directives were applied".into(),
                    )));
                }
            };
            if let Some(outcome) = outcome {
                ctx.outcome = outcome;
            }
            out
        } else {
            match &ctx.lookup {
                Lookup::Anonymous => CookieOut::Keep,
                Lookup::Gone => CookieOut::Clear,
                Lookup::Active { id, rec, rotated }
                    if self.lifetime.cookie_due(rec, *rotated, ctx.now()) =>
                {
                    Box::pin(self.refresh(*id, rec.clone(), ctx.now())).await
                }
                Lookup::Active { .. } => CookieOut::Keep,
            }
        };

        let value = match cookie_out {
            CookieOut::Keep => return Ok(()),
            CookieOut::Set(id) => {
                self.dbsc_offer(ctx, &id, headers);
                self.set_cookie.set(self.codec.sign(&id))
            }
            CookieOut::Clear => self.set_cookie.clear(),
        };
        headers.append(header::SET_COOKIE, value);
        protocol::make_private(headers);
        Ok(())
    }

    /// A `Set-Cookie` for our cookie name from the upstream is dropped: only we set it.
    fn drop_upstream_session_cookie(&self, headers: &mut HeaderMap) {
        let ours = |v: &HeaderValue| {
            let b = v.as_bytes();
            let name = b.split(|c| *c == b'=').next().unwrap_or_default();
            name.trim_ascii() == self.cookie_name.as_bytes()
        };
        if !headers.get_all(header::SET_COOKIE).iter().any(ours) {
            return;
        }
        warn!("dropped a Set-Cookie for the session cookie sent by the upstream");
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
    }

    /// No directives, and the cookie is due (signed with an old key, or `cookie_refresh_sec`
    /// has passed): record the refresh and re-send the cookie; clear it if the session is gone.
    async fn refresh(&self, id: SessionId, rec: Record, now: u64) -> CookieOut {
        let mut expected = rec;
        for _ in 0..CAS_ATTEMPTS {
            let next = Record {
                cookie_sent: now,
                ..expected.clone()
            };
            let ttl = self.lifetime.ttl_for(&next, now);
            match self
                .timed(
                    StoreOp::replace,
                    self.store.replace(&id, &expected, &next, ttl),
                )
                .await
            {
                Ok(Cas::Applied) => return CookieOut::Set(id),
                Ok(Cas::Changed(current)) => expected = current,
                Ok(Cas::Gone) => return CookieOut::Clear,
                Err(e @ StoreError::Corrupt { .. }) => {
                    warn!(error = %e, "stored session refused during the cookie refresh");
                    return CookieOut::Clear;
                }
                Err(e) => {
                    // Bookkeeping only: the request itself succeeded and the session is
                    // intact, so the cookie is simply re-sent on a later request.
                    warn!(error = %e, "could not record the cookie refresh; will retry on a later request");
                    return CookieOut::Keep;
                }
            }
        }
        CookieOut::Keep
    }

    /// Applies Destroy, Set and Update, in that order, after validating all of them, to
    /// the session `lookup` found at `now`. Returns the cookie to send and, when the
    /// session's fate changed, the new access-log outcome. `device` is the request's
    /// user agent and client address, for a session that joins its user's index.
    async fn apply(
        self: Arc<Self>,
        lookup: Lookup,
        now: u64,
        d: Directives,
        device: Option<DeviceSeen>,
    ) -> Result<(CookieOut, Option<Outcome>), GateError> {
        let active = match &lookup {
            Lookup::Active { id, rec, .. } => Some((*id, rec)),
            _ => None,
        };
        // SPEC §13: the user the current session belongs to, when users are indexed.
        let user = active.and_then(|(_, rec)| self.user_of(&rec.data));
        let destroy_current = match d.destroy {
            Some(Destroy::Current) => true,
            // Without a user, `all` ends the current session only (SPEC §13).
            Some(Destroy::All) => true,
            Some(Destroy::Handle(Some(h))) => {
                user.is_some() && active.is_some_and(|(id, _)| Handle::of(&id) == h)
            }
            Some(Destroy::Others | Destroy::Handle(None)) | None => false,
        };
        let old_id = active.map(|(id, _)| id);
        let current = active
            .filter(|_| !destroy_current)
            .map(|(id, rec)| (id, rec.clone()));
        // Keep the ID only for an Update, or a Set with `regenerate_on_set = false`.
        let in_place = current.is_some() && (d.set.is_none() || !self.regenerate_on_set);

        // Validate everything before the first write (SPEC §6: nothing half-applied).
        let data = self.new_data(&d, current.as_ref().map(|(_, rec)| &*rec.data))?;

        // Revocations first: they end other sessions whatever happens to this one.
        let mut revoked_current = false;
        if let (Some(user), Some(id)) = (&user, old_id) {
            match d.destroy {
                Some(Destroy::All) => {
                    let ended = self.revoke(user, None).await?;
                    revoked_current = ended.contains(&Handle::of(&id));
                }
                Some(Destroy::Others) => {
                    self.revoke(user, Some(&id)).await?;
                }
                Some(Destroy::Handle(Some(h))) if !destroy_current => {
                    let ended = self
                        .timed(StoreOp::index, self.store.revoke_handle(Some(user), &h))
                        .await?;
                    if ended {
                        self.metrics.destroyed(DestroyReason::revoke, 1);
                        self.upgrades.ended(&[h]);
                    }
                }
                _ => {}
            }
        }
        if matches!(d.destroy, Some(Destroy::Handle(None))) {
            warn!("X-Session-Destroy names no valid handle; nothing destroyed");
        }

        if let Some(current) = current.filter(|_| in_place) {
            return self
                .apply_in_place(&lookup, now, current, &d, data, device)
                .await;
        }
        if d.set.is_none() && d.update.is_none() {
            // Destroy alone.
            if let Some(id) = old_id.filter(|_| destroy_current && !revoked_current) {
                self.destroy(&id, user.as_deref()).await?;
            }
            return Ok(match (destroy_current, revoked_current) {
                (false, _) => (CookieOut::Keep, None),
                // A revoked current session counts as revoked, not as a logout.
                (true, true) => (CookieOut::Clear, Some(Outcome::Revoked)),
                (true, false) => (CookieOut::Clear, Some(Outcome::Destroyed)),
            });
        }

        // A new session, under a new ID. Create it first, then retire the old ID: if the
        // delete fails, the old session is exactly as it was and the new one is removed
        // again (best effort), so nothing half-applied is visible.
        // SPEC §11: `auth_time` is the time of the last Set; a session made by an Update
        // alone has none.
        let rec = Record {
            auth_time: d.set.is_some().then_some(now),
            ..Record::new(data.into(), now)
        };
        let new_id = self.create(&rec, now).await?;
        // SPEC §13: the new session replaces the old one in the index; when the old one
        // was revoked meanwhile (or by this very response), it does not outlive it.
        let replacing = match (&user, old_id) {
            (Some(u), Some(old)) if !revoked_current => Some((u.as_str(), old)),
            _ => None,
        };
        if let Some(new_user) = self.user_of(&rec.data) {
            let device = device_facts(now, device.as_ref());
            let joined = self.join(&new_user, &new_id, &device, replacing).await;
            if !matches!(joined, Ok(true))
                && let Err(cleanup) = self
                    .timed(StoreOp::delete, self.store.delete(&new_id))
                    .await
            {
                warn!(error = %cleanup, "could not remove the half-created session");
            }
            if !joined? {
                warn!("session revoked before its new ID could be issued; login dropped");
                return Ok((CookieOut::Clear, Some(Outcome::Revoked)));
            }
        }
        if let Some(old) = old_id.filter(|_| !revoked_current)
            && let Err(e) = self.timed(StoreOp::delete, self.store.delete(&old)).await
        {
            if let Err(cleanup) = self
                .timed(StoreOp::delete, self.store.delete(&new_id))
                .await
            {
                warn!(error = %cleanup, "could not remove the half-created session");
            }
            if let Some(new_user) = self.user_of(&rec.data) {
                self.leave(&new_user, &new_id).await;
            }
            return Err(e.into());
        }
        // The replaced session leaves its user's index only now that its record is gone,
        // so that a revocation meanwhile still finds it (store/users.rs).
        if let Some((old_user, old)) = replacing {
            self.leave(old_user, &old).await;
        }
        old_id.inspect(|old| self.close_upgrades(old));
        Ok((CookieOut::Set(new_id), Some(Outcome::Created)))
    }

    /// Set (without regeneration) or Update on the current session, keeping its ID.
    /// A compare-and-set loop, so concurrent updates are merged, never lost, and a
    /// concurrent Destroy wins. `data` is the result already computed for `expected`.
    async fn apply_in_place(
        &self,
        lookup: &Lookup,
        now: u64,
        (id, mut expected): (SessionId, Record),
        d: &Directives,
        mut data: String,
        device: Option<DeviceSeen>,
    ) -> Result<(CookieOut, Option<Outcome>), GateError> {
        let send_cookie = match lookup {
            Lookup::Active { rotated, rec, .. } => self.lifetime.cookie_due(rec, *rotated, now),
            _ => false,
        };
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                data = self.new_data(d, Some(&expected.data))?;
            }
            let next = Record {
                created: expected.created,
                cookie_sent: if send_cookie {
                    now
                } else {
                    expected.cookie_sent
                },
                data: Arc::from(data.as_str()),
                auth_time: if d.set.is_some() {
                    Some(now)
                } else {
                    expected.auth_time
                },
                dbsc: expected.dbsc.clone(),
            };
            let ttl = self.lifetime.ttl_for(&next, now);
            let cas = match self
                .timed(
                    StoreOp::replace,
                    self.store.replace(&id, &expected, &next, ttl),
                )
                .await
            {
                // Altered in the store since this request loaded it: no session any more,
                // like a concurrent Destroy (SPEC §14).
                Err(e @ StoreError::Corrupt { .. }) => {
                    warn!(error = %e, "stored session refused; update dropped");
                    return Ok((CookieOut::Clear, Some(Outcome::Invalid)));
                }
                other => other?,
            };
            match cas {
                Cas::Applied => {
                    self.reindex(&id, &expected, &next, device.as_ref()).await?;
                    let out = if send_cookie {
                        CookieOut::Set(id)
                    } else {
                        CookieOut::Keep
                    };
                    return Ok((out, None));
                }
                Cas::Changed(current) => expected = current,
                Cas::Gone => {
                    // SPEC §6: a concurrent Destroy wins; the change is not applied.
                    warn!("session vanished before its update could be applied; update dropped");
                    return Ok((CookieOut::Clear, Some(Outcome::Miss)));
                }
            }
        }
        Err(GateError::Store(StoreError::Contention(
            "session kept changing under concurrent updates",
        )))
    }

    /// The session data after `d`'s Set and Update, starting from `current` data (none
    /// for a new session), serialized and checked against `max_bytes`.
    fn new_data(&self, d: &Directives, current: Option<&str>) -> Result<String, DirectiveError> {
        let Some(update) = &d.update else {
            return match &d.set {
                Some(set) => self.sized(set, "X-Session-Set"),
                None => self.sized(
                    &current.map(parse_data).unwrap_or_default(),
                    "X-Session-Set",
                ),
            };
        };
        let mut data = match (&d.set, current) {
            (Some(set), _) => set.clone(),
            (None, Some(data)) => parse_data(data),
            (None, None) => Map::new(),
        };
        merge_object(&mut data, update);
        self.sized(&data, "X-Session-Update")
    }

    fn sized(
        &self,
        data: &Map<String, Value>,
        header: &'static str,
    ) -> Result<String, DirectiveError> {
        let text = serde_json::to_string(data).expect("a JSON map always serializes");
        if text.len() > self.max_bytes {
            return Err(DirectiveError::TooLarge {
                header,
                size: text.len(),
                max: self.max_bytes,
            });
        }
        Ok(text)
    }

    /// Stores `rec` under a fresh ID, drawing again on the (astronomically unlikely) collision.
    async fn create(&self, rec: &Record, now: u64) -> Result<SessionId, GateError> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = SessionId::random();
            if self
                .timed(
                    StoreOp::create,
                    self.store.create(&id, rec, self.lifetime.ttl_for(rec, now)),
                )
                .await?
            {
                return Ok(id);
            }
            warn!("session ID collision; drawing a new one");
        }
        Err(GateError::Store(StoreError::Contention(
            "could not find an unused session ID",
        )))
    }
}

/// Stored session data as a map. It is always an object we serialized ourselves; a
/// corrupt value (impossible short of a foreign writer) reads as empty.
pub(super) fn parse_data(data: &str) -> Map<String, Value> {
    serde_json::from_str(data).unwrap_or_default()
}
