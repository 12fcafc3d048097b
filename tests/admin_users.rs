//! The admin API (SPEC §13) on the admin listener, through real sockets: a user's devices,
//! revocation by user and by handle, the bearer token, and the operator page's headers.
//! Sessions are seeded straight into a memory store shared with the gate; one test logs in
//! through the proxy instead, on memory, Redis and Redis Cluster.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

use sessiongate::session::{Record, SessionId};
use sessiongate::store::users::{Handle, Joined, NewDevice, UserIndex as _};
use sessiongate::store::{MemoryStore, SessionStore as _, Store};
use support::redis_server::{RedisCluster, RedisServer};
use support::*;

const TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
const TTL: Duration = Duration::from_secs(3600);

/// One seeded session: its ID (to prove it never comes back) and its handle.
struct Seeded {
    id: SessionId,
    handle: Handle,
}

/// Writes a session of `user` and makes it a member of the user's index.
async fn seed(store: &MemoryStore, user: &str, created: u64, ua: &str, ip: &str) -> Seeded {
    let id = SessionId::random();
    let data = json!({ "userId": user }).to_string();
    let rec = Record::new(data.into(), created);
    assert!(store.create(&id, &rec, TTL).await.unwrap());
    let device = NewDevice::new(created, ua, ip.parse().unwrap());
    let joined = store.join(user, &id, &device, None, 0).await.unwrap();
    assert_eq!(joined, Joined::Member { evicted: vec![] });
    Seeded {
        id,
        handle: Handle::of(&id),
    }
}

async fn gate_with(store: &MemoryStore, token: Option<&str>) -> Gate {
    let app = app().await;
    let mut g = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml("[session]\nuser_field = \"userId\"")
        .store(Store::Memory(store.clone()));
    if let Some(token) = token {
        g = g.env("SESSION_ADMIN_TOKEN", token);
    }
    g.run().await
}

