//! Property tests: the RFC 7396 merge patch laws `X-Session-Update` relies on, and the
//! reserved-name reading (lower-case, `_` as `-`) of request header stripping, both as a
//! unit (`ReservedNames`) and end to end through a running gate (SPEC §5, §6, §10.1).

mod support;

use std::sync::OnceLock;

use http::HeaderName;
use proptest::prelude::*;
use serde_json::{Map, Value};
use sessiongate::protocol::{ReservedNames, has_reserved_prefix};
use sessiongate::session::{merge_object, merge_patch};

// ---------------------------------------------------------------------------------------
// JSON values. Few keys so that patches and targets overlap; no floats (serde_json holds
// no NaN, and float text round trips are not what these laws are about).

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("userId".to_owned()),
        Just("prefs".to_owned()),
        "[a-z]{1,3}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zé ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), json(), 0..6).prop_map(|m| m.into_iter().collect())
}

fn patched(target: &Value, patch: &Value) -> Value {
    let mut t = target.clone();
    merge_patch(&mut t, patch);
    t
}

/// Every member of an object patch is reflected in `result`: `null` members are absent,
/// object members are applied recursively, anything else appears as it is.
fn reflects(patch: &Map<String, Value>, result: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in patch {
        match (v, result.get(k)) {
            (Value::Null, None) => {}
            (Value::Null, Some(r)) => return Err(format!("{k}: null left {r}")),
            (Value::Object(p), Some(Value::Object(r))) => reflects(p, r)?,
            (v, Some(r)) if !v.is_object() && r == v => {}
            (v, r) => return Err(format!("{k}: patch {v}, result {r:?}")),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn patching_twice_equals_patching_once(target in json(), patch in object()) {
        let patch = Value::Object(patch);
        let once = patched(&target, &patch);
        prop_assert_eq!(patched(&once, &patch), once);
    }

    #[test]
    fn an_empty_object_patch_is_the_identity_on_objects(target in object()) {
        let target = Value::Object(target);
        prop_assert_eq!(patched(&target, &Value::Object(Map::new())), target);
    }

    #[test]
    fn non_null_leaves_appear_and_null_members_are_absent(target in json(), patch in object()) {
        let result = patched(&target, &Value::Object(patch.clone()));
        let Value::Object(result) = result else {
            return Err(TestCaseError::fail("an object patch gave a non-object"));
        };
        // A null member of the result was in an object target and is not named by the patch.
        for (k, v) in &result {
            if v.is_null() {
                prop_assert!(!patch.contains_key(k) && target.get(k) == Some(&Value::Null), "{}", k);
            }
        }
        reflects(&patch, &result).map_err(TestCaseError::fail)?;
        // Members the patch does not name are kept from an object target.
        if let Value::Object(t) = &target {
            for (k, v) in t {
                if !patch.contains_key(k) {
                    prop_assert_eq!(result.get(k), Some(v));
                }
            }
        }
    }

    #[test]
    fn a_non_object_patch_replaces_the_target(target in json(), patch in json()) {
        prop_assume!(!patch.is_object());
        prop_assert_eq!(patched(&target, &patch), patch);
    }

    #[test]
    fn merge_object_agrees_with_merge_patch(target in object(), patch in object()) {
        let mut m = target.clone();
        merge_object(&mut m, &patch);
        prop_assert_eq!(
            Value::Object(m),
            patched(&Value::Object(target), &Value::Object(patch))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reserved names.

/// A header name built from the pieces an attacker would combine.
fn header_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("x".to_owned()),
        Just("X".to_owned()),
        Just("-".to_owned()),
        Just("_".to_owned()),
        Just("session".to_owned()),
        Just("SESSION".to_owned()),
        Just("SeSsIoN".to_owned()),
        Just("set".to_owned()),
        Just("user".to_owned()),
        Just("id".to_owned()),
        Just("ID".to_owned()),
        Just("forwarded".to_owned()),
        "[a-z0-9_-]{1,5}",
    ];
    prop::collection::vec(piece, 1..7).prop_map(|p| p.concat())
}

/// A name that is reserved by construction: `x` + separator + `session` + anything, or a
/// spelling of `x-user-id`.
fn reserved_name() -> impl Strategy<Value = String> {
    let sep = prop_oneof![Just("-"), Just("_")];
    let x = prop_oneof![Just("x"), Just("X")];
    let session = prop_oneof![
        Just("session"),
        Just("SESSION"),
        Just("Session"),
        Just("sEsSiOn")
    ];
    let user_id = (
        x.clone(),
        sep.clone(),
        prop_oneof![Just("user"), Just("USER"), Just("User")],
        sep.clone(),
        prop_oneof![Just("id"), Just("ID"), Just("Id")],
    )
        .prop_map(|(a, b, c, d, e)| format!("{a}{b}{c}{d}{e}"));
    prop_oneof![
        (x, sep, session, prop::option::of(header_name()))
            .prop_map(|(a, b, c, rest)| format!("{a}{b}{c}{}", rest.unwrap_or_default())),
        user_id,
    ]
}

/// The SPEC's reading, independent of the gate: lower-case, `_` as `-`.
fn is_reserved_reference(name: &str) -> bool {
    let folded = name.to_ascii_lowercase().replace('_', "-");
    folded.starts_with("x-session") || folded == "x-user-id"
}

fn reserved() -> ReservedNames {
    ReservedNames::new([&HeaderName::from_static("x-user-id")])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn reserved_names_match_the_reference(name in header_name()) {
        let h = HeaderName::from_bytes(name.as_bytes()).expect("pieces form a valid name");
        let folded = name.to_ascii_lowercase().replace('_', "-");
        prop_assert_eq!(reserved().contains(&h), is_reserved_reference(&name), "{}", name);
        prop_assert_eq!(has_reserved_prefix(&h), folded.starts_with("x-session"), "{}", name);
    }

    #[test]
    fn constructed_reserved_names_are_reserved(name in reserved_name()) {
        let h = HeaderName::from_bytes(name.as_bytes()).expect("a valid name");
        prop_assert!(is_reserved_reference(&name), "{}", name);
        prop_assert!(reserved().contains(&h), "{}", name);
    }
}

// ---------------------------------------------------------------------------------------
// End to end: no client-sent reserved name reaches the upstream.

struct World {
    rt: tokio::runtime::Runtime,
    app: support::Upstream,
    gate: support::Gate,
    /// `session=ID.SIG` of a logged-in session.
    cookie: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        support::trace_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, gate, cookie) = rt.block_on(async {
            let app = support::app().await;
            let gate = support::gate(app.addr)
                .server("underscores_in_headers = true")
                .toml("[forward.headers]\n\"X-User-Id\" = \"userId\"")
                .run()
                .await;
            let login = gate.get("/login").await;
            assert_eq!(login.status, 200);
            let cookie = login.session_cookie();
            (app, gate, cookie)
        });
        World {
            rt,
            app,
            gate,
            cookie,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn no_client_sent_reserved_name_reaches_the_upstream(
        reserved in prop::collection::vec(reserved_name(), 1..8),
        others in prop::collection::vec(header_name(), 0..6),
        with_session in any::<bool>(),
    ) {
        let w = world();
        // Names as the client spells them on the wire, in their original case.
        let mut head = String::from("GET /probe HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n");
        if with_session {
            head.push_str(&format!("Cookie: {}\r\n", w.cookie));
        }
        for (i, name) in reserved.iter().enumerate() {
            head.push_str(&format!("{name}: client-{i}\r\n"));
        }
        // Other names from the same pieces: reserved ones must go too, the rest may pass.
        // (Names that change the framing or routing of the request are left out.)
        let passing: Vec<(String, String)> = others
            .iter()
            .filter(|n| !matches!(
                n.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "transfer-encoding" | "expect" | "connection" | "upgrade" | "cookie"
            ))
            .enumerate()
            .map(|(i, n)| (n.clone(), format!("other-{i}")))
            .collect();
        for (name, value) in &passing {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let before = w.app.count();
        let response = w.rt.block_on(support::raw(w.gate.addr, head.as_bytes()));
        prop_assert!(response.starts_with("HTTP/1.1 200"), "{}", response);
        prop_assert_eq!(w.app.count(), before + 1);
        let seen = w.app.last();
        prop_assert_eq!(seen.path.as_str(), "/probe");

        for (name, value) in &seen.headers {
            let text = value.to_str().unwrap_or("");
            prop_assert!(!text.starts_with("client-"), "client value reached upstream in {}", name);
            if is_reserved_reference(name.as_str()) {
                // Only what the proxy itself sets for this request.
                prop_assert!(with_session, "{} reached upstream without a session", name);
                prop_assert!(
                    name == "x-session" || name == "x-user-id",
                    "reserved {} reached upstream", name
                );
            }
        }
        if with_session {
            let tokens: Vec<_> = seen.headers.get_all("x-session").iter().collect();
            prop_assert_eq!(tokens.len(), 1);
            let claims = support::verify_token(tokens[0].to_str().unwrap(), support::UPSTREAM_SECRET);
            prop_assert_eq!(&claims["data"]["userId"], 1);
            let ids: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
            prop_assert_eq!(ids.len(), 1);
            prop_assert_eq!(ids[0].to_str().unwrap(), "1");
        } else {
            prop_assert!(!seen.headers.contains_key("x-session"));
            prop_assert!(!seen.headers.contains_key("x-user-id"));
        }
        // Positive control: non-reserved `x…` names (underscores allowed here) arrive as sent.
        for (name, value) in &passing {
            let folded = name.to_ascii_lowercase().replace('_', "-");
            if is_reserved_reference(name) || !folded.starts_with('x') || folded.starts_with("x-forwarded") {
                continue;
            }
            let got: Vec<_> = seen.headers.get_all(name.to_ascii_lowercase().as_str()).iter()
                .map(|v| v.to_str().unwrap().to_owned()).collect();
            prop_assert!(got.contains(value), "{} = {} did not arrive: {:?}", name, value, got);
        }
    }
}
