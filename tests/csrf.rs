//! Cross-origin protection (SPEC §12) through real sockets: an attack table of methods,
//! `Sec-Fetch-Site` values and `Origin`/`Host` spellings, over HTTP/1.1 and HTTP/2, with and
//! without a session; `trusted_origins`, `report_only` and `enabled = false`. The upstream
//! records every request it receives: a refused one must leave no trace there, nor in the
//! store.

mod support;

use std::io::Write;
use std::sync::{Mutex, Once};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::*;

/// Every log line the gates of this binary write (JSON, one object per line).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the gates' logs to [`LOG`], once per binary.
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("sessiongate=info"))
            .with_writer(|| Capture)
            .init();
    });
}

/// The captured log lines that mention `needle`, parsed.
fn log_lines(needle: &str) -> Vec<serde_json::Value> {
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One request of the attack table and whether it must reach the upstream.
struct Row {
    name: &'static str,
    method: &'static str,
    headers: Vec<(&'static str, String)>,
    passes: bool,
}

fn row(
    name: &'static str,
    method: &'static str,
    headers: &[(&'static str, &str)],
    passes: bool,
) -> Row {
    Row {
        name,
        method,
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        passes,
    }
}

/// Sends each row to `path_prefix/<i>` (with `extra` headers, e.g. a cookie) and checks
/// the status, the 403's body and headers, and that the upstream saw exactly the rows
/// that pass. Returns how many were refused.
async fn run_table(
    gate: &Gate,
    app: &Upstream,
    prefix: &str,
    rows: &[Row],
    extra: &[(&str, &str)],
) -> u64 {
    let mut refused = 0;
    for (i, r) in rows.iter().enumerate() {
        let path = format!("{prefix}/{i}");
        let mut headers: Vec<(&str, &str)> =
            r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.extend_from_slice(extra);
        let before = app.count();
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let res = gate.send(method, &path, &headers, "field=1").await;
        if r.passes {
            assert_eq!(res.status, 200, "{}: {}", r.name, res.text());
            assert_eq!(app.count(), before + 1, "{}", r.name);
            let seen = app.last();
            assert_eq!(seen.path, path, "{}", r.name);
            assert_eq!(seen.method.as_str(), r.method, "{}", r.name);
            assert_eq!(seen.body, "field=1", "{}", r.name);
        } else {
            refused += 1;
            assert_eq!(res.status, 403, "{}", r.name);
            assert_eq!(res.text(), "cross-origin request refused", "{}", r.name);
            assert_eq!(
                res.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(res.header("cache-control"), Some("no-store"));
            assert!(res.set_cookies("session").is_empty(), "{}", r.name);
            assert_eq!(app.count(), before, "{}: the upstream saw it", r.name);
        }
    }
    for seen in app.seen() {
        if let Some(i) = seen.path.strip_prefix(&format!("{prefix}/")) {
            let i: usize = i.parse().unwrap();
            assert!(
                rows[i].passes,
                "{}: the upstream saw a refused request",
                rows[i].name
            );
        }
    }
    refused
}

/// The attack table, for a gate at `host` (`127.0.0.1:PORT`, what the client sends as Host).
#[rustfmt::skip]
fn attack_table(host: &str) -> Vec<Row> {
    let same = format!("http://{host}");
    let ip = host.rsplit_once(':').unwrap().0;
    let other_port = format!("http://{ip}:1");
    let https_same = format!("https://{host}");
    let slash = format!("{same}/");
    let with_path = format!("{same}/account/delete?x=1");
    let userinfo = format!("http://evil.example@{host}");
    let userinfo_trick = format!("http://{host}@evil.example");
    let suffix_trick = format!("http://{host}.evil.example");
    let no_port_origin = format!("http://{ip}");
    let s = same.as_str();
    vec![
        // Safe methods always pass, even cross-site.
        row("GET cross-site", "GET", &[("sec-fetch-site", "cross-site"), ("origin", "http://evil.example")], true),
        row("HEAD cross-site", "HEAD", &[("sec-fetch-site", "cross-site")], true),
        row("OPTIONS cross-site", "OPTIONS", &[("sec-fetch-site", "cross-site")], true),
        // Unsafe methods, as a modern browser labels them.
        row("POST cross-site", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "http://evil.example")], false),
        row("PUT cross-site", "PUT", &[("sec-fetch-site", "cross-site")], false),
        row("PATCH cross-site", "PATCH", &[("sec-fetch-site", "cross-site")], false),
        row("DELETE cross-site", "DELETE", &[("sec-fetch-site", "cross-site")], false),
        row("PROPFIND cross-site", "PROPFIND", &[("sec-fetch-site", "cross-site")], false),
        row("lowercase post cross-site", "post", &[("sec-fetch-site", "cross-site")], false),
        row("lowercase get cross-site (not GET)", "get", &[("sec-fetch-site", "cross-site")], false),
        row("POST same-site (sibling subdomain)", "POST", &[("sec-fetch-site", "same-site"), ("origin", "http://sub.example")], false),
        row("POST same-origin", "POST", &[("sec-fetch-site", "same-origin"), ("origin", s)], true),
        row("POST none (typed URL, bookmark)", "POST", &[("sec-fetch-site", "none")], true),
        row("POST Sec-Fetch-Site garbage", "POST", &[("sec-fetch-site", "garbage")], false),
        row("POST Sec-Fetch-Site Same-Origin (case)", "POST", &[("sec-fetch-site", "Same-Origin")], false),
        row("POST Sec-Fetch-Site empty, no Origin", "POST", &[("sec-fetch-site", "")], true),
        row("POST Sec-Fetch-Site empty, foreign Origin", "POST", &[("sec-fetch-site", ""), ("origin", "http://evil.example")], false),
        row("POST Sec-Fetch-Site cross-site then same-origin", "POST", &[("sec-fetch-site", "cross-site"), ("sec-fetch-site", "same-origin")], false),
        row("POST Sec-Fetch-Site same-origin then cross-site", "POST", &[("sec-fetch-site", "same-origin"), ("sec-fetch-site", "cross-site")], true),
        row("POST Sec-Fetch-Site cross-site, same Origin", "POST", &[("sec-fetch-site", "cross-site"), ("origin", s)], false),
        // Without Sec-Fetch-Site (older browsers, other clients): the Origin decides.
        row("POST no browser headers (curl, API client)", "POST", &[], true),
        row("POST Origin = own origin", "POST", &[("origin", s)], true),
        row("POST Origin other site", "POST", &[("origin", "http://evil.example")], false),
        row("POST Origin null", "POST", &[("origin", "null")], false),
        row("POST Origin other port", "POST", &[("origin", &other_port)], false),
        row("POST Origin https, same host:port (scheme not compared)", "POST", &[("origin", &https_same)], true),
        row("POST Origin trailing slash", "POST", &[("origin", &slash)], true),
        row("POST Origin with path and query", "POST", &[("origin", &with_path)], true),
        row("POST Origin uppercase host", "POST", &[("host", "app.example"), ("origin", "http://APP.EXAMPLE")], false),
        row("POST Origin userinfo before own host", "POST", &[("origin", &userinfo)], true),
        row("POST Origin own host as userinfo", "POST", &[("origin", &userinfo_trick)], false),
        row("POST Origin own host as prefix", "POST", &[("origin", &suffix_trick)], false),
        row("POST Origin without the port", "POST", &[("origin", &no_port_origin)], false),
        row("POST Origin empty", "POST", &[("origin", "")], true),
        row("POST two Origins, own first", "POST", &[("origin", s), ("origin", "http://evil.example")], true),
        row("POST two Origins, foreign first", "POST", &[("origin", "http://evil.example"), ("origin", s)], false),
        // Host spellings: compared with the Origin's host[:port] byte for byte.
        row("POST Host without port, Origin without port", "POST", &[("host", ip), ("origin", &no_port_origin)], true),
        row("POST Host without port, Origin with port", "POST", &[("host", ip), ("origin", s)], false),
        row("POST Host app.example, Origin app.example", "POST", &[("host", "app.example"), ("origin", "http://app.example")], true),
        row("POST Host App.Example, Origin app.example", "POST", &[("host", "App.Example"), ("origin", "http://app.example")], false),
    ]
}

#[tokio::test]
async fn the_attack_table_with_and_without_a_session() {
    capture_logs();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .run()
        .await;
    let host = gate.addr.to_string();
    let rows = attack_table(&host);

    let refused = run_table(&gate, &app, "/anon", &rows, &[]).await;
    assert_eq!(
        gate.counter("sessiongate_csrf_refused_total").await,
        refused
    );
    assert_eq!(gate.counter("sessiongate_csrf_reported_total").await, 0);

    // With a session: refused before the session is read (no store access at all).
    let cookie = gate.get("/login").await.session_cookie();
    let ops = gate.store_ops().await;
    let refused_rows: Vec<Row> = attack_table(&host)
        .into_iter()
        .filter(|r| !r.passes)
        .collect();
    let n = run_table(
        &gate,
        &app,
        "/session",
        &refused_rows,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        gate.store_ops().await,
        ops,
        "a refused request touched the store"
    );
    assert_eq!(
        gate.counter("sessiongate_csrf_refused_total").await,
        refused + n
    );

    // The same session still works from its own origin, and the upstream gets the token.
    let res = gate
        .send(
            Method::POST,
            "/session/ok",
            &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
            "x",
        )
        .await;
    assert_eq!(res.status, 200);
    assert!(app.last().header("x-session").is_some());
    assert!(
        app.last().header("sec-fetch-site") == Some("same-origin"),
        "passed on as sent"
    );

    // Each refusal is one access line with session outcome `csrf` and status 403, and one
    // line naming the reason; none carries the cookie.
    let session_id = cookie.split_once('=').unwrap().1.split('.').next().unwrap();
    let access: Vec<_> = log_lines("\"/session/")
        .into_iter()
        .filter(|l| l["target"] == "sessiongate::access")
        .collect();
    assert_eq!(access.len(), refused_rows.len() + 1);
    for l in &access {
        if l["path"] != "/session/ok" {
            assert_eq!(l["session"], "csrf", "{l}");
            assert_eq!(l["status"], 403, "{l}");
        }
    }
    let reasons = log_lines("cross-origin request refused");
    assert!(
        reasons
            .iter()
            .any(|l| l["path"] == "/session/0" && l["reason"] == "sec-fetch-site")
    );
    assert!(reasons.iter().any(|l| l["reason"] == "origin"));
    assert!(!String::from_utf8_lossy(&LOG.lock().unwrap()).contains(session_id));
    gate.join().await;
}

#[tokio::test]
async fn http2_compares_the_origin_with_the_authority() {
    capture_logs();
    let app = app().await;
    let gate = gate(app.addr).run().await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let send = |origin: String, site: Option<&'static str>, path: &str| {
        let mut req = http::Request::post(gate.url(path)).header("origin", origin);
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let req = req.body(Full::new(Bytes::from_static(b"x"))).unwrap();
        let h2 = h2.clone();
        async move {
            let res = h2.request(req).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let own = format!("http://{}", gate.addr);
    assert_eq!(send(own.clone(), None, "/h2/own").await.0, 200);
    assert_eq!(app.last().path, "/h2/own");
    let (status, body) = send("http://127.0.0.1:1".into(), None, "/h2/other-port").await;
    assert_eq!(
        (status, &body[..]),
        (403, &b"cross-origin request refused"[..])
    );
    assert_eq!(
        send(own.clone(), Some("cross-site"), "/h2/cross").await.0,
        403
    );
    assert_eq!(send(own, Some("same-origin"), "/h2/same").await.0, 200);
    let paths: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/h2/own", "/h2/same"]);
    gate.join().await;
}

#[tokio::test]
async fn trusted_origins_pass_and_nothing_else_does() {
    capture_logs();
    let app = app().await;
    let gate = gate(app.addr)
        .toml("[csrf]\ntrusted_origins = [\"https://Admin.Example\", \"http://127.0.0.1:4000\"]")
        .run()
        .await;
    #[rustfmt::skip]
    let rows = vec![
        row("trusted, cross-site", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "https://admin.example")], true),
        row("trusted, same-site", "POST", &[("sec-fetch-site", "same-site"), ("origin", "https://admin.example")], true),
        row("trusted, no Sec-Fetch-Site", "POST", &[("origin", "https://admin.example")], true),
        row("trusted with port", "DELETE", &[("sec-fetch-site", "cross-site"), ("origin", "http://127.0.0.1:4000")], true),
        row("trusted, as written in the config (uppercase)", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "https://Admin.Example")], false),
        row("trusted host, other scheme", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "http://admin.example")], false),
        row("trusted host, trailing slash", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "https://admin.example/")], false),
        row("trusted host, explicit default port", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "https://admin.example:443")], false),
        row("trusted as a suffix", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "https://admin.example.evil")], false),
        row("trusted, second Origin line", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "http://evil.example"), ("origin", "https://admin.example")], false),
        row("untrusted", "POST", &[("sec-fetch-site", "cross-site"), ("origin", "http://evil.example")], false),
    ];
    run_table(&gate, &app, "/trusted", &rows, &[]).await;
    gate.join().await;
}