/// `method path` on the admin listener with `headers`.
async fn admin(gate: &Gate, method: Method, path: &str, headers: &[(&str, &str)]) -> Res {
    let addr = gate.running.admin_addr.expect("admin listener configured");
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("admin answers within 10s")
        .expect("admin request succeeds");
    let (parts, body) = res.into_parts();
    Res {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// An authorized call.
async fn call(gate: &Gate, method: Method, path: &str) -> Res {
    admin(gate, method, path, &[("authorization", &bearer())]).await
}

/// The JSON body of a 200, after checking the headers every JSON answer carries.
fn json_of(res: &Res) -> Value {
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    serde_json::from_slice(&res.body).unwrap()
}

fn assert_no_id(res: &Res, seeded: &[&Seeded]) {
    for s in seeded {
        let id = s.id.encode();
        assert!(
            !res.text().contains(id.as_str()),
            "a session ID in an answer: {}",
            res.text()
        );
    }
}

fn destroyed_by_revoke(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("sessiongate_sessions_destroyed_total{reason=\"revoke\"} "))
        .expect("the revoke series exists")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn without_the_token_variable_the_api_and_page_are_404() {
    trace_init();
    let store = MemoryStore::new(100);
    let ada = seed(&store, "ada", 1_700_000_000, "Firefox", "192.0.2.1").await;
    let gate = gate_with(&store, None).await;
    for (method, path) in [
        (Method::GET, "/sessions?user=ada".to_owned()),
        (Method::DELETE, "/sessions?user=ada".to_owned()),
        (Method::DELETE, format!("/sessions/{}", ada.handle)),
        (Method::GET, "/".to_owned()),
        (Method::GET, "/page.js".to_owned()),
    ] {
        let res = admin(
            &gate,
            method.clone(),
            &path,
            &[("authorization", &bearer())],
        )
        .await;
        assert_eq!(res.status, 404, "{method} {path}");
    }
    assert!(store.load(&ada.id, TTL).await.unwrap().is_some());
    assert_eq!(
        gate.admin_get("/metrics").await.0,
        200,
        "/metrics stays open"
    );
    gate.join().await;
}

#[tokio::test]
async fn every_call_needs_the_exact_bearer_token() {
    trace_init();
    let store = MemoryStore::new(100);
    let ada = seed(&store, "ada", 1_700_000_000, "Firefox", "192.0.2.1").await;
    let gate = gate_with(&store, Some(TOKEN)).await;
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let refused = [
        None,
        Some(String::new()),
        Some(TOKEN.to_owned()),
        Some(format!("Bearer {prefix}")),
        Some(format!("Bearer {TOKEN}0")),
        Some(format!("Bearer {}", TOKEN.to_uppercase())),
        Some(format!("Bearer{TOKEN}")),
        Some(format!("Bearer {TOKEN} {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer another-token-of-the-same-length-0123".to_owned()),
    ];
    let calls = [
        (Method::GET, "/sessions?user=ada".to_owned()),
        (Method::DELETE, "/sessions?user=ada".to_owned()),
        (Method::DELETE, format!("/sessions/{}", ada.handle)),
    ];
    for (method, path) in &calls {
        for auth in &refused {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let res = admin(&gate, method.clone(), path, &headers).await;
            assert_eq!(res.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(
                res.header("www-authenticate"),
                Some("Bearer realm=\"sessiongate admin\"")
            );
            assert_eq!(res.header("cache-control"), Some("no-store"));
            assert_eq!(res.text(), "missing or wrong bearer token\n");
        }
        // Two credentials, one of them right, are still refused.
        let res = admin(
            &gate,
            method.clone(),
            path,
            &[("authorization", &bearer()), ("authorization", "Bearer x")],
        )
        .await;
        assert_eq!(res.status, 401, "{method} {path} with two credentials");
    }
    assert!(
        store.load(&ada.id, TTL).await.unwrap().is_some(),
        "a refused call changed nothing"
    );
    // The scheme is case-insensitive and may be followed by several spaces (RFC 9110 §11).
    for auth in [format!("bearer {TOKEN}"), format!("BEARER   {TOKEN}")] {
        let res = admin(
            &gate,
            Method::GET,
            "/sessions?user=ada",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(res.status, 200, "{auth}");
    }
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert!(!metrics.contains(TOKEN), "the token is in /metrics");
    gate.join().await;
}

#[tokio::test]
async fn lists_a_users_devices_with_their_facts() {
    trace_init();
    let store = MemoryStore::new(100);
    // A user name with spaces, `&`, `+`, `=` and UTF-8, as the query must carry it.
    let user = "Ada Lovelace & Co+=élève";
    let hostile = "</script><script>alert(document.cookie)</script>";
    let first = seed(
        &store,
        user,
        1_700_000_000,
        "Mozilla/5.0 Firefox/128.0",
        "192.0.2.10",
    )
    .await;
    let second = seed(&store, user, 1_700_000_600, hostile, "2001:db8::7").await;
    let other = seed(&store, "grace", 1_700_000_300, "curl/8", "198.51.100.1").await;
    let gate = gate_with(&store, Some(TOKEN)).await;

    let query = "Ada%20Lovelace%20%26%20Co%2B%3D%C3%A9l%C3%A8ve";
    let res = call(&gate, Method::GET, &format!("/sessions?user={query}")).await;
    let body = json_of(&res);
    assert_eq!(body["user"], user);
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{body}");
    assert_eq!(
        sessions[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["created", "handle", "ip", "last_seen", "user_agent"]
    );
    assert_eq!(sessions[0]["handle"], first.handle.to_string());
    assert_eq!(sessions[0]["created"], 1_700_000_000);
    assert_eq!(sessions[0]["user_agent"], "Mozilla/5.0 Firefox/128.0");
    assert_eq!(sessions[0]["ip"], "192.0.2.10");
    assert!(sessions[0]["last_seen"].as_u64().unwrap() >= 1_700_000_000);
    assert_eq!(sessions[1]["handle"], second.handle.to_string());
    assert_eq!(sessions[1]["ip"], "2001:db8::7");
    // The hostile user agent comes back whole, and inert: no `<` at all in the answer.
    assert_eq!(sessions[1]["user_agent"], hostile);
    assert!(!res.text().contains("<script>"), "{}", res.text());
    assert!(
        res.text().contains("\\u003cscript\\u003e"),
        "{}",
        res.text()
    );
    assert_no_id(&res, &[&first, &second, &other]);

    // The same user, written as a browser's URLSearchParams does (`+` for a space).
    let res = call(
        &gate,
        Method::GET,
        "/sessions?user=Ada+Lovelace+%26+Co%2B%3D%C3%A9l%C3%A8ve",
    )
    .await;
    assert_eq!(json_of(&res)["sessions"].as_array().unwrap().len(), 2);

    let res = call(&gate, Method::GET, "/sessions?user=nobody").await;
    assert_eq!(json_of(&res), json!({ "user": "nobody", "sessions": [] }));

    for (path, line) in [
        (
            "/sessions",
            "missing query parameter user, e.g. /sessions?user=42\n",
        ),
        (
            "/sessions?user=",
            "missing query parameter user, e.g. /sessions?user=42\n",
        ),
        (
            "/sessions?user=a&user=b",
            "query parameter user given more than once\n",
        ),
        (
            "/sessions?user=%FF",
            "query parameter user is not UTF-8 once percent-decoded\n",
        ),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let res = call(&gate, method.clone(), path).await;
            assert_eq!((res.status, res.text()), (400, line), "{method} {path}");
        }
    }
    assert_eq!(
        store.devices(user).await.unwrap().len(),
        2,
        "nothing revoked"
    );
    gate.join().await;
}

#[tokio::test]
async fn delete_by_user_ends_every_session_of_that_user_only() {
    trace_init();
    let store = MemoryStore::new(100);
    let a1 = seed(&store, "ada", 1_700_000_000, "Firefox", "192.0.2.1").await;
    let a2 = seed(&store, "ada", 1_700_000_100, "Safari", "192.0.2.2").await;
    let g1 = seed(&store, "grace", 1_700_000_200, "Chrome", "192.0.2.3").await;
    let gate = gate_with(&store, Some(TOKEN)).await;

    let res = call(&gate, Method::DELETE, "/sessions?user=ada").await;
    assert_eq!(json_of(&res), json!({ "destroyed": 2 }));
    assert_no_id(&res, &[&a1, &a2, &g1]);
    for s in [&a1, &a2] {
        assert!(
            store.load(&s.id, TTL).await.unwrap().is_none(),
            "still live"
        );
    }
    assert!(store.devices("ada").await.unwrap().is_empty());
    assert!(store.load(&g1.id, TTL).await.unwrap().is_some());
    assert_eq!(store.devices("grace").await.unwrap().len(), 1);
    let res = call(&gate, Method::GET, "/sessions?user=ada").await;
    assert_eq!(json_of(&res)["sessions"], json!([]));

    let res = call(&gate, Method::DELETE, "/sessions?user=ada").await;
    assert_eq!(json_of(&res), json!({ "destroyed": 0 }));
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert_eq!(destroyed_by_revoke(&metrics), 2);
    gate.join().await;
}

#[tokio::test]
async fn delete_by_handle_ends_that_session_then_is_404() {
    trace_init();
    let store = MemoryStore::new(100);
    let a1 = seed(&store, "ada", 1_700_000_000, "Firefox", "192.0.2.1").await;
    let a2 = seed(&store, "ada", 1_700_000_100, "Safari", "192.0.2.2").await;
    let g1 = seed(&store, "grace", 1_700_000_200, "Chrome", "192.0.2.3").await;
    let gate = gate_with(&store, Some(TOKEN)).await;

    let path = format!("/sessions/{}", a1.handle);
    let res = call(&gate, Method::DELETE, &path).await;
    assert_eq!(json_of(&res), json!({ "destroyed": 1 }));
    assert_no_id(&res, &[&a1, &a2, &g1]);
    assert!(store.load(&a1.id, TTL).await.unwrap().is_none());
    assert!(store.load(&a2.id, TTL).await.unwrap().is_some());
    assert!(store.load(&g1.id, TTL).await.unwrap().is_some());
    let left = store.devices("ada").await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.handle).collect::<Vec<_>>(),
        [a2.handle]
    );

    let res = call(&gate, Method::DELETE, &path).await;
    assert_eq!((res.status, res.text()), (404, "no such session\n"));
    let unknown = Handle::of(&SessionId::random());
    for bad in [
        format!("/sessions/{unknown}"),
        format!("/sessions/{}", &a2.handle.to_string()[..21]),
        format!("/sessions/{}A", a2.handle),
        format!("/sessions/{}", a2.id.encode().as_str()),
        "/sessions/".to_owned(),
        format!("/sessions/{}/x", a2.handle),
        "/sessions/%2F%2E%2E".to_owned(),
    ] {
        let res = call(&gate, Method::DELETE, &bad).await;
        assert_eq!(res.status, 404, "{bad}");
    }
    assert!(
        store.load(&a2.id, TTL).await.unwrap().is_some(),
        "a session ID is no handle"
    );
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert_eq!(destroyed_by_revoke(&metrics), 1);
    gate.join().await;
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    trace_init();
    let store = MemoryStore::new(100);
    let ada = seed(&store, "ada", 1_700_000_000, "Firefox", "192.0.2.1").await;
    let gate = gate_with(&store, Some(TOKEN)).await;
    for (method, path, allow) in [
        (
            Method::POST,
            "/sessions?user=ada".to_owned(),
            "GET, HEAD, DELETE",
        ),
        (Method::PUT, "/sessions".to_owned(), "GET, HEAD, DELETE"),
        (Method::GET, format!("/sessions/{}", ada.handle), "DELETE"),
        (Method::POST, format!("/sessions/{}", ada.handle), "DELETE"),
        (Method::POST, "/".to_owned(), "GET, HEAD"),
        (Method::DELETE, "/page.js".to_owned(), "GET, HEAD"),
        (Method::POST, "/metrics".to_owned(), "GET, HEAD"),
    ] {
        let res = call(&gate, method.clone(), &path).await;
        assert_eq!(res.status, 405, "{method} {path}");
        assert_eq!(res.header("allow"), Some(allow), "{method} {path}");
    }
    assert!(store.load(&ada.id, TTL).await.unwrap().is_some());
    gate.join().await;
}

#[tokio::test]
async fn the_operator_page_is_served_under_a_strict_policy() {
    trace_init();
    let store = MemoryStore::new(100);
    let gate = gate_with(&store, Some(TOKEN)).await;
    // The page loads without the token: it asks for it.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/page.js", "text/javascript; charset=utf-8"),
        ("/page.css", "text/css; charset=utf-8"),
    ] {
        let res = admin(&gate, Method::GET, path, &[]).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.header("content-type"), Some(content_type));
        assert_eq!(res.header("cache-control"), Some("no-store"));
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        let csp = res.header("content-security-policy").unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} not in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
    }
    let page = admin(&gate, Method::GET, "/", &[]).await;
    let html = page.text();
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one script, loaded by src"
    );
    assert!(html.contains("<script src=\"/page.js\" defer></script>"));
    assert!(
        !html.contains(" style="),
        "inline styles would need 'unsafe-inline'"
    );
    let js = admin(&gate, Method::GET, "/page.js", &[]).await;
    assert!(
        !js.text().contains("innerHTML"),
        "values are rendered as text"
    );
    assert!(!js.text().contains("localStorage") && !js.text().contains("document.cookie"));
    gate.join().await;
}

