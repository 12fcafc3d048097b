//! Sessions at rest (SPEC §14): how the Redis store names and seals a session, so that a
//! dump of Redis, a `SCAN`, or a stolen backup yields neither a usable session ID nor any
//! session data, and a value altered or moved inside Redis is refused.
//!
//! # Key
//!
//! The Redis key of a session is `namespace` followed by its [`KeyHash`]: SHA-256 of the 43
//! characters of the session ID, as 43 characters of base64url without padding. Nothing in
//! it can be turned back into the ID, and so into a cookie.
//!
//! # Value (format 3)
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | format version, `3` | clear, authenticated |
//! | 8 | `created`, Unix seconds, big-endian | clear, authenticated |
//! | 8 | `cookie_sent`, Unix seconds, big-endian | clear, authenticated |
//! | 8 | `auth_time`, Unix seconds of the last `X-Session-Set` (SPEC §11), big-endian; 0 = none | clear, authenticated |
//! | 16 | digest: HMAC-SHA256 of the data under the session's digest key, first 16 bytes | clear, authenticated |
//! | 8 | `touched`, Unix seconds, big-endian: when the entry's expiry was last set | clear |
//! | 12 | nonce, fresh from the OS random source on every write | clear |
//! | n | the session data (its JSON text), encrypted with ChaCha20-Poly1305 | sealed |
//! | 16 | the Poly1305 tag | |
//!
//! The first five fields are the *header*. The associated data of the AEAD is the 32 raw
//! bytes of the key hash followed by the header: the clear fields cannot be changed without
//! the value failing to open, and a value copied under another session's key fails too
//! (its key hash, and its key, differ). A value that fails to open, or has another format
//! version, is [`CorruptRecord`]; the store reports it and the proxy treats it as no session.
//! A new clear field (a user index) goes into the header and a new format version: it is
//! then authenticated, and compared by the compare-and-set below, without any further step.
//!
//! `touched` (format 3) is the one field outside the header, and so neither authenticated
//! nor compared: the Redis store's touch script rewrites it in place (`SETRANGE`) when it
//! extends the expiry, which no script could do under the AEAD. It is a scheduling hint
//! only (when to extend the expiry next, see the Redis store): whoever can change it in Redis
//! can as well change or remove the expiry itself, so it gives that party nothing new.
//! Format 2 values (the same without `auth_time` and `touched`) are refused like any other
//! version: after an upgrade from a version that wrote them, their sessions start again.
//!
//! # Format 4: a session bound to a device (SPEC §16)
//!
//! A session registered for DBSC is written as format 4: the layout above with version `4`,
//! whose sealed part is the device binding, then the data: 2 bytes (big-endian) of the
//! binding's length, the binding ([`Binding::to_bytes`]: the last answered challenge's
//! time and the public key), then the JSON text. The digest covers that whole sealed part,
//! so the compare-and-set sees a change of binding as it sees a change of data. Sessions
//! without a binding are written as format 3, byte for byte as before; a version that reads
//! only format 3 refuses a format 4 value (no session), so it never serves a bound session
//! without its bound cookie.
//!
//! # Keys
//!
//! Both keys come from the session ID alone, with HKDF-SHA256 (RFC 5869): HKDF-Expand with
//! the 32 bytes of the ID as the pseudorandom key and the label `sessiongate/v2/seal` (the
//! 32-byte ChaCha20-Poly1305 key) or `sessiongate/v2/cas` (the 32-byte HMAC key of the
//! digest) as info. The extract step is skipped as RFC 5869 §3.3 allows for input that is
//! already a uniformly random key of the hash's length, which the ID is (32 bytes from the OS
//! CSPRNG); extracting would only cost two more SHA-256 blocks on every request. The key
//! hash is a plain SHA-256 of the ID text, not an HKDF output, so it says nothing about
//! either key. Without the cookie, Redis holds nothing that
//! opens a value; with the cookie, the holder has the session anyway. No server secret is
//! involved, so rotating `SESSION_SECRET` leaves stored sessions readable.
//!
//! # Nonces
//!
//! Every write draws a fresh random 96-bit nonce. Each key belongs to one session and seals
//! one value per write of that session (its creation, each Update or Set in place, each
//! cookie refresh): a few thousand at most in a long life, far below the 2^32 messages per
//! key up to which random 96-bit nonces are considered safe (the bound NIST SP 800-38D §8.3
//! sets for GCM); the chance of a repeat among n writes is about n² / 2^97. Nonces are drawn
//! from a per-thread buffer refilled from the OS 32 at a time, one system call per 32
//! writes.
//!
//! # Compare-and-set on sealed values
//!
//! The same record seals to different bytes on every write, so the compare-and-set can no
//! longer compare whole values. It compares headers instead: [`SessionKeys::header`] of the
//! expected record against the first bytes of the stored value. Two records of one session
//! have the same header exactly when their version, timestamps and data are equal (up to a
//! collision of a keyed 128-bit digest, 2^-128 per comparison), which is the "holds exactly
//! `expected`" of the store contract, whatever nonce each was sealed with. The digest is
//! keyed by the session, so it is no dictionary oracle for low-entropy data such as
//! `{"userId":1}`; all it shows a reader of Redis is whether a session's data is the same
//! as at an earlier look. The loader does not recompute it (the AEAD already vouches that
//! the header was written together with the data by a holder of the session's key).
//!
//! # Algorithms and crates
//!
//! ChaCha20-Poly1305 (RFC 8439) rather than AES-256-GCM: every operation uses a key derived
//! for that one session, and AES-GCM's key schedule and GHASH table cost about as much as
//! opening a 100-byte value, while ChaCha20 has no key setup (measured: 24 ns against
//! 173 ns, then 222 ns against 183 ns to open ~100 bytes); it is also constant-time without
//! AES instructions. The AEAD is `ring`'s, already compiled into the proxy as the rustls
//! crypto provider, so it adds no crate. SHA-256, HMAC and the two HMAC steps of HKDF use
//! the `sha2` and `hmac` crates the cookie already uses: they use the CPU's SHA extensions,
//! which `ring` 0.17 does not (46 ns against 81 ns per SHA-256 block here). HKDF is
//! written out below (one output block of HKDF-Expand, RFC 5869 §2.3) and checked against
//! RFC 5869's test case 3.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ring::aead;
use sha2::{Digest, Sha256};

