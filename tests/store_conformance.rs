//! The store contract (`src/store/mod.rs`) as one suite, expanded for every store: memory
//! always, Redis, Redis Cluster and Redis Sentinel on real `redis-server` (and
//! `redis-sentinel`) processes started per test (skipped with a message when they are not
//! on `PATH`, except in CI).
//!
//! For Redis it also checks what is at rest (SPEC §14): keys that are hashes, values sealed so
//! that a `SCAN` + `GET` of everything finds no session ID and no data, and a value altered
//! or moved in Redis that is refused as [`StoreError::Corrupt`].
//!
//! Expiry is observed through the contract itself: a `replace` whose `expected` never
//! matches answers `Changed` while the entry lives and `Gone` once it expired, without
//! writing or sliding anything. Tests poll that with a deadline; none asserts timing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sessiongate::config::StoreSettings;
use sessiongate::session::{Record, SessionId};
use sessiongate::store::seal::{CorruptRecord, SessionKeys};
use sessiongate::store::{Cas, MemoryStore, RedisStore, SessionStore, Store, StoreError};
use sha2::Digest as _;
use support::redis_server::RedisServer;
use support::stores::{Fixture, Redis};

const NAMESPACE: &str = "conformance:";
const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_secs(1);

fn memory_store() -> Option<Fixture> {
    Fixture::memory(MemoryStore::new(1000))
}

/// A memory store large enough to be split over shards (one lock each).
fn sharded_memory_store() -> Option<Fixture> {
    let store = MemoryStore::new(1_000_000);
    assert!(store.shards() > 1);
    Fixture::memory(store)
}

fn open(settings: &StoreSettings) -> Store {
    Store::Redis(RedisStore::open(settings, NAMESPACE).unwrap())
}

fn redis_store() -> Option<Fixture> {
    Fixture::redis(open)
}

fn cluster_store() -> Option<Fixture> {
    Fixture::cluster(open)
}

fn sentinel_store() -> Option<Fixture> {
    Fixture::sentinel(open)
}

impl Fixture {
    /// The namespace, then SHA-256 of the ID text as base64url without padding (SPEC §14).
    fn key(id: &SessionId) -> String {
        let hash = sha2::Sha256::digest(id.encode().as_str().as_bytes());
        format!("{NAMESPACE}{}", URL_SAFE_NO_PAD.encode(hash))
    }

    /// The raw stored value of `id` (`None` for memory).
    fn raw(&self, id: &SessionId) -> Option<Option<Vec<u8>>> {
        self.query(::redis::cmd("GET").arg(Self::key(id)))
    }

    /// The stored value of `id` opened with its keys (`None` for memory).
    fn opened(&self, id: &SessionId) -> Option<Record> {
        let raw = self.raw(id)?.expect("the entry exists");
        Some(
            SessionKeys::derive(id)
                .open(raw)
                .expect("the stored value opens"),
        )
    }

    /// The remaining TTL of `id` in seconds (`None` for memory; -2 when absent).
    fn ttl(&self, id: &SessionId) -> Option<i64> {
        self.query(::redis::cmd("TTL").arg(Self::key(id)))
    }

    /// Stores `value` under `id` directly in Redis.
    fn set_raw(&self, id: &SessionId, value: &[u8]) {
        let _: Option<()> = self.query(::redis::cmd("SET").arg(Self::key(id)).arg(value));
    }

    /// Every key and value in Redis, from a `SCAN` of each server (`None` for memory).
    fn dump(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let servers = self.is_redis().then(|| self.servers())?;
        Some(servers.into_iter().flat_map(RedisServer::dump).collect())
    }

    /// True while the entry lives; never writes or slides it (see the module docs).
    async fn alive(&self, id: &SessionId) -> bool {
        let never = Record::new(r#"{"probe":"never stored"}"#.into(), 0);
        match self.store.replace(id, &never, &never, SHORT).await.unwrap() {
            Cas::Changed(_) => true,
            Cas::Gone => false,
            Cas::Applied => panic!("a probe record was stored"),
        }
    }

    /// Polls until the entry has expired, with a deadline.
    async fn wait_expired(&self, id: &SessionId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.alive(id).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry did not expire"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn rec(data: &str) -> Record {
    Record {
        created: 1_700_000_000,
        cookie_sent: 1_700_000_100,
        data: data.into(),
        auth_time: None,
        dbsc: None,
    }
}

async fn missing_id_loads_none(fx: &Fixture) {
    let id = SessionId::random();
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), None);
    assert_eq!(
        fx.raw(&id).map(|v| v.is_none()),
        fx.is_redis().then_some(true)
    );
}