#[tokio::test]
async fn a_store_failure_is_503() {
    trace_init();
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://{dead}\"\ntimeout_ms = 200"
        ))
        .env("SESSION_ADMIN_TOKEN", TOKEN)
        .run()
        .await;
    for (method, path) in [
        (Method::GET, "/sessions?user=ada".to_owned()),
        (Method::DELETE, "/sessions?user=ada".to_owned()),
        (
            Method::DELETE,
            format!("/sessions/{}", Handle::of(&SessionId::random())),
        ),
    ] {
        let res = call(&gate, method.clone(), &path).await;
        assert_eq!(
            (res.status, res.text()),
            (503, "session store unavailable\n"),
            "{method} {path}"
        );
        assert_eq!(res.header("cache-control"), Some("no-store"));
    }
    gate.join().await;
}

/// End to end: sessions made by logins through the proxy are listed and revoked by the API.
#[tokio::test]
async fn sessions_logged_in_through_the_proxy_are_listed_and_revoked() {
    trace_init();
    logged_in_through_the_proxy_listed_and_revoked("").await;
}

#[tokio::test]
async fn on_redis_sessions_logged_in_through_the_proxy_are_listed_and_revoked() {
    trace_init();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 2000\n",
        redis.url()
    );
    logged_in_through_the_proxy_listed_and_revoked(&store).await;
}

