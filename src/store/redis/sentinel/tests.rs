//! Unit tests of the Sentinel connection: how URLs turn into Sentinels and the master,
//! which commands wait for a replica, and which answers mean the master moved.

use std::time::Duration;

use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind, Value};

use super::ask::replica_addrs;
use super::conn::{confirmed, moved, waited};
use super::{Sentinel, describe, master_info};

#[test]
fn described_with_passwords_masked_and_the_master_name() {
    let urls = [
        "redis://app:secret@10.0.0.1:26379".to_owned(),
        "rediss://10.0.0.2:26379".to_owned(),
    ];
    assert_eq!(
        describe(&urls, "sessions"),
        "[redis://app:***@10.0.0.1:26379, rediss://10.0.0.2:26379] master sessions"
    );
}

#[test]
fn the_master_gets_the_database_and_sentinels_get_none() {
    let urls = ["redis://:pw@127.0.0.1:26379/3".to_owned()];
    let s = Sentinel::new(&urls, "mymaster", Duration::from_millis(400)).unwrap();
    assert_eq!(s.db, 3);
    assert_eq!(s.nodes[0].info.redis_settings().db(), 0);
    assert_eq!(s.nodes[0].info.redis_settings().password(), Some("pw"));
    assert_eq!(s.wait_ms, 200);
    assert!(s.in_use().is_none());
    assert!(Sentinel::new(&[], "mymaster", Duration::from_secs(1)).is_err());
}

#[test]
fn the_master_is_reached_like_the_sentinel_that_named_it() {
    let tls = "rediss://app:pw@sentinel.internal:26379/#insecure"
        .into_connection_info()
        .unwrap();
    let info = master_info(&tls, "10.0.0.9", 6380, 2);
    assert!(matches!(
        info.addr(),
        ConnectionAddr::TcpTls { host, port: 6380, insecure: true, .. } if host == "10.0.0.9"
    ));
    assert_eq!(info.redis_settings().username(), Some("app"));
    assert_eq!(info.redis_settings().password(), Some("pw"));
    assert_eq!(info.redis_settings().db(), 2);
    let plain = "redis://127.0.0.1:26379".into_connection_info().unwrap();
    let info = master_info(&plain, "127.0.0.1", 6379, 0);
    assert!(matches!(info.addr(), ConnectionAddr::Tcp(h, 6379) if h == "127.0.0.1"));
    assert_eq!(info.redis_settings().password(), None);
}

#[test]
fn writes_wait_for_a_replica_and_reads_do_not() {
    for write in ["SET", "DEL", "EVALSHA", "eval", "UNLINK", "HSET"] {
        assert!(waited(&redis::cmd(write)), "{write}");
    }
    for read in ["GET", "getex", "EXPIRE", "PING", "ROLE", "WAIT"] {
        assert!(!waited(&redis::cmd(read)), "{read}");
    }
}

#[test]
fn a_write_is_confirmed_only_by_enough_replicas() {
    assert!(confirmed(Value::Int(1), 250).is_ok());
    assert!(confirmed(Value::Int(2), 250).is_ok());
    let err = confirmed(Value::Int(0), 250).unwrap_err();
    assert!(
        moved(&err),
        "a missing replica makes the master be asked again"
    );
    assert!(err.to_string().contains("WAIT 1 250 answered 0"), "{err}");
    assert!(confirmed(Value::Nil, 250).is_err());
}

#[test]
fn readonly_and_masterdown_mean_the_master_moved() {
    let readonly: RedisError = (ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY").into();
    assert!(moved(&readonly));
    let masterdown: RedisError =
        (ErrorKind::Server(ServerErrorKind::MasterDown), "MASTERDOWN").into();
    assert!(moved(&masterdown));
    let wrongtype: RedisError = (ErrorKind::Server(ServerErrorKind::ResponseError), "ERR").into();
    assert!(!moved(&wrongtype));
}

#[test]
fn replicas_are_read_from_either_protocol_and_a_strange_answer_is_an_error() {
    let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let flat = |ip: &str, port: &str, flags: &str| {
        Value::Array(
            ["name", "x", "ip", ip, "port", port, "flags", flags]
                .into_iter()
                .map(text)
                .collect(),
        )
    };
    let resp2 = Value::Array(vec![
        flat("10.0.0.2", "6379", "slave"),
        flat("10.0.0.3", "6380", "s_down,slave,disconnected"),
    ]);
    let found = replica_addrs(&resp2).unwrap();
    let want = [("10.0.0.2".to_owned(), 6379), ("10.0.0.3".to_owned(), 6380)];
    assert_eq!(found, want.into_iter().collect());
    let resp3 = Value::Array(vec![Value::Map(vec![
        (text("ip"), text("10.0.0.4")),
        (text("port"), text("7000")),
    ])]);
    assert_eq!(
        replica_addrs(&resp3).unwrap(),
        [("10.0.0.4".to_owned(), 7000)].into_iter().collect()
    );
    assert!(replica_addrs(&Value::Array(vec![])).unwrap().is_empty());
    assert!(replica_addrs(&Value::Nil).is_err());
    assert!(replica_addrs(&Value::Array(vec![flat("10.0.0.2", "port", "slave")])).is_err());
    let no_port = Value::Array(vec![Value::Array(vec![text("ip"), text("10.0.0.2")])]);
    assert!(replica_addrs(&no_port).is_err());
}
