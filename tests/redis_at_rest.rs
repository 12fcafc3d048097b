//! Sessions at rest in Redis (SPEC §14), through the proxy: what a copy of Redis holds, and
//! what a client gets when its session's value was altered or moved inside Redis (no
//! session: forwarded anonymous, cookie cleared, counted `invalid`, never a 5xx). The store
//! side of the same (keys, format, Corrupt) is in `store_conformance.rs`, for Redis and
//! Redis Cluster.
//!
//! Each test starts its own `redis-server` (see `support::redis_server`); without one on
//! `PATH` the tests print `skipping: ...` and pass, except under `CI=true`.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::Method;
use sha2::Digest as _;
use support::redis_server::{RedisCluster, RedisServer};
use support::*;

/// Where the test looks at Redis directly.
enum Redis {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn single() -> Option<Self> {
        RedisServer::start().map(Self::Server)
    }

    fn cluster() -> Option<Self> {
        RedisCluster::start().map(Self::Cluster)
    }

    fn store_toml(&self) -> String {
        let target = match self {
            Redis::Server(s) => format!("url = \"{}\"", s.url()),
            Redis::Cluster(c) => format!("cluster = {}", c.toml_list()),
        };
        format!("[store]\nkind = \"redis\"\n{target}\ntimeout_ms = 2000\non_error = \"fail\"\n")
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match self {
            Redis::Server(s) => cmd.query(&mut s.connection()).unwrap(),
            Redis::Cluster(c) => cmd.query(&mut c.connection()).unwrap(),
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.query(redis::cmd("GET").arg(key))
    }

    fn set(&self, key: &str, value: &[u8]) {
        self.query::<()>(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(600));
    }

    /// Every key and value, from a `SCAN` of each server.
    fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let servers: Vec<&RedisServer> = match self {
            Redis::Server(s) => vec![s],
            Redis::Cluster(c) => c.nodes.iter().collect(),
        };
        servers.into_iter().flat_map(RedisServer::dump).collect()
    }
}

/// The Redis key of the session in a `session=ID.MAC` cookie: the default namespace, then
/// SHA-256 of the ID text as base64url.
fn key_of(cookie: &str) -> String {
    let id = cookie["session=".len()..].split('.').next().unwrap();
    format!(
        "session:{}",
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(id.as_bytes()))
    )
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

async fn lookups(gate: &Gate, result: &str) -> f64 {
    let (_, text) = gate.admin_get("/metrics").await;
    metric(
        &text,
        &format!("sessiongate_session_lookups_total{{result=\"{result}\"}}"),
    )
}

fn found(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn run_gate(redis: &Redis, app: &Upstream) -> Gate {
    gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&redis.store_toml())
        .run()
        .await
}

