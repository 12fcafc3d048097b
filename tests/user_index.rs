//! The per-user index contract (`src/store/users.rs`, SPEC §13) as one suite, expanded for
//! every store like `tests/store_conformance.rs`: memory always, Redis, Redis Cluster and
//! Redis Sentinel on real `redis-server` (and `redis-sentinel`) processes started per test
//! (skipped with a message when they are not on `PATH`, except in CI).
//!
//! Besides the round trips it runs a revocation against many concurrent rotations of one
//! user's sessions (the race the contract's module docs argue about), and for Redis checks
//! what is at rest: a dump of every key and value holds no session ID.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sessiongate::config::StoreSettings;
use sessiongate::session::{Record, SessionId};
use sessiongate::store::seal::SessionKeys;
use sessiongate::store::users::{Handle, Joined, NewDevice, UserIndex};
use sessiongate::store::{MemoryStore, RedisStore, SessionStore, Store};
use sha2::Digest as _;
use support::redis_server::RedisServer;
use support::stores::{Fixture, Redis, redis_settings};

const NAMESPACE: &str = "users:";
const FIELD: &str = "userId";
const LONG: Duration = Duration::from_secs(60);

fn indexed(settings: &StoreSettings) -> Store {
    Store::Redis(RedisStore::open_indexed(settings, NAMESPACE, FIELD, LONG).unwrap())
}

fn memory_store() -> Option<Fixture> {
    // Large enough to be split over shards: the index has its own lock.
    Fixture::memory(MemoryStore::new(1_000_000))
}

fn redis_store() -> Option<Fixture> {
    Fixture::redis(indexed)
}

fn cluster_store() -> Option<Fixture> {
    Fixture::cluster(indexed)
}

fn sentinel_store() -> Option<Fixture> {
    Fixture::sentinel(indexed)
}

fn record(user: &str) -> Record {
    Record::new(
        format!(r#"{{"{FIELD}":"{user}","n":1}}"#).into(),
        1_700_000_000,
    )
}

fn device(created: u64) -> NewDevice {
    NewDevice::new(
        created,
        &format!("Agent/{created}"),
        "192.0.2.7".parse().unwrap(),
    )
}

impl Fixture {
    /// A new session of `user`: its record, then its join.
    async fn session(&self, user: &str, created: u64) -> SessionId {
        let id = SessionId::random();
        assert!(self.store.create(&id, &record(user), LONG).await.unwrap());
        let joined = self
            .store
            .join(user, &id, &device(created), None, 0)
            .await
            .unwrap();
        assert_eq!(joined, Joined::Member { evicted: vec![] });
        id
    }

    async fn loads(&self, id: &SessionId) -> bool {
        self.store.load(id, LONG).await.unwrap().is_some()
    }

    async fn handles(&self, user: &str) -> Vec<Handle> {
        let devices = self.store.devices(user).await.unwrap();
        devices.into_iter().map(|d| d.handle).collect()
    }

    /// Every key and value on every Redis server (`None` for memory), whatever the type.
    fn dump(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let servers = self.is_redis().then(|| self.servers())?;
        let mut all = Vec::new();
        for server in servers {
            let mut conn = server.connection();
            let mut scan = ::redis::cmd("SCAN");
            scan.cursor_arg(0);
            let keys: Vec<Vec<u8>> = scan
                .iter(&mut conn)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for key in keys {
                let kind: String = ::redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                let parts: Vec<Vec<u8>> = match kind.as_str() {
                    "string" => vec![::redis::cmd("GET").arg(&key).query(&mut conn).unwrap()],
                    "zset" => ::redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(&mut conn)
                        .unwrap(),
                    "hash" => ::redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap(),
                    "none" => continue,
                    other => panic!("unexpected key type {other}"),
                };
                all.push((key, parts.join(&b'\n')));
            }
        }
        Some(all)
    }

    fn cluster_slot(&self, key: &str) -> Option<i64> {
        match &self.redis {
            Redis::Cluster(c) => Some(
                ::redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query(&mut c.nodes[0].connection())
                    .unwrap(),
            ),
            _ => None,
        }
    }
}

async fn join_leave_and_devices_round_trip(fx: &Fixture) {
    assert!(fx.store.devices("nobody").await.unwrap().is_empty());
    let a = fx.session("alice", 1_700_000_100).await;
    let b = fx.session("alice", 1_700_000_200).await;
    let other = fx.session("bob", 1_700_000_300).await;
    let devices = fx.store.devices("alice").await.unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].handle, Handle::of(&a));
    assert_eq!(devices[1].handle, Handle::of(&b));
    assert_eq!(devices[0].created, 1_700_000_100);
    assert_eq!(devices[0].user_agent, "Agent/1700000100");
    assert_eq!(devices[0].ip, "192.0.2.7");
    assert!(devices[1].last_seen >= sessiongate::session::unix_now() - 60);
    assert_eq!(fx.handles("bob").await, vec![Handle::of(&other)]);
    fx.store.leave("alice", &a).await.unwrap();
    fx.store.leave("alice", &a).await.unwrap();
    // Leaving the wrong user's index changes nothing.
    fx.store.leave("bob", &b).await.unwrap();
    assert_eq!(fx.handles("alice").await, vec![Handle::of(&b)]);
    assert!(fx.loads(&a).await, "leave does not destroy the record");
    // A session whose record is gone (destroyed without leaving, expired) is not listed.
    fx.store.delete(&b).await.unwrap();
    assert!(fx.handles("alice").await.is_empty());
}

