//! The path normalizer (`route::normalize`, SPEC §11): arbitrary text as a request path.
//! What it accepts must mean one thing to every reader: the proxy, and an application that
//! percent-decodes the path and then resolves dot segments and backslashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use sessiongate::route::normalize;

fuzz_target!(|input: &[u8]| {
    let Ok(path) = std::str::from_utf8(input) else {
        return;
    };
    for case_insensitive in [false, true] {
        let Ok(n) = normalize(path, case_insensitive) else {
            continue;
        };
        if n.forward == "*" {
            assert_eq!(path, "*");
            continue;
        }
        // A fixed point: normalizing what is forwarded changes nothing.
        let again = normalize(&n.forward, case_insensitive).expect("a normal form is accepted");
        assert_eq!(again, n, "not a fixed point: {path:?}");
        assert!(n.forward.starts_with('/') && n.key.starts_with('/'));
        assert!(!n.forward.contains("//"), "{path:?} -> {:?}", n.forward);
        // Decoded the way an application decodes it, the forwarded path is UTF-8, holds no
        // NUL, no backslash, no slash that was not there before decoding, and no dot
        // segment (with or without parameters) left to resolve.
        let decoded = percent_decode_str(&n.forward)
            .decode_utf8()
            .unwrap_or_else(|_| panic!("{path:?} -> {:?} is not UTF-8 decoded", n.forward));
        assert!(!decoded.contains('\0') && !decoded.contains('\\'), "{path:?}");
        assert_eq!(
            decoded.matches('/').count(),
            n.forward.matches('/').count(),
            "{path:?} -> {:?} hides a '/'",
            n.forward
        );
        for segment in decoded.split('/') {
            let name = segment.split(';').next().unwrap_or_default();
            assert!(name != "." && name != "..", "{path:?} -> {:?}", n.forward);
        }
        // Decoding once leaves no escape for a second decoding (`%252F` is refused).
        let bytes = decoded.as_bytes();
        for (i, _) in decoded.match_indices('%') {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            assert!(!(hex(i + 1) && hex(i + 2)), "{path:?} -> {decoded:?} decodes again");
        }
        // The matching key is the forwarded path without parameters (and case, if asked).
        let key: Vec<&str> = n
            .forward
            .split('/')
            .map(|s| s.split(';').next().unwrap_or_default())
            .filter(|s| !s.is_empty())
            .collect();
        let mut want = format!("/{}", key.join("/"));
        if n.forward.ends_with('/') && want != "/" {
            want.push('/');
        }
        if case_insensitive {
            want.make_ascii_lowercase();
        }
        assert_eq!(n.key, want, "{path:?}");
    }
});