async fn create_then_load_returns_the_record(fx: &Fixture) {
    let id = SessionId::random();
    let r = rec(r#"{"userId":1,"name":"alice"}"#);
    assert!(fx.store.create(&id, &r, LONG).await.unwrap());
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(r.clone()));
    if fx.is_redis() {
        // The key is the namespace plus the key hash, the value sealed (format 3), and it
        // carries an expiry.
        let raw = fx.raw(&id).unwrap().unwrap();
        assert_eq!(raw[0], 3, "format version");
        assert_eq!(fx.opened(&id), Some(r.clone()));
        let ttl = fx.ttl(&id).unwrap();
        assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    }
    if let Redis::Server(server) = &fx.redis {
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*")
            .query(&mut server.connection())
            .unwrap();
        assert_eq!(keys, vec![Fixture::key(&id)]);
    }
}

async fn create_refuses_to_overwrite(fx: &Fixture) {
    let id = SessionId::random();
    let first = rec(r#"{"n":1}"#);
    assert!(fx.store.create(&id, &first, LONG).await.unwrap());
    assert!(
        !fx.store
            .create(&id, &rec(r#"{"n":2}"#), LONG)
            .await
            .unwrap()
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(first));
}

async fn replace_applies_when_the_entry_holds_expected(fx: &Fixture) {
    let id = SessionId::random();
    let a = rec(r#"{"n":1}"#);
    let b = rec(r#"{"n":2}"#);
    assert!(fx.store.create(&id, &a, LONG).await.unwrap());
    assert_eq!(
        fx.store.replace(&id, &a, &b, LONG).await.unwrap(),
        Cas::Applied
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(b.clone()));
    if fx.is_redis() {
        assert_eq!(fx.opened(&id), Some(b));
        assert!(fx.ttl(&id).unwrap() > 0);
    }
}

async fn replace_reports_changed_and_writes_nothing(fx: &Fixture) {
    let id = SessionId::random();
    let a = rec(r#"{"n":1}"#);
    assert!(fx.store.create(&id, &a, LONG).await.unwrap());
    let stale = rec(r#"{"n":0}"#);
    let got = fx
        .store
        .replace(&id, &stale, &rec(r#"{"n":2}"#), LONG)
        .await
        .unwrap();
    assert_eq!(got, Cas::Changed(a.clone()));
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(a));
}

async fn replace_never_recreates_a_deleted_entry(fx: &Fixture) {
    let id = SessionId::random();
    let a = rec(r#"{"n":1}"#);
    let b = rec(r#"{"n":2}"#);
    assert_eq!(
        fx.store.replace(&id, &a, &b, LONG).await.unwrap(),
        Cas::Gone
    );
    assert!(fx.store.create(&id, &a, LONG).await.unwrap());
    fx.store.delete(&id).await.unwrap();
    assert_eq!(
        fx.store.replace(&id, &a, &b, LONG).await.unwrap(),
        Cas::Gone
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), None);
    assert_eq!(
        fx.raw(&id).map(|v| v.is_none()),
        fx.is_redis().then_some(true)
    );
}

async fn concurrent_replaces_apply_exactly_once(fx: &Fixture) {
    let id = SessionId::random();
    let a = Arc::new(rec(r#"{"n":0}"#));
    assert!(fx.store.create(&id, &a, LONG).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 1..=8 {
        let store = fx.store.clone();
        let a = a.clone();
        tasks.spawn(async move {
            let new = rec(&format!(r#"{{"n":{n}}}"#));
            (store.replace(&id, &a, &new, LONG).await.unwrap(), new)
        });
    }
    let mut applied = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (cas, new) = done.unwrap();
        match cas {
            Cas::Applied => applied.push(new),
            Cas::Changed(current) => assert_ne!(current, *a),
            Cas::Gone => panic!("the entry exists"),
        }
    }
    assert_eq!(applied.len(), 1, "exactly one compare-and-set wins");
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), applied.pop());
}

async fn delete_is_idempotent(fx: &Fixture) {
    let id = SessionId::random();
    fx.store.delete(&id).await.unwrap();
    assert!(fx.store.create(&id, &rec("{}"), LONG).await.unwrap());
    fx.store.delete(&id).await.unwrap();
    fx.store.delete(&id).await.unwrap();
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), None);
}

async fn load_slides_the_ttl(fx: &Fixture) {
    // Two entries with the same short TTL; only `used` is loaded (with a long TTL). Once
    // `idle` has expired, `used` must still be there.
    let used = SessionId::random();
    let idle = SessionId::random();
    let r = rec(r#"{"n":1}"#);
    assert!(fx.store.create(&used, &r, SHORT).await.unwrap());
    assert!(fx.store.create(&idle, &r, SHORT).await.unwrap());
    if fx.is_redis() {
        // Redis slides once `touch_interval` (1 s here) has passed since the last touch
        // (SPEC §15): make `used` last touched 10 s ago.
        let now = sessiongate::session::unix_now();
        let old = SessionKeys::derive(&used).seal_touched(&r, now - 10);
        let _: Option<()> = fx.query(
            ::redis::cmd("SET")
                .arg(Fixture::key(&used))
                .arg(old)
                .arg("EX")
                .arg(1),
        );
    }
    assert_eq!(fx.store.load(&used, LONG).await.unwrap(), Some(r.clone()));
    if fx.is_redis() {
        let ttl = fx.ttl(&used).unwrap();
        assert!(
            ttl > 1 && ttl <= 60,
            "the touch did not slide the TTL: {ttl}"
        );
    }
    fx.wait_expired(&idle).await;
    assert_eq!(fx.store.load(&used, LONG).await.unwrap(), Some(r));
}

async fn expired_entry_loads_none(fx: &Fixture) {
    let id = SessionId::random();
    assert!(fx.store.create(&id, &rec("{}"), SHORT).await.unwrap());
    fx.wait_expired(&id).await;
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), None);
    assert!(
        fx.store.create(&id, &rec("{}"), LONG).await.unwrap(),
        "an expired ID is free"
    );
}

async fn records_round_trip_unicode_data(fx: &Fixture) {
    let id = SessionId::random();
    let data =
        r#"{"name":"Zoë 名前 🚀","raw":"\u00e9\n\"q\"","nested":{"k":[1,2.5,null,true]},"e":""}"#;
    let r = rec(data);
    assert!(fx.store.create(&id, &r, LONG).await.unwrap());
    let loaded = fx.store.load(&id, LONG).await.unwrap().unwrap();
    assert_eq!(&*loaded.data, data, "data is kept byte for byte");
    assert_eq!(loaded, r);
    let next = rec(r#"{"name":"Ünïcödé ✓","emoji":"👩‍💻"}"#);
    assert_eq!(
        fx.store.replace(&id, &loaded, &next, LONG).await.unwrap(),
        Cas::Applied
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(next));
}

/// The reason of a `StoreError::Corrupt` from `load`, after checking that it names the
/// key hash and never the session ID.
async fn corrupt_reason(fx: &Fixture, id: &SessionId) -> CorruptRecord {
    match fx.store.load(id, LONG).await {
        Err(err @ StoreError::Corrupt { .. }) => {
            let shown = err.to_string();
            assert!(!shown.contains(id.encode().as_str()), "{shown}");
            let StoreError::Corrupt { key_hash, reason } = err else {
                unreachable!()
            };
            assert_eq!(Fixture::key(id), format!("{NAMESPACE}{key_hash}"));
            assert!(shown.contains(key_hash.as_str()), "{shown}");
            reason
        }
        other => panic!("expected a corrupt value, got {other:?}"),
    }
}

async fn corrupt_stored_value_is_an_error(fx: &Fixture) {
    assert!(fx.is_redis(), "a case for stores that hold bytes");
    let id = SessionId::random();
    fx.set_raw(&id, b"not a record");
    assert!(matches!(
        corrupt_reason(fx, &id).await,
        CorruptRecord::Version(b'n')
    ));
    // Format 1, the clear JSON of versions before sealing: refused, not read.
    let old = SessionId::random();
    fx.set_raw(
        &old,
        br#"{"v":1,"created":1700000000,"cookie_sent":1700000100,"data":{"n":1}}"#,
    );
    assert_eq!(corrupt_reason(fx, &old).await, CorruptRecord::Plain);
    let newer = SessionId::random();
    let mut value = SessionKeys::derive(&newer).seal(&rec("{}"));
    value[0] = 99;
    fx.set_raw(&newer, &value);
    assert_eq!(corrupt_reason(fx, &newer).await, CorruptRecord::Version(99));
}

async fn a_flipped_byte_is_refused(fx: &Fixture) {
    assert!(fx.is_redis(), "a case for stores that hold bytes");
    let id = SessionId::random();
    assert!(
        fx.store
            .create(&id, &rec(r#"{"role":"user"}"#), LONG)
            .await
            .unwrap()
    );
    let sealed = fx.raw(&id).unwrap().unwrap();
    // A byte of the clear header (`created`, `auth_time`), of the nonce, of the sealed data,
    // of the tag (bytes 41..49 are `touched`, which is not authenticated: see store::seal).
    for at in [5, 20, 53, 65, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[at] ^= 0x01;
        fx.set_raw(&id, &bad);
        assert_eq!(
            corrupt_reason(fx, &id).await,
            CorruptRecord::Unauthentic,
            "byte {at}"
        );
    }
    // A compare-and-set that finds an altered header reports it too, and writes nothing.
    let mut bad = sealed.clone();
    bad[5] ^= 0x01;
    fx.set_raw(&id, &bad);
    let err = fx
        .store
        .replace(
            &id,
            &rec(r#"{"role":"user"}"#),
            &rec(r#"{"role":"admin"}"#),
            LONG,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(fx.raw(&id), Some(Some(bad)));
    fx.set_raw(&id, &sealed);
    assert_eq!(
        fx.store.load(&id, LONG).await.unwrap(),
        Some(rec(r#"{"role":"user"}"#))
    );
}

async fn a_value_moved_to_another_key_is_refused(fx: &Fixture) {
    assert!(fx.is_redis(), "a case for stores that hold bytes");
    let (admin, user) = (SessionId::random(), SessionId::random());
    let admin_rec = rec(r#"{"role":"admin"}"#);
    assert!(fx.store.create(&admin, &admin_rec, LONG).await.unwrap());
    assert!(
        fx.store
            .create(&user, &rec(r#"{"role":"user"}"#), LONG)
            .await
            .unwrap()
    );
    let stolen = fx.raw(&admin).unwrap().unwrap();
    fx.set_raw(&user, &stolen);
    assert_eq!(corrupt_reason(fx, &user).await, CorruptRecord::Unauthentic);
    assert_eq!(fx.store.load(&admin, LONG).await.unwrap(), Some(admin_rec));
}

async fn a_dump_holds_no_session_id_and_no_data(fx: &Fixture) {
    assert!(fx.is_redis(), "a case for stores that hold bytes");
    let mut ids = Vec::new();
    let mut secrets = Vec::new();
    for n in 0..12 {
        let id = SessionId::random();
        let (name, token) = (format!("user-{n}-Zoë"), format!("tok{n}x9f3k2q"));
        let data = format!(
            r#"{{"name":"{name}","token":"{token}","n":{}}}"#,
            1_000_003 + n
        );
        let r = rec(&data);
        assert!(fx.store.create(&id, &r, LONG).await.unwrap());
        // Also a value written by a compare-and-set.
        let next = rec(&data.replace("\"n\"", "\"m\""));
        assert_eq!(
            fx.store.replace(&id, &r, &next, LONG).await.unwrap(),
            Cas::Applied
        );
        ids.push(id);
        secrets.extend([name, token, (1_000_003 + n).to_string()]);
    }
    let dump = fx.dump().unwrap();
    assert_eq!(dump.len(), ids.len());
    let mut needles: Vec<Vec<u8>> = secrets.into_iter().map(String::into_bytes).collect();
    for id in &ids {
        needles.push(id.encode().as_str().as_bytes().to_vec());
        needles.push(STANDARD.encode(id.as_bytes()).into_bytes());
        needles.push(id.as_bytes().to_vec());
    }
    let found = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (key, value) in &dump {
        for needle in &needles {
            let shown = String::from_utf8_lossy(needle);
            assert!(!found(key, needle), "a key holds {shown}");
            assert!(!found(value, needle), "a value holds {shown}");
        }
    }
    let mut keys: Vec<String> = dump
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    let mut want: Vec<String> = ids.iter().map(Fixture::key).collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want);
}

async fn replace_compares_records_not_their_sealed_bytes(fx: &Fixture) {
    assert!(fx.is_redis(), "a case for stores that hold bytes");
    // The same record sealed again (by another proxy, say) has a fresh nonce and so other
    // bytes; the compare-and-set still sees the record it expects.
    let id = SessionId::random();
    let a = rec(r#"{"n":1}"#);
    assert!(fx.store.create(&id, &a, LONG).await.unwrap());
    let first = fx.raw(&id).unwrap().unwrap();
    let again = SessionKeys::derive(&id).seal(&a);
    assert_ne!(first, again);
    fx.set_raw(&id, &again);
    let next = rec(r#"{"n":2}"#);
    assert_eq!(
        fx.store.replace(&id, &a, &next, LONG).await.unwrap(),
        Cas::Applied
    );
    assert_eq!(fx.opened(&id), Some(next));
}

async fn auth_time_round_trips_and_takes_part_in_the_compare(fx: &Fixture) {
    // SPEC §11: a record that was Set keeps the time of that Set, one that was not has none
    // (Redis: both format 3, `auth_time` 0 for none); the compare-and-set tells them apart.
    let id = SessionId::random();
    let plain = rec(r#"{"n":1}"#);
    let set = Record {
        auth_time: Some(1_700_000_050),
        ..plain.clone()
    };
    assert!(fx.store.create(&id, &set, LONG).await.unwrap());
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(set.clone()));
    if fx.is_redis() {
        assert_eq!(fx.raw(&id).unwrap().unwrap()[0], 3, "format version");
    }
    assert_eq!(
        fx.store.replace(&id, &plain, &plain, LONG).await.unwrap(),
        Cas::Changed(set.clone())
    );
    assert_eq!(
        fx.store.replace(&id, &set, &plain, LONG).await.unwrap(),
        Cas::Applied
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(plain.clone()));
    if fx.is_redis() {
        assert_eq!(
            fx.raw(&id).unwrap().unwrap()[17..25],
            [0; 8],
            "auth_time of none"
        );
    }
    assert_eq!(
        fx.store.replace(&id, &set, &set, LONG).await.unwrap(),
        Cas::Changed(plain)
    );
}

/// One test module per store, each running every case; a store may add cases of its own
/// after a comma.
macro_rules! store_conformance {
    ($($kind:ident => $fixture:path $(, $extra:ident)*);* $(;)?) => {$(
        mod $kind {
            store_conformance!(@cases $fixture;
                missing_id_loads_none,
                create_then_load_returns_the_record,
                create_refuses_to_overwrite,
                replace_applies_when_the_entry_holds_expected,
                replace_reports_changed_and_writes_nothing,
                replace_never_recreates_a_deleted_entry,
                concurrent_replaces_apply_exactly_once,
                delete_is_idempotent,
                load_slides_the_ttl,
                expired_entry_loads_none,
                records_round_trip_unicode_data,
                auth_time_round_trips_and_takes_part_in_the_compare,
                $($extra,)*
            );
        }
    )*};
    (@cases $fixture:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            super::support::trace_init();
            let Some(fx) = $fixture() else { return };
            super::$case(&fx).await;
        }
    )*};
}

// The memory store holds records, never bytes: the at-rest cases (SPEC §14) are Redis's.
store_conformance! {
    memory => super::memory_store;
    sharded_memory => super::sharded_memory_store;
    redis => super::redis_store, corrupt_stored_value_is_an_error, a_flipped_byte_is_refused, a_value_moved_to_another_key_is_refused, a_dump_holds_no_session_id_and_no_data, replace_compares_records_not_their_sealed_bytes;
    cluster => super::cluster_store, corrupt_stored_value_is_an_error, a_flipped_byte_is_refused, a_value_moved_to_another_key_is_refused, a_dump_holds_no_session_id_and_no_data, replace_compares_records_not_their_sealed_bytes;
    sentinel => super::sentinel_store, corrupt_stored_value_is_an_error, a_flipped_byte_is_refused, a_value_moved_to_another_key_is_refused, a_dump_holds_no_session_id_and_no_data, replace_compares_records_not_their_sealed_bytes;
}
