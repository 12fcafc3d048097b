//! What the upstream receives (SPEC §5, §10.1): the client can never speak for the proxy.

mod support;

use support::*;

const SPOOFS: &[&str] = &[
    "X-Session",
    "x-session",
    "X_Session",
    "x_session",
    "X-SESSION-SET",
    "X_Session_Set",
    "x-session_update",
    "X-Session-Destroy",
    "X-Session-Data",
    "x_session_user",
    "X-Sessionid",
];

#[tokio::test]
async fn spoofed_reserved_headers_never_reach_the_upstream_in_any_spelling() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("underscores_in_headers = true")
        .toml("[forward.headers]\n\"X-User-Id\" = \"userId\"")
        .run()
        .await;
    let mut headers: Vec<(&str, &str)> = SPOOFS.iter().map(|n| (*n, "evil")).collect();
    headers.extend([
        ("X-User-Id", "evil"),
        ("x_user_id", "evil"),
        ("X-User_Id", "evil"),
    ]);

    // Anonymous.
    gate.get_with("/", &headers).await;
    let seen = app.last();
    for (name, _) in seen.headers.iter() {
        let folded = name.as_str().replace('_', "-");
        assert!(
            !folded.starts_with("x-session"),
            "{name} reached the upstream"
        );
        assert_ne!(folded, "x-user-id", "{name} reached the upstream");
    }

    // With a session: only the proxy's own values arrive.
    let cookie = gate.get("/login").await.session_cookie();
    let mut with_cookie = headers.clone();
    with_cookie.push(("cookie", &cookie));
    gate.get_with("/", &with_cookie).await;
    let seen = app.last();
    assert_eq!(seen.headers.get_all("x-session").iter().count(), 1);
    assert_eq!(seen.header("x-user-id"), Some("1"));
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
    verify_token(seen.header("x-session").unwrap(), UPSTREAM_SECRET);
    for (name, _) in seen.headers.iter() {
        let folded = name.as_str().replace('_', "-");
        if folded.starts_with("x-session") || folded == "x-user-id" {
            assert!(
                name == "x-session" || name == "x-user-id",
                "{name} reached the upstream"
            );
        }
    }
    gate.join().await;
}

#[tokio::test]
async fn underscore_headers_are_dropped_by_default_and_kept_when_allowed() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    gate.get_with("/", &[("x_forwarded_user", "evil"), ("x-plain", "1")])
        .await;
    let seen = app.last();
    assert!(seen.header("x_forwarded_user").is_none());
    assert_eq!(seen.header("x-plain"), Some("1"));
    gate.join().await;

    let gate = support::gate(app.addr)
        .server("underscores_in_headers = true")
        .run()
        .await;
    gate.get_with("/", &[("x_custom", "1"), ("x_session_set", "evil")])
        .await;
    let seen = app.last();
    assert_eq!(seen.header("x_custom"), Some("1"));
    assert!(seen.header("x_session_set").is_none());
    gate.join().await;
}

#[tokio::test]
async fn session_cookie_is_removed_and_other_cookies_pass_unchanged() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();

    gate.get_with(
        "/",
        &[("cookie", &format!("theme=dark; {cookie}; lang=en"))],
    )
    .await;
    let seen = app.last();
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    assert!(seen.header("x-session").is_some());

    gate.get_with("/", &[("cookie", &cookie)]).await;
    assert!(
        app.last().header("cookie").is_none(),
        "an empty Cookie header was sent"
    );

    gate.get_with("/", &[("cookie", "theme=dark")]).await;
    assert_eq!(app.last().header("cookie"), Some("theme=dark"));
    gate.join().await;
}

#[tokio::test]
async fn forwarded_headers_are_replaced_for_untrusted_peers() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    gate.get_with(
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("host", "app.example"),
        ],
    )
    .await;
    let seen = app.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.example"));
    assert_eq!(seen.header("host"), Some("app.example"));
    gate.join().await;
}

#[tokio::test]
async fn forwarded_headers_are_extended_for_trusted_peers() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("trusted_proxies = [\"127.0.0.0/8\"]")
        .run()
        .await;
    gate.get_with(
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
        ],
    )
    .await;
    let seen = app.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));
    gate.join().await;
}

#[tokio::test]
async fn connection_nominated_headers_cannot_remove_the_proxys_headers() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    gate.get_with(
        "/",
        &[
            ("cookie", &cookie),
            ("connection", "x-session, x-forwarded-for, x-custom"),
            ("x-custom", "should-go"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
        ],
    )
    .await;
    let seen = app.last();
    assert!(
        seen.header("x-session").is_some(),
        "client removed the session token"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header("x-custom").is_none());
    assert!(seen.header("keep-alive").is_none());
    assert!(seen.header("proxy-authorization").is_none());
    assert!(seen.header("te").is_none());
    gate.join().await;
}

#[tokio::test]
async fn forward_headers_render_session_fields() {
    trace_init();
    let app = upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header(
            "x-session-set",
            r#"{"userId":42,"name":"Zoë","admin":false,"roles":["a","b"]}"#,
        ),
        _ => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .toml(
            "[forward.headers]\n\"X-User-Id\" = \"userId\"\n\"X-Admin\" = \"admin\"\n\"X-Roles\" = \"roles\"\n\"X-Missing\" = \"nope\"",
        )
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    gate.get_with("/", &[("cookie", &cookie)]).await;
    let seen = app.last();
    assert_eq!(seen.header("x-user-id"), Some("42"));
    assert_eq!(seen.header("x-admin"), Some("false"));
    assert_eq!(seen.header("x-roles"), Some(r#"["a","b"]"#));
    assert!(seen.header("x-missing").is_none());
    gate.join().await;
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    trace_init();
    let app = upstream(|req| Reply::ok().body(format!("got {} bytes", req.body.len()))).await;
    let gate = gate(app.addr).run().await;
    let big = "x".repeat(3 * 1024 * 1024);
    let res = gate.send(http::Method::POST, "/upload", &[], &big).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), format!("got {} bytes", big.len()));
    assert_eq!(app.last().body.len(), big.len());
    gate.join().await;
}