async fn revoke_all_or_all_but_one(fx: &Fixture) {
    let a = fx.session("carol", 1).await;
    let b = fx.session("carol", 2).await;
    let c = fx.session("carol", 3).await;
    let bystander = fx.session("dave", 4).await;
    let revoked: BTreeSet<Handle> = fx
        .store
        .revoke("carol", Some(&b))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(revoked, BTreeSet::from([Handle::of(&a), Handle::of(&c)]));
    assert!(!fx.loads(&a).await && !fx.loads(&c).await);
    assert!(fx.loads(&b).await);
    assert_eq!(fx.handles("carol").await, vec![Handle::of(&b)]);
    assert_eq!(
        fx.store.revoke("carol", None).await.unwrap(),
        vec![Handle::of(&b)]
    );
    assert!(!fx.loads(&b).await);
    assert!(fx.handles("carol").await.is_empty());
    assert!(fx.store.revoke("carol", None).await.unwrap().is_empty());
    assert!(fx.loads(&bystander).await);
}

async fn revoke_handle_needs_the_right_user(fx: &Fixture) {
    let a = fx.session("erin", 1).await;
    let x = fx.session("frank", 2).await;
    assert!(
        !fx.store
            .revoke_handle(Some("frank"), &Handle::of(&a))
            .await
            .unwrap()
    );
    assert!(fx.loads(&a).await, "the wrong user destroys nothing");
    assert_eq!(fx.handles("erin").await, vec![Handle::of(&a)]);
    assert!(
        fx.store
            .revoke_handle(Some("erin"), &Handle::of(&a))
            .await
            .unwrap()
    );
    assert!(!fx.loads(&a).await);
    assert!(fx.handles("erin").await.is_empty());
    // The admin API: any user's.
    assert!(fx.store.revoke_handle(None, &Handle::of(&x)).await.unwrap());
    assert!(!fx.loads(&x).await);
    assert!(!fx.store.revoke_handle(None, &Handle::of(&x)).await.unwrap());
    let unknown = Handle::of(&SessionId::random());
    assert!(!fx.store.revoke_handle(None, &unknown).await.unwrap());
}

