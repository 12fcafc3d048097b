//! The admin API (SPEC §13): a user's devices, and revocation by user or by handle.
//!
//! | call | answer |
//! |---|---|
//! | `GET /sessions?user=U` | `200 {"user":"U","sessions":[{"handle","created","last_seen","user_agent","ip"}...]}` |
//! | `DELETE /sessions?user=U` | `200 {"destroyed":N}` |
//! | `DELETE /sessions/HANDLE` | `200 {"destroyed":1}`, or `404` |
//!
//! A missing or empty `user` is `400`; a store failure is `503` (logged). Answers name
//! sessions by their [`Handle`] only, never by ID, and carry no session data. JSON is
//! written with `<`, `>` and `&` escaped as `\u003c`, `\u003e`, `\u0026`, so an
//! attacker-chosen user agent stays inert even where the answer is mistaken for HTML.

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use percent_encoding::percent_decode;
use serde::Serialize;
use tracing::{error, info};

use super::{Admin, no_store, text};
use crate::metrics::DestroyReason;
use crate::store::StoreError;
use crate::store::users::{Device, Handle, UserIndex as _};

/// Methods `/sessions` answers.
pub(super) const COLLECTION_METHODS: &str = "GET, HEAD, DELETE";
/// Methods `/sessions/HANDLE` answers.
pub(super) const MEMBER_METHODS: &str = "DELETE";

/// Why a query names no user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadQuery {
    /// No `user`, or an empty one.
    #[error("missing query parameter user, e.g. /sessions?user=42")]
    Missing,
    /// `user` appears more than once.
    #[error("query parameter user given more than once")]
    Repeated,
    /// `user` does not decode to UTF-8.
    #[error("query parameter user is not UTF-8 once percent-decoded")]
    NotUtf8,
}

/// The `user` of a query string in `application/x-www-form-urlencoded` form (`+` is a
/// space, `%XX` a byte), as browsers' `URLSearchParams` and `curl --data-urlencode` write it.
pub(super) fn user_param(query: Option<&str>) -> Result<String, BadQuery> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name).as_deref() != Ok("user") {
            continue;
        }
        if found.is_some() {
            return Err(BadQuery::Repeated);
        }
        found = Some(form_decode(value)?);
    }
    found.filter(|u| !u.is_empty()).ok_or(BadQuery::Missing)
}

fn form_decode(s: &str) -> Result<String, BadQuery> {
    let spaced = s.replace('+', " ");
    percent_decode(spaced.as_bytes())
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| BadQuery::NotUtf8)
}

#[derive(Serialize)]
struct DeviceList<'a> {
    user: &'a str,
    sessions: Vec<DeviceJson<'a>>,
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    handle: String,
    created: u64,
    last_seen: u64,
    user_agent: &'a str,
    ip: &'a str,
}

#[derive(Serialize)]
struct Destroyed {
    destroyed: usize,
}

impl Admin {
    /// `GET`/`DELETE /sessions?user=U`, authenticated.
    pub(super) async fn sessions(
        &self,
        method: &Method,
        query: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let user = match user_param(query) {
            Ok(user) => user,
            Err(e) => return no_store(text_line(StatusCode::BAD_REQUEST, &e)),
        };
        if method == Method::DELETE {
            match self.store.revoke(&user, None).await {
                Ok(handles) => {
                    self.revoked(&handles);
                    json(&Destroyed {
                        destroyed: handles.len(),
                    })
                }
                Err(e) => store_failed("revoke a user's sessions", &e),
            }
        } else {
            match self.store.devices(&user).await {
                Ok(devices) => json(&DeviceList {
                    user: &user,
                    sessions: devices.iter().map(device_json).collect(),
                }),
                Err(e) => store_failed("list a user's sessions", &e),
            }
        }
    }

