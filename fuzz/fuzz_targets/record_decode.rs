//! The Redis record decoder (`store::seal`, SPEC §14): arbitrary bytes as a stored value,
//! and seal -> open round trips with one change chosen by the input.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sessiongate::session::{Record, SessionId};
use sessiongate::store::seal::{
    BOUND_FORMAT_VERSION, CorruptRecord, FORMAT_VERSION, HEADER_LEN, OVERHEAD, SessionKeys,
    TOUCHED_AT,
};

/// The session the stored values belong to: the ID whose bytes are 0, 1, ..., 31 (the
/// committed seeds hold values sealed for it).
static KEYS: LazyLock<SessionKeys> = LazyLock::new(|| {
    let id: SessionId = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
        .parse()
        .expect("a valid session ID");
    SessionKeys::derive(&id)
});
/// Another session.
static OTHER: LazyLock<SessionKeys> = LazyLock::new(|| SessionKeys::derive(&SessionId::random()));

/// Why `value` must be refused, from the layout alone, when it is not authentic.
fn reference(value: &[u8]) -> CorruptRecord {
    match value.first() {
        None => CorruptRecord::Truncated(0),
        Some(b'{') => CorruptRecord::Plain,
        Some(&v) if v != FORMAT_VERSION && v != BOUND_FORMAT_VERSION => CorruptRecord::Version(v),
        Some(_) if value.len() < OVERHEAD => CorruptRecord::Truncated(value.len()),
        Some(_) => CorruptRecord::Unauthentic,
    }
}

/// Arbitrary bytes as a stored value of `KEYS`' session.
fn check_decode(value: &[u8]) {
    match KEYS.open(value.to_vec()) {
        // Only a value sealed for this session opens (the seeds hold some); what it opens
        // to must be exactly what was sealed: the header and the length agree with it.
        Ok(rec) => {
            assert_eq!(value.len(), OVERHEAD + rec.data.len());
            assert_eq!(value[..HEADER_LEN], KEYS.header(&rec));
            assert_eq!(
                OTHER.open(value.to_vec()),
                Err(CorruptRecord::Unauthentic),
                "opened under another session's key"
            );
        }
        Err(e) => assert_eq!(e, reference(value), "refused for the wrong reason"),
    }
}

/// Bytes 0..8 `created`, 8..16 `cookie_sent`, 16..18 a position, 18 an XOR mask, 19 a length
/// change (high bit: append, else cut), the rest the data (lossy UTF-8). The value is sealed
/// as touched at `created`; the record has an `auth_time`, `created` + `cookie_sent`, when
/// `created` is odd (and that sum is not 0, which means none).
fn check_round_trip(input: &[u8]) {
    if input.len() < 20 {
        return;
    }
    let u64_at = |at: usize| u64::from_be_bytes(input[at..at + 8].try_into().unwrap());
    let rec = Record {
        created: u64_at(0),
        cookie_sent: u64_at(8),
        data: Arc::from(String::from_utf8_lossy(&input[20..]).as_ref()),
        auth_time: (u64_at(0) % 2 == 1)
            .then(|| u64_at(0).wrapping_add(u64_at(8)))
            .filter(|&t| t != 0),
        dbsc: None,
    };
    let sealed = KEYS.seal_touched(&rec, rec.created);
    assert_eq!(
        KEYS.open_touched(sealed.clone()),
        Ok((rec.clone(), rec.created))
    );
    assert_eq!(sealed.len(), OVERHEAD + rec.data.len());
    assert_eq!(sealed[..HEADER_LEN], KEYS.header(&rec));
    assert_eq!(KEYS.open(sealed.clone()), Ok(rec.clone()));
    assert_eq!(OTHER.open(sealed.clone()), Err(CorruptRecord::Unauthentic));

    let (at, mask, change) = (
        usize::from(u16::from_le_bytes([input[16], input[17]])),
        input[18],
        input[19],
    );
    let mut bad = sealed.clone();
    let i = at % bad.len();
    bad[i] ^= mask;
    let n = usize::from(change & 0x7f);
    if change & 0x80 != 0 {
        bad.extend(std::iter::repeat_n(mask, n));
    } else {
        bad.truncate(bad.len().saturating_sub(n));
    }
    if bad == sealed {
        return;
    }
    // `touched` is the one field outside the authenticated header (the store's touch
    // script rewrites it): a change confined to it opens to the same record.
    let touched = TOUCHED_AT..TOUCHED_AT + 8;
    let only_touched = bad.len() == sealed.len()
        && (0..bad.len()).all(|k| bad[k] == sealed[k] || touched.contains(&k));
    if only_touched {
        assert_eq!(KEYS.open(bad.clone()), Ok(rec.clone()));
    } else {
        let got = KEYS.open(bad.clone());
        assert!(got.is_err(), "a changed value opened: {got:?}");
    }
    check_decode(&bad);
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check_decode(rest);
    } else {
        check_round_trip(rest);
    }
});