async fn join_replacing_a_revoked_session_is_source_gone(fx: &Fixture) {
    // A rotation: the new session replaces the old one, which leaves the index.
    let old = fx.session("gina", 1).await;
    let new = SessionId::random();
    assert!(fx.store.create(&new, &record("gina"), LONG).await.unwrap());
    let joined = fx
        .store
        .join("gina", &new, &device(2), Some(("gina", &old)), 0)
        .await
        .unwrap();
    assert_eq!(joined, Joined::Member { evicted: vec![] });
    // The replaced session stays a member until its record is gone and it leaves.
    assert_eq!(fx.handles("gina").await.len(), 2);
    fx.store.delete(&old).await.unwrap();
    fx.store.leave("gina", &old).await.unwrap();
    assert_eq!(fx.handles("gina").await, vec![Handle::of(&new)]);
    // Revoked meanwhile: the next rotation finds its source gone.
    assert_eq!(fx.store.revoke("gina", None).await.unwrap().len(), 1);
    for user in ["gina", "hank"] {
        let next = SessionId::random();
        assert!(fx.store.create(&next, &record(user), LONG).await.unwrap());
        let joined = fx
            .store
            .join(user, &next, &device(3), Some(("gina", &new)), 0)
            .await
            .unwrap();
        assert_eq!(joined, Joined::SourceGone, "joining {user}");
        assert!(fx.handles(user).await.is_empty());
    }
}

async fn a_user_switch_moves_the_session(fx: &Fixture) {
    let old = fx.session("ivy", 1).await;
    let new = SessionId::random();
    assert!(fx.store.create(&new, &record("jack"), LONG).await.unwrap());
    let joined = fx
        .store
        .join("jack", &new, &device(2), Some(("ivy", &old)), 0)
        .await
        .unwrap();
    assert_eq!(joined, Joined::Member { evicted: vec![] });
    assert_eq!(fx.handles("ivy").await, vec![Handle::of(&old)]);
    fx.store.delete(&old).await.unwrap();
    fx.store.leave("ivy", &old).await.unwrap();
    assert!(fx.handles("ivy").await.is_empty());
    assert_eq!(fx.handles("jack").await, vec![Handle::of(&new)]);
    // The admin API finds it under its new user.
    assert!(
        !fx.store
            .revoke_handle(Some("ivy"), &Handle::of(&new))
            .await
            .unwrap()
    );
    assert!(
        fx.store
            .revoke_handle(None, &Handle::of(&new))
            .await
            .unwrap()
    );
    assert!(!fx.loads(&new).await);
}

async fn max_per_user_evicts_the_least_recently_seen(fx: &Fixture) {
    let a = fx.session("kim", 1_700_000_001).await;
    let b = fx.session("kim", 1_700_000_002).await;
    // Make `a` seen more recently than `b` (Redis records `last_seen` with the touch, at
    // most once per touch interval, 1 s here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(fx.loads(&a).await);
        let devices = fx.store.devices("kim").await.unwrap();
        let seen = |id: &SessionId| {
            devices
                .iter()
                .find(|d| d.handle == Handle::of(id))
                .map(|d| d.last_seen)
                .unwrap()
        };
        if seen(&a) > seen(&b) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_seen never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = SessionId::random();
    assert!(fx.store.create(&c, &record("kim"), LONG).await.unwrap());
    let joined = fx
        .store
        .join("kim", &c, &device(1_700_000_003), None, 2)
        .await
        .unwrap();
    assert_eq!(
        joined,
        Joined::Member {
            evicted: vec![Handle::of(&b)]
        }
    );
    assert!(!fx.loads(&b).await);
    assert!(fx.loads(&a).await && fx.loads(&c).await);
    let left: BTreeSet<Handle> = fx.handles("kim").await.into_iter().collect();
    assert_eq!(left, BTreeSet::from([Handle::of(&a), Handle::of(&c)]));
}

