//! Path normalization for route matching (SPEC §11): one spelling per path, so that what
//! the proxy checked is what the application routes.
//!
//! [`normalize`] turns the path of a request target into
//!
//! - the *forwarded* path: percent-encoded unreserved characters decoded (RFC 3986 §2.3),
//!   other escapes kept with upper-case hex (§6.2.2.1), dot segments removed (§5.2.4) and
//!   repeated `/` merged; `;`-parameters are kept. The upstream receives exactly this.
//! - the *matching key*: the forwarded path with each segment's `;`-parameters removed and
//!   the segments they leave empty dropped (as servlet containers read `/admin;x=y` and
//!   `/;x/admin` as `/admin`), lower-cased when paths are case-insensitive.
//!
//! It refuses, rather than guesses at, what applications read in different ways: an
//! encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`); a raw `\` (a `/` to Windows and IIS);
//! a `..` that climbs above the root; a dot segment with parameters (`..;x`, which Tomcat
//! reads as `..` and other servers as a name, and `..%3B`, read as `..;` once decoded); a malformed escape (`%`, `%u002e`, `%zz`);
//! a double-encoded escape (`%252e`, `%` itself encoded in front of hex digits); decoded
//! bytes that are not UTF-8, which includes every overlong form (`%C0%AE` for `.`); raw
//! bytes outside ASCII or control characters; and anything that is not an absolute path.
//!
//! The escapes are read by hand, because each one is handled on its own (decoded, kept
//! or refused); the `percent-encoding` crate checks the fully decoded path for UTF-8.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Why a path is refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path (`/...`) and not `*`.
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// `%2F`: a `/` that is not a separator to the proxy but may be one to the application.
    #[error("the path contains an encoded '/' (%2F)")]
    EncodedSlash,
    /// `%5C`: an encoded `\`.
    #[error("the path contains an encoded '\\' (%5C)")]
    EncodedBackslash,
    /// `%00`: an encoded NUL.
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
    /// A raw `\`, a separator to Windows and IIS.
    #[error("the path contains a backslash")]
    Backslash,
    /// A byte outside printable ASCII (raw non-ASCII or a control character).
    #[error("the path contains a byte outside printable ASCII (0x{0:02X})")]
    RawByte(u8),
    /// A `%` not followed by two hex digits.
    #[error("the path contains a malformed percent escape")]
    BadEscape,
    /// `%25` followed by two hex digits: an escape encoded twice.
    #[error("the path contains a double-encoded escape (%25 followed by hex digits)")]
    DoubleEncoded,
    /// The decoded bytes are not UTF-8 (overlong forms such as `%C0%AE` included).
    #[error("the decoded path is not UTF-8 (e.g. an overlong encoding)")]
    NotUtf8,
    /// `..` above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `.` or `..` carrying `;`-parameters.
    #[error("the path has a dot segment with parameters (e.g. '..;')")]
    DotWithParams,
}

/// A path in normal form; borrowed from the request when it already was (most are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// What the upstream receives (without the query).
    pub forward: Cow<'a, str>,
    /// What route prefixes are matched against.
    pub key: Cow<'a, str>,
}

/// Normalizes the path of a request target (the query excluded). `*` (the asterisk form
/// of `OPTIONS *`) is forwarded as it is and matched as `/`.
///
/// # Errors
/// When the path is refused; see the [module docs](self).
pub fn normalize(path: &str, case_insensitive: bool) -> Result<Normalized<'_>, PathError> {
    if path == "*" {
        return Ok(Normalized {
            forward: Cow::Borrowed("*"),
            key: Cow::Borrowed("/"),
        });
    }
    if is_normal(path) {
        return Ok(borrowed(path, case_insensitive));
    }
    full(path, case_insensitive)
}

/// [`normalize()`] of a path that [`is_normal`]: itself, without a copy.
fn borrowed(path: &str, case_insensitive: bool) -> Normalized<'_> {
    let key = if case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    };
    Normalized {
        forward: Cow::Borrowed(path),
        key,
    }
}

