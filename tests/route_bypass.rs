//! SPEC §11's invariant: no request reaches the upstream on a path under a "required" route
//! without meeting that route's policy, however the path is spelled. Every spelling below
//! aims at `/admin` without a session, over a raw socket (HTTP/1.1, so nothing in between
//! normalizes it) or over HTTP/2 (`:path`); each must be answered by the proxy (400, 401 or
//! 302), and the upstream, which records every path it is sent, must have seen none.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const ROUTES: &str = r#"
[[route]]
prefix = "/admin"
session = "required"
login_url = "/login?next={return_to}"

[[route]]
prefix = "/public"
"#;

/// (request target, extra header lines, expected status). `HOST` in a target or header is
/// replaced by the gate's address.
const HTTP1: &[(&str, &str, u16)] = &[
    // The plain spellings: the route itself.
    ("/admin", "", 401),
    ("/admin/", "", 401),
    ("/admin/users", "", 401),
    ("/admin?x=/public", "", 401),
    ("/admin/.", "", 401),
    ("/admin/x/..", "", 401),
    // Repeated slashes.
    ("//admin", "", 401),
    ("///admin//users", "", 401),
    // Dot segments, plain and encoded.
    ("/./admin", "", 401),
    ("/public/../admin", "", 401),
    ("/public/./../admin/", "", 401),
    ("/%2e/admin", "", 401),
    ("/public/%2e%2e/admin", "", 401),
    ("/public/%2E%2E/admin", "", 401),
    ("/public/.%2e/admin", "", 401),
    ("/public/%2e./admin", "", 401),
    // Percent-encoded unreserved characters.
    ("/%61dmin", "", 401),
    ("/%61%64%6d%69%6e/x", "", 401),
    ("/adm%69n", "", 401),
    ("/%2Fadmin", "", 400),
    // Servlet path parameters.
    ("/admin;jsessionid=0123", "", 401),
    ("/admin;/users", "", 401),
    ("/;x/admin", "", 401),
    ("//;x//admin;y/z", "", 401),
    ("/public/..;/admin", "", 400),
    ("/public/%2e%2e;/admin", "", 400),
    ("/.;/admin", "", 400),
    ("/public/..%3B/admin", "", 400),
    ("/public/..%3b;x/admin", "", 400),
    // Encoded separators.
    ("/public%2F..%2Fadmin", "", 400),
    ("/public/%2e%2e%2Fadmin", "", 400),
    ("/public/..%2fadmin", "", 400),
    ("/public%5C..%5Cadmin", "", 400),
    ("/public/..%5cadmin", "", 400),
    // Backslashes.
    ("/public\\..\\admin", "", 400),
    ("/public/..\\admin", "", 400),
    ("\\admin", "", 400),
    // NUL.
    ("/admin%00", "", 400),
    ("/public%00/../admin", "", 400),
    // Overlong UTF-8 and other encodings of '.' and '/'.
    ("/public/%C0%AE%C0%AE/admin", "", 400),
    ("/public/%c0%ae./admin", "", 400),
    ("/public/%E0%80%AE%E0%80%AE/admin", "", 400),
    ("/public/..%C0%AFadmin", "", 400),
    ("/%u0061dmin", "", 400),
    ("/public/%u002e%u002e/admin", "", 400),
    // Double encoding.
    ("/public/%252e%252e/admin", "", 400),
    ("/%2561dmin", "", 400),
    ("/%25%32%66admin", "", 400),
    // Above the root.
    ("/../admin", "", 400),
    ("/public/../../admin", "", 400),
    ("/%2e%2e/admin", "", 400),
    // Absolute-form targets.
    ("http://HOST/admin", "", 401),
    ("http://HOST/public/../admin", "", 401),
    ("http://HOST//%61dmin", "", 401),
    ("http://other.example/admin", "", 400),
    ("http://other.example/public", "", 400),
    // Not a path at all.
    ("*", "", 400),
    ("admin", "", 400),
    // Two Host lines.
    ("/admin", "host: other.example\r\n", 400),
    ("/public", "host: HOST\r\n", 400),
    // A browser navigation is sent to the login page.
    ("/admin", "accept: text/html\r\n", 302),
    ("//admin/../admin/./x", "accept: text/html,*/*\r\n", 302),
];

fn status_of(res: &str) -> u16 {
    res.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {res:?}"))
}