/// Rotations of one user's sessions in `CHAINS` concurrent chains (create the new record,
/// join replacing the current one, delete the old, the old leaves), while a revocation
/// runs. Once it has returned, no session that ever joined loads: a session being replaced
/// is still a member until its record is gone, so the revocation takes it with the rest.
/// Every chain ends (its next join finds its source gone), and then no session of any
/// chain loads, nor any record a chain created.
async fn revocation_wins_against_concurrent_rotations(fx: &Fixture) {
    const CHAINS: usize = 8;
    const USER: &str = "racer";
    let joined = Arc::new(Mutex::new(Vec::new()));
    let created = Arc::new(Mutex::new(Vec::new()));
    let rotations = Arc::new(AtomicUsize::new(0));
    let mut chains = tokio::task::JoinSet::new();
    for n in 0..CHAINS {
        let first = fx.session(USER, n as u64).await;
        joined.lock().unwrap().push(first);
        let (store, joined, created, rotations) = (
            fx.store.clone(),
            joined.clone(),
            created.clone(),
            rotations.clone(),
        );
        chains.spawn(async move {
            let mut current = first;
            loop {
                let next = SessionId::random();
                assert!(store.create(&next, &record(USER), LONG).await.unwrap());
                created.lock().unwrap().push(next);
                let outcome = store
                    .join(USER, &next, &device(7), Some((USER, &current)), 0)
                    .await
                    .unwrap();
                match outcome {
                    Joined::Member { evicted } => {
                        assert!(evicted.is_empty());
                        joined.lock().unwrap().push(next);
                        store.delete(&current).await.unwrap();
                        store.leave(USER, &current).await.unwrap();
                        current = next;
                        rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    Joined::SourceGone => {
                        store.delete(&next).await.unwrap();
                        return current;
                    }
                }
                tokio::task::yield_now().await;
            }
        });
    }
    support::eventually(
        || rotations.load(Ordering::Relaxed) >= CHAINS * 3,
        "rotations under way",
    )
    .await;
    fx.store.revoke(USER, None).await.unwrap();
    let members: Vec<SessionId> = joined.lock().unwrap().clone();
    let mut loaded_after = 0;
    for id in &members {
        if fx.loads(id).await {
            loaded_after += 1;
        }
    }
    assert_eq!(
        loaded_after, 0,
        "sessions that joined load after the revocation returned"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = 0;
        while let Some(done) = chains.join_next().await {
            done.unwrap();
            last += 1;
        }
        last
    })
    .await;
    assert_eq!(
        ended.expect("a rotation chain outlived the revocation"),
        CHAINS
    );
    let everything: Vec<SessionId> = {
        let mut all = joined.lock().unwrap().clone();
        all.extend(created.lock().unwrap().iter().copied());
        all
    };
    for id in &everything {
        assert!(!fx.loads(id).await, "a session of the revoked chains loads");
    }
    assert!(fx.handles(USER).await.is_empty());
    assert!(rotations.load(Ordering::Relaxed) >= CHAINS * 3);
}

async fn a_dump_holds_no_session_id(fx: &Fixture) {
    assert!(fx.dump().is_some(), "a case for Redis");
    let mut ids = Vec::new();
    for n in 0..4 {
        let id = fx.session("lena", n).await;
        ids.push(id);
        // Rotate it, and touch it.
        let next = SessionId::random();
        assert!(fx.store.create(&next, &record("lena"), LONG).await.unwrap());
        let joined = fx
            .store
            .join("lena", &next, &device(n), Some(("lena", &id)), 0)
            .await
            .unwrap();
        assert_eq!(joined, Joined::Member { evicted: vec![] });
        assert!(fx.loads(&next).await);
        ids.push(next);
    }
    fx.store.revoke("lena", Some(&ids[7])).await.unwrap();
    let mike = fx.session("mike", 9).await;
    ids.push(mike);
    fx.store.devices("lena").await.unwrap();
    let dump = fx.dump().unwrap();
    let keys: Vec<String> = dump
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with("users:u:{")),
        "the index is in Redis: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.starts_with("users:h:")), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(NAMESPACE)), "{keys:?}");
    let found = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for id in &ids {
        let needles = [
            id.encode().as_str().as_bytes().to_vec(),
            STANDARD.encode(id.as_bytes()).into_bytes(),
            id.as_bytes().to_vec(),
        ];
        for (key, value) in &dump {
            for needle in &needles {
                assert!(!found(key, needle), "a key holds a session ID");
                assert!(!found(value, needle), "a value holds a session ID");
            }
        }
    }
    // A user's index keys share one Cluster slot.
    let index: Vec<&String> = keys.iter().filter(|k| k.starts_with("users:u:")).collect();
    if let Some(first) = fx.cluster_slot(index[0]) {
        let tag = &index[0][..index[0].find('}').unwrap()];
        for key in index.iter().filter(|k| k.starts_with(tag)) {
            assert_eq!(fx.cluster_slot(key), Some(first), "{key}");
        }
    }
}

