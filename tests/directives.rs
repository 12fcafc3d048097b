//! The upstream changes the session with response headers (SPEC §6).

mod support;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use support::*;

async fn data_seen(gate: &Gate, app: &Upstream, cookie: &str) -> Option<serde_json::Value> {
    gate.get_with("/whoami", &[("cookie", cookie)]).await;
    app.last()
        .header("x-session")
        .map(|t| verify_token(t, UPSTREAM_SECRET)["data"].clone())
}

#[tokio::test]
async fn set_while_logged_in_issues_a_fresh_id_and_retires_the_old_one() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let first = gate.get("/login").await.session_cookie();
    let second = gate
        .get_with("/login", &[("cookie", &first)])
        .await
        .session_cookie();
    assert_ne!(first, second);
    assert_eq!(data_seen(&gate, &app, &first).await, None);
    assert!(data_seen(&gate, &app, &second).await.is_some());
    gate.join().await;
}

#[tokio::test]
async fn set_without_regeneration_keeps_the_id() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"step":1}"#),
        "/again" => Reply::ok().header("x-session-set", r#"{"step":2}"#),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .toml("[session]\nregenerate_on_set = false")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    let res = gate.get_with("/again", &[("cookie", &cookie)]).await;
    assert!(
        res.set_cookies("session").is_empty(),
        "ID changed or cookie re-sent"
    );
    assert_eq!(
        data_seen(&gate, &app, &cookie).await,
        Some(serde_json::json!({"step":2}))
    );
    gate.join().await;
}

#[tokio::test]
async fn update_merge_patches_and_keeps_the_id() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    let res = gate
        .send(
            http::Method::POST,
            "/update",
            &[("cookie", &cookie)],
            r#"{"name":null,"cart":{"items":[1,2]},"lang":"fr"}"#,
        )
        .await;
    assert_eq!(res.status, 200);
    assert!(res.set_cookies("session").is_empty());
    assert!(res.header("x-session-update").is_none());
    assert_eq!(
        data_seen(&gate, &app, &cookie).await,
        Some(serde_json::json!({"userId":1,"cart":{"items":[1,2]},"lang":"fr"}))
    );
    gate.join().await;
}

#[tokio::test]
async fn update_without_a_session_creates_one() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let res = gate
        .send(http::Method::POST, "/update", &[], r#"{"cart":[7]}"#)
        .await;
    let cookie = res.session_cookie();
    assert_eq!(
        data_seen(&gate, &app, &cookie).await,
        Some(serde_json::json!({"cart":[7]}))
    );
    gate.join().await;
}

#[tokio::test]
async fn destroy_then_set_in_one_response_is_a_login_with_a_fresh_id() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1}"#),
        "/relogin" => Reply::ok()
            .header("x-session-destroy", "1")
            .header("x-session-set", r#"{"userId":2}"#),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .toml("[session]\nregenerate_on_set = false")
        .run()
        .await;
    let old = gate.get("/login").await.session_cookie();
    let res = gate.get_with("/relogin", &[("cookie", &old)]).await;
    let new = res.session_cookie();
    assert_ne!(old, new);
    assert_eq!(
        res.set_cookies("session").len(),
        1,
        "one Set-Cookie, not a clear and a set"
    );
    assert_eq!(data_seen(&gate, &app, &old).await, None);
    assert_eq!(
        data_seen(&gate, &app, &new).await,
        Some(serde_json::json!({"userId":2}))
    );
    gate.join().await;
}

#[tokio::test]
async fn invalid_directives_are_502_and_change_nothing() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1}"#),
        "/not-json" => Reply::ok()
            .header("x-session-update", "{oops")
            .header("x-session-destroy", "1"),
        "/not-object" => Reply::ok().header("x-session-set", "[1,2]"),
        "/latin1" => Reply::ok().header("x-session-set", b"{\"a\":\"\xe9\"}"),
        "/too-big" => Reply::ok().header(
            "x-session-update",
            format!(r#"{{"blob":"{}"}}"#, "x".repeat(300)),
        ),
        "/twice" => Reply::ok()
            .header("x-session-set", "{}")
            .header("x-session-set", r#"{"a":1}"#),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .toml("[session]\nmax_bytes = 256")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    for path in ["/not-json", "/not-object", "/latin1", "/too-big", "/twice"] {
        let res = gate.get_with(path, &[("cookie", &cookie)]).await;
        assert_eq!(res.status, 502, "{path}");
        assert_eq!(
            res.text(),
            "bad gateway: invalid session header from upstream\n"
        );
        assert!(res.set_cookies("session").is_empty(), "{path}");
        for (name, _) in res.headers.iter() {
            assert!(
                !name.as_str().starts_with("x-session"),
                "{path}: {name} leaked"
            );
        }
        assert_eq!(
            data_seen(&gate, &app, &cookie).await,
            Some(serde_json::json!({"userId":1})),
            "{path} changed the session"
        );
    }
    gate.join().await;
}

#[tokio::test]
async fn utf8_json_from_php_python_and_node_is_accepted() {
    trace_init();
    let app = upstream(|_| Reply::ok().header("x-session-set", "{\"name\":\"Zoë 🦀\"}")).await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    assert_eq!(
        data_seen(&gate, &app, &cookie).await.unwrap()["name"],
        "Zoë 🦀"
    );
    gate.join().await;
}

