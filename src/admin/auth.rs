//! The admin API's bearer token (SPEC §13): `Authorization: Bearer <SESSION_ADMIN_TOKEN>`,
//! compared in constant time.
//!
//! The token itself is not kept: only its HMAC-SHA256 under a key drawn at start. A
//! presented token is MACed under the same key and the tags are compared with `hmac`'s
//! constant-time `verify_slice`, so neither the comparison nor the token's length shows in
//! the time an answer takes.

use std::fmt;

use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::Sha256;

use crate::secrets::Secret;

type HmacSha256 = Hmac<Sha256>;

/// What the admin API checks a presented token against. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct AdminToken {
    key: [u8; 32],
    tag: [u8; 32],
}

impl AdminToken {
    /// Keeps `token` as its MAC under a fresh random key.
    pub fn new(token: &Secret) -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source is available");
        let tag = mac(&key, token.expose());
        Self { key, tag }
    }

    /// True when `headers` hold exactly one `Authorization: Bearer <token>` with this token.
    ///
    /// The scheme is case-insensitive and separated from the token by one or more spaces
    /// (RFC 9110 §11.1, §11.4; RFC 6750 §2.1); the token is compared exactly.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some(presented) = bearer(value.as_bytes()) else {
            return false;
        };
        let mut check = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        check.update(presented);
        check.verify_slice(&self.tag).is_ok()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// The token of a `Bearer` credential, or `None` for any other scheme or shape.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let start = rest.iter().position(|&b| b != b' ')?;
    if start == 0 {
        // `Bearerxyz`: no separator, so not this scheme.
        return None;
    }
    let token = &rest[start..];
    // One token68 (RFC 9110 §11.2): no spaces or tabs inside it or after it.
    (!token.iter().any(|&b| b == b' ' || b == b'\t')).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TOKEN: &str = "admin-token-0123456789abcdefghijklmnop";

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_exact_token_as_one_bearer_credential_is_admitted() {
        let t = AdminToken::new(&Secret::new(TOKEN.into()));
        for ok in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN}"),
        ] {
            assert!(t.admits(&with(&[&ok])), "{ok}");
        }
        let prefix = &TOKEN[..TOKEN.len() - 1];
        for bad in [
            String::new(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            TOKEN.to_owned(),
            format!("Bearer{TOKEN}"),
            format!("Bearer {prefix}"),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", TOKEN.to_uppercase()),
            format!("Bearer {TOKEN} {TOKEN}"),
            format!("Bearer {TOKEN}\t"),
            format!("Basic {TOKEN}"),
            format!("Bearer\t{TOKEN}"),
        ] {
            assert!(!t.admits(&with(&[&bad])), "{bad:?}");
        }
        assert!(!t.admits(&HeaderMap::new()));
        let one = format!("Bearer {TOKEN}");
        assert!(!t.admits(&with(&[&one, &one])), "two credentials");
    }

    #[test]
    fn debug_shows_nothing_of_the_token() {
        let t = AdminToken::new(&Secret::new(TOKEN.into()));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
    }
}