use crate::session::Binding;
use crate::session::{Record, SessionId};

/// The format version of a session without a device binding.
pub const FORMAT_VERSION: u8 = 3;
/// The format version of a session bound to a device (SPEC §16); same layout.
pub const BOUND_FORMAT_VERSION: u8 = 4;
/// HKDF-Expand label of the AEAD key.
const SEAL_LABEL: &[u8] = b"sessiongate/v2/seal";
/// HKDF-Expand label of the digest key.
const DIGEST_LABEL: &[u8] = b"sessiongate/v2/cas";
/// Bytes of the truncated HMAC-SHA256 digest in the header.
const DIGEST_LEN: usize = 16;
/// Bytes of the clear header: version, `created`, `cookie_sent`, `auth_time`, digest.
pub const HEADER_LEN: usize = 1 + 8 + 8 + 8 + DIGEST_LEN;
/// Offset of `touched` (8 bytes, after the header), for the store's touch script.
pub const TOUCHED_AT: usize = HEADER_LEN;
const TOUCHED_LEN: usize = 8;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to the session data.
pub const OVERHEAD: usize = HEADER_LEN + TOUCHED_LEN + NONCE_LEN + TAG_LEN;
/// Bytes of a SHA-256 output.
const HASH_LEN: usize = 32;
/// Characters of a key hash as base64url without padding.
pub const KEY_HASH_TEXT_LEN: usize = 43;

static AEAD: &aead::Algorithm = &aead::CHACHA20_POLY1305;

type HmacSha256 = Hmac<Sha256>;

/// Why a stored value is not a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptRecord {
    /// Shorter than the smallest sealed value.
    #[error("too short for a sealed record ({0} bytes)")]
    Truncated(usize),
    /// A clear JSON record (format 1) written by a version before sealing.
    #[error("a clear-text record of format 1 (written before sealing), which this version refuses")]
    Plain,
    /// A format version this version does not read.
    #[error(
        "unknown format version {0} (this version reads {FORMAT_VERSION} and {BOUND_FORMAT_VERSION})"
    )]
    Version(u8),
    /// The AEAD refused it: altered in Redis, moved from another key, or not ours.
    #[error("failed authentication (altered, or moved from another key)")]
    Unauthentic,
    /// Authentic, yet its data is not UTF-8 (never written by the proxy).
    #[error("authentic, but its data is not UTF-8")]
    NotUtf8,
    /// Authentic format 4, yet its device binding does not parse (never written by the proxy).
    #[error("authentic, but its device binding does not parse")]
    BadBinding,
}

