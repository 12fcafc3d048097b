//! Bad cookies are no session (SPEC §4, §10.3): no 4xx/5xx, no store access, no adoption.

mod support;

use support::*;

fn tamper(cookie: &str, at: usize) -> String {
    let mut b = cookie.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn tampered_truncated_foreign_and_unknown_cookies_are_anonymous() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    let good = gate.get("/login").await.session_cookie();
    let value = &good["session=".len()..];

    let foreign = {
        // Signed with a key the gate does not know.
        let other = support::gate(app.addr)
            .env("SESSION_SECRET", "another-secret-of-at-least-32-bytes!")
            .run()
            .await;
        let c = other.get("/login").await.session_cookie();
        other.join().await;
        c
    };
    // A well-formed, correctly signed cookie for an ID the store never held: mint one with
    // a second gate sharing the key but not the store.
    let unknown = {
        let other = support::gate(app.addr).run().await;
        let c = other.get("/login").await.session_cookie();
        other.join().await;
        c
    };

    let cases: Vec<(String, &str)> = vec![
        (format!("session={}", tamper(value, 3)), "tampered id"),
        (
            format!("session={}", tamper(value, 70)),
            "tampered signature",
        ),
        (format!("session={}", &value[..80]), "truncated"),
        (format!("session={value}A"), "extended"),
        (format!("session={}", &value[..43]), "id without signature"),
        ("session=".to_owned(), "empty"),
        ("session=&=".to_owned(), "CVE-2021-26690 shape"),
        ("session=\"quoted\"".to_owned(), "quoted"),
        (format!("session={}", "é".repeat(40)), "multibyte"),
        (format!("session={}", "A".repeat(5000)), "huge"),
        (foreign, "foreign key"),
    ];
    for (cookie, what) in &cases {
        let before = gate.store_ops().await;
        let res = gate.get_with("/", &[("cookie", cookie)]).await;
        assert_eq!(res.status, 200, "{what}");
        assert!(
            app.last().header("x-session").is_none(),
            "{what} was accepted"
        );
        assert!(
            res.set_cookies("session").is_empty(),
            "{what}: cookie touched"
        );
        assert_eq!(
            before,
            gate.store_ops().await,
            "{what}: the store was read or written"
        );
    }

    let res = gate.get_with("/", &[("cookie", &unknown)]).await;
    assert_eq!(res.status, 200);
    assert!(app.last().header("x-session").is_none());
    assert!(
        res.is_clear("session"),
        "a signed cookie for a gone ID is cleared"
    );
    gate.join().await;
}

#[tokio::test]
async fn first_verifying_cookie_wins_among_duplicates() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let good = gate.get("/login").await.session_cookie();
    gate.get_with("/", &[("cookie", &format!("session=garbage; {good}"))])
        .await;
    assert!(app.last().header("x-session").is_some());
    // Split across two Cookie headers (HTTP/2 crumbs, or a sloppy client).
    let req_headers = [("cookie", "session=garbage"), ("cookie", good.as_str())];
    gate.get_with("/", &req_headers).await;
    assert!(app.last().header("x-session").is_some());
    gate.join().await;
}

#[tokio::test]
async fn a_client_chosen_id_is_never_adopted() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let planted = format!("session={}.{}", "A".repeat(43), "B".repeat(43));
    let res = gate.get_with("/login", &[("cookie", &planted)]).await;
    let issued = res.cookie_value("session").unwrap();
    assert!(!issued.starts_with(&"A".repeat(43)));
    gate.join().await;
}

#[tokio::test]
async fn a_valid_cookie_is_rotated_away_at_login() {
    // @fastify/passport CVE-2023-29019: a tossed, validly signed cookie must not survive login.
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let attacker = gate.get("/login").await.session_cookie();
    let victim = gate
        .get_with("/login", &[("cookie", &attacker)])
        .await
        .session_cookie();
    assert_ne!(attacker, victim);
    let res = gate.get_with("/", &[("cookie", &attacker)]).await;
    assert!(
        app.last().header("x-session").is_none(),
        "old ID still valid after login"
    );
    assert!(res.is_clear("session"));
    gate.join().await;
}

#[tokio::test]
async fn previous_key_cookies_are_accepted_and_re_signed() {
    trace_init();
    let app = app().await;
    let old_secret = "the-old-secret-that-signed-cookies-1";
    let store = sessiongate::store::Store::Memory(sessiongate::store::MemoryStore::new(100));
    let old = support::gate(app.addr)
        .env("SESSION_SECRET", old_secret)
        .store(store.clone())
        .run()
        .await;
    let cookie = old.get("/login").await.session_cookie();
    old.join().await;

    let rotated = support::gate(app.addr)
        .env("SESSION_SECRET_PREVIOUS", old_secret)
        .store(store)
        .run()
        .await;
    let res = rotated.get_with("/", &[("cookie", &cookie)]).await;
    assert!(
        app.last().header("x-session").is_some(),
        "old-key cookie rejected"
    );
    let resigned = res.session_cookie();
    assert_ne!(resigned, cookie);
    assert_eq!(
        resigned[..51],
        cookie[..51],
        "same session ID, new signature"
    );
    assert_eq!(res.header("cache-control"), Some("private"));
    let res = rotated.get_with("/", &[("cookie", &resigned)]).await;
    assert!(app.last().header("x-session").is_some());
    assert!(res.set_cookies("session").is_empty());
    rotated.join().await;
}
