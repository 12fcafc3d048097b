//! Unit tests of the seal module.
use super::*;
use proptest::prelude::*;

fn rec(data: &str) -> Record {
    Record {
        created: 1_700_000_000,
        cookie_sent: 1_700_000_100,
        data: Arc::from(data),
        auth_time: None,
    }
}

/// `rec(data)` as after an X-Session-Set: sealed as format 3.
fn rec_set(data: &str) -> Record {
    Record {
        auth_time: Some(1_700_000_050),
        ..rec(data)
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A value built by another implementation of the format above (Python's hashlib and
/// hmac for SHA-256 and HKDF-Expand, the `cryptography` package's ChaCha20Poly1305) for
/// the ID whose bytes are 0, 1, ..., 31 and the nonce 100, 101, ..., 111.
#[test]
fn opens_a_value_sealed_by_another_implementation() {
    let id: SessionId = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
        .parse()
        .unwrap();
    assert_eq!(
        id.as_bytes(),
        &std::array::from_fn::<u8, 32, _>(|i| i as u8)
    );
    let keys = SessionKeys::derive(&id);
    assert_eq!(
        keys.key_hash().as_str(),
        "6oZqdX5MOLq_qBJ8vppAnT4fk6AP8UiP9zX8-Rev_9A"
    );
    let want = rec(r#"{"userId":1,"name":"alice"}"#);
    let header = "02000000006553f100000000006553f164af263c6045baec435c88619e036cacfe";
    assert_eq!(keys.header(&want).to_vec(), unhex(header));
    let value = unhex(concat!(
        "02000000006553f100000000006553f164af263c6045baec435c88619e036cacfe",
        "6465666768696a6b6c6d6e6f",
        "6253ea67cc5dcc094d19cf4bab97fb1d8239fea43cfd1fc0f042b3",
        "2eb07d402cef82667da536655676bba6",
    ));
    assert_eq!(keys.open(value).unwrap(), want);
}

/// RFC 5869 Appendix A.3 (SHA-256, no info): the first 32 bytes of OKM from its PRK.
#[test]
fn hkdf_expand_matches_rfc5869_test_case_3() {
    let prk = unhex("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04");
    let keys = SessionKeys {
        hash: KeyHash::of(&SessionId::random()),
        prk: HmacSha256::new_from_slice(&prk).unwrap(),
    };
    assert_eq!(
        keys.expand(b"").to_vec(),
        unhex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d")
    );
}

#[test]
fn nonces_do_not_repeat_across_refills() {
    let nonces: std::collections::HashSet<_> = (0..200).map(|_| fresh_nonce()).collect();
    assert_eq!(nonces.len(), 200);
}

#[test]
fn seal_round_trips_with_a_fresh_nonce_and_the_same_header() {
    let keys = SessionKeys::derive(&SessionId::random());
    for (r, header_len) in [
        (rec(r#"{"name":"Zoë 名前 🚀"}"#), HEADER_LEN_V2),
        (rec_set(r#"{"name":"Zoë 名前 🚀"}"#), HEADER_LEN_V3),
    ] {
        let (one, two) = (keys.seal(&r), keys.seal(&r));
        assert_ne!(one, two, "a nonce was reused");
        assert_eq!(keys.header(&r).len(), header_len);
        assert_eq!(one[..header_len], two[..header_len]);
        assert_eq!(one[..header_len], *keys.header(&r));
        assert_eq!(one.len(), header_len + NONCE_AND_TAG_LEN + r.data.len());
        assert_eq!(keys.open(one).unwrap(), r);
        assert_eq!(keys.open(two).unwrap(), r);
    }
    let empty = rec("");
    assert_eq!(keys.open(keys.seal(&empty)).unwrap(), empty);
}

#[test]
fn headers_differ_when_any_field_differs() {
    let keys = SessionKeys::derive(&SessionId::random());
    let base = rec(r#"{"n":1}"#);
    let others = [
        rec(r#"{"n":2}"#),
        Record {
            created: 1,
            ..base.clone()
        },
        Record {
            cookie_sent: 1,
            ..base.clone()
        },
        Record {
            auth_time: Some(1),
            ..base.clone()
        },
        Record {
            auth_time: Some(2),
            ..base.clone()
        },
    ];
    for other in &others {
        assert_ne!(keys.header(&base), keys.header(other), "{other:?}");
    }
    // Keyed per session: the same record has another digest in another session.
    let elsewhere = SessionKeys::derive(&SessionId::random());
    assert_ne!(keys.header(&base), elsewhere.header(&base));
}

#[test]
fn a_value_under_another_sessions_key_fails() {
    let a = SessionKeys::derive(&SessionId::random());
    let b = SessionKeys::derive(&SessionId::random());
    let sealed = a.seal(&rec("{}"));
    assert_eq!(b.open(sealed), Err(CorruptRecord::Unauthentic));
}

#[test]
fn every_single_bit_flip_fails() {
    let keys = SessionKeys::derive(&SessionId::random());
    for r in [rec(r#"{"userId":1}"#), rec_set(r#"{"userId":1}"#)] {
        let sealed = keys.seal(&r);
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(keys.open(bad).is_err(), "bit {bit} flipped and it opened");
        }
    }
}

#[test]
fn other_formats_and_short_values_are_refused() {
    let keys = SessionKeys::derive(&SessionId::random());
    let v1 = br#"{"v":1,"created":0,"cookie_sent":0,"data":{}}"#.to_vec();
    assert_eq!(keys.open(v1), Err(CorruptRecord::Plain));
    let mut v4 = keys.seal(&rec("{}"));
    v4[0] = 4;
    assert_eq!(keys.open(v4), Err(CorruptRecord::Version(4)));
    // A format 2 value relabelled 3 (or back) does not open: the version is authenticated.
    let mut relabelled = keys.seal(&rec("{}"));
    relabelled[0] = FORMAT_V3;
    assert!(keys.open(relabelled).is_err());
    let mut relabelled = keys.seal(&rec_set("{}"));
    relabelled[0] = FORMAT_V2;
    assert!(keys.open(relabelled).is_err());
    assert_eq!(keys.open(Vec::new()), Err(CorruptRecord::Truncated(0)));
    for (r, header_len) in [(rec(""), HEADER_LEN_V2), (rec_set(""), HEADER_LEN_V3)] {
        let smallest = header_len + NONCE_AND_TAG_LEN;
        let sealed = keys.seal(&r);
        assert_eq!(sealed.len(), smallest);
        assert_eq!(
            keys.open(sealed[..smallest - 1].to_vec()),
            Err(CorruptRecord::Truncated(smallest - 1))
        );
    }
    let msg = CorruptRecord::Version(4).to_string();
    assert!(msg.contains("unknown format version 4"), "{msg}");
}

#[test]
fn key_hash_is_sha256_of_the_id_text_and_debug_shows_no_key() {
    let id = SessionId::random();
    let keys = SessionKeys::derive(&id);
    let text = id.encode();
    let hash = keys.key_hash();
    assert_eq!(
        hash.as_bytes().as_slice(),
        Sha256::digest(text.as_str().as_bytes()).as_slice()
    );
    assert_eq!(
        URL_SAFE_NO_PAD.decode(hash.as_str()).unwrap(),
        hash.as_bytes()
    );
    assert_eq!(hash.to_string(), hash.as_str());
    let shown = format!("{keys:?} {hash:?}");
    assert!(!shown.contains(text.as_str()), "{shown}");
    assert!(shown.contains(hash.as_str()), "{shown}");
}

/// Session data: any Unicode text of at most 8192 bytes (the default `max_bytes`).
fn data() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=8192).prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > 8192 {
                break;
            }
            s.push(c);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sealed_records_round_trip_and_no_bit_flip_opens(
        data in data(),
        created in any::<u64>(),
        cookie_sent in any::<u64>(),
        auth_time in any::<Option<u64>>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let keys = SessionKeys::derive(&SessionId::random());
        let r = Record { created, cookie_sent, data: Arc::from(data.as_str()), auth_time };
        let sealed = keys.seal(&r);
        prop_assert_eq!(keys.open(sealed.clone()).unwrap(), r);
        let bit = flip.index(sealed.len() * 8);
        let mut bad = sealed;
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(keys.open(bad).is_err(), "bit {} flipped and it opened", bit);
    }
}
