//! Cookie signing and verification, and the upstream token (SPEC §4, §5).
//!
//! `cargo bench --bench cookie -- --warm-up-time 1 --measurement-time 3`
//!
//! Every request with a session cookie pays one `verify` (two HMAC-SHA256 blocks after the
//! keyed state is cloned) and one `mint`; a login pays one `sign` and one `mint`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sessiongate::cookie::CookieCodec;
use sessiongate::secrets::Secret;
use sessiongate::session::SessionId;
use sessiongate::token::TokenSigner;

const CURRENT: &[u8] = b"bench-current-secret-0123456789abcdef";
const PREVIOUS: &[u8] = b"bench-previous-secret-0123456789abcdef";
const UPSTREAM: &[u8] = b"bench-upstream-secret-0123456789abcdef";

/// About 100 bytes of session data, the size the load benchmark's RSS target uses.
const DATA: &str = r#"{"userId":1234567,"name":"alice","roles":["admin","editor"],"tenant":"acme-corp","csrf":"x9f3k2"}"#;

fn secret(bytes: &[u8]) -> Secret {
    Secret::new(bytes.to_vec())
}

fn cookie(c: &mut Criterion) {
    let current = secret(CURRENT);
    let previous = secret(PREVIOUS);
    let codec = CookieCodec::new(&current, std::slice::from_ref(&previous));
    let old_codec = CookieCodec::new(&previous, &[]);
    let id = SessionId::random();
    let signed = codec.sign(&id);
    let signed_old = old_codec.sign(&id);
    assert!(codec.verify(signed.as_bytes()).is_some_and(|v| !v.rotated));
    assert!(
        codec
            .verify(signed_old.as_bytes())
            .is_some_and(|v| v.rotated)
    );
    // Right length and shape, wrong signature: the most work a forged cookie can cause.
    let mut garbage = signed.clone().into_bytes();
    garbage[50] = if garbage[50] == b'A' { b'B' } else { b'A' };
    assert!(codec.verify(&garbage).is_none());

    c.bench_function("cookie/sign", |b| b.iter(|| codec.sign(black_box(&id))));
    c.bench_function("cookie/verify_current_key", |b| {
        b.iter(|| codec.verify(black_box(signed.as_bytes())))
    });
    c.bench_function("cookie/verify_previous_key", |b| {
        b.iter(|| codec.verify(black_box(signed_old.as_bytes())))
    });
    c.bench_function("cookie/verify_garbage", |b| {
        b.iter(|| codec.verify(black_box(&garbage)))
    });
}

fn token(c: &mut Criterion) {
    let signer = TokenSigner::new(&secret(UPSTREAM), 60);
    let id = SessionId::random();
    c.bench_function("token/mint", |b| {
        b.iter(|| {
            signer.mint(
                black_box(&id),
                black_box(DATA),
                None,
                black_box(1_700_000_000),
            )
        })
    });
}

criterion_group!(benches, cookie, token);
criterion_main!(benches);