/// [`normalize()`] of any other path: decode, then remove dot and empty segments.
fn full(path: &str, case_insensitive: bool) -> Result<Normalized<'static>, PathError> {
    let decoded = decode_unreserved(path)?;
    let rest = decoded.strip_prefix('/').ok_or(PathError::NotAbsolute)?;

    // RFC 3986 §5.2.4 on a segment stack, merging empty segments (repeated '/'); a final
    // '/', '.' or '..' leaves a trailing slash.
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in rest.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        trailing = false;
        if is_dot_with_params(segment) {
            return Err(PathError::DotWithParams);
        }
        match name {
            "." => trailing = true,
            ".." => {
                stack.pop().ok_or(PathError::AboveRoot)?;
                trailing = true;
            }
            _ if segment.is_empty() => trailing = true,
            _ => stack.push(segment),
        }
    }
    let mut forward = String::with_capacity(decoded.len());
    let mut key = String::with_capacity(decoded.len());
    for segment in &stack {
        forward.push('/');
        forward.push_str(segment);
        let name = segment.split(';').next().unwrap_or_default();
        if !name.is_empty() {
            key.push('/');
            key.push_str(name);
        }
    }
    if trailing || stack.is_empty() {
        forward.push('/');
    }
    if key.is_empty() || trailing {
        key.push('/');
    }
    if case_insensitive {
        key.make_ascii_lowercase();
    }
    Ok(Normalized {
        forward: Cow::Owned(forward),
        key: Cow::Owned(key),
    })
}

/// `.` or `..` followed by parameters, `;` or its escape `%3B` (an application that
/// decodes before it strips parameters reads `..%3B` as `..`).
fn is_dot_with_params(segment: &str) -> bool {
    let rest = segment.trim_start_matches('.');
    matches!(segment.len() - rest.len(), 1 | 2)
        && (rest.starts_with(';') || rest.starts_with("%3B"))
}

/// True for a path that is its own normal form and matching key: absolute, printable
/// ASCII without `%`, `\\` or `;`, no empty segment but a last one, and no dot segment.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    path.bytes()
        .all(|b| matches!(b, 0x21..=0x7e) && !matches!(b, b'%' | b'\\' | b';'))
        && std::iter::from_fn(|| {
            let segment = segments.next()?;
            Some(match segment {
                "" => segments.peek().is_none(),
                "." | ".." => false,
                _ => true,
            })
        })
        .all(|ok| ok)
}

