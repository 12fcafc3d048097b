//! `CookieCodec::verify` and `split_ours` on arbitrary bytes, and the sign -> verify round trip.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiongate::cookie::{CookieCodec, VALUE_LEN, Verified, split_ours};
use sessiongate::secrets::Secret;
use sessiongate::session::SessionId;

const CURRENT: &[u8] = b"fuzz-current-secret-0123456789abcdef";
const PREVIOUS: &[u8] = b"fuzz-previous-secret-0123456789abcdef";
const OTHER: &[u8] = b"fuzz-unrelated-secret-0123456789abcdef";

struct Codecs {
    /// Signs with CURRENT, accepts PREVIOUS.
    rotating: CookieCodec,
    /// Signs with PREVIOUS only.
    previous: CookieCodec,
    /// A key nobody else uses.
    other: CookieCodec,
}

static CODECS: LazyLock<Codecs> = LazyLock::new(|| {
    let s = |k: &[u8]| Secret::new(k.to_vec());
    Codecs {
        rotating: CookieCodec::new(&s(CURRENT), &[s(PREVIOUS)]),
        previous: CookieCodec::new(&s(PREVIOUS), &[]),
        other: CookieCodec::new(&s(OTHER), &[]),
    }
});

/// Anything `verify` accepts must be exactly the canonical signature of the ID it returns.
fn check_verify(value: &[u8]) -> Option<Verified> {
    let c = &*CODECS;
    let got = c.rotating.verify(value);
    if let Some(v) = got {
        assert_eq!(value.len(), VALUE_LEN);
        let canonical = if v.rotated {
            c.previous.sign(&v.id)
        } else {
            c.rotating.sign(&v.id)
        };
        assert_eq!(
            canonical.as_bytes(),
            value,
            "accepted a non-canonical value"
        );
        assert_eq!(c.other.verify(value), None, "a foreign key accepted it");
    }
    got
}

fn check_split_ours(data: &[u8], name: &str) {
    // Each line is one Cookie header.
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Ok(v) = HeaderValue::from_bytes(line) else {
            return;
        };
        headers.append(http::header::COOKIE, v);
    }
    // Reference: does any `;`-separated pair, trimmed, start with `name=` and carry a value?
    let ours = |pair: &[u8]| {
        let pair = pair.trim_ascii();
        pair.len() > name.len() && pair.starts_with(name.as_bytes()) && pair[name.len()] == b'='
    };
    let expect_some = headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|h| h.as_bytes().split(|b| *b == b';').any(ours));
    let Some(found) = split_ours(&headers, name) else {
        assert!(!expect_some, "missed our cookie");
        return;
    };
    assert!(expect_some, "found a cookie that is not ours");
    assert!(!found.values.is_empty());
    for v in &found.values {
        let _ = check_verify(v);
    }
    if let Some(rest) = &found.rest {
        assert!(!rest.is_empty());
        // The rest must be a valid header value again, and hold none of ours.
        let rest = HeaderValue::from_bytes(rest).expect("the rest is a valid header value");
        let mut again = HeaderMap::new();
        again.insert(http::header::COOKIE, rest);
        assert!(
            split_ours(&again, name).is_none(),
            "our cookie survived in the rest"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let c = &*CODECS;

    // 1. verify on arbitrary bytes.
    let _ = check_verify(data);

    // 2. split_ours on arbitrary Cookie headers, with the default name and a prefixed one.
    check_split_ours(data, "session");
    check_split_ours(data, "__Host-sid");

    // 3. sign -> verify round trip with an ID made from the first 32 bytes.
    if data.len() >= 32 {
        let text = URL_SAFE_NO_PAD.encode(&data[..32]);
        let id: SessionId = text.parse().expect("32 bytes are an ID");
        assert_eq!(id.encode().as_str(), text);
        let signed = c.rotating.sign(&id);
        assert_eq!(signed.len(), VALUE_LEN);
        assert_eq!(
            c.rotating.verify(signed.as_bytes()),
            Some(Verified { id, rotated: false })
        );
        let old = c.previous.sign(&id);
        assert_eq!(
            c.rotating.verify(old.as_bytes()),
            Some(Verified { id, rotated: true })
        );
        assert_eq!(c.other.verify(signed.as_bytes()), None);
        // Any single-byte change is refused (one text form per ID and per tag).
        if data.len() >= 34 {
            let mut bad = signed.clone().into_bytes();
            let pos = usize::from(data[32]) % VALUE_LEN;
            let byte = data[33];
            if bad[pos] != byte {
                bad[pos] = byte;
                assert_eq!(c.rotating.verify(&bad), None, "tampered value accepted");
            }
        }
        // In a Cookie header among others, ours is found and verifies.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("a=1; session={signed} ;b=2")).unwrap(),
        );
        let found = split_ours(&h, "session").unwrap();
        assert_eq!(found.values, vec![signed.as_bytes()]);
        assert_eq!(found.rest.as_deref(), Some(&b"a=1; b=2"[..]));
    }
});
