//! Session identity and contents: [`SessionId`], the stored [`Record`], the RFC 7396 JSON
//! Merge Patch that `X-Session-Update` applies, and the [`Lifetime`] rules (SPEC §4, §6, §7).
//!
//! Session data is kept as serialized JSON text (always an object). It is parsed only
//! when a directive changes it or `[forward.headers]` needs a field.

mod binding;
mod lifetime;

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

pub use binding::{Binding, PublicKey};
pub use lifetime::Lifetime;

/// Length of a session ID in bytes (SPEC §4).
pub const ID_BYTES: usize = 32;
/// Length of a session ID as base64url text without padding.
pub const ID_TEXT_LEN: usize = 43;

/// A session ID: 32 bytes from the OS CSPRNG. It is a bearer credential, so its
/// `Debug` output is redacted and it is never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// Mints a fresh ID from the operating system's CSPRNG.
    ///
    /// # Panics
    /// When the OS has no entropy source, which no supported platform lacks.
    pub fn random() -> Self {
        // The OS is asked for IDs_PER_FILL IDs' worth at a time (one syscall instead of one
        // per login); each ID's bytes are wiped from the buffer as they are handed out.
        const IDS_PER_FILL: usize = 32;
        thread_local! {
            static POOL: RefCell<([u8; ID_BYTES * IDS_PER_FILL], usize)> =
                const { RefCell::new(([0; ID_BYTES * IDS_PER_FILL], ID_BYTES * IDS_PER_FILL)) };
        }
        POOL.with_borrow_mut(|(buf, used)| {
            if *used == buf.len() {
                getrandom::fill(buf).expect("the OS random source is available");
                *used = 0;
            }
            let chunk = &mut buf[*used..*used + ID_BYTES];
            let mut bytes = [0u8; ID_BYTES];
            bytes.copy_from_slice(chunk);
            chunk.fill(0);
            *used += ID_BYTES;
            Self(bytes)
        })
    }

    /// The 43-character base64url text form, as it appears in the cookie and store key.
    pub fn encode(&self) -> IdText {
        let mut buf = [0u8; ID_TEXT_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .expect("32 bytes encode to exactly 43 base64url characters");
        debug_assert_eq!(n, ID_TEXT_LEN);
        IdText(buf)
    }

    /// The raw bytes, for hashing into log-safe fingerprints.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// Error for text that is not a 43-character base64url session ID.
#[derive(Debug, thiserror::Error)]
#[error("not a session ID")]
pub struct BadSessionId;

impl FromStr for SessionId {
    type Err = BadSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != ID_TEXT_LEN {
            return Err(BadSessionId);
        }
        let mut bytes = [0u8; ID_BYTES];
        // 43 characters can carry 258 bits; the decoder rejects non-zero trailing bits,
        // so every ID has exactly one text form.
        match URL_SAFE_NO_PAD.decode_slice(s, &mut bytes) {
            Ok(ID_BYTES) => Ok(Self(bytes)),
            _ => Err(BadSessionId),
        }
    }
}

/// The text form of a [`SessionId`], on the stack.
#[derive(Clone, Copy)]
pub struct IdText([u8; ID_TEXT_LEN]);

impl IdText {
    /// The 43 ASCII characters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64url output is ASCII")
    }
}

/// What the store keeps for one session.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds when the session was created (for `absolute_ttl_sec`).
    pub created: u64,
    /// Unix seconds when the cookie was last sent to the client (for `cookie_refresh_sec`).
    pub cookie_sent: u64,
    /// The session data: a serialized JSON object.
    pub data: Arc<str>,
    /// Unix seconds of the session's last `X-Session-Set` (the token's `auth_time`, for
    /// `max_auth_age_sec`); `None` for a session made by `X-Session-Update` and never Set.
    pub auth_time: Option<u64>,
    /// SPEC §16: the device key of a session registered for DBSC; `None` otherwise.
    pub dbsc: Option<Arc<Binding>>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("created", &self.created)
            .field("cookie_sent", &self.cookie_sent)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("auth_time", &self.auth_time)
            .field("dbsc", &self.dbsc.is_some())
            .finish()
    }
}

impl Record {
    /// A new record created now with `data`, never Set (no `auth_time`).
    pub fn new(data: Arc<str>, now: u64) -> Self {
        Self {
            created: now,
            cookie_sent: now,
            data,
            auth_time: None,
            dbsc: None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Applies an RFC 7396 JSON Merge Patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!("target was just made an object")
    };
    merge_object(map, patch);
}

/// Applies the members of an object merge patch to the object `target` (RFC 7396).
pub fn merge_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_round_trips_through_text() {
        let id = SessionId::random();
        let text = id.encode();
        assert_eq!(text.as_str().len(), ID_TEXT_LEN);
        assert_eq!(text.as_str().parse::<SessionId>().unwrap(), id);
    }

    #[test]
    fn ids_are_distinct_across_refills() {
        // Several refills of the per-thread buffer: no ID repeats, none is all zeros (a
        // wiped slot handed out again would be).
        let ids: std::collections::HashSet<_> = (0..200).map(|_| SessionId::random()).collect();
        assert_eq!(ids.len(), 200);
        assert!(!ids.contains(&SessionId([0; ID_BYTES])));
    }

    #[test]
    fn id_text_rejects_wrong_length_alphabet_and_trailing_bits() {
        assert!("abc".parse::<SessionId>().is_err());
        assert!("!".repeat(43).parse::<SessionId>().is_err());
        assert!("A".repeat(44).parse::<SessionId>().is_err());
        // 'B' as the last character sets a trailing bit that 32 bytes cannot carry.
        let mut s = "A".repeat(42);
        s.push('B');
        assert!(s.parse::<SessionId>().is_err());
        assert!("é".repeat(21).parse::<SessionId>().is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", SessionId::random()), "SessionId(..)");
        let rec = Record::new(Arc::from(r#"{"secret":"x"}"#), 1);
        assert!(!format!("{rec:?}").contains("secret"));
    }

    /// The examples of RFC 7396 Appendix A.
    #[test]
    fn merge_patch_rfc7396_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