/// The index keys of `user` (see `src/store/redis/users.rs`).
fn index_keys(user: &str) -> (String, String) {
    let tag = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(user.as_bytes()));
    let members = format!("{NAMESPACE}u:{{{}}}", &tag[..22]);
    let facts = format!("{members}:d");
    (members, facts)
}

/// The record key of `id`.
fn record_key(id: &SessionId) -> String {
    let hash = sha2::Sha256::digest(id.encode().as_str().as_bytes());
    format!("{NAMESPACE}{}", URL_SAFE_NO_PAD.encode(hash))
}

impl Fixture {
    /// Runs `cmd` on the Redis behind the store.
    fn on_redis<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> T {
        self.query(cmd).expect("a case for Redis")
    }

    fn score(&self, user: &str, id: &SessionId) -> Option<f64> {
        let (members, _) = index_keys(user);
        self.on_redis(
            ::redis::cmd("ZSCORE")
                .arg(members)
                .arg(Handle::of(id).to_string()),
        )
    }

    fn ttl(&self, key: &str) -> i64 {
        self.on_redis(::redis::cmd("TTL").arg(key))
    }
}

/// The index lifetime of these stores: `ttl` (60 s) plus the slack of 300 s.
const LIFETIME: i64 = 360;

async fn the_index_expires_and_is_refreshed_before_each_touch(fx: &Fixture) {
    let id = fx.session("nina", 1).await;
    let (members, facts) = index_keys("nina");
    let handle_key = format!("{NAMESPACE}h:{}", Handle::of(&id));
    for key in [&members, &facts, &handle_key] {
        let ttl = fx.ttl(key);
        assert!(ttl > LIFETIME - 10 && ttl <= LIFETIME, "{key}: {ttl}");
    }
    assert_eq!(
        fx.on_redis::<Option<String>>(::redis::cmd("GET").arg(&handle_key)),
        Some("nina".to_owned())
    );
    // Let the index run short and the record be due for a touch (last touched 10 s ago).
    for key in [&members, &facts, &handle_key] {
        let _: i64 = fx.on_redis(::redis::cmd("EXPIRE").arg(key).arg(5));
    }
    let _: i64 = fx.on_redis(
        ::redis::cmd("ZADD")
            .arg(&members)
            .arg("XX")
            .arg(1)
            .arg(Handle::of(&id).to_string()),
    );
    let now = sessiongate::session::unix_now();
    let old = SessionKeys::derive(&id).seal_touched(&record("nina"), now - 10);
    let _: () = fx.on_redis(
        ::redis::cmd("SET")
            .arg(record_key(&id))
            .arg(old)
            .arg("EX")
            .arg(5),
    );
    assert!(fx.loads(&id).await);
    for key in [&members, &facts, &handle_key] {
        let ttl = fx.ttl(key);
        assert!(
            ttl > LIFETIME - 10,
            "not refreshed by the touch: {key}: {ttl}"
        );
    }
    assert!(fx.score("nina", &id).unwrap() >= (now - 1) as f64);
    assert!(fx.ttl(&record_key(&id)) > 5, "the record was touched");
    // A write refreshes too.
    let _: i64 = fx.on_redis(::redis::cmd("EXPIRE").arg(&members).arg(5));
    let cur = fx.store.load(&id, LONG).await.unwrap().unwrap();
    let mut next = cur.clone();
    next.data = format!(r#"{{"{FIELD}":"nina","n":2}}"#).into();
    assert_eq!(
        fx.store.replace(&id, &cur, &next, LONG).await.unwrap(),
        sessiongate::store::Cas::Applied
    );
    assert!(fx.ttl(&members) > LIFETIME - 10);
}

async fn members_whose_record_is_gone_are_pruned(fx: &Fixture) {
    // Its record expires in Redis without the proxy seeing it: `devices` drops it.
    let short = SessionId::random();
    assert!(
        fx.store
            .create(&short, &record("olga"), Duration::from_secs(1))
            .await
            .unwrap()
    );
    let joined = fx
        .store
        .join("olga", &short, &device(1), None, 0)
        .await
        .unwrap();
    assert_eq!(joined, Joined::Member { evicted: vec![] });
    let kept = fx.session("olga", 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.on_redis::<i64>(::redis::cmd("EXISTS").arg(record_key(&short))) == 1 {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fx.handles("olga").await, vec![Handle::of(&kept)]);
    assert_eq!(fx.score("olga", &short), None, "pruned from the index");
    let (members, facts) = index_keys("olga");
    assert_eq!(fx.on_redis::<i64>(::redis::cmd("ZCARD").arg(&members)), 1);
    assert_eq!(fx.on_redis::<i64>(::redis::cmd("HLEN").arg(&facts)), 1);
    // Not seen for longer than the index lifetime: the next join drops it.
    let _: i64 = fx.on_redis(
        ::redis::cmd("ZADD")
            .arg(&members)
            .arg("XX")
            .arg(1)
            .arg(Handle::of(&kept).to_string()),
    );
    let newer = fx.session("olga", 3).await;
    assert_eq!(fx.score("olga", &kept), None);
    assert_eq!(fx.on_redis::<i64>(::redis::cmd("HLEN").arg(&facts)), 1);
    assert_eq!(fx.handles("olga").await, vec![Handle::of(&newer)]);
}

/// One test module per store, each running every case; a store may add cases of its own
/// after a comma.
macro_rules! user_index {
    ($($kind:ident => $fixture:path $(, $extra:ident)*);* $(;)?) => {$(
        mod $kind {
            user_index!(@cases $fixture;
                join_leave_and_devices_round_trip,
                revoke_all_or_all_but_one,
                revoke_handle_needs_the_right_user,
                join_replacing_a_revoked_session_is_source_gone,
                a_user_switch_moves_the_session,
                max_per_user_evicts_the_least_recently_seen,
                revocation_wins_against_concurrent_rotations,
                $($extra,)*
            );
        }
    )*};
    (@cases $fixture:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            super::support::trace_init();
            let Some(fx) = $fixture() else { return };
            super::$case(&fx).await;
        }
    )*};
}

