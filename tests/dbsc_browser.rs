//! Device Bound Session Credentials (SPEC §16) with a real browser: headless Chromium, with
//! DBSC and software keys enabled, logs in through the proxy (HTTPS: Chromium does not run
//! DBSC over plain http, not even for localhost), registers its key, and once the bound
//! cookie it got has expired it is still served with its session, having refreshed the
//! bound cookie through the proxy (challenge and proof), while a copy of its long cookie in
//! a plain HTTP client is no session. Skipped with a message when `chromium` is absent,
//! except in CI.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair, PublicKeyData};
use serde_json::{Value, json};
use sha2::Digest as _;
use support::cdp::Browser;
use support::*;

/// Chromium's switches for DBSC on a machine without a TPM: the standard protocol without
/// an origin trial token or refresh quota, software keys in place of hardware ones, and the
/// DevTools events the test follows.
const DBSC_FEATURES: &str = "--enable-features=DeviceBoundSessions:RequireOriginTrialTokens/false/RefreshQuota/false,EnableBoundSessionCredentialsSoftwareKeysForManualTesting,DeviceBoundSessionsDevTools";

/// Life of the bound cookie in this test.
const BOUND_COOKIE_SEC: u64 = 3;

/// `/login` logs user 1 in; anything else answers `session` or `none`.
fn app(req: &Seen) -> Reply {
    if req.path == "/login" {
        return Reply::ok()
            .header("x-session-set", r#"{"userId":1}"#)
            .header("content-type", "text/html")
            .body("<!doctype html><p>logged in</p>");
    }
    Reply::ok().body(if req.header("x-session").is_some() {
        "session"
    } else {
        "none"
    })
}

/// A CA, a leaf for localhost it signed (PEM files in `dir`), and the leaf's SPKI hash as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn certificates(dir: &std::path::Path) -> (String, rustls::RootCertStore) {
    std::fs::create_dir_all(dir).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    (spki, roots)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn https_client(roots: rustls::RootCertStore) -> HttpsClient {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `GET url` with `cookie` from a plain client: the body.
async fn get(client: &HttpsClient, url: &str, cookie: &str) -> String {
    let req = http::Request::get(url)
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The DBSC events of one kind (`creationEventDetails`, `refreshEventDetails`, ...) that
/// succeeded.
fn succeeded(browser: &Browser, details: &str) -> usize {
    browser
        .events
        .iter()
        .filter(|e| e["method"] == "Network.deviceBoundSessionEventOccurred")
        .filter(|e| e["params"].get(details).is_some() && e["params"]["succeeded"] == true)
        .count()
}

fn cookie_value(cookies: &[Value], name: &str) -> Option<String> {
    cookies
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["value"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn chromium_registers_refreshes_and_a_copied_long_cookie_stops_working() {
    trace_init();
    let dir = std::env::temp_dir().join(format!("sessiongate-dbsc-{}", std::process::id()));
    let (spki, roots) = certificates(&dir);
    let up = upstream(app).await;
    let gate = gate(up.addr)
        .cookie("secure = true")
        .toml(&format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n[dbsc]\nenabled = true\nbound_cookie_sec = {BOUND_COOKIE_SEC}\n",
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string()
        ))
        .run()
        .await;
    let trust = format!("--ignore-certificate-errors-spki-list={spki}");
    let Some(mut browser) = Browser::launch(&[DBSC_FEATURES, &trust]).await else {
        return;
    };
    let origin = format!("https://localhost:{}", gate.addr.port());
    browser.call("Network.enable", json!({})).await;
    browser
        .call("Network.enableDeviceBoundSessions", json!({"enable": true}))
        .await;
    browser
        .call("Page.navigate", json!({"url": format!("{origin}/login")}))
        .await;

    // Registration: Chromium posts its key to the proxy and gets the bound cookie.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut cookies = browser.cookies(&origin).await;
    while succeeded(&browser, "creationEventDetails") == 0
        || cookie_value(&cookies, "session_bound").is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium did not register; events: {:?}",
            browser.events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        cookies = browser.cookies(&origin).await;
    }
    let long = format!("session={}", cookie_value(&cookies, "session").unwrap());
    let first_bound = format!(
        "session_bound={}",
        cookie_value(&cookies, "session_bound").unwrap()
    );
    let client = https_client(roots);
    let url = format!("{origin}/");
    assert_eq!(
        get(&client, &url, &format!("{long}; {first_bound}")).await,
        "session"
    );

    // A copy of the long cookie alone, in another client: no session.
    assert_eq!(get(&client, &url, &long).await, "none");

    // Deadline-polled until the first bound cookie has expired at the proxy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while get(&client, &url, &format!("{long}; {first_bound}")).await == "session" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound cookie never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The browser is still served with its session: it refreshed the bound cookie through
    // the proxy (a challenge, then a proof signed with its key).
    let seen = browser
        .eval("fetch('/whoami', {credentials: 'include'}).then(r => r.text())")
        .await;
    assert_eq!(seen, "session", "events: {:?}", browser.events);
    let cookies = browser.cookies(&origin).await;
    assert!(succeeded(&browser, "challengeEventDetails") > 0);
    assert!(succeeded(&browser, "refreshEventDetails") > 0);
    let bound = format!(
        "session_bound={}",
        cookie_value(&cookies, "session_bound").unwrap()
    );
    assert_ne!(bound, first_bound, "the bound cookie was never refreshed");
    // Still nothing for the copied long cookie.
    assert_eq!(get(&client, &url, &long).await, "none");
    let _ = std::fs::remove_dir_all(&dir);
}
