//! Unit tests of the seal module.
use super::*;
use proptest::prelude::*;

fn rec(data: &str) -> Record {
    Record {
        created: 1_700_000_000,
        cookie_sent: 1_700_000_100,
        data: Arc::from(data),
        auth_time: None,
        dbsc: None,
    }
}

/// `rec(data)` as after an X-Session-Set: sealed as format 3.
fn rec_set(data: &str) -> Record {
    Record {
        auth_time: Some(1_700_000_050),
        ..rec(data)
    }
}

/// `rec(data)` registered for DBSC (SPEC §16): sealed as format 4.
fn rec_bound(data: &str) -> Record {
    Record {
        dbsc: Some(Arc::new(crate::session::Binding {
            key: crate::dbsc::PublicKey::Es256([7; 65]),
            last_challenge_ms: 1_700_000_000_123,
        })),
        ..rec(data)
    }
}

#[test]
fn a_bound_record_seals_as_format_4_and_round_trips() {
    let keys = SessionKeys::derive(&SessionId::random());
    let r = rec_bound(r#"{"userId":1}"#);
    let sealed = keys.seal(&r);
    assert_eq!(sealed[0], BOUND_FORMAT_VERSION);
    assert_eq!(sealed[..HEADER_LEN], keys.header(&r));
    assert_eq!(keys.open(sealed).unwrap(), r);
    // Unbound, the same record is format 3 as before.
    let plain = rec(r#"{"userId":1}"#);
    assert_eq!(keys.seal(&plain)[0], FORMAT_VERSION);
    // The header (what the compare-and-set compares) tells every binding change apart.
    let later = Record {
        dbsc: Some(Arc::new(crate::session::Binding {
            last_challenge_ms: 1_700_000_000_124,
            ..(**r.dbsc.as_ref().unwrap()).clone()
        })),
        ..r.clone()
    };
    let other_key = Record {
        dbsc: Some(Arc::new(crate::session::Binding {
            key: crate::dbsc::PublicKey::Es256([8; 65]),
            ..(**r.dbsc.as_ref().unwrap()).clone()
        })),
        ..r.clone()
    };
    let headers = [&plain, &r, &later, &other_key].map(|x| keys.header(x));
    for (i, a) in headers.iter().enumerate() {
        for b in &headers[i + 1..] {
            assert_ne!(a, b);
        }
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
/// the ID whose bytes are 0, 1, ..., 31, `auth_time` 1700000050, `touched` 1700000200 and
/// the nonce 100, 101, ..., 111.
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
    let want = rec_set(r#"{"userId":1,"name":"alice"}"#);
    let header =
        "03000000006553f100000000006553f164000000006553f132af263c6045baec435c88619e036cacfe";
    assert_eq!(keys.header(&want).to_vec(), unhex(header));
    let value = unhex(concat!(
        "03000000006553f100000000006553f164000000006553f132af263c6045baec435c88619e036cacfe",
        "000000006553f1c8",
        "6465666768696a6b6c6d6e6f",
        "6253ea67cc5dcc094d19cf4bab97fb1d8239fea43cfd1fc0f042b3",
        "98f9fe7b1a2dec13aca44d4e30e074cc",
    ));
    assert_eq!(keys.open_touched(value).unwrap(), (want, 1_700_000_200));
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
    for r in [
        rec(r#"{"name":"Zoë 名前 🚀"}"#),
        rec_set(r#"{"name":"Zoë 名前 🚀"}"#),
    ] {
        let (one, two) = (keys.seal(&r), keys.seal(&r));
        assert_ne!(one, two, "a nonce was reused");
        assert_eq!(one[..HEADER_LEN], two[..HEADER_LEN]);
        assert_eq!(one[..HEADER_LEN], keys.header(&r));
        assert_eq!(one.len(), OVERHEAD + r.data.len());
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
fn every_single_bit_flip_outside_touched_fails() {
    let keys = SessionKeys::derive(&SessionId::random());
    for r in [rec(r#"{"userId":1}"#), rec_set(r#"{"userId":1}"#)] {
        let sealed = keys.seal(&r);
        let touched = TOUCHED_AT * 8..(TOUCHED_AT + 8) * 8;
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if touched.contains(&bit) {
                // The one clear field the touch script rewrites: the record is unchanged.
                assert_eq!(keys.open(bad).unwrap(), r, "bit {bit} of touched");
                continue;
            }
            assert!(keys.open(bad).is_err(), "bit {bit} flipped and it opened");
        }
    }
}

#[test]
fn touched_is_stored_in_clear_after_the_header() {
    let keys = SessionKeys::derive(&SessionId::random());
    let r = rec("{}");
    let mut sealed = keys.seal_touched(&r, 1_700_000_000);
    assert_eq!(
        sealed[TOUCHED_AT..TOUCHED_AT + 8],
        1_700_000_000u64.to_be_bytes()
    );
    assert_eq!(
        keys.open_touched(sealed.clone()).unwrap(),
        (r.clone(), 1_700_000_000)
    );
    // What the touch script does: rewrite the field in place; the value still opens.
    sealed[TOUCHED_AT..TOUCHED_AT + 8].copy_from_slice(&1_700_000_500u64.to_be_bytes());
    assert_eq!(keys.open_touched(sealed).unwrap(), (r, 1_700_000_500));
}

#[test]
fn other_formats_and_short_values_are_refused() {
    let keys = SessionKeys::derive(&SessionId::random());
    let v1 = br#"{"v":1,"created":0,"cookie_sent":0,"data":{}}"#.to_vec();
    assert_eq!(keys.open(v1), Err(CorruptRecord::Plain));
    let mut v2 = keys.seal(&rec("{}"));
    v2[0] = 2;
    assert_eq!(keys.open(v2), Err(CorruptRecord::Version(2)));
    let mut v5 = keys.seal(&rec("{}"));
    v5[0] = 5;
    assert_eq!(keys.open(v5), Err(CorruptRecord::Version(5)));
    // A format 3 value relabelled 4 (or the reverse): the version is authenticated.
    let mut v4 = keys.seal(&rec("{}"));
    v4[0] = 4;
    assert_eq!(keys.open(v4), Err(CorruptRecord::Unauthentic));
    let mut v3 = keys.seal(&rec_bound("{}"));
    v3[0] = 3;
    assert_eq!(keys.open(v3), Err(CorruptRecord::Unauthentic));
    assert_eq!(keys.open(Vec::new()), Err(CorruptRecord::Truncated(0)));
    for r in [rec(""), rec_set("")] {
        let sealed = keys.seal(&r);
        assert_eq!(sealed.len(), OVERHEAD);
        assert_eq!(
            keys.open(sealed[..OVERHEAD - 1].to_vec()),
            Err(CorruptRecord::Truncated(OVERHEAD - 1))
        );
    }
    // A session without auth_time is not one whose auth_time was flipped to 0: the field
    // is authenticated like the rest of the header.
    let mut zeroed = keys.seal(&rec_set("{}"));
    zeroed[17..25].fill(0);
    assert_eq!(keys.open(zeroed), Err(CorruptRecord::Unauthentic));
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
    fn sealed_records_round_trip_and_no_bit_flip_outside_touched_opens(
        data in data(),
        created in any::<u64>(),
        cookie_sent in any::<u64>(),
        auth_time in any::<Option<u64>>(),
        bound in any::<Option<(u64, [u8; 32])>>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let keys = SessionKeys::derive(&SessionId::random());
        // With a binding (format 4): an ES256 key whose point bytes vary.
        let dbsc = bound.map(|(last_challenge_ms, bytes)| {
            let mut point = [4u8; 65];
            point[1..33].copy_from_slice(&bytes);
            Arc::new(crate::session::Binding {
                key: crate::dbsc::PublicKey::Es256(point),
                last_challenge_ms,
            })
        });
        let r = Record { created, cookie_sent, data: Arc::from(data.as_str()), auth_time, dbsc };
        let sealed = keys.seal(&r);
        prop_assert_eq!(keys.open(sealed.clone()).unwrap(), r);
        // Any bit but those of `touched` (bytes 33..41, not authenticated).
        let bit = flip.index((sealed.len() - 8) * 8);
        let bit = if bit >= TOUCHED_AT * 8 { bit + 64 } else { bit };
        let mut bad = sealed;
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(keys.open(bad).is_err(), "bit {} flipped and it opened", bit);
    }
}
