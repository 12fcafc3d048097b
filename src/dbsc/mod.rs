//! Device Bound Session Credentials (SPEC §16): what a registered session keeps
//! ([`Binding`]), the challenges the browser signs, the short bound cookie, and the
//! session configuration the browser is given. The request path that uses them is
//! `proxy/dbsc.rs`.
//!
//! # Challenges
//!
//! A challenge is stateless: 8 bytes of issue time (Unix milliseconds), 8 random bytes and
//! a 16-byte HMAC-SHA256 tag over the purpose (registration or refresh), the session ID and
//! those 16 bytes, under a key derived from `SESSION_SECRET`; 43 characters of base64url.
//! Any proxy sharing the secret checks any proxy's challenge. It is good for
//! [`CHALLENGE_LIFE_MS`], for that session and purpose only.
//!
//! One use: the session's [`Binding`] records the issue time of the last challenge a proof
//! answered, and a proof is accepted only for a strictly later challenge. The record is
//! written by compare-and-set, so of two proofs racing with one challenge (on one proxy or
//! several sharing Redis) exactly one wins. No extra store entry is needed.
//!
//! # The bound cookie
//!
//! `<cookie_name>_bound`, value `EXP.TAG`: 8 bytes of expiry (Unix seconds) and a 16-byte
//! HMAC-SHA256 tag over the session ID and the expiry (another key derived from
//! `SESSION_SECRET`), 32 characters of base64url. It proves that the browser answered a
//! challenge with the session's key less than `bound_cookie_sec` ago; checked (in constant
//! time) on every request of a registered session.

pub mod proof;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::{CookieSettings, SameSite};
use crate::cookie::SetCookieBuilder;
use crate::secrets::Secret;
pub use crate::session::Binding;
use crate::session::SessionId;
pub use proof::{Proof, ProofError, PublicKey};

type HmacSha256 = Hmac<Sha256>;

/// Every path under it is served by the proxy when `[dbsc]` is enabled.
pub const PREFIX: &str = "/.well-known/sessiongate/dbsc/";
/// The registration endpoint.
pub const REGISTER_PATH: &str = "/.well-known/sessiongate/dbsc/register";
/// The refresh endpoint.
pub const REFRESH_PATH: &str = "/.well-known/sessiongate/dbsc/refresh";
/// How long a challenge may be answered.
pub const CHALLENGE_LIFE_MS: u64 = 5 * 60 * 1000;
/// How far in the future a challenge's issue time may be (clock skew between proxies).
const CLOCK_SKEW_MS: u64 = 5_000;
/// Bytes of a challenge: issue time, nonce, tag.
const CHALLENGE_BYTES: usize = 8 + 8 + TAG_BYTES;
/// Bytes of a truncated HMAC tag.
const TAG_BYTES: usize = 16;
/// Bytes of a bound cookie value: expiry, tag.
const BOUND_BYTES: usize = 8 + TAG_BYTES;
/// Characters of a bound cookie value.
const BOUND_TEXT_LEN: usize = 32;

/// What a challenge may be answered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Registering a key with a new session.
    Register,
    /// Refreshing the bound cookie of a registered session.
    Refresh,
}

/// Why a challenge is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Not one of ours for this session and purpose.
    #[error("the challenge was not issued for this session and purpose")]
    Foreign,
    /// Older than [`CHALLENGE_LIFE_MS`] (or from the future).
    #[error("the challenge has expired")]
    Expired,
    /// Not later than the last one answered.
    #[error("the challenge was already used")]
    Used,
}

/// `[dbsc]` at run time: the keys and the bound cookie.
#[derive(Clone)]
pub struct Dbsc {
    challenge_key: HmacSha256,
    bound_key: HmacSha256,
    /// `<cookie_name>_bound`.
    cookie_name: String,
    cookie: SetCookieBuilder,
    bound_cookie_sec: u64,
    /// The bound cookie's attributes as the session configuration states them.
    attributes: String,
}

impl std::fmt::Debug for Dbsc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dbsc")
            .field("cookie_name", &self.cookie_name)
            .field("bound_cookie_sec", &self.bound_cookie_sec)
            .finish_non_exhaustive()
    }
}