user_index! {
    memory => super::memory_store;
    redis => super::redis_store, a_dump_holds_no_session_id, the_index_expires_and_is_refreshed_before_each_touch, members_whose_record_is_gone_are_pruned;
    cluster => super::cluster_store, a_dump_holds_no_session_id, the_index_expires_and_is_refreshed_before_each_touch, members_whose_record_is_gone_are_pruned;
    sentinel => super::sentinel_store, a_dump_holds_no_session_id, the_index_expires_and_is_refreshed_before_each_touch, members_whose_record_is_gone_are_pruned;
}

/// With `store.local_cache`, index writes (keys under the namespace that are never cached)
/// leave the cache serving, and a revocation by one proxy drops the revoked sessions from
/// every proxy's cache: at once on the proxy that revoked, on the others once Redis's
/// invalidation arrives (SPEC §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_empties_the_local_caches() {
    support::trace_init();
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut cached = redis_settings(server.url(), Vec::new());
    cached.local_cache = 100;
    let open = || RedisStore::open_indexed(&cached, NAMESPACE, FIELD, LONG).unwrap();
    let (a, b) = (open(), open());
    let fx = Fixture {
        store: Store::Redis(a.clone()),
        redis: Redis::None,
    };
    let revoked = fx.session("paul", 1).await;
    let kept = fx.session("paul", 2).await;
    // Both proxies serve both sessions from their caches (once tracking is live).
    for store in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = store.read_metrics().cache_hits.get();
            for id in [&revoked, &kept] {
                assert!(store.load(id, LONG).await.unwrap().is_some());
            }
            if store.read_metrics().cache_hits.get() >= before + 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never cached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let handles = a.revoke("paul", Some(&kept)).await.unwrap();
    assert_eq!(handles, vec![Handle::of(&revoked)]);
    assert!(a.load(&revoked, LONG).await.unwrap().is_none());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.load(&revoked, LONG).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other proxy kept serving the revoked session"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The kept session is still served from the cache by both, index writes or not.
    for store in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = store.read_metrics().cache_hits.get();
            assert!(store.load(&kept, LONG).await.unwrap().is_some());
            if store.read_metrics().cache_hits.get() > before {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never cached again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