#[tokio::test]
async fn on_redis_cluster_sessions_logged_in_through_the_proxy_are_listed_and_revoked() {
    trace_init();
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = format!(
        "[store]\nkind = \"redis\"\ncluster = {}\ntimeout_ms = 2000\n",
        cluster.toml_list()
    );
    logged_in_through_the_proxy_listed_and_revoked(&store).await;
}

/// Logins through the proxy (with `store_toml`, "" for the memory store), then the admin
/// API lists them, signs one device out and then the user everywhere.
async fn logged_in_through_the_proxy_listed_and_revoked(store_toml: &str) {
    let app = upstream(|req| match req.path.strip_prefix("/login/") {
        Some(user) => Reply::ok().header("x-session-set", json!({ "userId": user }).to_string()),
        None => Reply::ok(),
    })
    .await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&format!("[session]\nuser_field = \"userId\"\n{store_toml}"))
        .env("SESSION_ADMIN_TOKEN", TOKEN)
        .run()
        .await;
    let login = async |user: &str, agent: &str| {
        gate.get_with(&format!("/login/{user}"), &[("user-agent", agent)])
            .await
            .session_cookie()
    };
    let laptop = login("ada", "Laptop/1.0").await;
    let phone = login("ada", "Phone/2.0").await;
    let grace = login("grace", "Tablet/3.0").await;
    // The handle the application sees for a cookie, or `None` without a session.
    let handle_of = async |cookie: &str| {
        gate.get_with("/whoami", &[("cookie", cookie)]).await;
        app.last().header("x-session").map(|t| {
            verify_token(t, UPSTREAM_SECRET)["handle"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    let laptop_handle = handle_of(&laptop).await.expect("logged in");
    let phone_handle = handle_of(&phone).await.expect("logged in");

    let res = call(&gate, Method::GET, "/sessions?user=ada").await;
    let body = json_of(&res);
    let sessions = body["sessions"].as_array().unwrap();
    let facts: Vec<(&str, &str, &str)> = sessions
        .iter()
        .map(|s| {
            (
                s["handle"].as_str().unwrap(),
                s["user_agent"].as_str().unwrap(),
                s["ip"].as_str().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![
        (laptop_handle.as_str(), "Laptop/1.0", "127.0.0.1"),
        (phone_handle.as_str(), "Phone/2.0", "127.0.0.1"),
    ];
    // Both logged in within the same second: the list's order between them is the store's.
    if facts.first().map(|f| f.0) != Some(laptop_handle.as_str()) {
        expected.reverse();
    }
    assert_eq!(facts, expected);
    for cookie in [&laptop, &phone, &grace] {
        let value = cookie.strip_prefix("session=").unwrap();
        let id = value.split('.').next().unwrap();
        assert!(!res.text().contains(id), "a session ID in {}", res.text());
    }

    let res = call(&gate, Method::DELETE, &format!("/sessions/{laptop_handle}")).await;
    assert_eq!(json_of(&res), json!({ "destroyed": 1 }));
    assert_eq!(handle_of(&laptop).await, None, "the laptop is signed out");
    assert_eq!(handle_of(&phone).await, Some(phone_handle));

    let res = call(&gate, Method::DELETE, "/sessions?user=ada").await;
    assert_eq!(json_of(&res), json!({ "destroyed": 1 }));
    assert_eq!(handle_of(&phone).await, None, "the phone is signed out");
    assert!(
        handle_of(&grace).await.is_some(),
        "another user's session stays"
    );
    let res = call(&gate, Method::GET, "/sessions?user=ada").await;
    assert_eq!(json_of(&res)["sessions"], json!([]));
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert_eq!(destroyed_by_revoke(&metrics), 2);
    gate.join().await;
}