async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> String {
    let host = addr.to_string();
    let target = target.replace("HOST", &host);
    let extra = extra.replace("HOST", &host);
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn no_spelling_of_a_required_path_reaches_the_upstream_over_http1() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    assert!(HTTP1.len() >= 40);
    let mut report = Vec::new();
    for (target, extra, want) in HTTP1 {
        let res = raw_get(gate.addr, target, extra).await;
        let got = status_of(&res);
        let body = res.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim_end());
        report.push(format!("{got} {target:?} {} -> {body:?}", extra.trim()));
        assert_eq!(got, *want, "{target:?} {extra:?}:\n{res}");
        let head = res.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        if got != 400 || head.contains("text/plain") {
            assert!(
                head.contains("cache-control: no-store"),
                "{target:?}:\n{res}"
            );
        }
        match got {
            401 => {
                assert!(head.contains("content-type: application/json"), "{res}");
                assert!(res.ends_with(r#"{"error":"session required"}"#), "{res}");
            }
            302 => assert!(head.contains("location: /login?next=%2fadmin"), "{res}"),
            _ => {}
        }
    }
    println!("{}", report.join("\n"));
    assert_eq!(app.count(), 0, "reached the upstream: {:?}", paths(&app));
    // The gate is up and the route still works for what it should pass.
    assert_eq!(gate.get("/public/x").await.status, 200);
    assert_eq!(app.last().path, "/public/x");
    gate.join().await;
}

fn paths(app: &Upstream) -> Vec<String> {
    app.seen().into_iter().map(|s| s.path).collect()
}

/// `:path` spellings over HTTP/2 (h2c, prior knowledge).
const HTTP2: &[(&str, u16)] = &[
    ("/admin", 401),
    ("//admin", 401),
    ("/public/../admin", 401),
    ("/public/%2e%2e/admin", 401),
    ("/%61dmin", 401),
    ("/admin;jsessionid=1", 401),
    ("/public/..;/admin", 400),
    ("/public%2F..%2Fadmin", 400),
    ("/public%5C..%5Cadmin", 400),
    ("/public/%C0%AE%C0%AE/admin", 400),
    ("/admin%00", 400),
    ("/../admin", 400),
];

#[tokio::test]
async fn no_spelling_of_a_required_path_reaches_the_upstream_over_http2() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut report = Vec::new();
    for (path, want) in HTTP2 {
        let req = http::Request::get(format!("http://{}{path}", gate.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("answer within 10s")
            .unwrap();
        let got = res.status().as_u16();
        report.push(format!("{got} h2 :path {path:?}"));
        assert_eq!(got, *want, "h2 {path:?}");
        res.into_body().collect().await.unwrap();
    }
    // `:authority` and a `host` header that disagree.
    let req = http::Request::get(format!("http://{}/public", gate.addr))
        .header("host", "other.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let got = send.send_request(req).await.unwrap().status().as_u16();
    report.push(format!("{got} h2 :authority vs host"));
    assert_eq!(got, 400);
    println!("{}", report.join("\n"));
    assert_eq!(app.count(), 0, "reached the upstream: {:?}", paths(&app));
    gate.join().await;
}

#[tokio::test]
async fn case_insensitive_paths_catch_every_case() {
    trace_init();
    let app = app().await;
    let routes = ROUTES.to_owned();
    let gate = gate(app.addr)
        .server("case_insensitive_paths = true")
        .toml(&routes)
        .run()
        .await;
    for target in [
        "/ADMIN",
        "/Admin/users",
        "/aDmIn;x=1",
        "/%41dmin",
        "/%41DMIN/",
        "/public/../ADMIN",
        "//ADMIN",
        "/PUBLIC/../Admin",
        "http://HOST/AdMiN",
    ] {
        let res = raw_get(gate.addr, target, "").await;
        assert_eq!(status_of(&res), 401, "{target}:\n{res}");
    }
    assert_eq!(app.count(), 0, "reached the upstream: {:?}", paths(&app));
    // What is forwarded keeps its case: only the matching ignores it.
    assert_eq!(gate.get("/Public/X").await.status, 200);
    assert_eq!(app.last().path, "/Public/X");
    gate.join().await;

    // Without the setting, case is significant: `/ADMIN` is another path.
    let app = support::app().await;
    let gate = support::gate(app.addr).toml(ROUTES).run().await;
    assert_eq!(gate.get("/ADMIN").await.status, 200);
    assert_eq!(gate.get("/administrator").await.status, 200);
    assert_eq!(paths(&app), ["/ADMIN", "/administrator"]);
    gate.join().await;
}

#[tokio::test]
async fn the_upstream_receives_the_normalized_path_and_the_query_as_sent() {
    trace_init();
    let app = app().await;
    let gate = gate(app.addr).toml(ROUTES).run().await;
    for (target, want) in [
        (
            "/public/./x/../y;p=1?q=%2e%2E&a=/../b",
            "/public/y;p=1?q=%2e%2E&a=/../b",
        ),
        ("//public//%7Euser/", "/public/~user/"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("http://HOST/public/a/..?x", "/public/?x"),
        ("/100%25", "/100%25"),
    ] {
        let res = raw_get(gate.addr, target, "").await;
        assert_eq!(status_of(&res), 200, "{target}:\n{res}");
        assert_eq!(app.last().path, want, "{target}");
    }
    gate.join().await;
}