impl Dbsc {
    /// DBSC for the session cookie `cookie_name` with `settings`, its keys derived from
    /// `secret` (`SESSION_SECRET`).
    pub fn new(
        secret: &Secret,
        cookie_name: &str,
        settings: &CookieSettings,
        bound_cookie_sec: u64,
    ) -> Self {
        let derive = |label: &[u8]| {
            let key = HmacSha256::new_from_slice(secret.expose())
                .expect("HMAC takes keys of any length")
                .chain_update(label)
                .finalize()
                .into_bytes();
            HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length")
        };
        let cookie_name = bound_cookie_name(cookie_name);
        let mut attributes = format!("Path={}", settings.path);
        if !settings.domain.is_empty() {
            attributes.push_str(&format!("; Domain={}", settings.domain));
        }
        if settings.secure {
            attributes.push_str("; Secure");
        }
        if settings.http_only {
            attributes.push_str("; HttpOnly");
        }
        attributes.push_str(match settings.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        Self {
            challenge_key: derive(b"sessiongate/dbsc/v1/challenge"),
            bound_key: derive(b"sessiongate/dbsc/v1/bound-cookie"),
            cookie: SetCookieBuilder::new(&cookie_name, settings.clone(), bound_cookie_sec),
            cookie_name,
            bound_cookie_sec,
            attributes,
        }
    }

    /// The bound cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    fn challenge_tag(&self, purpose: Purpose, id: &SessionId, body: &[u8]) -> HmacSha256 {
        let purpose = match purpose {
            Purpose::Register => b'g',
            Purpose::Refresh => b'f',
        };
        self.challenge_key
            .clone()
            .chain_update([purpose])
            .chain_update(id.as_bytes())
            .chain_update(body)
    }

    /// A fresh challenge for session `id` and `purpose`, issued at `now_ms`.
    ///
    /// # Panics
    /// When the OS random source fails, which no supported platform does.
    pub fn challenge(&self, purpose: Purpose, id: &SessionId, now_ms: u64) -> String {
        let mut raw = [0u8; CHALLENGE_BYTES];
        raw[..8].copy_from_slice(&now_ms.to_be_bytes());
        getrandom::fill(&mut raw[8..16]).expect("the OS random source is available");
        let tag = self
            .challenge_tag(purpose, id, &raw[..16])
            .finalize()
            .into_bytes();
        raw[16..].copy_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks that `challenge` was issued for `id` and `purpose`, is still good at
    /// `now_ms`, and is later than `last_ms` (the last one answered). Returns its issue time.
    ///
    /// # Errors
    /// As [`ChallengeError`] says.
    pub fn check_challenge(
        &self,
        challenge: &str,
        purpose: Purpose,
        id: &SessionId,
        now_ms: u64,
        last_ms: u64,
    ) -> Result<u64, ChallengeError> {
        let mut raw = [0u8; CHALLENGE_BYTES + 1];
        match URL_SAFE_NO_PAD.decode_slice(challenge, &mut raw) {
            Ok(CHALLENGE_BYTES) => {}
            _ => return Err(ChallengeError::Foreign),
        }
        self.challenge_tag(purpose, id, &raw[..16])
            .verify_truncated_left(&raw[16..CHALLENGE_BYTES])
            .map_err(|_| ChallengeError::Foreign)?;
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if issued > now_ms + CLOCK_SKEW_MS || now_ms.saturating_sub(issued) > CHALLENGE_LIFE_MS {
            return Err(ChallengeError::Expired);
        }
        if issued <= last_ms {
            return Err(ChallengeError::Used);
        }
        Ok(issued)
    }

    fn bound_tag(&self, id: &SessionId, expiry: &[u8]) -> HmacSha256 {
        self.bound_key
            .clone()
            .chain_update(id.as_bytes())
            .chain_update(expiry)
    }

    /// `Set-Cookie` for a bound cookie of session `id`, good for `bound_cookie_sec` from `now`.
    pub fn bound_cookie(&self, id: &SessionId, now: u64) -> HeaderValue {
        let mut raw = [0u8; BOUND_BYTES];
        raw[..8].copy_from_slice(&(now + self.bound_cookie_sec).to_be_bytes());
        let tag = self.bound_tag(id, &raw[..8]).finalize().into_bytes();
        raw[8..].copy_from_slice(&tag[..TAG_BYTES]);
        self.cookie.set(URL_SAFE_NO_PAD.encode(raw))
    }

    /// True when `value` is a bound cookie of session `id` that has not expired at `now`.
    /// The tag is compared in constant time. The expiry is in whole seconds from a clock
    /// read in whole seconds, so the cookie is accepted to the end of its last second: never
    /// refused while the browser, which counts `Max-Age` from the exact time it got the
    /// cookie, still sends it (it would then see no reason to refresh it).
    pub fn bound_cookie_valid(&self, id: &SessionId, value: &[u8], now: u64) -> bool {
        let mut raw = [0u8; BOUND_BYTES + 1];
        if value.len() != BOUND_TEXT_LEN
            || URL_SAFE_NO_PAD.decode_slice(value, &mut raw) != Ok(BOUND_BYTES)
        {
            return false;
        }
        let expiry = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        self.bound_tag(id, &raw[..8])
            .verify_truncated_left(&raw[8..BOUND_BYTES])
            .is_ok()
            && now <= expiry
    }

    /// The session configuration JSON (the draft's "session instructions") for session `id`.
    pub fn session_config(&self, id: &SessionId) -> String {
        serde_json::json!({
            "session_identifier": session_identifier(id),
            "refresh_url": REFRESH_PATH,
            "scope": { "include_site": false },
            "credentials": [{
                "type": "cookie",
                "name": self.cookie_name,
                "attributes": self.attributes,
            }],
        })
        .to_string()
    }

    /// `Secure-Session-Registration` offering registration to the new session `id`.
    pub fn registration_offer(&self, id: &SessionId, now_ms: u64) -> HeaderValue {
        let challenge = self.challenge(Purpose::Register, id, now_ms);
        HeaderValue::try_from(format!(
            "(ES256 RS256);path=\"{REGISTER_PATH}\";challenge=\"{challenge}\""
        ))
        .expect("base64url and ASCII form a valid header value")
    }

    /// `Secure-Session-Challenge` asking session `id` to sign a fresh refresh challenge.
    pub fn refresh_challenge(&self, id: &SessionId, now_ms: u64) -> HeaderValue {
        let challenge = self.challenge(Purpose::Refresh, id, now_ms);
        HeaderValue::try_from(format!("\"{challenge}\";id=\"{}\"", session_identifier(id)))
            .expect("base64url and ASCII form a valid header value")
    }
}

/// The bound cookie's name for the session cookie `cookie_name`.
pub fn bound_cookie_name(cookie_name: &str) -> String {
    format!("{cookie_name}_bound")
}

/// The DBSC session identifier the browser is given for session `id`: 22 characters of
/// base64url from a SHA-256 of the ID under its own label. Nothing in it leads back to the
/// ID, and it does not change when `SESSION_SECRET` is rotated.
pub fn session_identifier(id: &SessionId) -> String {
    let hash = Sha256::new()
        .chain_update(b"sessiongate/dbsc/v1/session-identifier")
        .chain_update(id.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&hash[..16])
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbsc() -> Dbsc {
        let settings = CookieSettings {
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: String::new(),
        };
        Dbsc::new(
            &Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()),
            "session",
            &settings,
            600,
        )
    }

