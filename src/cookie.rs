//! The session cookie (SPEC §4): `ID.SIG` signing and constant-time verification with key
//! rotation, reading our cookie out of (and removing it from) `Cookie` request headers, and
//! building the `Set-Cookie` values that set or clear it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::{CookieSettings, SameSite};
use crate::secrets::Secret;
use crate::session::{ID_TEXT_LEN, SessionId};

type HmacSha256 = Hmac<Sha256>;

/// Length of the signature part: 32 bytes of HMAC-SHA256 as base64url without padding.
const SIG_TEXT_LEN: usize = 43;
/// Length of a whole cookie value `ID.SIG`.
pub const VALUE_LEN: usize = ID_TEXT_LEN + 1 + SIG_TEXT_LEN;

/// A cookie that verified, and whether it was signed with a previous key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The session ID the cookie carries.
    pub id: SessionId,
    /// True when a `SESSION_SECRET_PREVIOUS` key signed it: re-sign on this response.
    pub rotated: bool,
}

/// Signs and verifies cookie values. Each key's HMAC state is built once.
#[derive(Clone)]
pub struct CookieCodec {
    current: HmacSha256,
    previous: Vec<HmacSha256>,
}

impl CookieCodec {
    /// A codec that signs with `current` and also accepts `previous` keys, in order.
    pub fn new(current: &Secret, previous: &[Secret]) -> Self {
        let mac = |s: &Secret| {
            HmacSha256::new_from_slice(s.expose()).expect("HMAC accepts keys of any length")
        };
        Self {
            current: mac(current),
            previous: previous.iter().map(mac).collect(),
        }
    }

    /// The cookie value `ID.SIG` for `id`, signed with the current key.
    pub fn sign(&self, id: &SessionId) -> String {
        let id_text = id.encode();
        let mut mac = self.current.clone();
        mac.update(id_text.as_str().as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(VALUE_LEN);
        out.push_str(id_text.as_str());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Verifies a cookie value. `None` for anything malformed, too long or badly signed.
    /// The tag comparison is constant-time (`hmac`'s `verify_slice`).
    pub fn verify(&self, value: &[u8]) -> Option<Verified> {
        if value.len() != VALUE_LEN || value[ID_TEXT_LEN] != b'.' {
            return None;
        }
        let (id_text, sig_text) = (&value[..ID_TEXT_LEN], &value[ID_TEXT_LEN + 1..]);
        let mut sig = [0u8; 33];
        let n = URL_SAFE_NO_PAD.decode_slice(sig_text, &mut sig).ok()?;
        if n != 32 {
            return None;
        }
        let id: SessionId = std::str::from_utf8(id_text).ok()?.parse().ok()?;
        let check = |key: &HmacSha256| {
            let mut mac = key.clone();
            mac.update(id_text);
            mac.verify_slice(&sig[..32]).is_ok()
        };
        if check(&self.current) {
            return Some(Verified { id, rotated: false });
        }
        self.previous
            .iter()
            .any(check)
            .then_some(Verified { id, rotated: true })
    }
}

/// Our cookies found in the request's `Cookie` headers, and those headers without them.
#[derive(Debug, Default)]
pub struct RequestCookies<'a> {
    /// Values of every cookie with our name, in order of appearance.
    pub values: Vec<&'a [u8]>,
    /// The other cookies joined with `; ` (RFC 9113 §8.2.3), or `None` when none is left.
    pub rest: Option<Vec<u8>>,
}

/// Splits the `Cookie` header values of `headers` into ours (by `name`) and the rest.
/// Returns `None` when no cookie with our name is present, so the caller can leave the
/// headers untouched without allocating.
pub fn split_ours<'a>(headers: &'a HeaderMap, name: &str) -> Option<RequestCookies<'a>> {
    let headers = headers.get_all(http::header::COOKIE);
    let name = name.as_bytes();
    let is_ours = |pair: &[u8]| {
        let pair = trim(pair);
        pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'='
    };
    if !headers
        .iter()
        .any(|h| h.as_bytes().split(|b| *b == b';').any(is_ours))
    {
        return None;
    }
    let mut found = RequestCookies::default();
    let mut rest = Vec::new();
    for pair in headers
        .iter()
        .flat_map(|h| h.as_bytes().split(|b| *b == b';'))
    {
        if is_ours(pair) {
            found.values.push(&trim(pair)[name.len() + 1..]);
        } else if !trim(pair).is_empty() {
            if !rest.is_empty() {
                rest.extend_from_slice(b"; ");
            }
            rest.extend_from_slice(trim(pair));
        }
    }
    found.rest = (!rest.is_empty()).then_some(rest);
    Some(found)
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Builds `Set-Cookie` values for the configured cookie attributes. The attributes are
/// rendered once by the `cookie` crate; setting a cookie then only joins three strings.
#[derive(Debug, Clone)]
pub struct SetCookieBuilder {
    /// `NAME=`
    prefix: String,
    /// `; HttpOnly; SameSite=…; Path=…; Max-Age=…` as the `cookie` crate renders them.
    suffix: String,
    /// The whole clearing header: empty value, `Max-Age=0`, same Path and Domain.
    clear: HeaderValue,
}

