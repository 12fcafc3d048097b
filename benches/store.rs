//! The memory store (SPEC §7) on a store pre-filled with 100,000 sessions of ~100 bytes, and
//! the sealing the Redis store adds to every operation (SPEC §14).
//!
//! `cargo bench --bench store -- --warm-up-time 1 --measurement-time 3`
//!
//! - `store/load_hit`: the read every request with a valid cookie does (slides the TTL).
//! - `store/create`: a login; the store is full, so each create also evicts the least
//!   recently used entry (the steady state of a busy proxy at `max_sessions`). The new
//!   IDs are drawn outside the timed loop, so the OS random source is not measured.
//! - `store/replace`: the compare-and-set a cookie refresh or `X-Session-Update` does.
//! - `seal/open`: what a Redis `load` adds to the round trip: the key hash and keys derived
//!   from the ID, then the value opened (~100 bytes of data).
//! - `seal/seal`: what a Redis `create` adds: the same derivation, the header digest, a
//!   nonce (from a per-thread buffer the OS refills every 32 writes), the encryption.
//! - `seal/key_hash`: the key alone, as `delete` computes it.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sessiongate::session::{Record, SessionId};
use sessiongate::store::seal::{KeyHash, SessionKeys};
use sessiongate::store::{Cas, MemoryStore, SessionStore};

const SESSIONS: usize = 100_000;
const TTL: Duration = Duration::from_secs(86_400);
/// About 100 bytes of session data.
const DATA: &str = r#"{"userId":1234567,"name":"alice","roles":["admin","editor"],"tenant":"acme-corp","csrf":"x9f3k2"}"#;
/// New IDs are drawn in batches of this many, untimed, for `store/create`.
const ID_BATCH: u64 = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn record(cookie_sent: u64) -> Record {
    Record {
        created: 0,
        cookie_sent,
        data: Arc::from(DATA),
        auth_time: None,
        dbsc: None,
    }
}

/// A full store of `SESSIONS` entries and their IDs.
fn filled(rt: &tokio::runtime::Runtime) -> (MemoryStore, Vec<SessionId>) {
    let store = MemoryStore::new(SESSIONS);
    let ids: Vec<SessionId> = (0..SESSIONS).map(|_| SessionId::random()).collect();
    let rec = record(0);
    rt.block_on(async {
        for id in &ids {
            assert!(store.create(id, &rec, TTL).await.unwrap());
        }
    });
    assert_eq!(store.len(), SESSIONS);
    (store, ids)
}

fn store(c: &mut Criterion) {
    let rt = runtime();

    let (store, ids) = filled(&rt);
    let next = Cell::new(0usize);
    c.bench_function("store/load_hit", |b| {
        b.to_async(&rt).iter(|| {
            let i = next.get();
            next.set((i + 1) % ids.len());
            let (store, id) = (&store, &ids[i]);
            async move {
                let rec = store.load(black_box(id), TTL).await.unwrap();
                debug_assert!(rec.is_some());
                rec
            }
        })
    });
    drop(store);

    let (store, _) = filled(&rt);
    c.bench_function("store/create", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = &store;
            async move {
                let rec = record(0);
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(ID_BATCH);
                    let batch: Vec<SessionId> = (0..n).map(|_| SessionId::random()).collect();
                    let start = Instant::now();
                    for id in &batch {
                        black_box(store.create(black_box(id), &rec, TTL).await.unwrap());
                    }
                    elapsed += start.elapsed();
                    left -= n;
                }
                elapsed
            }
        })
    });
    drop(store);

    // Entry k % SESSIONS holds `cookie_sent = k / SESSIONS` when step k runs, so every
    // compare-and-set applies, as a refresh does.
    let (store, ids) = filled(&rt);
    let step = Cell::new(0u64);
    c.bench_function("store/replace", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, ids, step) = (&store, &ids, &step);
            async move {
                let mut pairs = (record(0), record(1));
                let start = Instant::now();
                for _ in 0..iters {
                    let k = step.get();
                    step.set(k + 1);
                    let round = k / SESSIONS as u64;
                    if pairs.0.cookie_sent != round {
                        pairs = (record(round), record(round + 1));
                    }
                    let id = &ids[(k % SESSIONS as u64) as usize];
                    let cas = store
                        .replace(black_box(id), &pairs.0, &pairs.1, TTL)
                        .await
                        .unwrap();
                    debug_assert_eq!(cas, Cas::Applied);
                    black_box(cas);
                }
                start.elapsed()
            }
        })
    });
}

fn seal(c: &mut Criterion) {
    let id = SessionId::random();
    let rec = record(1_700_000_000);
    let sealed = SessionKeys::derive(&id).seal(&rec);
    c.bench_function("seal/open", |b| {
        b.iter_batched(
            || sealed.clone(),
            |value| {
                let keys = SessionKeys::derive(black_box(&id));
                keys.open(value).unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("seal/seal", |b| {
        b.iter(|| SessionKeys::derive(black_box(&id)).seal(black_box(&rec)))
    });
    c.bench_function("seal/key_hash", |b| b.iter(|| KeyHash::of(black_box(&id))));
    // The two parts of seal/open: the keys, then the AEAD and the record.
    c.bench_function("seal/derive", |b| {
        b.iter(|| SessionKeys::derive(black_box(&id)))
    });
    let keys = SessionKeys::derive(&id);
    c.bench_function("seal/open_derived", |b| {
        b.iter_batched(
            || sealed.clone(),
            |value| keys.open(value).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, store, seal);
criterion_main!(benches);