#[tokio::test]
async fn report_only_forwards_logs_and_counts() {
    capture_logs();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml("[csrf]\nreport_only = true")
        .run()
        .await;
    let cookie = gate.get("/login").await.session_cookie();
    let rows: Vec<Row> = attack_table(&gate.addr.to_string())
        .into_iter()
        .map(|r| Row { passes: true, ..r })
        .collect();
    let would = attack_table(&gate.addr.to_string())
        .iter()
        .filter(|r| !r.passes)
        .count() as u64;
    run_table(&gate, &app, "/report", &rows, &[("cookie", &cookie)]).await;
    assert_eq!(gate.counter("sessiongate_csrf_reported_total").await, would);
    assert_eq!(gate.counter("sessiongate_csrf_refused_total").await, 0);
    // Forwarded with the session: the upstream sees the token as on any request.
    assert!(
        app.seen()
            .iter()
            .filter(|s| s.path.starts_with("/report/"))
            .all(|s| s.header("x-session").is_some())
    );

    let reports = log_lines("csrf.report_only");
    let first = reports
        .iter()
        .find(|l| l["path"] == "/report/3")
        .expect("a report line for POST cross-site");
    assert_eq!(first["reason"], "sec-fetch-site");
    assert_eq!(first["origin"], "http://evil.example");
    assert_eq!(first["sec_fetch_site"], "cross-site");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["level"], "WARN");
    let session_id = cookie.split_once('=').unwrap().1.split('.').next().unwrap();
    assert!(!String::from_utf8_lossy(&LOG.lock().unwrap()).contains(session_id));
    // The access line keeps the session's own outcome.
    let access = log_lines("\"/report/3\"");
    assert!(
        access
            .iter()
            .any(|l| l["target"] == "sessiongate::access" && l["session"] == "hit")
    );
    gate.join().await;
}

#[tokio::test]
async fn disabled_checks_nothing() {
    capture_logs();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml("[csrf]\nenabled = false\ntrusted_origins = [\"https://admin.example\"]")
        .run()
        .await;
    let rows: Vec<Row> = attack_table(&gate.addr.to_string())
        .into_iter()
        .map(|r| Row { passes: true, ..r })
        .collect();
    run_table(&gate, &app, "/off", &rows, &[]).await;
    assert_eq!(gate.counter("sessiongate_csrf_refused_total").await, 0);
    assert_eq!(gate.counter("sessiongate_csrf_reported_total").await, 0);
    gate.join().await;
}