/// SHA-256 of a session ID's text: what the store key carries instead of the ID. Safe to
/// log (SPEC §10.8): it cannot be turned into the ID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    raw: [u8; HASH_LEN],
    text: [u8; KEY_HASH_TEXT_LEN],
}

impl KeyHash {
    /// The key hash of `id`.
    pub fn of(id: &SessionId) -> Self {
        let raw: [u8; HASH_LEN] = Sha256::digest(id.encode().as_str().as_bytes()).into();
        let mut text = [0u8; KEY_HASH_TEXT_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .expect("32 bytes encode to exactly 43 base64url characters");
        debug_assert_eq!(n, KEY_HASH_TEXT_LEN);
        Self { raw, text }
    }

    /// The 43 base64url characters, as they appear in the Redis key.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).expect("base64url output is ASCII")
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.raw
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.as_str())
    }
}

/// The key hash and the keys of one session, derived from its ID.
pub struct SessionKeys {
    hash: KeyHash,
    /// HMAC keyed with the HKDF pseudorandom key (the ID), ready to expand.
    prk: HmacSha256,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("key_hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Derives the key hash of `id` and keys HMAC with it for HKDF-Expand. The AEAD and
    /// digest keys are expanded when an operation needs them.
    pub fn derive(id: &SessionId) -> Self {
        Self {
            hash: KeyHash::of(id),
            prk: HmacSha256::new_from_slice(id.as_bytes()).expect("HMAC takes keys of any length"),
        }
    }

    /// The key hash.
    pub fn key_hash(&self) -> &KeyHash {
        &self.hash
    }

    /// HKDF-Expand of one block: T(1) = HMAC(PRK, info || 0x01), the whole 32-byte output.
    fn expand(&self, label: &[u8]) -> [u8; 32] {
        self.prk
            .clone()
            .chain_update(label)
            .chain_update([1u8])
            .finalize()
            .into_bytes()
            .into()
    }

    fn aead_key(&self) -> aead::LessSafeKey {
        let key = aead::UnboundKey::new(AEAD, &self.expand(SEAL_LABEL))
            .expect("ChaCha20-Poly1305 takes a 32-byte key");
        aead::LessSafeKey::new(key)
    }

    fn digest_key(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.expand(DIGEST_LABEL))
            .expect("HMAC takes keys of any length")
    }

    /// The clear header `rec` is stored with: what the compare-and-set compares.
    pub fn header(&self, rec: &Record) -> [u8; HEADER_LEN] {
        header(self.digest_key(), rec)
    }

    /// `rec` as a format 3 value touched now, sealed under a fresh nonce.
    ///
    /// # Panics
    /// When the OS random source fails, which no supported platform does.
    pub fn seal(&self, rec: &Record) -> Vec<u8> {
        self.seal_touched(rec, crate::session::unix_now())
    }

