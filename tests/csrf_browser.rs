//! Cross-origin protection (SPEC §12) against a real browser: headless Chromium loads a page
//! from another origin whose form posts itself to the proxied application. The application
//! must never see those posts; the same form served from the application's own origin
//! (through the proxy) goes through. Skipped without `chromium` (not under `CI=true`).

mod support;

use support::chromium::Chromium;
use support::*;

/// A page whose form posts `field=1` to `action` as soon as it loads.
fn auto_post(action: &str) -> String {
    format!(
        "<!doctype html><html><body>\
         <form method=\"POST\" action=\"{action}\"><input name=\"field\" value=\"1\"></form>\
         <script>document.forms[0].submit()</script></body></html>"
    )
}

/// Polls the proxy's refusal counter until it reaches `n`, for at most 10 seconds.
async fn refused_reaches(gate: &Gate, n: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = gate.counter("sessiongate_csrf_refused_total").await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessiongate_csrf_refused_total is {now}, not {n}: the browser's post never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_browser_cannot_post_cross_origin_through_the_proxy() {
    trace_init();
    let Some(chromium) = Chromium::find() else {
        return;
    };
    let app = upstream(|req| match req.path.as_str() {
        "/form" => Reply::ok()
            .header("content-type", "text/html; charset=utf-8")
            .body(auto_post("/submit-same-origin")),
        _ => Reply::ok()
            .header("content-type", "text/plain")
            .body("application received the post"),
    })
    .await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    let target = format!("http://{}", gate.addr);
    // The other site: its own server, on another port.
    let pages = target.clone();
    let other = upstream(move |req| {
        let action = format!("{pages}/submit{}", req.path);
        Reply::ok()
            .header("content-type", "text/html; charset=utf-8")
            .body(auto_post(&action))
    })
    .await;
    let other_port = other.addr.port();

    // Same site, other origin (another port of 127.0.0.1): Sec-Fetch-Site: same-site.
    let dom = chromium
        .visit(&format!("http://127.0.0.1:{other_port}/-from-other-port"))
        .await;
    refused_reaches(&gate, 1).await;
    assert!(dom.contains("cross-origin request refused"), "{dom}");
    // Another site (localhost is not 127.0.0.1 to a browser): Sec-Fetch-Site: cross-site.
    chromium
        .visit(&format!("http://localhost:{other_port}/-from-other-site"))
        .await;
    refused_reaches(&gate, 2).await;
    let loaded = other
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/-from"))
        .count();
    assert_eq!(loaded, 2, "the browser loaded both pages");
    assert!(
        app.seen()
            .iter()
            .all(|s| !s.path.starts_with("/submit-from")),
        "the application received a cross-origin post: {:?}",
        app.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );

    // The same form from the application's own origin goes through.
    let dom = chromium.visit(&format!("{target}/form")).await;
    eventually(
        || app.seen().iter().any(|s| s.path == "/submit-same-origin"),
        "the same-origin post reaches the application",
    )
    .await;
    let post = app
        .seen()
        .into_iter()
        .find(|s| s.path == "/submit-same-origin")
        .unwrap();
    assert_eq!(post.method, "POST");
    assert_eq!(post.body, "field=1");
    assert_eq!(post.header("sec-fetch-site"), Some("same-origin"));
    assert_eq!(post.header("origin"), Some(target.as_str()));
    assert!(dom.contains("application received the post"), "{dom}");
    assert_eq!(gate.counter("sessiongate_csrf_refused_total").await, 2);
    gate.join().await;
}