/// Sessions made through the proxy (logins, then updates): a `SCAN` + `GET` of all of Redis
/// finds no session ID in any form and no value of any session's data.
async fn a_copy_of_redis_holds_no_id_and_no_data(redis: Redis) {
    let app = app().await;
    let gate = run_gate(&redis, &app).await;
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for n in 0..8 {
        let cookie = gate.get("/login").await.session_cookie();
        let secret = format!("card-{n}-4111x1111");
        let res = gate
            .send(
                Method::POST,
                "/update",
                &[("cookie", &cookie)],
                &format!(r#"{{"card":"{secret}"}}"#),
            )
            .await;
        assert_eq!(res.status, 200);
        let id = cookie["session=".len()..].split('.').next().unwrap();
        let raw = URL_SAFE_NO_PAD.decode(id).unwrap();
        needles.extend([
            id.as_bytes().to_vec(),
            STANDARD.encode(&raw).into_bytes(),
            raw,
            secret.into_bytes(),
        ]);
    }
    // The login's data, the same for every session.
    needles.extend([b"alice".to_vec(), b"userId".to_vec()]);
    let dump = redis.dump();
    assert_eq!(dump.len(), 8, "one entry per session");
    for (key, value) in &dump {
        assert!(key.starts_with(b"session:"));
        for needle in &needles {
            let shown = String::from_utf8_lossy(needle);
            assert!(!found(key, needle), "a key holds {shown}");
            assert!(!found(value, needle), "a value holds {shown}");
        }
    }
    gate.join().await;
}

/// `change` alters the stored value of the session in `victim` (cookie); the next request
/// with that cookie is served anonymous, with the cookie cleared, counted `invalid`.
async fn an_altered_value_is_no_session(redis: Redis, change: impl Fn(&Redis, &str, &str) + Send) {
    let app = app().await;
    let gate = run_gate(&redis, &app).await;
    let victim = gate.get("/login").await.session_cookie();
    let other = gate.get("/login").await.session_cookie();
    assert_eq!(
        gate.get_with("/me", &[("cookie", &victim)]).await.status,
        200
    );
    let (hits, invalid) = (lookups(&gate, "hit").await, lookups(&gate, "invalid").await);
    change(&redis, &key_of(&victim), &key_of(&other));
    let altered = redis.get(&key_of(&victim));

    for _ in 0..2 {
        let before = app.count();
        let res = gate.get_with("/me", &[("cookie", &victim)]).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(app.count(), before + 1, "the request reached the upstream");
        assert!(
            app.last().header("x-session").is_none(),
            "an altered value was served as a session"
        );
        assert!(res.is_clear("session"), "the cookie was not cleared");
    }
    assert_eq!(lookups(&gate, "invalid").await, invalid + 2.0);
    assert_eq!(lookups(&gate, "hit").await, hits);
    // The proxy leaves the refused value as it found it (it expires with its TTL).
    assert_eq!(redis.get(&key_of(&victim)), altered);
    // The other session is untouched.
    let res = gate.get_with("/me", &[("cookie", &other)]).await;
    assert_eq!(res.status, 200);
    let token = app.last().header("x-session").map(str::to_owned);
    assert_eq!(
        verify_token(&token.expect("a session"), UPSTREAM_SECRET)["data"]["name"],
        "alice"
    );
    gate.join().await;
}

fn flip_a_byte(redis: &Redis, victim: &str, _other: &str) {
    let mut value = redis.get(victim).expect("the session is stored");
    let last = value.len() - 1;
    value[last] ^= 0x01;
    redis.set(victim, &value);
}

fn move_in_another_value(redis: &Redis, victim: &str, other: &str) {
    let value = redis.get(other).expect("the other session is stored");
    redis.set(victim, &value);
}

#[tokio::test]
async fn redis_copy_holds_no_id_and_no_data() {
    trace_init();
    let Some(redis) = Redis::single() else { return };
    a_copy_of_redis_holds_no_id_and_no_data(redis).await;
}

#[tokio::test]
async fn cluster_copy_holds_no_id_and_no_data() {
    trace_init();
    let Some(redis) = Redis::cluster() else {
        return;
    };
    a_copy_of_redis_holds_no_id_and_no_data(redis).await;
}

#[tokio::test]
async fn redis_flipped_byte_is_no_session() {
    trace_init();
    let Some(redis) = Redis::single() else { return };
    an_altered_value_is_no_session(redis, flip_a_byte).await;
}

#[tokio::test]
async fn redis_value_moved_from_another_session_is_no_session() {
    trace_init();
    let Some(redis) = Redis::single() else { return };
    an_altered_value_is_no_session(redis, move_in_another_value).await;
}

#[tokio::test]
async fn cluster_flipped_byte_is_no_session() {
    trace_init();
    let Some(redis) = Redis::cluster() else {
        return;
    };
    an_altered_value_is_no_session(redis, flip_a_byte).await;
}

#[tokio::test]
async fn cluster_value_moved_from_another_session_is_no_session() {
    trace_init();
    let Some(redis) = Redis::cluster() else {
        return;
    };
    an_altered_value_is_no_session(redis, move_in_another_value).await;
}

#[tokio::test]
async fn a_clear_record_of_the_previous_format_is_no_session() {
    // Upgrade from a version that stored clear JSON (format 1): such a value is refused,
    // so its user logs in again (README, Redis).
    trace_init();
    let Some(redis) = Redis::single() else { return };
    an_altered_value_is_no_session(redis, |redis, victim, _| {
        redis.set(
            victim,
            br#"{"v":1,"created":1700000000,"cookie_sent":1700000000,"data":{"userId":1}}"#,
        );
    })
    .await;
}