#[tokio::test]
async fn reserved_response_headers_never_reach_the_client_in_any_spelling() {
    trace_init();
    let app = upstream(|_| {
        Reply::ok()
            .header("x-session", "leak")
            .header("x_session_set", r#"{"evil":1}"#)
            .header("X-Session-Data", "leak")
            .header("x-session_debug", "leak")
            .header("x-other", "kept")
    })
    .await;
    let gate = gate(app.addr).run().await;
    let res = gate.get("/").await;
    assert_eq!(res.status, 200);
    for (name, _) in res.headers.iter() {
        assert!(
            !name.as_str().replace('_', "-").starts_with("x-session"),
            "{name} leaked"
        );
    }
    assert_eq!(res.header("x-other"), Some("kept"));
    assert!(
        res.set_cookies("session").is_empty(),
        "an underscore spelling was applied"
    );
    gate.join().await;
}

#[tokio::test]
async fn upstream_set_cookie_for_the_session_name_is_dropped() {
    trace_init();
    let app = upstream(|_| {
        Reply::ok()
            .header("set-cookie", "session=planted; Path=/")
            .header("set-cookie", "theme=dark; Path=/")
            .header("cache-control", "public, max-age=60")
            .header("x-session-set", r#"{"u":1}"#)
    })
    .await;
    let gate = gate(app.addr).run().await;
    let res = gate.get("/").await;
    let ours = res.set_cookies("session");
    assert_eq!(ours.len(), 1);
    assert!(!ours[0].contains("planted"));
    assert_eq!(res.set_cookies("theme").len(), 1);
    assert_eq!(res.header("cache-control"), Some("max-age=60, private"));
    gate.join().await;
}

/// SPEC §6: an Update in flight when another request destroys the session is not applied,
/// and the session stays destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_racing_a_destroy_never_resurrects_the_session() {
    trace_init();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let app = upstream(move |req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1}"#),
        "/logout" => Reply::ok().header("x-session-destroy", "1"),
        "/slow-update" => {
            arrived_tx.lock().unwrap().send(()).unwrap();
            // Blocks this worker only: the runtime moves its other tasks elsewhere.
            tokio::task::block_in_place(|| {
                release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10))
                    .expect("released")
            });
            Reply::ok().header("x-session-update", r#"{"late":true}"#)
        }
        _ => Reply::ok(),
    })
    .await;
    let gate = Arc::new(gate(app.addr).run().await);
    let cookie = gate.get("/login").await.session_cookie();

    let slow = {
        let gate = gate.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { gate.get_with("/slow-update", &[("cookie", &cookie)]).await })
    };
    tokio::task::spawn_blocking(move || arrived_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("slow update reached the upstream");
    let logout = gate.get_with("/logout", &[("cookie", &cookie)]).await;
    assert!(logout.is_clear("session"));
    release_tx.send(()).unwrap();
    let late = slow.await.unwrap();
    assert_eq!(late.status, 200, "the upstream's response passes on");
    assert!(
        late.is_clear("session"),
        "the late update's cookie is cleared"
    );
    assert_eq!(
        data_seen(&gate, &app, &cookie).await,
        None,
        "session resurrected"
    );
    Arc::try_unwrap(gate).ok().unwrap().join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_are_all_applied() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", "{}"),
        p if p.starts_with("/inc/") => {
            Reply::ok().header("x-session-update", format!(r#"{{"k{}":true}}"#, &p[5..]))
        }
        _ => Reply::ok(),
    })
    .await;
    let gate = Arc::new(gate(app.addr).run().await);
    let cookie = gate.get("/login").await.session_cookie();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let gate = gate.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move {
                gate.get_with(&format!("/inc/{i}"), &[("cookie", &cookie)])
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let data = data_seen(&gate, &app, &cookie).await.unwrap();
    assert_eq!(
        data.as_object().unwrap().len(),
        20,
        "lost an update: {data}"
    );
    Arc::try_unwrap(gate).ok().unwrap().join().await;
}

#[tokio::test]
async fn upstream_hop_by_hop_headers_end_at_the_proxy() {
    trace_init();
    let app = upstream(|_| {
        Reply::ok()
            .header("connection", "x-internal")
            .header("x-internal", "backend detail")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
    })
    .await;
    let gate = gate(app.addr).run().await;
    let res = gate.get("/").await;
    assert_eq!(res.status, 200);
    assert!(res.header("x-internal").is_none());
    assert!(res.header("keep-alive").is_none());
    assert_eq!(res.header("x-kept"), Some("1"));
    gate.join().await;
}

/// Numbers survive the store and later merges exactly (serde_json `float_roundtrip`).
// See: fuzz target `directives`, input `{"n":4.5e300}`.
#[tokio::test]
async fn large_floats_round_trip_exactly() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"n":4.5e300,"m":1.03e50,"f":0.1}"#),
        "/touch" => Reply::ok().header("x-session-update", r#"{"x":1}"#),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    let want = serde_json::json!({"n":4.5e300,"m":1.03e50,"f":0.1});
    assert_eq!(data_seen(&gate, &app, &cookie).await.unwrap(), want);
    gate.get_with("/touch", &[("cookie", &cookie)]).await;
    let data = data_seen(&gate, &app, &cookie).await.unwrap();
    assert_eq!(data["n"], want["n"]);
    assert_eq!(data["m"], want["m"]);
    assert_eq!(data["f"], want["f"]);
    gate.join().await;
}