impl SetCookieBuilder {
    /// A builder for cookie `name` with `Max-Age = max_age_sec`.
    pub fn new(name: &str, settings: CookieSettings, max_age_sec: u64) -> Self {
        let render = |value: &'static str, max_age: i64| {
            let mut c = cookie::Cookie::build((name.to_owned(), value))
                .path(settings.path.clone())
                .http_only(settings.http_only)
                .secure(settings.secure)
                .same_site(match settings.same_site {
                    SameSite::Strict => cookie::SameSite::Strict,
                    SameSite::Lax => cookie::SameSite::Lax,
                    SameSite::None => cookie::SameSite::None,
                })
                .max_age(cookie::time::Duration::seconds(max_age));
            if !settings.domain.is_empty() {
                c = c.domain(settings.domain.clone());
            }
            c.build().to_string()
        };
        // Render with a placeholder value and cut around it: `NAME=` + value + attributes.
        let template = render("V", i64::try_from(max_age_sec).unwrap_or(i64::MAX));
        let prefix = format!("{name}=");
        let suffix = template
            .strip_prefix(&format!("{prefix}V"))
            .expect("the cookie crate renders NAME=VALUE first")
            .to_owned();
        let mut clear = HeaderValue::try_from(render("", 0))
            .expect("validated cookie attributes form a valid header value");
        clear.set_sensitive(true);
        Self {
            prefix,
            suffix,
            clear,
        }
    }

    /// `Set-Cookie` that sets the session cookie to `value` (an `ID.SIG` from [`CookieCodec`]).
    pub fn set(&self, value: String) -> HeaderValue {
        let mut text = String::with_capacity(self.prefix.len() + value.len() + self.suffix.len());
        text.push_str(&self.prefix);
        text.push_str(&value);
        text.push_str(&self.suffix);
        let mut v = HeaderValue::try_from(text)
            .expect("validated cookie attributes and a base64url value form a valid header value");
        v.set_sensitive(true);
        v
    }

    /// `Set-Cookie` that clears the session cookie: same name, Path and Domain, empty
    /// value, `Max-Age=0`.
    pub fn clear(&self) -> HeaderValue {
        self.clear.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    fn codec() -> CookieCodec {
        CookieCodec::new(&secret("0123456789abcdef0123456789abcdef"), &[])
    }

    /// Known answer: HMAC-SHA256(key, ID text), computed independently with
    /// `printf %s AAAA…A | openssl dgst -sha256 -mac HMAC -macopt key:0123…def -binary`, base64url.
    #[test]
    fn known_answer_vector() {
        let id: SessionId = "A".repeat(43).parse().unwrap();
        let value = codec().sign(&id);
        assert_eq!(
            value,
            format!(
                "{}.{}",
                "A".repeat(43),
                "lPHfNAAgCq327wdNM4pJ7LbYsTxs0K_PtOgwHFJnf94"
            )
        );
        assert_eq!(
            codec().verify(value.as_bytes()),
            Some(Verified { id, rotated: false })
        );
    }

    #[test]
    fn tampered_truncated_and_extended_values_fail() {
        let c = codec();
        let value = c.sign(&SessionId::random());
        let mut bytes = value.clone().into_bytes();
        bytes[5] = if bytes[5] == b'a' { b'b' } else { b'a' };
        assert_eq!(c.verify(&bytes), None);
        let mut bytes = value.clone().into_bytes();
        bytes[60] = if bytes[60] == b'a' { b'b' } else { b'a' };
        assert_eq!(c.verify(&bytes), None);
        assert_eq!(c.verify(&value.as_bytes()[..VALUE_LEN - 1]), None);
        assert_eq!(c.verify(format!("{value}A").as_bytes()), None);
        assert_eq!(c.verify(b""), None);
        assert_eq!(c.verify(b"="), None);
        assert_eq!(c.verify("é".repeat(43).as_bytes()), None);
        let mut multibyte = "é".repeat(21).into_bytes();
        multibyte.push(b'A');
        multibyte.push(b'.');
        multibyte.extend_from_slice(&[b'A'; 43]);
        assert_eq!(c.verify(&multibyte), None);
    }

    #[test]
    fn foreign_key_fails_and_previous_key_verifies_as_rotated() {
        let old = secret("an-old-secret-that-is-32-bytes-long!");
        let new = secret("a-new-secret-that-is-32-bytes-long!!");
        let id = SessionId::random();
        let signed_old = CookieCodec::new(&old, &[]).sign(&id);
        assert_eq!(
            CookieCodec::new(&new, &[]).verify(signed_old.as_bytes()),
            None
        );
        let rotating = CookieCodec::new(&new, std::slice::from_ref(&old));
        assert_eq!(
            rotating.verify(signed_old.as_bytes()),
            Some(Verified { id, rotated: true })
        );
        assert_eq!(
            rotating.verify(rotating.sign(&id).as_bytes()),
            Some(Verified { id, rotated: false })
        );
    }

    fn cookies(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::COOKIE, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn split_ours_splits_and_keeps_the_rest() {
        let h = cookies(&["a=1; session=x;b=2", "session=y;  c=3 ; sessionx=4"]);
        let found = split_ours(&h, "session").unwrap();
        assert_eq!(found.values, vec![&b"x"[..], &b"y"[..]]);
        assert_eq!(
            found.rest.as_deref(),
            Some(&b"a=1; b=2; c=3; sessionx=4"[..])
        );

        let only = cookies(&["session=x"]);
        assert_eq!(split_ours(&only, "session").unwrap().rest, None);

        let none = cookies(&["a=1; sessions=2; =session=3"]);
        assert!(split_ours(&none, "session").is_none());

        let empty = cookies(&["session=&="]);
        assert_eq!(
            split_ours(&empty, "session").unwrap().values,
            vec![&b"&="[..]]
        );
    }

    #[test]
    fn set_and_clear_carry_the_configured_attributes() {
        let settings = CookieSettings {
            http_only: true,
            secure: true,
            same_site: SameSite::Strict,
            path: "/app".into(),
            domain: "example.com".into(),
        };
        let b = SetCookieBuilder::new("sid", settings, 3600);
        let set = b.set("v.s".into());
        let set = set.to_str().unwrap();
        assert!(set.starts_with("sid=v.s;"), "{set}");
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/app",
            "Domain=example.com",
            "Max-Age=3600",
        ] {
            assert!(set.contains(attr), "{attr} missing from {set}");
        }
        let clear = b.clear();
        let clear = clear.to_str().unwrap();
        assert!(clear.starts_with("sid=;"), "{clear}");
        assert!(clear.contains("Max-Age=0"));
        assert!(clear.contains("Path=/app") && clear.contains("Domain=example.com"));
    }
}
