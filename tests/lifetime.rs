//! Sliding idle TTL, cookie refresh, absolute TTL, eviction (SPEC §7).

mod support;

use std::time::Duration;

use support::*;

async fn has_session(gate: &Gate, app: &Upstream, cookie: &str) -> bool {
    gate.get_with("/", &[("cookie", cookie)]).await;
    app.last().header("x-session").is_some()
}

#[tokio::test]
async fn using_a_session_slides_its_idle_timeout() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).toml("[session]\nttl_sec = 2").run().await;
    let cookie = gate.get("/login").await.session_cookie();
    // Keep using it for longer than its TTL: it must stay alive.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert!(
            has_session(&gate, &app, &cookie).await,
            "active session expired"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Left idle for longer than its TTL, it expires (and checking it is itself a use, so
    // each check waits out a full TTL first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let res = gate.get_with("/", &[("cookie", &cookie)]).await;
        if app.last().header("x-session").is_none() {
            assert!(res.is_clear("session"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle session never expired"
        );
    }
    gate.join().await;
}

#[tokio::test]
async fn cookie_is_re_sent_only_after_cookie_refresh_sec() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\ncookie_refresh_sec = 1")
        .run()
        .await;
    let login = gate.get("/login").await;
    let cookie = login.session_cookie();
    let res = gate.get_with("/", &[("cookie", &cookie)]).await;
    assert!(res.set_cookies("session").is_empty(), "re-sent immediately");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refreshed = loop {
        let res = gate.get_with("/", &[("cookie", &cookie)]).await;
        if !res.set_cookies("session").is_empty() {
            break res;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cookie never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refreshed.session_cookie(),
        cookie,
        "refresh keeps the same value"
    );
    assert!(refreshed.set_cookies("session")[0].contains("Max-Age=86400"));
    assert_eq!(refreshed.header("cache-control"), Some("private"));
    let res = gate.get_with("/", &[("cookie", &cookie)]).await;
    assert!(
        res.set_cookies("session").is_empty(),
        "re-sent on every response after refresh"
    );
    gate.join().await;
}

#[tokio::test]
async fn absolute_ttl_ends_a_session_whatever_its_activity() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\nabsolute_ttl_sec = 1")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while has_session(&gate, &app, &cookie).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "absolute TTL not enforced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = gate.get_with("/", &[("cookie", &cookie)]).await;
    assert!(res.is_clear("session"));
    gate.join().await;
}

#[tokio::test]
async fn memory_store_evicts_the_least_recently_used_past_max_sessions() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).toml("[store]\nmax_sessions = 3").run().await;
    let a = gate.get("/login").await.session_cookie();
    let b = gate.get("/login").await.session_cookie();
    let c = gate.get("/login").await.session_cookie();
    assert!(has_session(&gate, &app, &a).await); // a is now most recently used
    let d = gate.get("/login").await.session_cookie(); // evicts b
    assert!(!has_session(&gate, &app, &b).await, "LRU entry not evicted");
    for s in [&a, &c, &d] {
        assert!(has_session(&gate, &app, s).await);
    }
    let sessiongate::store::Store::Memory(m) = gate.store() else {
        panic!("memory store")
    };
    assert_eq!(m.len(), 3);
    gate.join().await;
}

#[tokio::test]
async fn cookie_attributes_follow_the_config() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[session]\ncookie_name = \"__Host-sid\"\nttl_sec = 600")
        .cookie("secure = true\nsame_site = \"Strict\"")
        .run()
        .await;
    let res = gate.get("/login").await;
    let set = &res.set_cookies("__Host-sid")[0];
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Domain"));
    let value = res.cookie_value("__Host-sid").unwrap();
    let logout = gate
        .get_with("/logout", &[("cookie", &format!("__Host-sid={value}"))])
        .await;
    let clear = &logout.set_cookies("__Host-sid")[0];
    assert!(clear.starts_with("__Host-sid=;") && clear.contains("Max-Age=0"));
    assert!(
        clear.contains("Secure") && clear.contains("Path=/"),
        "a __Host- clear must repeat Secure and Path: {clear}"
    );
    gate.join().await;
}