    #[test]
    fn challenges_are_bound_to_session_purpose_time_and_order() {
        let d = dbsc();
        let (id, other) = (SessionId::random(), SessionId::random());
        let c = d.challenge(Purpose::Refresh, &id, 1_000_000);
        assert_eq!(c.len(), 43);
        assert_eq!(
            d.check_challenge(&c, Purpose::Refresh, &id, 1_000_500, 0),
            Ok(1_000_000)
        );
        for (purpose, who, now, last, want) in [
            (
                Purpose::Register,
                &id,
                1_000_500,
                0,
                ChallengeError::Foreign,
            ),
            (
                Purpose::Refresh,
                &other,
                1_000_500,
                0,
                ChallengeError::Foreign,
            ),
            (
                Purpose::Refresh,
                &id,
                1_000_000 + CHALLENGE_LIFE_MS + 1,
                0,
                ChallengeError::Expired,
            ),
            (
                Purpose::Refresh,
                &id,
                1_000_000 - 6_000,
                0,
                ChallengeError::Expired,
            ),
            (
                Purpose::Refresh,
                &id,
                1_000_500,
                1_000_000,
                ChallengeError::Used,
            ),
        ] {
            assert_eq!(d.check_challenge(&c, purpose, who, now, last), Err(want));
        }
        let mut tampered = c.into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            d.check_challenge(&tampered, Purpose::Refresh, &id, 1_000_500, 0),
            Err(ChallengeError::Foreign)
        );
        assert_eq!(
            d.check_challenge("short", Purpose::Refresh, &id, 1_000_500, 0),
            Err(ChallengeError::Foreign)
        );
    }

    #[test]
    fn bound_cookies_are_bound_to_session_and_expiry() {
        let d = dbsc();
        let (id, other) = (SessionId::random(), SessionId::random());
        let set = d.bound_cookie(&id, 1_000).to_str().unwrap().to_owned();
        assert!(set.starts_with("session_bound="), "{set}");
        assert!(set.contains("Max-Age=600"), "{set}");
        let value = set["session_bound=".len()..].split(';').next().unwrap();
        assert!(d.bound_cookie_valid(&id, value.as_bytes(), 1_600));
        assert!(!d.bound_cookie_valid(&id, value.as_bytes(), 1_601));
        assert!(!d.bound_cookie_valid(&other, value.as_bytes(), 1_001));
        let mut tampered = value.as_bytes().to_vec();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        assert!(!d.bound_cookie_valid(&id, &tampered, 1_001));
        assert!(!d.bound_cookie_valid(&id, b"", 1_001));
    }

    #[test]
    fn the_configuration_names_the_cookie_and_the_refresh_url() {
        let d = dbsc();
        let id = SessionId::random();
        let config: serde_json::Value = serde_json::from_str(&d.session_config(&id)).unwrap();
        assert_eq!(config["session_identifier"], session_identifier(&id));
        assert_eq!(config["refresh_url"], REFRESH_PATH);
        assert_eq!(config["credentials"][0]["name"], "session_bound");
        assert_eq!(
            config["credentials"][0]["attributes"],
            "Path=/; Secure; HttpOnly; SameSite=Lax"
        );
    }
}
