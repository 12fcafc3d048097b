//! The admin listener (SPEC §9): health, readiness and metrics.

mod support;

use support::*;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints_answer() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    gate.get("/").await;
    assert_eq!(gate.admin_get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(gate.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    let (status, text) = gate.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "# TYPE sessiongate_requests counter",
        "# TYPE sessiongate_session_lookups counter",
        "# TYPE sessiongate_sessions_created counter",
        "# TYPE sessiongate_sessions_destroyed counter",
        "# TYPE sessiongate_store_seconds histogram",
        "# TYPE sessiongate_upstream_errors counter",
        "# TYPE sessiongate_upstream_seconds histogram",
        "# TYPE sessiongate_in_flight_requests gauge",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(gate.admin_get("/nope").await.0, 404);
    gate.join().await;
}

#[tokio::test]
async fn counters_move_with_traffic() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    gate.get_with("/", &[("cookie", &cookie)]).await;
    gate.get_with("/", &[("cookie", "session=forged")]).await;
    gate.send(
        http::Method::POST,
        "/update",
        &[("cookie", &cookie)],
        r#"{"a":1}"#,
    )
    .await;
    gate.get_with("/logout", &[("cookie", &cookie)]).await;
    gate.get_with("/", &[("cookie", &cookie)]).await;
    let (_, text) = gate.admin_get("/metrics").await;
    assert_eq!(
        metric(&text, "sessiongate_requests_total{status=\"200\"}"),
        6.0
    );
    assert_eq!(metric(&text, "sessiongate_sessions_created_total"), 1.0);
    assert_eq!(
        metric(
            &text,
            "sessiongate_sessions_destroyed_total{reason=\"logout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "sessiongate_session_lookups_total{result=\"hit\"}"),
        3.0
    );
    assert_eq!(
        metric(&text, "sessiongate_session_lookups_total{result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "sessiongate_session_lookups_total{result=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "sessiongate_store_seconds_count{op=\"create\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "sessiongate_store_seconds_count{op=\"load\"}"),
        4.0
    );
    assert_eq!(
        metric(&text, "sessiongate_store_seconds_count{op=\"replace\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "sessiongate_upstream_seconds_count{{upstream=\"http://{}\"}}",
                app.addr
            )
        ),
        6.0
    );
    assert_eq!(metric(&text, "sessiongate_in_flight_requests"), 0.0);
    for secret_ish in [&cookie["session=".len()..], "forged", SECRET] {
        assert!(!text.contains(secret_ish), "metrics leak {secret_ish}");
    }
    gate.join().await;

    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = support::gate(dead)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    assert_eq!(gate.get("/").await.status, 502);
    let (_, text) = gate.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            &format!(
                "sessiongate_upstream_errors_total{{kind=\"unreachable\",upstream=\"http://{dead}\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "sessiongate_requests_total{status=\"502\"}"),
        1.0
    );
    gate.join().await;
}

#[tokio::test]
async fn admin_paths_are_never_served_on_the_proxy_port() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let res = gate.get(path).await;
        assert_eq!(res.text(), "ok", "{path} answered by the proxy");
        assert_eq!(app.last().path, path);
    }
    gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_store() {
    trace_init();
    let Some(mut redis) = support::redis_server::RedisServer::start() else {
        return;
    };
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 300",
            redis.url()
        ))
        .run()
        .await;
    assert_eq!(gate.admin_get("/readyz").await.0, 200);
    redis.kill();
    assert_eq!(
        gate.admin_get("/readyz").await,
        (503, "store unavailable\n".to_owned())
    );
    assert_eq!(
        gate.admin_get("/healthz").await.0,
        200,
        "liveness must not follow the store"
    );
    redis.restart();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while gate.admin_get("/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gate.join().await;
}
