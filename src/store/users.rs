//! The per-user index (SPEC §13): which sessions a user has, their device facts, and
//! revocation ("log out everywhere", "sign out other devices", "sign out that device").
//!
//! # The contract
//!
//! With `session.user_field` set, every session whose data names a user is a *member* of
//! that user's index. A member is known by its [`Handle`], an opaque value derived from the
//! session ID from which no cookie can be made; it carries the session's device facts.
//!
//! The proxy keeps the index next to the records, in this order:
//!
//! - **create**: write the record, then [`join`](UserIndex::join). A join that replaces a
//!   session (the new ID of a login or privilege change) names the session it replaces, and
//!   happens only while that session is still a member; it answers
//!   [`Joined::SourceGone`] otherwise, and the caller deletes the record it just wrote.
//!   The replaced session *stays* a member: the caller deletes its record, and only then
//!   makes it [`leave`](UserIndex::leave).
//! - **destroy**: delete the record, then [`leave`](UserIndex::leave).
//! - **revoke**: [`revoke`](UserIndex::revoke) and
//!   [`revoke_handle`](UserIndex::revoke_handle) remove the members *and* delete their
//!   records before they return.
//!
//! # Why revocation is race-free
//!
//! The guarantee (SPEC §13): once `revoke` has returned, no load returns any revoked
//! session, on any proxy sharing the store, including sessions being created or rotated
//! concurrently. The index is the point of serialisation; records are never trusted to be
//! in it. Every live session of the user is in one of these states when the revocation
//! takes the members:
//!
//! 1. A member: its record is deleted before `revoke` returns, and no writer brings a
//!    deleted record back (`replace` never recreates, a touch never recreates; SPEC §6).
//!    A session being replaced by a rotation is still a member until its record is gone,
//!    so it is covered too, whichever step the rotation is at.
//! 2. Written but not yet joined: its cookie leaves the proxy only after the join succeeds.
//!    A join that replaces a revoked session finds that session no longer a member and
//!    fails, so the rotated session is deleted by its own writer and its cookie never leaves
//!    the proxy. A join that replaces nothing is a fresh login, which a revocation does not
//!    cover.
//! 3. Joined after the revocation took the members: the same as 2, as the join checks the
//!    replaced session's membership in the same atomic step that adds the new member.
//!
//! So each store must make `join` (check the replaced member, add the new one) one atomic
//! step on the user's index, and `revoke` (take and remove the members) another. A failed
//! rotation leaves the replaced session exactly as it was, a member with its record.
//! The records themselves may live elsewhere (in Redis Cluster, in other slots).

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::StoreError;
use crate::session::SessionId;

/// Bytes in a [`Handle`].
pub const HANDLE_BYTES: usize = 16;
/// Characters in a handle's text form (base64url without padding).
pub const HANDLE_TEXT_LEN: usize = 22;
pub use crate::config::LAST_SEEN_EVERY_SEC;
/// Characters of the `User-Agent` kept as a device fact.
pub const USER_AGENT_CHARS: usize = 200;

/// Domain separation: the handle is a hash of the ID under its own label, distinct from the
/// Redis key hash and the sealing key (SPEC §14). Short enough that label and ID fit one
/// SHA-256 block: the token of every request carries the handle.
const HANDLE_LABEL: &[u8] = b"sessiongate handle v1\0";

/// An opaque per-session handle (the token's `handle` claim, the admin API's name for a
/// session). A one-way hash of the session ID: knowing it, nobody can make the cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle([u8; HANDLE_BYTES]);

impl Handle {
    /// The handle of session `id`.
    pub fn of(id: &SessionId) -> Self {
        let digest = Sha256::new()
            .chain_update(HANDLE_LABEL)
            .chain_update(id.as_bytes())
            .finalize();
        let mut h = [0; HANDLE_BYTES];
        h.copy_from_slice(&digest[..HANDLE_BYTES]);
        Self(h)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HANDLE_BYTES] {
        &self.0
    }

    /// The text form (base64url, [`HANDLE_TEXT_LEN`] characters) without allocating.
    pub fn encode(&self) -> [u8; HANDLE_TEXT_LEN] {
        let mut buf = [0u8; HANDLE_TEXT_LEN];
        URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .expect("16 bytes encode to 22 base64url characters");
        buf
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({self})")
    }
}

/// A string that is not a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a session handle (expected {HANDLE_TEXT_LEN} characters of base64url)")]
pub struct BadHandle;

impl FromStr for Handle {
    type Err = BadHandle;

    fn from_str(s: &str) -> Result<Self, BadHandle> {
        if s.len() != HANDLE_TEXT_LEN {
            return Err(BadHandle);
        }
        let mut h = [0; HANDLE_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut h) {
            // The canonical spelling only: 22 characters carry 132 bits, the last 4 zero.
            Ok(HANDLE_BYTES) if Self(h).to_string() == s => Ok(Self(h)),
            _ => Err(BadHandle),
        }
    }
}

/// The device facts recorded when a session joins its user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// Unix seconds the session was created.
    pub created: u64,
    /// The first [`USER_AGENT_CHARS`] characters of the request's `User-Agent`.
    pub user_agent: String,
    /// The client address, as the proxy resolved it.
    pub ip: String,
}

