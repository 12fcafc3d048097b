//! The store contract (`src/store/mod.rs`) as one suite, expanded for every store: memory
//! always, Redis and Redis Cluster on real `redis-server` processes started per test
//! (skipped with a message when `redis-server` is not on `PATH`, except in CI).
//!
//! Expiry is observed through the contract itself: a `replace` whose `expected` never
//! matches answers `Changed` while the entry lives and `Gone` once it expired, without
//! writing or sliding anything. Tests poll that with a deadline; none asserts timing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sessiongate::config::{OnError, StoreKind, StoreSettings};
use sessiongate::session::{Record, SessionId};
use sessiongate::store::{Cas, MemoryStore, RedisStore, SessionStore, Store, StoreError};
use support::redis_server::{RedisCluster, RedisServer};

const NAMESPACE: &str = "conformance:";
const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_secs(1);

/// A store under test and, for Redis, the servers behind it, to look at what it wrote.
struct Fixture {
    store: Store,
    redis: Redis,
}

enum Redis {
    None,
    Server(RedisServer),
    Cluster(RedisCluster),
}

fn settings(url: String, cluster: Vec<String>) -> StoreSettings {
    StoreSettings {
        kind: StoreKind::Redis,
        max_sessions: 1,
        url,
        cluster,
        timeout: Duration::from_secs(2),
        on_error: OnError::Fail,
        require_on_start: false,
    }
}

fn memory_store() -> Option<Fixture> {
    Some(Fixture {
        store: Store::Memory(MemoryStore::new(1000)),
        redis: Redis::None,
    })
}

fn redis_store() -> Option<Fixture> {
    let server = RedisServer::start()?;
    let store = RedisStore::open(&settings(server.url(), Vec::new()), NAMESPACE).unwrap();
    Some(Fixture {
        store: Store::Redis(store),
        redis: Redis::Server(server),
    })
}

fn cluster_store() -> Option<Fixture> {
    let cluster = RedisCluster::start()?;
    let store = RedisStore::open(
        &settings("redis://127.0.0.1:1".into(), cluster.urls()),
        NAMESPACE,
    )
    .unwrap();
    Some(Fixture {
        store: Store::Redis(store),
        redis: Redis::Cluster(cluster),
    })
}

impl Fixture {
    fn key(id: &SessionId) -> String {
        format!("{NAMESPACE}{}", id.encode().as_str())
    }

    fn is_redis(&self) -> bool {
        !matches!(self.redis, Redis::None)
    }

    /// Runs `cmd` on the Redis behind the store (`None` for memory).
    fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Option<T> {
        match &self.redis {
            Redis::None => None,
            Redis::Server(s) => Some(cmd.query(&mut s.connection()).unwrap()),
            Redis::Cluster(c) => Some(cmd.query(&mut c.connection()).unwrap()),
        }
    }

    /// The raw stored value of `id` (`None` for memory).
    fn raw(&self, id: &SessionId) -> Option<Option<String>> {
        self.query(::redis::cmd("GET").arg(Self::key(id)))
    }

    /// The remaining TTL of `id` in seconds (`None` for memory; -2 when absent).
    fn ttl(&self, id: &SessionId) -> Option<i64> {
        self.query(::redis::cmd("TTL").arg(Self::key(id)))
    }

    /// Stores `value` under `id` directly in Redis.
    fn set_raw(&self, id: &SessionId, value: &str) {
        let _: Option<()> = self.query(::redis::cmd("SET").arg(Self::key(id)).arg(value));
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
        // The key is the namespace plus the ID text, the value the versioned JSON, and it
        // carries an expiry.
        assert_eq!(fx.raw(&id), Some(Some(r.to_json())));
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
        assert_eq!(fx.raw(&id), Some(Some(b.to_json())));
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
    assert_eq!(fx.store.load(&used, LONG).await.unwrap(), Some(r.clone()));
    if fx.is_redis() {
        let ttl = fx.ttl(&used).unwrap();
        assert!(ttl > 1 && ttl <= 60, "GETEX did not slide the TTL: {ttl}");
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

async fn corrupt_stored_value_is_an_error(fx: &Fixture) {
    assert!(fx.is_redis(), "only an external store holds text");
    let id = SessionId::random();
    fx.set_raw(&id, "not a record");
    let err = fx.store.load(&id, LONG).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let newer = SessionId::random();
    fx.set_raw(&newer, r#"{"v":99,"created":0,"cookie_sent":0,"data":{}}"#);
    let err = fx.store.load(&newer, LONG).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

async fn replace_accepts_the_same_record_written_differently(fx: &Fixture) {
    // E.g. written by another version of the proxy: same record, other whitespace/order.
    let other_spelling =
        r#"{ "data": {"n":1}, "cookie_sent": 1700000100, "created": 1700000000, "v": 1 }"#;
    let id = SessionId::random();
    if fx.is_redis() {
        fx.set_raw(&id, other_spelling);
    } else {
        // The memory store holds records, not text: it holds the record read from that text.
        let read = Record::from_json(other_spelling).unwrap();
        assert!(fx.store.create(&id, &read, LONG).await.unwrap());
    }
    let current = fx.store.load(&id, LONG).await.unwrap().unwrap();
    assert_eq!(current, rec(r#"{"n":1}"#));
    // `expected` is the record as this proxy builds it, not the one read back.
    let next = rec(r#"{"n":2}"#);
    assert_eq!(
        fx.store
            .replace(&id, &rec(r#"{"n":1}"#), &next, LONG)
            .await
            .unwrap(),
        Cas::Applied
    );
    assert_eq!(fx.store.load(&id, LONG).await.unwrap(), Some(next.clone()));
    assert_eq!(fx.raw(&id), fx.is_redis().then(|| Some(next.to_json())));
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
                replace_accepts_the_same_record_written_differently,
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

// The memory store holds records, never text, so no stored value of it can be corrupt.
store_conformance! {
    memory => super::memory_store;
    redis => super::redis_store, corrupt_stored_value_is_an_error;
    cluster => super::cluster_store, corrupt_stored_value_is_an_error;
}
