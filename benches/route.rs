//! What a protected path adds to a request, under criterion (issue 13's cost): the path
//! normalized and its route found, the cross-origin check, and a `required` route's
//! verdict on an active session. The load benchmark's `sg-required` row measures the same
//! end to end, within that machine's noise.
//!
//! `cargo bench --bench route -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use sessiongate::config::RouteSession;
use sessiongate::proxy::csrf::{self, CsrfPolicy};
use sessiongate::route::{Route, RouteTable, normalize};

fn table() -> RouteTable {
    let route = |prefix: &str, session| Route {
        prefix: Some(prefix.into()),
        session,
        ..Route::default_route()
    };
    RouteTable::new(
        vec![
            route("/", RouteSession::Required),
            route("/login", RouteSession::Optional),
            route("/admin", RouteSession::Required),
            route("/assets", RouteSession::Off),
        ],
        false,
    )
}

fn bench(c: &mut Criterion) {
    let routes = table();
    let mut g = c.benchmark_group("route");
    for path in ["/", "/account/orders/17"] {
        g.bench_function(format!("normalize_and_find {path}"), |b| {
            b.iter(|| {
                let n = normalize(black_box(path), false).unwrap();
                black_box(routes.find(&n.key))
            });
        });
    }
    g.bench_function("normalize_and_find /a/./b/../%63//d;x=1", |b| {
        b.iter(|| {
            let n = normalize(black_box("/a/./b/../%63//d;x=1"), false).unwrap();
            black_box(routes.find(&n.key))
        });
    });
    let required = &routes.routes()[routes.find("/")];
    g.bench_function("judge required, active session", |b| {
        b.iter(|| black_box(required.judge(black_box(r#"{"userId":1}"#), Some(1), 2)));
    });
    let policy = CsrfPolicy::default();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("app.example"));
    headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
    headers.insert("origin", HeaderValue::from_static("http://app.example"));
    for method in [Method::GET, Method::POST] {
        g.bench_function(format!("csrf {method}"), |b| {
            b.iter(|| {
                black_box(csrf::check(
                    black_box(&method),
                    &headers,
                    Some(b"app.example"),
                    &policy,
                ))
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
