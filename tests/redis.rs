//! The proxy on a real Redis (SPEC §7): shared by several proxies, surviving proxy
//! restarts, and Redis faults (killed, frozen, restarted) answered per `store.on_error`
//! without hanging, then recovered from without restarting the proxy. Also a Redis
//! Cluster, and `store.require_on_start`.
//!
//! Each test starts its own `redis-server` (see `support::redis_server`); without one on
//! `PATH` the tests print `skipping: ...` and pass, except under `CI=true`.

mod support;

use std::time::Duration;

use http::Method;
use sessiongate::config;
use sessiongate::server::{self, StartError};
use sessiongate::session::SessionId;
use sessiongate::store::seal::SessionKeys;
use support::redis_server::{RedisCluster, RedisServer};
use support::*;

/// A short store timeout, so faults are answered quickly.
const TIMEOUT_MS: u64 = 300;

fn store_toml(url: &str, on_error: &str) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\ntimeout_ms = {TIMEOUT_MS}\non_error = \"{on_error}\"\n"
    )
}

/// A fresh `redis-server`, the usual app, and a gate in front of the app that keeps its
/// sessions in that server with `store.on_error = on_error`; `None` (the test is skipped)
/// without `redis-server`.
async fn redis_gate(on_error: &str) -> Option<(RedisServer, Upstream, Gate)> {
    let redis = RedisServer::start()?;
    let app = app().await;
    let gate = gate(app.addr)
        .toml(&store_toml(&redis.url(), on_error))
        .run()
        .await;
    Some((redis, app, gate))
}

/// The session ID in a `session=ID.MAC` cookie, as the store keys it after the namespace.
fn session_id(cookie: &str) -> &str {
    cookie["session=".len()..].split('.').next().unwrap()
}

/// What the store key holds after the namespace for the session in `cookie` (SPEC §14):
/// SHA-256 of the ID text, base64url without padding.
fn key_hash(cookie: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(session_id(cookie).as_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The session data the upstream saw on its last request, if it got a session.
fn seen_data(app: &Upstream) -> Option<serde_json::Value> {
    app.last()
        .header("x-session")
        .map(|t| verify_token(t, UPSTREAM_SECRET)["data"].clone())
}

/// `GET path` with `cookie`, repeated until it answers 200 with a session (deadline 10s).
async fn until_session(gate: &Gate, app: &Upstream, cookie: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = gate.get_with("/me", &[("cookie", cookie)]).await;
        if res.status == 200
            && let Some(data) = seen_data(app)
        {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session within 10s; last status {}",
            res.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn update(gate: &Gate, cookie: &str, patch: &str) -> Res {
    gate.send(Method::POST, "/update", &[("cookie", cookie)], patch)
        .await
}

#[tokio::test]
async fn two_gates_sharing_one_redis_share_sessions() {
    trace_init();
    let Some((redis, app, one)) = redis_gate("fail").await else {
        return;
    };
    let two = gate(app.addr)
        .toml(&store_toml(&redis.url(), "fail"))
        .run()
        .await;

    let login = one.get("/login").await;
    assert_eq!(login.status, 200);
    let cookie = login.session_cookie();

    assert_eq!(
        two.get_with("/me", &[("cookie", &cookie)]).await.status,
        200
    );
    assert_eq!(
        seen_data(&app),
        Some(serde_json::json!({"userId":1,"name":"alice"}))
    );

    assert_eq!(update(&two, &cookie, r#"{"cart":[1,2]}"#).await.status, 200);
    assert_eq!(
        one.get_with("/me", &[("cookie", &cookie)]).await.status,
        200
    );
    assert_eq!(
        seen_data(&app),
        Some(serde_json::json!({"userId":1,"name":"alice","cart":[1,2]}))
    );

    let logout = one.get_with("/logout", &[("cookie", &cookie)]).await;
    assert!(logout.is_clear("session"));
    let after = two.get_with("/me", &[("cookie", &cookie)]).await;
    assert_eq!(after.status, 200);
    assert_eq!(seen_data(&app), None, "a destroyed session came back");
    assert!(after.is_clear("session"));

    one.join().await;
    two.join().await;
}

#[tokio::test]
async fn session_survives_a_proxy_restart() {
    trace_init();
    let Some((redis, app, first)) = redis_gate("fail").await else {
        return;
    };
    let cookie = first.get("/login").await.session_cookie();
    first.join().await;

    let second = gate(app.addr)
        .toml(&store_toml(&redis.url(), "fail"))
        .run()
        .await;
    assert_eq!(
        second.get_with("/me", &[("cookie", &cookie)]).await.status,
        200
    );
    assert_eq!(
        seen_data(&app),
        Some(serde_json::json!({"userId":1,"name":"alice"}))
    );
    second.join().await;
}

#[tokio::test]
async fn store_keys_carry_the_namespace_and_the_session_ttl() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nnamespace = \"app1:sess:\"\nttl_sec = 600\n")
        .toml(&store_toml(&redis.url(), "fail"))
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    let key = format!("app1:sess:{}", key_hash(&cookie));
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys, vec![key.clone()]);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 600, "ttl {ttl}");
    // The value is sealed (format 3: a session that was Set carries its `auth_time`):
    // nothing of the data in clear, and it opens with the keys of this session only.
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(value[0], 3, "format version");
    assert!(!contains(&value, b"alice") && !contains(&value, b"userId"));
    let id: SessionId = session_id(&cookie).parse().unwrap();
    let rec = SessionKeys::derive(&id).open(value.clone()).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&rec.data).unwrap(),
        serde_json::json!({"userId":1,"name":"alice"})
    );
    assert!(rec.auth_time.is_some_and(|t| t >= rec.created));
    assert!(
        SessionKeys::derive(&SessionId::random())
            .open(value)
            .is_err()
    );
    gate.join().await;
}

