//! The `X-Session` token sent to the upstream (SPEC §5): a compact JWS (JWT) signed HS256
//! with `SESSION_UPSTREAM_SECRET`, and the plain `[forward.headers]` values.
//!
//! The JOSE header never changes, so its encoding is a constant; the session data is
//! spliced into the claims as the JSON text the store holds, without re-parsing it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use std::cell::RefCell;

use http::HeaderValue;
use serde_json::Value;
use sha2::Sha256;

use crate::secrets::Secret;
use crate::session::SessionId;
use crate::store::users::Handle;

/// base64url of `{"alg":"HS256","typ":"JWT"}`.
const JOSE_HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The token's `iss` claim.
pub const ISSUER: &str = "sessiongate";

/// Mints upstream tokens. The keyed HMAC state is built once.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
    ttl_sec: u64,
}

impl TokenSigner {
    /// A signer with `key` whose tokens live `ttl_sec` seconds.
    pub fn new(key: &Secret, ttl_sec: u64) -> Self {
        Self {
            mac: Hmac::new_from_slice(key.expose()).expect("HMAC accepts keys of any length"),
            ttl_sec,
        }
    }

    /// The token for session `id` with `data` (a JSON object's text), issued at `now`;
    /// `auth_time` (SPEC §11) is the time of the session's last `X-Session-Set`, if any.
    pub fn mint(
        &self,
        id: &SessionId,
        data: &str,
        auth_time: Option<u64>,
        now: u64,
    ) -> HeaderValue {
        let handle = Handle::of(id).encode();
        let id = id.encode();
        let (mut iat, mut exp, mut auth) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        let iat = iat.format(now);
        let exp = exp.format(now.saturating_add(self.ttl_sec));
        let (auth_key, auth): (&[u8], &[u8]) = match auth_time {
            Some(t) => (br#","auth_time":"#, auth.format(t).as_bytes()),
            None => (b"", b""),
        };
        let claims: [&[u8]; 15] = [
            br#"{"iss":""#,
            ISSUER.as_bytes(),
            br#"","sid":""#,
            id.as_str().as_bytes(),
            br#"","handle":""#,
            &handle,
            br#"","data":"#,
            data.as_bytes(),
            br#","iat":"#,
            iat.as_bytes(),
            br#","exp":"#,
            exp.as_bytes(),
            auth_key,
            auth,
            b"}",
        ];
        // The claims text goes through a per-thread scratch buffer; the token is encoded
        // straight into one exact-size allocation, which the header value then owns.
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let token = SCRATCH.with_borrow_mut(|text| {
            text.clear();
            for part in claims {
                text.extend_from_slice(part);
            }
            let (head, claims_end) = (
                JOSE_HEADER_B64.len(),
                JOSE_HEADER_B64.len() + 1 + b64_len(text.len()),
            );
            let mut token = vec![0u8; claims_end + 1 + b64_len(32)];
            token[..head].copy_from_slice(JOSE_HEADER_B64.as_bytes());
            token[head] = b'.';
            URL_SAFE_NO_PAD
                .encode_slice(&text, &mut token[head + 1..claims_end])
                .expect("the buffer is sized for the claims");
            let mut mac = self.mac.clone();
            mac.update(&token[..claims_end]);
            token[claims_end] = b'.';
            URL_SAFE_NO_PAD
                .encode_slice(mac.finalize().into_bytes(), &mut token[claims_end + 1..])
                .expect("32 bytes encode to 43 base64url characters");
            token
        });
        let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from(token))
            .expect("base64url text is a valid header value");
        value.set_sensitive(true);
        value
    }
}

/// Length of the unpadded base64 text of `n` bytes.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// The header value for a `[forward.headers]` field: strings as they are, numbers and
/// booleans as text, other values as JSON. `None` when the field is missing or `null`, or
/// when the text cannot be a header value (control characters).
pub fn field_value(data: &Value, field: &str) -> Option<HeaderValue> {
    let v = data.get(field)?;
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => v.to_string(),
    };
    let mut value = HeaderValue::try_from(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jose_header_constant_is_the_spec_header() {
        assert_eq!(
            URL_SAFE_NO_PAD.decode(JOSE_HEADER_B64).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    /// Known answer, computed independently with Python's `hmac` and `base64` modules.
    #[test]
    fn known_answer_token() {
        let key = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let id: SessionId = "A".repeat(43).parse().unwrap();
        let token = TokenSigner::new(&key, 60).mint(&id, r#"{"userId":1}"#, None, 1_700_000_000);
        assert_eq!(token.to_str().unwrap(), KNOWN_TOKEN);
        assert!(token.is_sensitive());
    }

    const KNOWN_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzZXNzaW9uZ2F0ZSIsInNpZCI6IkFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUEiLCJoYW5kbGUiOiJyQnFPT09oMVhXa09SbVhsOEEwdVNBIiwiZGF0YSI6eyJ1c2VySWQiOjF9LCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMDA2MH0.ocbHronYt0BOKVNMMicOjJQB3dAXlikCDER_Y5KWq88";

    #[test]
    fn claims_decode_to_the_spec_shape() {
        let key = Secret::new(vec![7; 32]);
        let id = SessionId::random();
        let claims = |auth_time| -> Value {
            let token = TokenSigner::new(&key, 60).mint(&id, r#"{"a":"é"}"#, auth_time, 100);
            let parts: Vec<&str> = token.to_str().unwrap().split('.').collect();
            assert_eq!(parts.len(), 3);
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
        };
        let (sid, handle) = (id.encode(), Handle::of(&id).to_string());
        assert_eq!(
            claims(None),
            json!({"iss":"sessiongate","sid":sid.as_str(),"handle":handle,"data":{"a":"é"},"iat":100,"exp":160})
        );
        assert_eq!(
            claims(Some(90)),
            json!({"iss":"sessiongate","sid":sid.as_str(),"handle":handle,"data":{"a":"é"},"iat":100,"exp":160,"auth_time":90})
        );
    }

    #[test]
    fn field_values_render_per_type() {
        let data = json!({"s":"alice","n":42,"b":true,"o":{"x":1},"a":[1],"nul":null,"bad":"a\nb"});
        let get = |f: &str| field_value(&data, f).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("s").as_deref(), Some("alice"));
        assert_eq!(get("n").as_deref(), Some("42"));
        assert_eq!(get("b").as_deref(), Some("true"));
        assert_eq!(get("o").as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(get("a").as_deref(), Some("[1]"));
        assert_eq!(get("nul"), None);
        assert_eq!(get("missing"), None);
        assert_eq!(get("bad"), None);
    }
}