impl NewDevice {
    /// Facts for a session created at `created` by a request with `user_agent` from `ip`.
    pub fn new(created: u64, user_agent: &str, ip: IpAddr) -> Self {
        let user_agent = match user_agent.char_indices().nth(USER_AGENT_CHARS) {
            Some((cut, _)) => &user_agent[..cut],
            None => user_agent,
        };
        Self {
            created,
            user_agent: user_agent.to_owned(),
            ip: ip.to_string(),
        }
    }
}

/// One live session of a user, as the device list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The session's handle.
    pub handle: Handle,
    /// Unix seconds the session was created.
    pub created: u64,
    /// Unix seconds the session was last used, to within [`LAST_SEEN_EVERY_SEC`].
    pub last_seen: u64,
    /// See [`NewDevice::user_agent`].
    pub user_agent: String,
    /// See [`NewDevice::ip`].
    pub ip: String,
}

/// What a [`join`](UserIndex::join) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The session is a member. Past `max_per_user`, the user's least recently seen
    /// sessions were destroyed (records and members); their handles.
    Member {
        /// Sessions destroyed to stay within `max_per_user`.
        evicted: Vec<Handle>,
    },
    /// The session to be replaced is no longer a member (destroyed or revoked meanwhile):
    /// nothing was added. The caller deletes the new record (the later destroy wins).
    SourceGone,
}

/// The user a session's data names: the top-level `field`, a non-empty string or a
/// number (as its JSON text); anything else names no user.
pub fn user_in(data: &Map<String, Value>, field: &str) -> Option<String> {
    match data.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The per-user index; see the [module docs](self).
pub trait UserIndex: Send + Sync + 'static {
    /// Makes session `id` a member of `user`'s index with `device`. With `replacing`
    /// (that session's user and ID), only while that session is a member, checked in the
    /// same atomic step; it stays one until the caller has deleted its record and makes it
    /// leave. Past `max_per_user` (0 = no limit; the replaced session not counted) destroys
    /// the user's least recently seen other sessions (oldest `last_seen`, then oldest
    /// `created`).
    fn join(
        &self,
        user: &str,
        id: &SessionId,
        device: &NewDevice,
        replacing: Option<(&str, &SessionId)>,
        max_per_user: usize,
    ) -> impl Future<Output = Result<Joined, StoreError>> + Send;

    /// Session `id` is no longer a member of `user`'s index (destroyed, or its data no
    /// longer names that user). Idempotent.
    fn leave(
        &self,
        user: &str,
        id: &SessionId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Destroys every session of `user` but `keep`: members and records. Returns their
    /// handles. Once it has returned, no load on any proxy returns any of them.
    fn revoke(
        &self,
        user: &str,
        keep: Option<&SessionId>,
    ) -> impl Future<Output = Result<Vec<Handle>, StoreError>> + Send;

    /// Destroys the session `handle` names when it is a member of `user`'s index (of any
    /// user's, when `user` is `None`: the admin API). True when one was destroyed.
    fn revoke_handle(
        &self,
        user: Option<&str>,
        handle: &Handle,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The user's live sessions, oldest created first; an unknown user has none.
    fn devices(&self, user: &str) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_round_trips_its_text_and_differs_per_session() {
        let a = SessionId::random();
        let h = Handle::of(&a);
        let text = h.to_string();
        assert_eq!(text.len(), HANDLE_TEXT_LEN);
        assert_eq!(text.parse::<Handle>(), Ok(h));
        assert_eq!(Handle::of(&a), h);
        assert_ne!(Handle::of(&SessionId::random()), h);
        assert!(!text.contains(a.encode().as_str()));
    }

    #[test]
    fn non_canonical_or_wrong_length_handles_are_refused() {
        let text = Handle::of(&SessionId::random()).to_string();
        for bad in [
            "",
            &text[..21],
            &format!("{text}A"),
            "!!!!!!!!!!!!!!!!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAB", // the last 4 bits must be zero
            "AAAAAAAAAAAAAAAAAAAA+/",
        ] {
            assert_eq!(bad.parse::<Handle>(), Err(BadHandle), "{bad:?}");
        }
    }

    #[test]
    fn the_user_is_a_non_empty_string_or_a_number() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"s":"42","n":42,"f":1.5,"e":"","b":true,"o":{"id":1},"z":null}"#,
        )
        .unwrap();
        assert_eq!(user_in(&data, "s").as_deref(), Some("42"));
        assert_eq!(user_in(&data, "n").as_deref(), Some("42"));
        assert_eq!(user_in(&data, "f").as_deref(), Some("1.5"));
        for field in ["e", "b", "o", "z", "missing"] {
            assert_eq!(user_in(&data, field), None, "{field}");
        }
    }

    #[test]
    fn the_user_agent_is_cut_at_200_characters_not_bytes() {
        let ua = "é".repeat(300);
        let d = NewDevice::new(1, &ua, "192.0.2.1".parse().unwrap());
        assert_eq!(d.user_agent.chars().count(), USER_AGENT_CHARS);
        assert_eq!(d.ip, "192.0.2.1");
    }
}
