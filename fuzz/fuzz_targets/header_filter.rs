//! Reserved-name classification against an independent reference, and header stripping.
//!
//! Input: lines. The first line is a comma-separated list of configured forward header
//! names; every other line is `name:value` (or just `name`) of a request header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiongate::protocol::{
    ReservedNames, has_reserved_prefix, is_hop_by_hop, remove_where, strip_hop_by_hop,
};

/// The SPEC's reading of a name: lower-case, `_` as `-`.
fn fold(s: &str) -> String {
    s.to_ascii_lowercase().replace('_', "-")
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let configured: Vec<HeaderName> = first
        .split(|b| *b == b',')
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    let reserved = ReservedNames::new(configured.iter());
    let configured_folded: Vec<String> = configured.iter().map(|n| fold(n.as_str())).collect();
    let reference = |name: &HeaderName| {
        let f = fold(name.as_str());
        f.starts_with("x-session") || configured_folded.contains(&f)
    };

    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let Ok(name) = HeaderName::from_bytes(name) else {
            continue;
        };
        assert_eq!(
            has_reserved_prefix(&name),
            fold(name.as_str()).starts_with("x-session"),
            "has_reserved_prefix({name})"
        );
        assert_eq!(
            reserved.contains(&name),
            reference(&name),
            "contains({name})"
        );
        assert_eq!(is_hop_by_hop(&name), HOP_BY_HOP.contains(&name.as_str()));
        if let Ok(value) = HeaderValue::from_bytes(value.trim_ascii()) {
            headers.append(name, value);
        }
    }

    // Hop-by-hop removal: never panics, leaves no hop-by-hop header and nothing that
    // `Connection` nominated; reports an upgrade only when one was asked for.
    let before = headers.clone();
    let nominated: Vec<HeaderName> = before
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    let upgrade = strip_hop_by_hop(&mut headers);
    for name in headers.keys() {
        assert!(!is_hop_by_hop(name), "{name} survived");
        assert!(!nominated.contains(name), "nominated {name} survived");
    }
    for name in before.keys() {
        if !is_hop_by_hop(name) && !nominated.contains(name) {
            assert_eq!(
                before.get_all(name).iter().count(),
                headers.get_all(name).iter().count(),
                "{name} was removed"
            );
        }
    }
    if let Some(up) = &upgrade {
        assert_eq!(before.get(http::header::UPGRADE), Some(up));
        assert!(nominated.contains(&http::header::UPGRADE));
    }

    // Reserved removal: exactly the reserved names go.
    let kept_before: Vec<HeaderName> = headers.keys().filter(|n| !reference(n)).cloned().collect();
    remove_where(&mut headers, |n| reserved.contains(n));
    for name in headers.keys() {
        assert!(!reference(name), "reserved {name} survived");
    }
    for name in &kept_before {
        assert!(headers.contains_key(name), "{name} was removed");
    }
    remove_where(&mut headers, has_reserved_prefix);
});