    /// `rec` as a format 3 value whose `touched` is `touched` (Unix seconds), sealed under a
    /// fresh nonce.
    ///
    /// # Panics
    /// When the OS random source fails, which no supported platform does.
    pub fn seal_touched(&self, rec: &Record, touched: u64) -> Vec<u8> {
        let header = self.header(rec);
        let nonce = fresh_nonce();
        let binding = binding_prefix(rec);
        let mut out = Vec::with_capacity(OVERHEAD + binding.len() + rec.data.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&touched.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&binding);
        out.extend_from_slice(rec.data.as_bytes());
        let tag = self
            .aead_key()
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(self.aad(&header)),
                &mut out[HEADER_LEN + TOUCHED_LEN + NONCE_LEN..],
            )
            .expect("session data is far below ChaCha20-Poly1305's 256 GiB limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a value [`seal`](Self::seal) wrote for this session (decrypting in place).
    ///
    /// # Errors
    /// When `value` is not a format 3 value sealed under this session's key and key hash.
    pub fn open(&self, value: Vec<u8>) -> Result<Record, CorruptRecord> {
        self.open_touched(value).map(|(rec, _)| rec)
    }

    /// Like [`open`](Self::open), also returning `touched` (Unix seconds), which is not
    /// authenticated (see the module docs).
    ///
    /// # Errors
    /// When `value` is not a format 3 value sealed under this session's key and key hash.
    pub fn open_touched(&self, mut value: Vec<u8>) -> Result<(Record, u64), CorruptRecord> {
        match value.first() {
            Some(&FORMAT_VERSION | &BOUND_FORMAT_VERSION) => {}
            Some(b'{') => return Err(CorruptRecord::Plain),
            Some(&other) => return Err(CorruptRecord::Version(other)),
            None => return Err(CorruptRecord::Truncated(0)),
        }
        if value.len() < OVERHEAD {
            return Err(CorruptRecord::Truncated(value.len()));
        }
        let (header, rest) = value.split_at_mut(HEADER_LEN);
        let header: &[u8; HEADER_LEN] = (&*header).try_into().expect("split at HEADER_LEN");
        let (touched, rest) = rest.split_at_mut(TOUCHED_LEN);
        let touched = be_u64(touched);
        let (nonce, sealed) = rest.split_at_mut(NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).expect("split at NONCE_LEN");
        let plain = self
            .aead_key()
            .open_in_place(nonce, aead::Aad::from(self.aad(header)), sealed)
            .map_err(|_| CorruptRecord::Unauthentic)?;
        let (dbsc, plain) = if header[0] == BOUND_FORMAT_VERSION {
            let (len, rest) = plain.split_at_checked(2).ok_or(CorruptRecord::BadBinding)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let (binding, data) = rest
                .split_at_checked(len)
                .ok_or(CorruptRecord::BadBinding)?;
            let binding = Binding::from_bytes(binding).ok_or(CorruptRecord::BadBinding)?;
            (Some(Arc::new(binding)), data)
        } else {
            (None, &*plain)
        };
        let data = std::str::from_utf8(plain).map_err(|_| CorruptRecord::NotUtf8)?;
        let rec = Record {
            created: be_u64(&header[1..9]),
            cookie_sent: be_u64(&header[9..17]),
            auth_time: Some(be_u64(&header[17..25])).filter(|&t| t != 0),
            data: Arc::from(data),
            dbsc,
        };
        Ok((rec, touched))
    }

    /// The associated data: the key hash, then the header.
    fn aad(&self, header: &[u8; HEADER_LEN]) -> [u8; HASH_LEN + HEADER_LEN] {
        let mut aad = [0u8; HASH_LEN + HEADER_LEN];
        aad[..HASH_LEN].copy_from_slice(&self.hash.raw);
        aad[HASH_LEN..].copy_from_slice(header);
        aad
    }
}

fn header(digest_key: HmacSha256, rec: &Record) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = if rec.dbsc.is_some() {
        BOUND_FORMAT_VERSION
    } else {
        FORMAT_VERSION
    };
    header[1..9].copy_from_slice(&rec.created.to_be_bytes());
    header[9..17].copy_from_slice(&rec.cookie_sent.to_be_bytes());
    header[17..25].copy_from_slice(&rec.auth_time.unwrap_or(0).to_be_bytes());
    let tag = digest_key
        .chain_update(binding_prefix(rec))
        .chain_update(rec.data.as_bytes())
        .finalize()
        .into_bytes();
    header[25..].copy_from_slice(&tag[..DIGEST_LEN]);
    header
}

/// What format 4 seals before the data: the binding's length (2 bytes) and the binding;
/// empty for a session without one (format 3).
fn binding_prefix(rec: &Record) -> Vec<u8> {
    let Some(binding) = &rec.dbsc else {
        return Vec::new();
    };
    let bytes = binding.to_bytes();
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(
        &u16::try_from(bytes.len())
            .expect("a binding is at most about 1 KB")
            .to_be_bytes(),
    );
    out.extend_from_slice(&bytes);
    out
}

/// 12 bytes from the OS random source, never handed out twice. The OS is asked for 32
/// nonces' worth at a time (one system call instead of one per write).
///
/// # Panics
/// When the OS has no entropy source, which no supported platform lacks.
fn fresh_nonce() -> [u8; NONCE_LEN] {
    const PER_FILL: usize = 32;
    thread_local! {
        static POOL: RefCell<([u8; NONCE_LEN * PER_FILL], usize)> =
            const { RefCell::new(([0; NONCE_LEN * PER_FILL], NONCE_LEN * PER_FILL)) };
    }
    POOL.with_borrow_mut(|(buf, used)| {
        if *used == buf.len() {
            getrandom::fill(buf).expect("the OS random source is available");
            *used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[*used..*used + NONCE_LEN]);
        *used += NONCE_LEN;
        nonce
    })
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests;
