//! Users (SPEC §13) through the proxy: `X-Session-Destroy: all | others | handle:<h>`, the
//! token's `handle` claim, device facts, `max_per_user`, and the revocation race, on every
//! store: memory (two proxies sharing one store in the process), Redis and Redis Cluster
//! (two proxies sharing one Redis; skipped with a message when `redis-server` is absent,
//! except in CI).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sessiongate::store::users::UserIndex;
use sessiongate::store::{MemoryStore, Store};
use support::redis_server::{RedisCluster, RedisServer};
use support::*;

/// The application: `/login/U` logs user U in (a number); `/relogin/U` does so only for a
/// request that already has a session (a privilege change: the proxy rotates the ID);
/// `/logout/all`, `/logout/others` and `/logout/one` end sessions, `/signout/H` signs out
/// the device with handle H, and anything else answers `ok`.
fn users_app(req: &Seen) -> Reply {
    let path = req.path.as_str();
    if let Some(user) = path.strip_prefix("/login/") {
        return Reply::ok().header("x-session-set", format!(r#"{{"userId":{user}}}"#));
    }
    if let Some(user) = path.strip_prefix("/relogin/") {
        if req.header("x-session").is_none() {
            return Reply::ok().status(401);
        }
        return Reply::ok().header("x-session-set", format!(r#"{{"userId":{user}}}"#));
    }
    if let Some(h) = path.strip_prefix("/signout/") {
        return Reply::ok().header("x-session-destroy", format!("handle:{h}"));
    }
    match path {
        "/logout/all" => Reply::ok().header("x-session-destroy", "all"),
        "/logout/others" => Reply::ok().header("x-session-destroy", "others"),
        "/logout/one" => Reply::ok().header("x-session-destroy", "1"),
        _ => Reply::ok(),
    }
}

const REVOKED: &str = "sessiongate_sessions_destroyed_total{reason=\"revoke\"}";

/// What keeps a backend alive for the test's length.
#[allow(dead_code)]
enum Backend {
    Memory,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

/// Two proxies sharing one store, in front of one application.
struct Pair {
    _backend: Backend,
    a: Gate,
    b: Gate,
}

const USERS: &str = "[session]\nuser_field = \"userId\"\n";
const ADMIN: &str = "admin_listen = \"127.0.0.1:0\"\n";

async fn pair(kind: &str, app: &Upstream, extra: &str) -> Option<Pair> {
    let (backend, store_toml) = match kind {
        "memory" => (Backend::Memory, String::new()),
        "redis" => {
            let redis = RedisServer::start()?;
            let toml = format!(
                "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 2000\ntouch_interval_sec = 1\n",
                redis.url()
            );
            (Backend::Redis(redis), toml)
        }
        "cluster" => {
            let cluster = RedisCluster::start()?;
            let toml = format!(
                "[store]\nkind = \"redis\"\ncluster = {}\ntimeout_ms = 2000\ntouch_interval_sec = 1\n",
                cluster.toml_list()
            );
            (Backend::Cluster(cluster), toml)
        }
        other => panic!("unknown backend {other}"),
    };
    let toml = format!("{USERS}{extra}\n{store_toml}");
    let proxy = || gate(app.addr).server(ADMIN).toml(&toml);
    let a = proxy().run().await;
    let b = match kind {
        // Memory: the second proxy shares the first one's store, as two Redis clients do.
        "memory" => proxy().store(a.store().clone()).run().await,
        _ => proxy().run().await,
    };
    Some(Pair {
        _backend: backend,
        a,
        b,
    })
}

/// The claims the application received with the last request.
fn claims(app: &Upstream) -> Option<serde_json::Value> {
    app.last()
        .header("x-session")
        .map(|t| verify_token(t, UPSTREAM_SECRET))
}

/// Asks as `cookie` and returns the handle the application saw, if any.
async fn handle_of(gate: &Gate, app: &Upstream, cookie: &str) -> Option<String> {
    gate.get_with("/whoami", &[("cookie", cookie)]).await;
    claims(app).map(|c| c["handle"].as_str().unwrap().to_owned())
}

async fn login(gate: &Gate, user: u32, agent: &str) -> String {
    gate.get_with(&format!("/login/{user}"), &[("user-agent", agent)])
        .await
        .session_cookie()
}

async fn revoke_all_ends_every_session_of_that_user_on_every_proxy(kind: &str) {
    let app = upstream(users_app).await;
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let phone = login(&p.a, 1, "phone").await;
    let laptop = login(&p.b, 1, "laptop").await;
    let tablet = login(&p.a, 1, "tablet").await;
    let other = login(&p.b, 2, "other user").await;
    for c in [&phone, &laptop, &tablet, &other] {
        assert!(handle_of(&p.a, &app, c).await.is_some());
    }

    let res = p.b.get_with("/logout/all", &[("cookie", &laptop)]).await;
    assert_eq!(res.status, 200);
    assert!(
        res.is_clear("session"),
        "the current session's cookie is cleared"
    );
    for c in [&phone, &laptop, &tablet] {
        for g in [&p.a, &p.b] {
            let res = g.get_with("/whoami", &[("cookie", c)]).await;
            assert!(
                app.last().header("x-session").is_none(),
                "revoked session served"
            );
            assert!(res.is_clear("session"));
        }
    }
    assert!(
        handle_of(&p.a, &app, &other).await.is_some(),
        "another user's session ended"
    );
    assert!(p.a.store().devices("1").await.unwrap().is_empty());
    assert_eq!(p.a.store().devices("2").await.unwrap().len(), 1);
    let revoked = p.a.counter(REVOKED).await + p.b.counter(REVOKED).await;
    assert_eq!(revoked, 3);
}

async fn others_keeps_exactly_the_current_session(kind: &str) {
    let app = upstream(users_app).await;
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let a = login(&p.a, 7, "a").await;
    let b = login(&p.b, 7, "b").await;
    let current = login(&p.a, 7, "current").await;
    let res =
        p.a.get_with("/logout/others", &[("cookie", &current)])
            .await;
    assert_eq!(res.status, 200);
    assert!(
        res.set_cookies("session").is_empty(),
        "the current cookie is kept"
    );
    assert!(handle_of(&p.b, &app, &current).await.is_some());
    for c in [&a, &b] {
        assert!(handle_of(&p.b, &app, c).await.is_none());
    }
    let devices = p.a.store().devices("7").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].user_agent, "current");
}

async fn a_handle_signs_out_that_device_of_the_same_user_only(kind: &str) {
    let app = upstream(users_app).await;
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let mine = login(&p.a, 3, "mine").await;
    let my_other = login(&p.b, 3, "my other").await;
    let theirs = login(&p.b, 4, "theirs").await;
    let my_other_handle = handle_of(&p.a, &app, &my_other).await.unwrap();
    let their_handle = handle_of(&p.a, &app, &theirs).await.unwrap();

    // Another user's handle: nothing ends.
    let res =
        p.a.get_with(&format!("/signout/{their_handle}"), &[("cookie", &mine)])
            .await;
    assert_eq!(res.status, 200);
    assert!(res.set_cookies("session").is_empty());
    assert!(handle_of(&p.b, &app, &theirs).await.is_some());
    assert!(handle_of(&p.b, &app, &mine).await.is_some());

    // Malformed handles: nothing ends.
    for bad in ["nope", "%00", &their_handle[..21]] {
        p.a.get_with(&format!("/signout/{bad}"), &[("cookie", &mine)])
            .await;
    }
    assert!(handle_of(&p.b, &app, &mine).await.is_some());
    assert!(handle_of(&p.b, &app, &my_other).await.is_some());

    // My other device's handle: that one ends, mine stays.
    let res =
        p.b.get_with(&format!("/signout/{my_other_handle}"), &[("cookie", &mine)])
            .await;
    assert!(res.set_cookies("session").is_empty());
    assert!(handle_of(&p.a, &app, &my_other).await.is_none());
    assert!(handle_of(&p.a, &app, &mine).await.is_some());
}

async fn all_without_a_user_ends_the_current_session_and_others_ends_none(kind: &str) {
    let app = upstream(|req: &Seen| match req.path.as_str() {
        "/anon" => Reply::ok().header("x-session-update", r#"{"cart":1}"#),
        _ => users_app(req),
    })
    .await;
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let anon = p.a.get("/anon").await.session_cookie();
    let res = p.a.get_with("/logout/others", &[("cookie", &anon)]).await;
    assert!(res.set_cookies("session").is_empty());
    assert!(handle_of(&p.b, &app, &anon).await.is_some());
    let res = p.a.get_with("/logout/all", &[("cookie", &anon)]).await;
    assert!(res.is_clear("session"));
    assert!(handle_of(&p.b, &app, &anon).await.is_none());
}

async fn max_per_user_ends_the_least_recently_seen(kind: &str) {
    let app = upstream(users_app).await;
    let Some(p) = pair(kind, &app, "max_per_user = 2").await else {
        return;
    };
    let first = login(&p.a, 5, "first").await;
    let second = login(&p.b, 5, "second").await;
    // Use the first again until the device list shows it seen after the second (last_seen
    // is kept in whole seconds, and on Redis with the touch, here at most once a second).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(handle_of(&p.a, &app, &first).await.is_some());
        let devices = p.a.store().devices("5").await.unwrap();
        let seen = |agent: &str| {
            devices
                .iter()
                .find(|d| d.user_agent == agent)
                .map(|d| d.last_seen)
                .unwrap()
        };
        if seen("first") > seen("second") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_seen never moved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let third = login(&p.a, 5, "third").await;
    assert!(
        handle_of(&p.b, &app, &second).await.is_none(),
        "the least recently seen ends"
    );
    assert!(handle_of(&p.b, &app, &first).await.is_some());
    assert!(handle_of(&p.b, &app, &third).await.is_some());
    let limit =
        p.a.counter("sessiongate_sessions_destroyed_total{reason=\"limit\"}")
            .await
            + p.b
                .counter("sessiongate_sessions_destroyed_total{reason=\"limit\"}")
                .await;
    assert_eq!(limit, 1);
}

async fn devices_carry_their_facts_and_the_token_its_handle(kind: &str) {
    let app = upstream(users_app).await;
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let long_agent = "x".repeat(300);
    let cookie = login(&p.a, 9, &long_agent).await;
    let handle = handle_of(&p.a, &app, &cookie).await.unwrap();
    assert_eq!(handle.len(), 22);
    let sid = claims(&app).unwrap()["sid"].as_str().unwrap().to_owned();
    assert!(!handle.contains(&sid[..8]) && !sid.contains(&handle[..8]));
    let devices = p.b.store().devices("9").await.unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d.handle.to_string(), handle);
    assert_eq!(d.user_agent.len(), 200);
    assert_eq!(d.ip, "127.0.0.1");
    assert!(d.created > 0 && d.last_seen >= d.created);
}

/// SPEC §13's guarantee, under load: 50 clients of one user keep requesting through two
/// proxies (a third of them also re-logging in, which rotates their ID: the app only does
/// that for a request with a session, so no fresh login happens) while another of
/// that user's sessions asks for `Destroy: all`. A client marks each request it starts
/// after that answer arrived; the application counts those that still carry a session.
async fn no_request_started_after_the_revocation_is_served_with_a_revoked_session(kind: &str) {
    const CLIENTS: usize = 50;
    let revoked = Arc::new(AtomicBool::new(false));
    let served_after = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let app = {
        let (served_after, violations) = (served_after.clone(), violations.clone());
        upstream(move |req: &Seen| {
            if req.header("x-after-revoke") == Some("1") {
                served_after.fetch_add(1, Ordering::Relaxed);
                if req.header("x-session").is_some() {
                    violations.fetch_add(1, Ordering::Relaxed);
                }
            }
            users_app(req)
        })
        .await
    };
    let Some(p) = pair(kind, &app, "").await else {
        return;
    };
    let p = Arc::new(p);
    let mut cookies = Vec::new();
    for i in 0..CLIENTS {
        let g = if i.is_multiple_of(2) { &p.a } else { &p.b };
        cookies.push(login(g, 42, &format!("client {i}")).await);
    }
    let revoker = login(&p.a, 42, "revoker").await;
    let requests = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, mut cookie) in cookies.into_iter().enumerate() {
        let (p, revoked, stop, requests) =
            (p.clone(), revoked.clone(), stop.clone(), requests.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let after = revoked.load(Ordering::SeqCst);
                let g = if (i + n).is_multiple_of(2) {
                    &p.a
                } else {
                    &p.b
                };
                // Before the revocation, every third client also logs in again now and
                // then: a rotation that races with the revocation.
                let path = if !after && i % 3 == 0 && n % 4 == 3 {
                    "/relogin/42"
                } else {
                    "/whoami"
                };
                let flag = if after { "1" } else { "0" };
                let res = g
                    .get_with(path, &[("cookie", &cookie), ("x-after-revoke", flag)])
                    .await;
                if let Some(v) = res.cookie_value("session").filter(|v| !v.is_empty()) {
                    cookie = format!("session={v}");
                }
                requests.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let warm = requests.load(Ordering::Relaxed) + 5 * CLIENTS;
    let counter = requests.clone();
    eventually(
        move || counter.load(Ordering::Relaxed) >= warm,
        "clients warmed up",
    )
    .await;
    let res = p.b.get_with("/logout/all", &[("cookie", &revoker)]).await;
    assert_eq!(res.status, 200);
    revoked.store(true, Ordering::SeqCst);
    let target = served_after.load(Ordering::Relaxed) + 10 * CLIENTS;
    let counter = served_after.clone();
    eventually(
        move || counter.load(Ordering::Relaxed) >= target,
        "requests after the revocation",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (after, bad) = (
        served_after.load(Ordering::Relaxed),
        violations.load(Ordering::Relaxed),
    );
    println!(
        "{kind}: {} requests in all; {after} started after the revocation answered, {bad} of them served with a revoked session",
        requests.load(Ordering::Relaxed)
    );
    assert_eq!(bad, 0);
    assert!(p.a.store().devices("42").await.unwrap().is_empty());
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::trace_init();
                super::$case("memory").await;
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::trace_init();
                super::$case("redis").await;
            })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::trace_init();
                super::$case("cluster").await;
            })*
        }
    };
}

on_every_store!(
    revoke_all_ends_every_session_of_that_user_on_every_proxy,
    others_keeps_exactly_the_current_session,
    a_handle_signs_out_that_device_of_the_same_user_only,
    all_without_a_user_ends_the_current_session_and_others_ends_none,
    max_per_user_ends_the_least_recently_seen,
    devices_carry_their_facts_and_the_token_its_handle,
    no_request_started_after_the_revocation_is_served_with_a_revoked_session,
);

#[tokio::test]
async fn without_user_field_all_and_others_behave_as_before() {
    trace_init();
    let app = upstream(users_app).await;
    let gate = gate(app.addr)
        .store(Store::Memory(MemoryStore::new(100)))
        .run()
        .await;
    let a = login(&gate, 1, "a").await;
    let b = login(&gate, 1, "b").await;
    let res = gate.get_with("/logout/others", &[("cookie", &a)]).await;
    assert!(res.set_cookies("session").is_empty());
    let res = gate.get_with("/logout/all", &[("cookie", &a)]).await;
    assert!(res.is_clear("session"));
    assert!(handle_of(&gate, &app, &a).await.is_none());
    assert!(
        handle_of(&gate, &app, &b).await.is_some(),
        "no index: b is untouched"
    );
}
