//! Unit tests of the redis module.
use super::*;
use crate::config::{OnError, StoreKind};

fn settings(url: &str, cluster: &[&str]) -> StoreSettings {
    StoreSettings {
        kind: StoreKind::Redis,
        max_sessions: 1,
        url: url.into(),
        cluster: cluster.iter().map(|s| (*s).to_owned()).collect(),
        timeout: Duration::from_millis(300),
        on_error: OnError::Fail,
        require_on_start: false,
        sentinel: Vec::new(),
        sentinel_master: "mymaster".into(),
        touch_interval: Duration::from_secs(1),
        local_cache: 0,
    }
}

#[test]
fn ttl_is_whole_seconds_rounded_up_and_at_least_one() {
    assert_eq!(ttl_secs(Duration::ZERO), 1);
    assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
    assert_eq!(ttl_secs(Duration::from_secs(1)), 1);
    assert_eq!(ttl_secs(Duration::from_millis(1001)), 2);
    assert_eq!(ttl_secs(Duration::from_secs(86400)), 86400);
}

#[test]
fn key_is_namespace_then_key_hash() {
    let store = RedisStore::open(&settings("redis://127.0.0.1:1", &[]), "sess:").unwrap();
    let id = SessionId::random();
    let key = store.key(&id);
    assert_eq!(key, format!("sess:{}", KeyHash::of(&id)));
    assert_eq!(key.len(), 5 + KEY_HASH_TEXT_LEN);
    assert!(!key.contains(id.encode().as_str()));
}

#[test]
fn debug_and_target_never_show_the_password() {
    let single =
        RedisStore::open(&settings("redis://user:hunter2@127.0.0.1:1/3", &[]), "s:").unwrap();
    let cluster = RedisStore::open(
        &settings(
            "redis://127.0.0.1:6379",
            &[
                "redis://:hunter2@127.0.0.1:1",
                "redis://:hunter2@127.0.0.1:2",
            ],
        ),
        "s:",
    )
    .unwrap();
    for store in [&single, &cluster] {
        let shown = format!("{store:?} {}", store.target());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
    assert!(cluster.is_cluster() && !single.is_cluster());
    assert_eq!(
        cluster.target(),
        "[redis://:***@127.0.0.1:1, redis://:***@127.0.0.1:2]"
    );
}

#[test]
fn a_value_that_does_not_open_is_corrupt_and_named_by_its_key_hash() {
    let keys = SessionKeys::derive(&SessionId::random());
    let rec = Record::new(r#"{"a":"é"}"#.into(), 5);
    assert_eq!(open(&keys, keys.seal_touched(&rec, 7)).unwrap(), (rec, 7));
    let err = open(&keys, b"not a record".to_vec()).unwrap_err();
    let StoreError::Corrupt { key_hash, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(**key_hash, *keys.key_hash());
    let shown = err.to_string();
    assert!(shown.contains(keys.key_hash().as_str()), "{shown}");
}

#[tokio::test]
async fn unreachable_server_fails_within_the_timeout() {
    // Port 1 on loopback refuses connections: the error is Unavailable or Timeout,
    // never a hang, and a later call tries again.
    let store = RedisStore::open(&settings("redis://127.0.0.1:1", &[]), "s:").unwrap();
    for _ in 0..2 {
        let err = store.ping().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout(_)),
            "{err:?}"
        );
    }
}

#[test]
fn passwords_are_masked() {
    assert_eq!(mask_password("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
    assert_eq!(mask_password("rediss://:p@h"), "rediss://:***@h");
    assert_eq!(mask_password("redis://p@h"), "redis://***@h");
    assert_eq!(mask_password("redis://h:6379"), "redis://h:6379");
}