#[tokio::test]
async fn redis_killed_with_on_error_fail_is_503() {
    trace_init();
    let Some((mut redis, _app, gate)) = redis_gate("fail").await else {
        return;
    };
    let cookie = gate.get("/login").await.session_cookie();
    redis.kill();

    // Each request is answered (the harness gives up after 10s; the store after 300ms).
    for _ in 0..3 {
        let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
        assert_eq!(res.status, 503);
        assert!(
            res.text().starts_with("service unavailable"),
            "{}",
            res.text()
        );
        assert!(
            !res.is_clear("session"),
            "a store failure logged the user out"
        );
    }
    // A write fails too: login cannot be acknowledged without the store.
    assert_eq!(gate.get("/login").await.status, 503);
    // Anonymous requests never touch the store.
    assert_eq!(gate.get("/").await.status, 200);
    gate.join().await;
}

#[tokio::test]
async fn redis_killed_with_on_error_anonymous_forwards_without_session() {
    trace_init();
    let Some((mut redis, app, gate)) = redis_gate("anonymous").await else {
        return;
    };
    let cookie = gate.get("/login").await.session_cookie();
    redis.kill();

    let before = app.count();
    let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert_eq!(res.status, 200);
    assert_eq!(app.count(), before + 1, "the request reached the upstream");
    let seen = app.last();
    assert!(
        seen.header("x-session").is_none(),
        "a session was forwarded"
    );
    assert!(
        seen.header("cookie").is_none(),
        "the session cookie leaked upstream"
    );
    assert!(
        res.set_cookies("session").is_empty(),
        "the cookie was touched: {:?}",
        res.set_cookies("session")
    );
    gate.join().await;
}

