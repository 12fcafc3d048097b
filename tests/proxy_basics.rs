//! The session round trip: login, authenticated requests, logout.

mod support;

use support::*;

#[tokio::test]
async fn login_request_logout_round_trip() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;

    let anon = gate.get("/").await;
    assert_eq!(anon.status, 200);
    assert!(anon.set_cookies("session").is_empty());
    assert!(app.last().header("x-session").is_none());

    let login = gate.get("/login").await;
    assert_eq!(login.status, 200);
    assert_eq!(login.text(), "ok");
    assert!(
        login.header("x-session-set").is_none(),
        "directive leaked to the client"
    );
    let set = &login.set_cookies("session")[0];
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"));
    assert!(set.contains("Max-Age=86400"), "{set}");
    assert_eq!(login.header("cache-control"), Some("private"));
    let cookie = login.session_cookie();

    let me = gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert_eq!(me.status, 200);
    assert!(
        me.set_cookies("session").is_empty(),
        "cookie re-sent before cookie_refresh_sec"
    );
    let seen = app.last();
    assert!(
        seen.header("cookie").is_none(),
        "session cookie reached the upstream"
    );
    let claims = verify_token(seen.header("x-session").unwrap(), UPSTREAM_SECRET);
    assert_eq!(claims["iss"], "sessiongate");
    assert_eq!(
        claims["data"],
        serde_json::json!({"userId":1,"name":"alice"})
    );
    assert_eq!(
        claims["sid"].as_str().unwrap(),
        &cookie["session=".len()..][..43]
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );

    let logout = gate.get_with("/logout", &[("cookie", &cookie)]).await;
    assert!(logout.is_clear("session"));
    assert_eq!(logout.header("cache-control"), Some("private"));

    let after = gate.get_with("/me", &[("cookie", &cookie)]).await;
    assert_eq!(after.status, 200);
    assert!(
        app.last().header("x-session").is_none(),
        "destroyed session resurrected"
    );
    assert!(
        after.is_clear("session"),
        "a gone session's cookie is cleared"
    );
    gate.join().await;
}
