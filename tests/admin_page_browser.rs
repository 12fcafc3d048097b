//! The operator page (SPEC §13) in a real browser: headless Chromium loads it from the
//! admin listener under its own Content-Security-Policy, the test types the token, looks a
//! user up, signs one device out and sees it go; the page is saved to
//! `docs/operator-page.png` for the README. Skipped without `chromium` (not under `CI=true`).

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use sessiongate::session::{Record, SessionId, unix_now};
use sessiongate::store::users::{Handle, NewDevice, UserIndex as _};
use sessiongate::store::{MemoryStore, SessionStore as _, Store};
use support::chromium::Chromium;
use support::*;

const TOKEN: &str = "admin-token-for-the-browser-0123456789";
const TTL: Duration = Duration::from_secs(3600);
/// Rendered as markup, this would replace the page title; as text it is harmless.
const HOSTILE_UA: &str = "<img src=x onerror=\"document.title='owned'\">";

async fn seed(store: &MemoryStore, user: &str, age_sec: u64, ua: &str, ip: &str) -> Handle {
    let id = SessionId::random();
    let created = unix_now() - age_sec;
    let rec = Record::new(json!({ "userId": user }).to_string().into(), created);
    assert!(store.create(&id, &rec, TTL).await.unwrap());
    let device = NewDevice::new(created, ua, ip.parse().unwrap());
    store.join(user, &id, &device, None, 0).await.unwrap();
    Handle::of(&id)
}

/// How many device rows the page shows.
const ROWS: &str = "document.querySelectorAll('#devices tbody tr').length";

#[tokio::test]
async fn an_operator_signs_a_device_out_from_the_page() {
    trace_init();
    let Some(chromium) = Chromium::find() else {
        return;
    };
    let store = MemoryStore::new(1000);
    let user = "ada@example.com";
    let laptop = seed(
        &store,
        user,
        3 * 86_400,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "192.0.2.10",
    )
    .await;
    let phone = seed(
        &store,
        user,
        26 * 3_600,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1",
        "198.51.100.23",
    )
    .await;
    let odd = seed(&store, user, 40 * 60, HOSTILE_UA, "2001:db8::42").await;
    let other = seed(
        &store,
        "grace@example.com",
        600,
        "curl/8.5.0",
        "203.0.113.5",
    )
    .await;

    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml("[session]\nuser_field = \"userId\"")
        .env("SESSION_ADMIN_TOKEN", TOKEN)
        .store(Store::Memory(store.clone()))
        .run()
        .await;
    // Some traffic, so the counters show something.
    let cookie = gate.get("/login").await.session_cookie();
    gate.get_with("/", &[("cookie", &cookie)]).await;
    gate.get_with("/logout", &[("cookie", &cookie)]).await;
    gate.get("/login").await;

    let admin = gate.running.admin_addr.expect("admin listener");
    let mut tab = chromium.open(&format!("http://{admin}/"), 1180, 680).await;
    // The counters come from /metrics, without the token.
    tab.wait_for(
        "document.getElementById('m-created').textContent === '2'",
        "the counters to load",
    )
    .await;
    assert_eq!(tab.text("#m-requests").await, "4");
    assert_eq!(tab.text("#m-destroyed-by").await, "logout 1");

    tab.type_into("#token", TOKEN).await;
    tab.click("#use-token").await;
    tab.wait_for(
        "!document.getElementById('users').hidden",
        "the user search to show",
    )
    .await;
    assert_eq!(
        tab.eval("document.getElementById('token').value").await,
        json!(""),
        "the token does not stay in the field"
    );
    tab.type_into("#user", user).await;
    tab.click("#search").await;
    tab.wait_for(&format!("{ROWS} === 3"), "three devices")
        .await;
    assert_eq!(
        tab.text("#result-title").await,
        "ada@example.com: 3 active sessions"
    );
    let handles = tab
        .eval("[...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.handle)")
        .await;
    assert_eq!(
        handles,
        json!([laptop.to_string(), phone.to_string(), odd.to_string()])
    );
    // The hostile user agent is shown as text: no element made from it, no script run.
    let agents = tab
        .eval("[...document.querySelectorAll('#devices td.ua')].map(td => td.textContent)")
        .await;
    assert_eq!(agents[2], json!(HOSTILE_UA));
    assert_eq!(
        tab.eval("document.querySelectorAll('img').length").await,
        json!(0)
    );
    assert_eq!(
        tab.eval("document.title").await,
        json!("sessiongate operator")
    );
    assert_eq!(
        tab.eval("document.cookie + JSON.stringify(Object.keys(localStorage))")
            .await,
        json!("[]"),
        "the token is kept in neither a cookie nor storage"
    );

    tab.click(&format!("button.sign-out[data-handle=\"{phone}\"]"))
        .await;
    tab.wait_for(&format!("{ROWS} === 2"), "the phone to disappear")
        .await;
    let handles = tab
        .eval("[...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.handle)")
        .await;
    assert_eq!(handles, json!([laptop.to_string(), odd.to_string()]));
    assert_eq!(tab.text("#status").await, "Signed out 1 device.");
    tab.wait_for(
        "document.getElementById('m-destroyed-by').textContent === 'logout 1 · revoke 1'",
        "the revocation to show in the counters",
    )
    .await;

    let left: Vec<Handle> = store
        .devices(user)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.handle)
        .collect();
    assert_eq!(left, [laptop, odd]);
    assert_eq!(
        store.devices("grace@example.com").await.unwrap()[0].handle,
        other
    );

    // The pointer leaves the buttons, so none shows its hover colour in the picture.
    tab.call(
        "Input.dispatchMouseEvent",
        json!({ "type": "mouseMoved", "x": 0, "y": 0 }),
    )
    .await;
    tab.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operator-page.png"))
        .await;

    // The page's policy is in force: a script element made in the page does not run.
    assert_eq!(
        tab.eval(
            "(() => { const s = document.createElement('script'); \
             s.textContent = 'window.inlineRan = true'; document.body.append(s); \
             return window.inlineRan === true; })()"
        )
        .await,
        json!(false),
        "an inline script ran: the Content-Security-Policy is not applied"
    );

    tab.click("#sign-out-everywhere").await;
    tab.wait_for(&format!("{ROWS} === 0"), "every device to disappear")
        .await;
    assert_eq!(
        tab.text("#status").await,
        "Signed ada@example.com out everywhere: 2 sessions ended."
    );
    assert_eq!(
        tab.eval("document.getElementById('no-devices').hidden")
            .await,
        json!(false)
    );
    assert!(store.devices(user).await.unwrap().is_empty());
    assert_eq!(store.devices("grace@example.com").await.unwrap().len(), 1);
    tab.close().await;
    gate.join().await;
}