/// Decodes the escapes of unreserved characters, upper-cases the hex of the others, and
/// refuses what [`PathError`] lists at the byte level.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut has_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = hex_pair(bytes, i + 1).ok_or(PathError::BadEscape)?;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::EncodedNul),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        has_escape = true;
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0x0f)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0x21..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            other => return Err(PathError::RawByte(other)),
        }
    }
    // After decoding (so that `%25E%66` counts, whose `%66` becomes `f`): an encoded `%`
    // before two hex digits, which a second decoding would read as another escape.
    let decoded = out.as_bytes();
    if out
        .match_indices("%25")
        .any(|(i, _)| hex_pair(decoded, i + 3).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    if has_escape && percent_decode_str(&out).decode_utf8().is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The byte that the two hex digits at `at` spell, if they are there.
fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let hi = digit(*bytes.get(at)?)?;
    let lo = digit(*bytes.get(at + 1)?)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(path: &str) -> String {
        normalize(path, false).unwrap().forward.into_owned()
    }

    fn key(path: &str, ci: bool) -> String {
        normalize(path, ci).unwrap().key.into_owned()
    }

    #[test]
    fn plain_paths_are_unchanged_and_borrowed() {
        for p in [
            "/",
            "/admin",
            "/admin/",
            "/a/b/c",
            "/a-b_c~d.e",
            "/x:y@z!$&'()*+,=",
            "/.a/..b/",
        ] {
            let n = normalize(p, false).unwrap();
            assert!(matches!(n.forward, Cow::Borrowed(_)), "{p}");
            assert!(matches!(n.key, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.forward, p);
            assert_eq!(n.key, p);
        }
        // Each of these takes the full pass.
        for p in [
            "//a", "/a//", "/a/./b", "/a/..", "/.", "/a;b", "/%41", "/a\\b", "a",
        ] {
            assert!(!is_normal(p), "{p}");
        }
    }

    /// RFC 3986 §5.2.4 and the examples of §5.4, as absolute paths.
    #[test]
    fn dot_segments_are_removed() {
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/b/../../c/", "/c/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/.c", "/a/..b/.c"),
        ] {
            assert_eq!(fwd(input), want, "{input}");
        }
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(fwd("//admin"), "/admin");
        assert_eq!(fwd("/a///b//"), "/a/b/");
        assert_eq!(fwd("///"), "/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(fwd("/%61dmin"), "/admin");
        assert_eq!(fwd("/%41%7e%2D%5f"), "/A~-_");
        assert_eq!(fwd("/a%2e%2E/b"), "/a../b");
        assert_eq!(fwd("/x/%2e%2e/admin"), "/admin");
        assert_eq!(fwd("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(fwd("/a%20b%3bc"), "/a%20b%3Bc");
    }

    #[test]
    fn parameters_are_forwarded_but_ignored_for_matching() {
        let n = normalize("/admin;jsessionid=1/x;v=2", false).unwrap();
        assert_eq!(n.forward, "/admin;jsessionid=1/x;v=2");
        assert_eq!(n.key, "/admin/x");
        let n = normalize("/;x/admin;", false).unwrap();
        assert_eq!(n.forward, "/;x/admin;");
        assert_eq!(n.key, "/admin");
        assert_eq!(key("/admin;a/", false), "/admin/");
        assert_eq!(key("/;x", false), "/");
    }

    #[test]
    fn case_folds_the_key_only_when_asked() {
        let n = normalize("/ADMIN/X", true).unwrap();
        assert_eq!((&*n.forward, &*n.key), ("/ADMIN/X", "/admin/x"));
        let n = normalize("//ADMIN/./X", true).unwrap();
        assert_eq!((&*n.forward, &*n.key), ("/ADMIN/X", "/admin/x"));
        assert_eq!(key("/ADMIN", false), "/ADMIN");
        // Escapes keep their (upper-case) hex; only the key is folded.
        assert_eq!(key("/%C3%A9", true), "/%c3%a9");
    }

    #[test]
    fn asterisk_is_kept_and_matched_as_root() {
        let n = normalize("*", false).unwrap();
        assert_eq!((&*n.forward, &*n.key), ("*", "/"));
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (input, want) in [
            ("", PathError::NotAbsolute),
            ("admin", PathError::NotAbsolute),
            ("%2Fadmin", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5Cb", PathError::EncodedBackslash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/a\\b", PathError::Backslash),
            ("/admin%00", PathError::EncodedNul),
            ("/a\u{0}b", PathError::RawByte(0)),
            ("/a\tb", PathError::RawByte(b'\t')),
            ("/a b", PathError::RawByte(b' ')),
            ("/caf\u{e9}", PathError::RawByte(0xc3)),
            ("/%", PathError::BadEscape),
            ("/%4", PathError::BadEscape),
            ("/%zz", PathError::BadEscape),
            ("/%u002e%u002e/admin", PathError::BadEscape),
            ("/%252e%252e/admin", PathError::DoubleEncoded),
            ("/%252F", PathError::DoubleEncoded),
            // Found by the path_normalize fuzz target: `%66` decodes to `f` after `%25E`.
            ("/z/zllE%25E%66A'", PathError::DoubleEncoded),
            ("/%25%34%31", PathError::DoubleEncoded),
            ("/x/%C0%AE%C0%AE/admin", PathError::NotUtf8),
            ("/%c0%af", PathError::NotUtf8),
            ("/%e0%80%ae", PathError::NotUtf8),
            ("/%ff", PathError::NotUtf8),
            ("/%ed%a0%80", PathError::NotUtf8),
            ("/..", PathError::AboveRoot),
            ("/../admin", PathError::AboveRoot),
            ("/a/../../admin", PathError::AboveRoot),
            ("/%2e%2e/admin", PathError::AboveRoot),
            ("/public/..;/admin", PathError::DotWithParams),
            ("/admin/..;x/public", PathError::DotWithParams),
            ("/.;/admin", PathError::DotWithParams),
            // Found by the path_normalize fuzz target: `%3B` decodes to `;`.
            ("/x/..%3b/admin", PathError::DotWithParams),
            ("/x/.%3B", PathError::DotWithParams),
        ] {
            assert_eq!(normalize(input, false), Err(want), "{input:?}");
        }
        assert_eq!(fwd("/100%25"), "/100%25");
        assert_eq!(fwd("/50%25off"), "/50%25off");
    }

    proptest::proptest! {
        /// The shortcut for paths already in normal form agrees with the full pass, and
        /// every normal form is a fixed point.
        #[test]
        fn the_shortcut_agrees_with_the_full_pass(
            path in "/[/a-zA-Z.;~%0-9]{0,24}",
            ci in proptest::bool::ANY,
        ) {
            if is_normal(&path) {
                proptest::prop_assert_eq!(borrowed(&path, ci), full(&path, ci).unwrap());
            }
            if let Ok(n) = normalize(&path, ci) {
                let again = normalize(&n.forward, ci).unwrap();
                proptest::prop_assert_eq!(&again.forward, &n.forward);
                proptest::prop_assert_eq!(&again.key, &n.key);
            }
        }
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in [
            "/a/./b/../c//d;x/%7e/",
            "/x/%2e%2e/y",
            "//%41;b/.",
            "/caf%c3%a9/%3b",
        ] {
            let once = normalize(p, false).unwrap();
            let twice = normalize(&once.forward, false).unwrap();
            assert_eq!(once, twice, "{p}");
        }
    }
}
