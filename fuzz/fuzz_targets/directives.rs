//! `X-Session-Set` / `X-Session-Update` values through `parse_directives`, then merge patch.
//!
//! Input: the first byte holds flags (bit 0: add X-Session-Destroy); the rest are lines.
//! Line 0 is the X-Session-Set value, line 1 the X-Session-Update value (an empty line
//! means "absent"); further lines are appended as repeated Update (odd) / Set (even) values.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use sessiongate::protocol::{Destroy, DirectiveError, parse_directives};
use sessiongate::session::{merge_object, merge_patch};

fn target() -> Value {
    json!({
        "userId": 1,
        "name": "alice",
        "roles": ["a", "b"],
        "prefs": {"theme": "dark", "lang": {"primary": "en", "fallback": ["fr"]}},
        "count": 0
    })
}

/// No `null` member in any object reachable from `v` through objects only (arrays are
/// values a patch copies verbatim and may hold nulls).
fn no_null_members(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().all(|x| !x.is_null() && no_null_members(x)),
        _ => true,
    }
}

/// Every non-null leaf of an object patch appears in the result at the same path.
fn leaves_present(patch: &Map<String, Value>, result: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => assert!(!result.contains_key(k), "{k} not removed"),
            Value::Object(p) => match result.get(k) {
                Some(Value::Object(r)) => leaves_present(p, r),
                other => panic!("{k}: object patch gave {other:?}"),
            },
            _ => assert_eq!(result.get(k), Some(v), "{k}"),
        }
    }
}

fn check_object_patch(patch: &Map<String, Value>) {
    // merge_patch on a Value target.
    let mut once = target();
    merge_patch(&mut once, &Value::Object(patch.clone()));
    let Value::Object(once_map) = &once else {
        panic!("an object patch gave a non-object")
    };
    assert!(once_map.values().all(|v| !v.is_null()), "null at top level");
    assert!(no_null_members(&once), "null member left");
    leaves_present(patch, once_map);
    // Idempotent.
    let mut twice = once.clone();
    merge_patch(&mut twice, &Value::Object(patch.clone()));
    assert_eq!(once, twice, "patching twice differs from once");
    // merge_object agrees with merge_patch.
    let Value::Object(mut m) = target() else {
        unreachable!()
    };
    merge_object(&mut m, patch);
    assert_eq!(Value::Object(m), once);
    // Onto a non-object target it starts from {}.
    let mut from_scalar = json!([1, 2, 3]);
    merge_patch(&mut from_scalar, &Value::Object(patch.clone()));
    assert!(from_scalar.is_object() && no_null_members(&from_scalar));
    // The result serializes and reads back exactly (it is stored as JSON text), floats
    // included: serde_json's `float_roundtrip` feature is on (see fuzz/README.md).
    let text = serde_json::to_string(&once).unwrap();
    let back = serde_json::from_str::<Value>(&text).unwrap();
    assert_eq!(back, once, "{text}");
}

/// What `parse_directives` should say about one header, computed independently.
fn expect(values: &[&[u8]]) -> Result<Option<Map<String, Value>>, &'static str> {
    match values {
        [] => Ok(None),
        [v] => match serde_json::from_slice::<Value>(v) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) => Err("not object"),
            Err(_) => Err("not json"),
        },
        _ => Err("repeated"),
    }
}

fn kind(e: &DirectiveError) -> &'static str {
    match e {
        DirectiveError::Repeated { .. } => "repeated",
        DirectiveError::NotJson { .. } => "not json",
        DirectiveError::NotObject { .. } => "not object",
        DirectiveError::TooLarge { .. } => "too large",
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    if flags & 1 == 1 {
        headers.insert("x-session-destroy", HeaderValue::from_static("1"));
    }
    let mut sets: Vec<&[u8]> = Vec::new();
    let mut updates: Vec<&[u8]> = Vec::new();
    for (i, line) in rest.split(|b| *b == b'\n').enumerate() {
        if i < 2 && line.is_empty() {
            continue;
        }
        let Ok(v) = HeaderValue::from_bytes(line) else {
            continue;
        };
        let is_update = if i < 2 { i == 1 } else { i % 2 == 1 };
        if is_update {
            updates.push(line);
            headers.append("x-session-update", v);
        } else {
            sets.push(line);
            headers.append("x-session-set", v);
        }
    }

    // Parse, and compare with the reference (Set is checked before Update).
    let got = parse_directives(&headers);
    let want = expect(&sets).and_then(|s| expect(&updates).map(|u| (s, u)));
    match (&got, &want) {
        (Ok(d), Ok((s, u))) => {
            assert_eq!(d.destroy, (flags & 1 == 1).then_some(Destroy::Current));
            assert_eq!(&d.set, s);
            assert_eq!(&d.update, u);
        }
        (Err(e), Err(k)) => {
            assert_eq!(kind(e), *k, "{e}");
            // The message names the header and never carries the value.
            let msg = e.to_string();
            assert!(msg.starts_with("X-Session-Set ") || msg.starts_with("X-Session-Update "));
        }
        _ => panic!("parse_directives gave {got:?}, reference {want:?}"),
    }

    if let Ok(d) = got {
        if let Some(set) = &d.set {
            check_object_patch(set);
        }
        if let Some(update) = &d.update {
            check_object_patch(update);
            // The proxy's order: Set replaces the data, then Update patches it.
            let mut data = d.set.clone().unwrap_or_else(|| match target() {
                Value::Object(m) => m,
                _ => unreachable!(),
            });
            merge_object(&mut data, update);
            leaves_present(update, &data);
        }
    }

    // Any JSON value as a patch: a non-object replaces the target.
    for line in sets.iter().chain(&updates) {
        if let Ok(patch) = serde_json::from_slice::<Value>(line) {
            if !patch.is_object() {
                let mut t = target();
                merge_patch(&mut t, &patch);
                assert_eq!(t, patch, "a non-object patch must replace the target");
            }
        }
    }
});
