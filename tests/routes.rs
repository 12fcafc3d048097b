//! Routes (SPEC §11): what a `session = "required"` route answers (401, 302, 403, all
//! `no-store`), `require` and `max_auth_age_sec`, the token's `auth_time`, `session = "off"`,
//! a second upstream with its own pool, and the Host / X-Forwarded-For rules of SPEC §5.

mod support;

use std::time::Duration;

use http::Method;
use sessiongate::session::SessionId;
use sessiongate::store::{Cas, SessionStore};
use support::*;

/// The application: `/login*` set a session, `/visit` creates one by Update alone,
/// `/update` patches it with the request body,
/// `/off/login` tries to set one on a `session = "off"` route, anything else answers `ok`.
async fn policy_app() -> Upstream {
    upstream(|req| match req.path.as_str() {
        "/login" => Reply::ok().header(
            "x-session-set",
            r#"{"userId":1,"role":"admin","groups":["staff","ops"],"level":3}"#,
        ),
        "/login-user" => Reply::ok().header(
            "x-session-set",
            r#"{"userId":2,"role":"user","groups":["staff"],"level":"3"}"#,
        ),
        "/login-typed" => Reply::ok().header(
            "x-session-set",
            r#"{"userId":3,"role":"admin","groups":["ops"],"level":"3"}"#,
        ),
        "/visit" => Reply::ok().header("x-session-update", r#"{"role":"admin","level":3}"#),
        "/update" => Reply::ok().header("x-session-update", req.body.clone()),
        "/off/login" => Reply::ok()
            .header("x-session-set", r#"{"userId":9}"#)
            .header("set-cookie", "session=forged; Path=/")
            .header("set-cookie", "theme=dark; Path=/"),
        _ => Reply::ok(),
    })
    .await
}

const ROUTES: &str = r#"
[[route]]
prefix = "/account"
session = "required"
login_url = "/login-page?next={return_to}"

[[route]]
prefix = "/api"
session = "required"

[[route]]
prefix = "/admin"
session = "required"
require = { role = "admin", level = 3 }

[[route]]
prefix = "/ops"
session = "required"
require = { groups = "ops" }

[[route]]
prefix = "/stepup"
session = "required"
max_auth_age_sec = 300

[[route]]
prefix = "/off"
session = "off"
"#;

fn id_of(cookie: &str) -> SessionId {
    let value = cookie.strip_prefix("session=").unwrap();
    value.split('.').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn without_a_session_a_required_route_answers_401_or_redirects_a_browser() {
    trace_init();
    let app = policy_app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    let html = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];

    let res = gate.get("/account/settings?tab=2&x=a%20b").await;
    assert_eq!(res.status, 401);
    assert_eq!(res.text(), r#"{"error":"session required"}"#);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));

    let res = gate.get_with("/account/settings?tab=2", &html).await;
    assert_eq!(res.status, 302);
    assert_eq!(
        res.header("location"),
        Some("/login-page?next=%2Faccount%2Fsettings%3Ftab%3D2")
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.text(), "");
    // The path in `return_to` is the normalized one: never `//host` or a dot segment.
    let res = gate.get_with("//account/./x", &html).await;
    assert_eq!(
        res.header("location"),
        Some("/login-page?next=%2Faccount%2Fx")
    );

    let res = gate.send(Method::HEAD, "/account", &html, "").await;
    assert_eq!(res.status, 302);
    // Not a navigation: a POST, or no text/html in Accept.
    let res = gate.send(Method::POST, "/account", &html, "x").await;
    assert_eq!(res.status, 401);
    let res = gate
        .get_with("/account", &[("accept", "application/json")])
        .await;
    assert_eq!(res.status, 401);
    // A route without login_url answers 401 to a browser too.
    let res = gate.get_with("/api/x", &html).await;
    assert_eq!(res.status, 401);

    // A cookie whose session is gone gets 401 and the cookie cleared.
    let cookie = gate.get("/login").await.session_cookie();
    gate.store().delete(&id_of(&cookie)).await.unwrap();
    let res = gate.get_with("/api/x", &[("cookie", &cookie)]).await;
    assert_eq!(res.status, 401);
    assert!(res.is_clear("session"), "{:?}", res.headers);
    // A forged cookie is no session: 401, never a 5xx.
    let res = gate
        .get_with("/api/x", &[("cookie", "session=forged.value")])
        .await;
    assert_eq!(res.status, 401);

    assert_eq!(
        app.seen()
            .iter()
            .map(|s| s.path.as_str())
            .collect::<Vec<_>>(),
        ["/login"]
    );
    gate.join().await;
}

#[tokio::test]
async fn with_a_session_a_required_route_forwards_with_the_token() {
    trace_init();
    let app = policy_app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    let cookie = gate.get("/login").await.session_cookie();
    let res = gate
        .get_with("/account/settings", &[("cookie", &cookie)])
        .await;
    assert_eq!(res.status, 200);
    let seen = app.last();
    assert_eq!(seen.path, "/account/settings");
    let claims = verify_token(seen.header("x-session").unwrap(), UPSTREAM_SECRET);
    assert_eq!(claims["data"]["userId"], 1);
    gate.join().await;
}

#[tokio::test]
async fn require_compares_exactly_and_looks_inside_arrays() {
    trace_init();
    let app = policy_app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    let admin = gate.get("/login").await.session_cookie();
    // `level = "3"`, `role = "user"`, groups without "ops".
    let user = gate.get("/login-user").await.session_cookie();

    // Equal values.
    assert_eq!(
        gate.get_with("/admin/x", &[("cookie", &admin)])
            .await
            .status,
        200
    );
    // An array field that contains the value.
    assert_eq!(
        gate.get_with("/ops", &[("cookie", &admin)]).await.status,
        200
    );
    for path in ["/admin/x", "/ops"] {
        let res = gate.get_with(path, &[("cookie", &user)]).await;
        assert_eq!(res.status, 403, "{path}");
        assert_eq!(res.text(), r#"{"error":"forbidden"}"#);
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.header("cache-control"), Some("no-store"));
    }
    // Without a session, `require` is not reached: 401.
    assert_eq!(gate.get("/admin/x").await.status, 401);
    // Type mismatch alone: `3` is not `"3"`.
    let typed = gate.get("/login-typed").await.session_cookie();
    assert_eq!(
        gate.get_with("/admin/x", &[("cookie", &typed)])
            .await
            .status,
        403
    );
    let forwarded: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        forwarded.iter().filter(|p| p.starts_with("/admin")).count(),
        1
    );
    assert_eq!(forwarded.iter().filter(|p| *p == "/ops").count(), 1);
    gate.join().await;
}

#[tokio::test]
async fn max_auth_age_counts_from_the_last_set_and_auth_time_reaches_the_token() {
    trace_init();
    let app = policy_app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;

    // Fresh from a Set: allowed, and the token carries auth_time.
    let cookie = gate.get("/login").await.session_cookie();
    assert_eq!(
        gate.get_with("/stepup/pay", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    let claims = verify_token(app.last().header("x-session").unwrap(), UPSTREAM_SECRET);
    let auth_time = claims["auth_time"].as_u64().expect("auth_time claim");
    assert!(auth_time <= claims["iat"].as_u64().unwrap());

    // The same session, its last Set 301 seconds ago: no fresh session (401), as anonymous.
    let id = id_of(&cookie);
    let store = gate.store();
    let rec = store
        .load(&id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let stale = sessiongate::session::Record {
        auth_time: Some(auth_time - 301),
        ..rec.clone()
    };
    assert_eq!(
        store
            .replace(&id, &rec, &stale, Duration::from_secs(60))
            .await
            .unwrap(),
        Cas::Applied
    );
    let res = gate.get_with("/stepup/pay", &[("cookie", &cookie)]).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.text(), r#"{"error":"session required"}"#);
    // A new Set (the application re-authenticates) makes it fresh again.
    let cookie = gate
        .get_with("/login", &[("cookie", &cookie)])
        .await
        .session_cookie();
    assert_eq!(
        gate.get_with("/stepup/pay", &[("cookie", &cookie)])
            .await
            .status,
        200
    );

    // A session created by an Update alone has no auth_time: never fresh enough, and its
    // token has no auth_time claim; an Update keeps a Set's auth_time.
    let visitor = gate.get("/visit").await.session_cookie();
    assert_eq!(
        gate.get_with("/stepup/pay", &[("cookie", &visitor)])
            .await
            .status,
        401
    );
    gate.get_with("/account", &[("cookie", &visitor)]).await;
    let claims = verify_token(app.last().header("x-session").unwrap(), UPSTREAM_SECRET);
    assert!(claims.get("auth_time").is_none(), "{claims}");
    gate.send(
        Method::POST,
        "/update",
        &[("cookie", &cookie)],
        r#"{"n":1}"#,
    )
    .await;
    gate.get_with("/account", &[("cookie", &cookie)]).await;
    let claims = verify_token(app.last().header("x-session").unwrap(), UPSTREAM_SECRET);
    assert!(claims["auth_time"].as_u64().is_some(), "{claims}");
    assert_eq!(claims["data"]["n"], 1);
    gate.join().await;
}

#[tokio::test]
async fn session_off_reads_no_cookie_touches_no_store_and_ignores_directives() {
    trace_init();
    let app = policy_app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(ROUTES)
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    let ops = gate.store_ops().await;

    let res = gate
        .get_with(
            "/off/login",
            &[
                ("cookie", &format!("a=1; {cookie}; b=2")),
                ("x-session", "forged"),
                ("x_session_set", "{}"),
            ],
        )
        .await;
    assert_eq!(res.status, 200);
    // The upstream saw no session and no session cookie; other cookies pass.
    let seen = app.last();
    assert_eq!(seen.header("x-session"), None);
    assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-session"))
    );
    // Its Set directive and its Set-Cookie for our name never reach the client.
    assert_eq!(res.set_cookies("session"), Vec::<String>::new());
    assert!(res.header("x-session-set").is_none());
    assert_eq!(
        res.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["theme=dark; Path=/"]
    );
    // The store was not touched: no load, no write, and the session is as it was.
    assert_eq!(gate.store_ops().await, ops);
    let res = gate.get_with("/account", &[("cookie", &cookie)]).await;
    assert_eq!(res.status, 200);
    let claims = verify_token(app.last().header("x-session").unwrap(), UPSTREAM_SECRET);
    assert_eq!(claims["data"]["userId"], 1);
    gate.join().await;
}

#[tokio::test]
async fn a_second_upstream_has_its_own_pool_label_and_the_same_header_rules() {
    trace_init();
    let main = app().await;
    let other = upstream(|_| {
        Reply::ok()
            .header("x-session-update", r#"{"via":"other"}"#)
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
    })
    .await;
    let gate = gate(main.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&format!(
            "[[route]]\nprefix = \"/api\"\nupstream = \"http://{}\"\n",
            other.addr
        ))
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    for _ in 0..3 {
        let res = gate
            .send(
                Method::POST,
                "/api/items",
                &[
                    ("cookie", &cookie),
                    ("connection", "x-client-hop"),
                    ("x-client-hop", "1"),
                    ("te", "trailers"),
                    ("x-session", "forged"),
                    ("x_forwarded_for", "6.6.6.6"),
                ],
                "body",
            )
            .await;
        assert_eq!(res.status, 200);
        assert!(res.header("x-session-update").is_none());
        assert!(res.header("x-hop").is_none() && res.header("keep-alive").is_none());
    }
    let seen = other.last();
    assert_eq!(seen.path, "/api/items");
    assert_eq!(seen.body, "body");
    for name in ["x-client-hop", "te", "x_forwarded_for"] {
        assert!(seen.header(name).is_none(), "{name} reached the upstream");
    }
    let claims = verify_token(seen.header("x-session").unwrap(), UPSTREAM_SECRET);
    assert_eq!(claims["data"]["via"], "other");
    assert_eq!(
        seen.header("host"),
        Some(gate.addr.to_string().as_str()),
        "the client's Host goes on"
    );
    // Its own keep-alive pool: three requests, one connection; the main upstream's one
    // connection (from /login) is not used for it.
    assert_eq!(other.count(), 3);
    assert_eq!(other.connections(), 1);
    assert_eq!(main.count(), 1);
    let (_, text) = gate.admin_get("/metrics").await;
    for series in [
        format!(
            "sessiongate_upstream_seconds_count{{upstream=\"http://{}\"}} 3",
            other.addr
        ),
        format!(
            "sessiongate_upstream_seconds_count{{upstream=\"http://{}\"}} 1",
            main.addr
        ),
        format!(
            "sessiongate_upstream_errors_total{{kind=\"unreachable\",upstream=\"http://{}\"}} 0",
            other.addr
        ),
    ] {
        assert!(text.contains(&series), "{series} not in\n{text}");
    }
    // Framing: Content-Length with Transfer-Encoding smuggles nothing to it either.
    let res = raw(
        gate.addr,
        b"POST /api/a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(res.matches("HTTP/1.1").count(), 1, "{res}");
    assert_eq!(other.last().path, "/api/a");
    assert!(other.last().header("content-length").is_none());
    assert_eq!(other.count(), 4);
    gate.join().await;
}

#[tokio::test]
async fn two_host_lines_are_refused_and_xff_lines_are_one_list() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .run()
        .await;
    let res = raw(
        gate.addr,
        b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    let res = raw(
        gate.addr,
        b"GET http://a.example/ HTTP/1.1\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert_eq!(app.count(), 0);

    let res = raw(
        gate.addr,
        b"GET / HTTP/1.1\r\nhost: a.example\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2, 192.0.2.3\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(
        app.last().header("x-forwarded-for"),
        Some("203.0.113.1, 198.51.100.2, 192.0.2.3, 127.0.0.1")
    );
    let res = raw(
        gate.addr,
        b"GET http://A.example/ HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    gate.join().await;

    // From an untrusted peer, both lines are replaced.
    let gate = support::gate(app.addr).run().await;
    raw(
        gate.addr,
        b"GET / HTTP/1.1\r\nhost: a.example\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(app.last().header("x-forwarded-for"), Some("127.0.0.1"));
    gate.join().await;
}