    /// `DELETE /sessions/HANDLE`, authenticated. A malformed handle is no session: 404.
    pub(super) async fn session(&self, handle: &str) -> Response<Full<Bytes>> {
        let Ok(handle) = handle.parse::<Handle>() else {
            return no_store(text(StatusCode::NOT_FOUND, "no such session\n"));
        };
        match self.store.revoke_handle(None, &handle).await {
            Ok(true) => {
                self.revoked(&[handle]);
                json(&Destroyed { destroyed: 1 })
            }
            Ok(false) => no_store(text(StatusCode::NOT_FOUND, "no such session\n")),
            Err(e) => store_failed("revoke a session", &e),
        }
    }

    /// Every revocation the admin API makes passes here, with the handles of the sessions
    /// it ended (after the store has deleted them): it counts them, and is where whatever
    /// else must follow a revocation on this proxy (closing their upgraded connections)
    /// is attached.
    fn revoked(&self, handles: &[Handle]) {
        if handles.is_empty() {
            return;
        }
        self.metrics
            .destroyed(DestroyReason::revoke, handles.len() as u64);
        self.upgrades.ended(handles);
        info!(destroyed = handles.len(), "admin api revoked sessions");
    }
}

fn device_json(d: &Device) -> DeviceJson<'_> {
    DeviceJson {
        handle: d.handle.to_string(),
        created: d.created,
        last_seen: d.last_seen,
        user_agent: &d.user_agent,
        ip: &d.ip,
    }
}

/// `value` as JSON with `<`, `>` and `&` escaped. They only ever occur inside strings in
/// JSON text, where the `\uXXXX` form means the same character.
fn json(value: &impl Serialize) -> Response<Full<Bytes>> {
    let raw = serde_json::to_string(value).expect("these types always serialize");
    let mut out = String::with_capacity(raw.len() + 1);
    for c in raw.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out.push('\n');
    let mut res = Response::new(Full::new(Bytes::from(out)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    no_store(res)
}

fn text_line(status: StatusCode, e: &BadQuery) -> Response<Full<Bytes>> {
    super::owned_text(status, format!("{e}\n"))
}

fn store_failed(what: &'static str, e: &StoreError) -> Response<Full<Bytes>> {
    error!(error = %e, "admin api could not {what}");
    no_store(text(
        StatusCode::SERVICE_UNAVAILABLE,
        "session store unavailable\n",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_form_decoded() {
        for (query, user) in [
            ("user=42", "42"),
            ("user=ada%40example.com", "ada@example.com"),
            ("user=a+b%20c", "a b c"),
            ("user=%26%3D%2B", "&=+"),
            ("x=1&user=%C3%A9l%C3%A8ve&y", "élève"),
            ("us%65r=7", "7"),
        ] {
            assert_eq!(user_param(Some(query)).as_deref(), Ok(user), "{query}");
        }
    }

    #[test]
    fn a_missing_repeated_or_undecodable_user_is_refused() {
        for (query, err) in [
            (None, BadQuery::Missing),
            (Some(""), BadQuery::Missing),
            (Some("user="), BadQuery::Missing),
            (Some("user"), BadQuery::Missing),
            (Some("users=1"), BadQuery::Missing),
            (Some("user=1&user=2"), BadQuery::Repeated),
            (Some("user=%FF"), BadQuery::NotUtf8),
        ] {
            assert_eq!(user_param(query), Err(err), "{query:?}");
        }
    }

    #[test]
    fn json_escapes_html_characters_and_round_trips() {
        let ua = "</script><script>alert('&')</script>";
        let res = json(&DeviceJson {
            handle: "h".into(),
            created: 1,
            last_seen: 2,
            user_agent: ua,
            ip: "192.0.2.1",
        });
        let body = res.into_body();
        let bytes = futures_bytes(body);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            !text.contains('<') && !text.contains('>') && !text.contains('&'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back["user_agent"], ua);
    }

    fn futures_bytes(body: Full<Bytes>) -> Bytes {
        use http_body_util::BodyExt as _;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
    }
}
