//! The operator page (SPEC §13): `GET /` on the admin listener, a plain HTML page with its
//! script and style at `/page.js` and `/page.css` (embedded, no build step).
//!
//! The page asks for the admin token once and keeps it in a script variable only (no
//! cookie, no storage), shows the counters of `/metrics`, lists a user's devices and signs
//! them out through the admin API. Its Content-Security-Policy lets it load nothing but its
//! own script and style and talk to nothing but this listener; the script renders every
//! value with `textContent`, never as markup.

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;

use super::no_store;

const HTML: &str = include_str!("page.html");
const JS: &str = include_str!("page.js");
const CSS: &str = include_str!("page.css");

/// The page's policy: its own script and style, requests to this origin only, no frames,
/// no forms that navigate, no `<base>`.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The asset at `path`, if the page has one there.
pub(super) fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "/" => (HTML, "text/html; charset=utf-8"),
        "/page.js" => (JS, "text/javascript; charset=utf-8"),
        "/page.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    Some(no_store(res))
}