#[tokio::test]
async fn redis_frozen_is_503_then_works_again_after_it_thaws() {
    trace_init();
    let Some((redis, app, gate)) = redis_gate("fail").await else {
        return;
    };
    let cookie = gate.get("/login").await.session_cookie();
    assert_eq!(update(&gate, &cookie, r#"{"step":2}"#).await.status, 200);

    redis.pause();
    let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
    redis.resume();
    assert_eq!(res.status, 503);

    // Zero acknowledged writes lost: the update answered 200 before the freeze.
    let data = until_session(&gate, &app, &cookie).await;
    assert_eq!(
        data,
        serde_json::json!({"userId":1,"name":"alice","step":2})
    );
    gate.join().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_freeze_of_redis() {
    trace_init();
    let Some((redis, app, gate)) = redis_gate("fail").await else {
        return;
    };
    let mut cookies = Vec::new();
    for n in 0..5 {
        let login = gate.get("/login").await;
        assert_eq!(login.status, 200);
        let cookie = login.session_cookie();
        assert_eq!(
            update(&gate, &cookie, &format!(r#"{{"n":{n}}}"#))
                .await
                .status,
            200
        );
        cookies.push(cookie);
    }
    redis.pause();
    // Writes while frozen fail (503) and are not acknowledged.
    assert_eq!(
        update(&gate, &cookies[0], r#"{"n":"lost"}"#).await.status,
        503
    );
    redis.resume();

    for (n, cookie) in cookies.iter().enumerate().skip(1) {
        let data = until_session(&gate, &app, cookie).await;
        assert_eq!(data["n"], n, "acknowledged update lost");
        assert_eq!(data["userId"], 1);
    }
    gate.join().await;
}

#[tokio::test]
async fn redis_restarted_on_the_same_port_is_used_again_without_restarting_the_proxy() {
    trace_init();
    let Some((mut redis, app, gate)) = redis_gate("fail").await else {
        return;
    };
    assert_eq!(gate.get("/login").await.status, 200);
    redis.kill();
    assert_eq!(gate.get("/login").await.status, 503);
    redis.restart();

    // The data died with the server (no persistence); new sessions work again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let cookie = loop {
        let login = gate.get("/login").await;
        if login.status == 200 {
            break login.session_cookie();
        }
        assert_eq!(login.status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not reconnect to the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        until_session(&gate, &app, &cookie).await,
        serde_json::json!({"userId":1,"name":"alice"})
    );
    gate.join().await;
}

#[tokio::test]
async fn proxy_starts_while_redis_is_down_and_uses_it_once_up() {
    trace_init();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    let app = app().await;
    let gate = gate(app.addr)
        .toml(&store_toml(&redis.url(), "fail"))
        .run()
        .await;
    assert_eq!(gate.get("/").await.status, 200);
    assert_eq!(gate.get("/login").await.status, 503);
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let login = gate.get("/login").await;
        if login.status == 200 {
            let cookie = login.session_cookie();
            until_session(&gate, &app, &cookie).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.join().await;
}

#[tokio::test]
async fn cluster_login_update_logout() {
    trace_init();
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let app = app().await;
    // require_on_start: build_store pings every primary before the gate starts.
    let gate = gate(app.addr)
        .toml(&format!(
            "[store]\nkind = \"redis\"\ncluster = {}\ntimeout_ms = 2000\nrequire_on_start = true\n",
            cluster.toml_list()
        ))
        .run()
        .await;

    // Several sessions, so that keys land on different primaries.
    let mut cookies = Vec::new();
    for n in 0..6 {
        let cookie = gate.get("/login").await.session_cookie();
        assert_eq!(
            update(&gate, &cookie, &format!(r#"{{"n":{n},"name":null}}"#))
                .await
                .status,
            200
        );
        cookies.push(cookie);
    }
    let mut conn = cluster.connection();
    for (n, cookie) in cookies.iter().enumerate() {
        assert_eq!(
            gate.get_with("/me", &[("cookie", cookie)]).await.status,
            200
        );
        assert_eq!(seen_data(&app), Some(serde_json::json!({"userId":1,"n":n})));
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("session:{}", key_hash(cookie)))
            .query(&mut conn)
            .unwrap();
        assert!(ttl > 0, "ttl {ttl}");
    }
    for cookie in &cookies {
        let logout = gate.get_with("/logout", &[("cookie", cookie)]).await;
        assert_eq!(logout.status, 200);
        assert!(logout.is_clear("session"));
        assert_eq!(
            gate.get_with("/me", &[("cookie", cookie)]).await.status,
            200
        );
        assert_eq!(seen_data(&app), None);
    }
    gate.join().await;
}

#[tokio::test]
async fn cluster_node_killed_and_restarted_loses_no_session_and_needs_no_proxy_restart() {
    trace_init();
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let app = app().await;
    let gate = gate(app.addr)
        .toml(&format!(
            "[store]\nkind = \"redis\"\ncluster = {}\ntimeout_ms = {TIMEOUT_MS}\non_error = \"fail\"\n",
            cluster.toml_list()
        ))
        .run()
        .await;

    // One session held by the first primary, one by another.
    let holder = |cookie: &str| {
        cluster.nodes.iter().position(|node| {
            redis::cmd("EXISTS")
                .arg(format!("session:{}", key_hash(cookie)))
                .query::<i64>(&mut node.connection())
                .is_ok_and(|n| n == 1)
        })
    };
    let (mut on_first, mut elsewhere) = (None, None);
    for _ in 0..60 {
        let cookie = gate.get("/login").await.session_cookie();
        match holder(&cookie) {
            Some(0) => on_first = on_first.or(Some(cookie)),
            Some(_) => elsewhere = elsewhere.or(Some(cookie)),
            None => panic!("no node holds the new session"),
        }
        if on_first.is_some() && elsewhere.is_some() {
            break;
        }
    }
    let (on_first, elsewhere) = (on_first.unwrap(), elsewhere.unwrap());
    for (cookie, name) in [(&on_first, "first"), (&elsewhere, "other")] {
        let patch = format!(r#"{{"node":"{name}"}}"#);
        assert_eq!(update(&gate, cookie, &patch).await.status, 200);
    }

    cluster.nodes[0].kill();
    // The other primaries' sessions are served as before.
    assert_eq!(
        until_session(&gate, &app, &elsewhere).await,
        serde_json::json!({"userId":1,"name":"alice","node":"other"})
    );
    // The dead node's session is a 503, and its cookie is kept.
    let res = gate.get_with("/me", &[("cookie", &on_first)]).await;
    assert_eq!(res.status, 503);
    assert!(!res.is_clear("session"));

    cluster.nodes[0].restart();
    cluster.wait_ok();
    // Back from its append-only file, the node serves the session as it was.
    assert_eq!(
        until_session(&gate, &app, &on_first).await,
        serde_json::json!({"userId":1,"name":"alice","node":"first"})
    );
    assert_eq!(gate.get("/login").await.status, 200);
    gate.join().await;
}

/// A loopback port with nothing listening.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_with(store: &str) -> config::Config {
    gate("127.0.0.1:9".parse().unwrap()).toml(store).config()
}

#[tokio::test]
async fn require_on_start_with_redis_down_fails_naming_the_setting() {
    trace_init();
    let port = dead_port();
    let config = config_with(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://user:hunter2@127.0.0.1:{port}/0\"\ntimeout_ms = {TIMEOUT_MS}\nrequire_on_start = true\n"
    ));
    let err = server::build_store(&config).await.unwrap_err();
    assert!(
        matches!(err, StartError::StoreUnreachable { .. }),
        "{err:?}"
    );
    let line = err.to_string();
    assert!(
        line.starts_with(&format!(
            "store.url = redis://user:***@127.0.0.1:{port}/0 is unreachable: "
        )),
        "{line}"
    );
    assert!(line.contains("store.require_on_start = false"), "{line}");
    assert!(!line.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    assert_eq!(line.lines().count(), 1, "{line}");

    let config = config_with(&format!(
        "[store]\nkind = \"redis\"\ncluster = [\"redis://:hunter2@127.0.0.1:{port}\"]\ntimeout_ms = {TIMEOUT_MS}\nrequire_on_start = true\n"
    ));
    let line = server::build_store(&config).await.unwrap_err().to_string();
    assert!(
        line.starts_with(&format!(
            "store.cluster = [redis://:***@127.0.0.1:{port}] is unreachable: "
        )),
        "{line}"
    );
    assert!(!line.contains("hunter2"), "{line}");
}

#[tokio::test]
async fn without_require_on_start_the_store_is_built_while_redis_is_down() {
    trace_init();
    let config = config_with(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:{}\"\ntimeout_ms = {TIMEOUT_MS}\n",
        dead_port()
    ));
    let store = server::build_store(&config).await.unwrap();
    assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
}

#[tokio::test]
async fn require_on_start_with_redis_up_starts() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let config = config_with(&format!(
        "{}require_on_start = true\n",
        store_toml(&redis.url(), "fail")
    ));
    server::build_store(&config).await.unwrap();
}

/// A TCP relay to Redis that can silently freeze the connections it already carries
/// (kept open, nothing relayed, as when a host vanishes) while new ones still work.
struct Relay {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    freeze: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (freeze, frozen) = tokio::sync::watch::channel(0u64);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut frozen = frozen.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let relay = async {
                        tokio::join!(
                            tokio::io::copy(&mut cr, &mut uw),
                            tokio::io::copy(&mut ur, &mut cw)
                        )
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = async { frozen.wait_for(|&below| n < below).await.is_ok() } => {
                            // Keep both sockets open and relay nothing, forever.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Relay {
            port,
            accepted,
            freeze,
            task,
        }
    }

    /// Freezes every connection accepted so far; later ones work.
    fn freeze_existing(&self) {
        let so_far = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(so_far > 0, "the proxy has not connected yet");
        self.freeze.send_replace(so_far);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_silently_dead_connection_is_replaced_after_a_timeout() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let relay = Relay::start(redis.port).await;
    let app = app().await;
    let gate = gate(app.addr)
        .toml(&store_toml(
            &format!("redis://127.0.0.1:{}", relay.port),
            "fail",
        ))
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    assert_eq!(
        gate.get_with("/me", &[("cookie", &cookie)]).await.status,
        200
    );

    // The proxy's connection goes silent without closing; Redis itself is fine, and
    // without a fresh connection every later request would time out.
    relay.freeze_existing();
    let res = gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert_eq!(res.status, 503);
    let data = until_session(&gate, &app, &cookie).await;
    assert_eq!(data, serde_json::json!({"userId":1,"name":"alice"}));
    gate.join().await;
}

#[tokio::test]
async fn rediss_checks_the_server_certificate() {
    trace_init();
    let Some((_redis, tls_port)) = RedisServer::start_tls() else {
        return;
    };
    // A self-signed certificate is not trusted: the TLS handshake runs (rustls with the
    // ring provider) and refuses it, as a clear error rather than a panic or a hang.
    let config = config_with(&format!(
        "[store]\nkind = \"redis\"\nurl = \"rediss://:hunter2@localhost:{tls_port}\"\ntimeout_ms = 2000\nrequire_on_start = true\n"
    ));
    let line = server::build_store(&config).await.unwrap_err().to_string();
    assert!(
        line.starts_with(&format!(
            "store.url = rediss://:***@localhost:{tls_port} is unreachable: "
        )),
        "{line}"
    );
    assert!(line.contains("certificate"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
}
