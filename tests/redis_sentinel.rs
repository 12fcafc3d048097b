//! The proxy on Redis Sentinel (SPEC §15): it asks the Sentinels for the master, follows a
//! failover without a restart, names the master in use in `/readyz`, and never loses a
//! write it acknowledged, even while a client keeps writing through the failover. With
//! `store.local_cache`, two proxies never serve from their caches what the other wrote,
//! before and after a failover, with a tracking connection cut, and with a replica
//! promoted behind the Sentinels' back.
//!
//! Each test starts its own master, replica and three Sentinels (see
//! `support::redis_sentinel`); without the programs on `PATH` the tests print
//! `skipping: ...` and pass, except under `CI=true`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use sessiongate::server::{self, StartError};
use support::cache_proxy::{FLUSHES, HITS, Proxy};
use support::redis_sentinel::SentinelGroup;
use support::redis_server::RedisServer;
use support::*;

/// The store timeout: a write waits up to half of it for a replica, long enough for a
/// loaded test machine, short enough for a write no replica confirms to answer soon.
const TIMEOUT_MS: u64 = 2000;

/// `[store]` for Sentinels at `urls`, after a Sentinel that is down (asked first, skipped).
fn store_toml(urls: &[String], master: &str) -> String {
    let mut all = vec![format!("redis://127.0.0.1:{}", dead_port())];
    all.extend(urls.iter().cloned());
    let quoted: Vec<String> = all.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[store]\nkind = \"redis\"\nsentinel = [{}]\nsentinel_master = \"{master}\"\ntimeout_ms = {TIMEOUT_MS}\n",
        quoted.join(", ")
    )
}

/// A loopback port nobody listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The session data the upstream saw on its last request, if it got a session.
fn seen_data(app: &Upstream) -> Option<serde_json::Value> {
    app.last()
        .header("x-session")
        .map(|t| verify_token(t, UPSTREAM_SECRET)["data"].clone())
}

/// The session behind `cookie`, as the upstream sees it on `GET /me`.
async fn read(gate: &Gate, app: &Upstream, cookie: &str) -> Option<serde_json::Value> {
    let res = gate.get_with("/me", &[("cookie", cookie)]).await;
    assert_eq!(res.status, 200, "reading a session after the failover");
    seen_data(app)
}

/// `/readyz` until its body names `127.0.0.1:port` (deadline 30s).
async fn until_ready_on(gate: &Gate, port: u16) -> String {
    let want = format!("master mymaster at 127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = gate.admin_get("/readyz").await;
        if status == 200 && body.contains(&want) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never named {want}; last: {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One attempt of the writer: a login, then an update that stores `n`.
struct Attempt {
    n: u64,
    login: u16,
    cookie: Option<String>,
    update: Option<u16>,
}

/// Logs in and updates with a fresh `n` until `stop`, recording every answer.
async fn keep_writing(gate: Arc<Gate>, stop: Arc<AtomicBool>) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let login = gate.get("/login").await;
        let mut attempt = Attempt {
            n,
            login: login.status,
            cookie: None,
            update: None,
        };
        if login.status == 200 {
            let cookie = login.session_cookie();
            let update = gate
                .send(
                    Method::POST,
                    "/update",
                    &[("cookie", &cookie)],
                    &format!(r#"{{"w":{n}}}"#),
                )
                .await;
            attempt.update = Some(update.status);
            attempt.cookie = Some(cookie);
        }
        attempts.push(attempt);
    }
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_followed_without_restart_and_loses_no_acknowledged_write() {
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    let group = Arc::new(group);
    let old = group.master_port();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&store_toml(&group.urls(), "mymaster"))
        .run()
        .await;
    let body = until_ready_on(&gate, old).await;
    assert!(body.starts_with("ready\n"), "{body:?}");

    // Sessions written before the failover, on the replica too before it starts.
    let mut before = Vec::new();
    for n in 0..10 {
        let login = gate.get("/login").await;
        assert_eq!(login.status, 200);
        let cookie = login.session_cookie();
        let update = gate
            .send(
                Method::POST,
                "/update",
                &[("cookie", &cookie)],
                &format!(r#"{{"n":{n}}}"#),
            )
            .await;
        assert_eq!(update.status, 200);
        before.push(cookie);
    }
    let waiting = group.clone();
    tokio::task::spawn_blocking(move || waiting.wait_replicated())
        .await
        .unwrap();

    // A client keeps writing through the failover.
    let gate = Arc::new(gate);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(keep_writing(gate.clone(), stop.clone()));

    let failing_over = group.clone();
    let new = tokio::task::spawn_blocking(move || failing_over.failover())
        .await
        .unwrap();
    assert_ne!(new, old);
    until_ready_on(&gate, new).await;
    let switched = tokio::time::Instant::now();

    // Writes work again on the new master (once it has a replica to confirm them: the
    // old master, which Sentinel turns into one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let login = gate.get("/login").await;
        if login.status == 200 {
            break;
        }
        assert_eq!(login.status, 503, "a write during the switch");
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never succeeded on the new master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "writes answered 503 for {:?} after /readyz named the new master",
        switched.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let attempts = writer.await.unwrap();
    let gate = Arc::into_inner(gate).expect("the writer has finished");

    // Nothing acknowledged before the failover was lost.
    for (n, cookie) in before.iter().enumerate() {
        let data = read(&gate, &app, cookie).await;
        assert_eq!(
            data,
            Some(serde_json::json!({"userId":1,"name":"alice","n":n})),
            "session {n} written before the failover"
        );
    }
    // Every write during the failover answered 200 or 503; nothing answered 200 is lost.
    let mut acknowledged = 0;
    let mut refused = 0;
    let mut lost = Vec::new();
    for a in &attempts {
        assert!(
            a.login == 200 || a.login == 503,
            "login {} answered {}",
            a.n,
            a.login
        );
        let (Some(cookie), Some(update)) = (&a.cookie, a.update) else {
            refused += 1;
            continue;
        };
        assert!(
            update == 200 || update == 503,
            "update {} answered {update}",
            a.n
        );
        acknowledged += 1;
        let data = read(&gate, &app, cookie).await;
        let kept = match (&data, update) {
            (Some(d), 200) => d["w"] == a.n && d["userId"] == 1,
            (Some(d), _) => d["userId"] == 1,
            (None, _) => false,
        };
        if kept {
            if update != 200 {
                refused += 1;
            }
        } else {
            lost.push((a.n, update, data));
        }
    }
    println!(
        "during the failover: {} attempts, {acknowledged} logins acknowledged, {refused} writes refused with 503",
        attempts.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, the first: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        acknowledged > 0,
        "no write was acknowledged during the test"
    );
    gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_unready_and_fails_start_when_required() {
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&store_toml(&group.urls(), "nosuchmaster"))
        .run()
        .await;
    assert_eq!(
        gate.admin_get("/readyz").await,
        (503, "store unavailable\n".to_owned())
    );
    assert_eq!(gate.get("/login").await.status, 503);
    gate.join().await;

    let mut config = support::gate(app.addr)
        .toml(&store_toml(&group.urls(), "nosuchmaster"))
        .config();
    config.store.require_on_start = true;
    let err = server::build_store(&config).await.unwrap_err();
    assert!(matches!(err, StartError::StoreUnreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("store.sentinel = [redis://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("master nosuchmaster is unreachable"),
        "{text}"
    );
    // What each Sentinel answered: the one that is down, and those that know no such
    // master.
    assert!(text.contains("no sentinel led to a master"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(
        text.contains(&format!(
            "{url}: monitors no master of that name - MasterNameNotFoundBySentinel: \"nosuchmaster\"",
            url = group.urls()[0]
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_writes_resume_once_a_replica_confirms_them() {
    trace_init();
    let Some(mut group) = SentinelGroup::start() else {
        return;
    };
    let old = group.master_port();
    let app = app().await;
    let gate = gate(app.addr)
        .server("admin_listen = \"127.0.0.1:0\"")
        .toml(&store_toml(&group.urls(), "mymaster"))
        .run()
        .await;
    until_ready_on(&gate, old).await;
    let mut before = Vec::new();
    for _ in 0..5 {
        let login = gate.get("/login").await;
        assert_eq!(login.status, 200);
        before.push(login.session_cookie());
    }
    group.wait_replicated();

    // The master dies; the Sentinels promote the replica, and the proxy follows.
    group.nodes[0].kill();
    let new = group.wait_master_other_than(old);
    until_ready_on(&gate, new).await;
    for cookie in &before {
        assert_eq!(
            read(&gate, &app, cookie).await,
            Some(serde_json::json!({"userId":1,"name":"alice"}))
        );
    }
    // The new master has no replica: no write can be confirmed, none is acknowledged.
    assert_eq!(gate.get("/login").await.status, 503);

    // The old master comes back (empty); the Sentinels make it the new master's replica,
    // and writes are confirmed again.
    group.nodes[0].restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cookie = loop {
        let login = gate.get("/login").await;
        if login.status == 200 {
            break login.session_cookie();
        }
        assert_eq!(login.status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never resumed once the old master was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        group.master_port(),
        new,
        "the master stays the promoted one"
    );
    for cookie in before.iter().chain([&cookie]) {
        assert_eq!(
            read(&gate, &app, cookie).await,
            Some(serde_json::json!({"userId":1,"name":"alice"}))
        );
    }
    gate.join().await;
}

// The local cache on Sentinel (SPEC §15): every proxy tracks the master and its replicas,
// follows a failover, and never serves a session another proxy wrote.

/// How long a condition may take (a failover, then the old master's resync, come first in
/// some tests).
const WAIT: Duration = Duration::from_secs(60);

/// A proxy with `local_cache` on the group's Sentinels.
async fn cache_proxy(group: &SentinelGroup) -> Proxy {
    Proxy::start(&format!(
        "{}local_cache = 100\n",
        store_toml(&group.urls(), "mymaster")
    ))
    .await
}

/// `CLIENT LIST` of the group's server on `port`: the ids of the tracking connections.
fn tracking_ids(group: &SentinelGroup, port: u16) -> Vec<String> {
    tracking_ids_on(group.node(port))
}

fn tracking_ids_on(node: &RedisServer) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut node.connection())
        .unwrap();
    list.lines()
        .filter(|l| l.contains(" name=sessiongate-tracking "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// The ports of the master the Sentinels name and of its replica.
fn master_and_replica(group: &SentinelGroup) -> (u16, u16) {
    let master = group.master_port();
    let replica = group.nodes.iter().find(|n| n.port != master).unwrap().port;
    (master, replica)
}

/// The one session key on the server on `port`.
fn session_key(group: &SentinelGroup, port: u16) -> String {
    let node = group.node(port);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut node.connection())
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reports_the_writes_it_replicates_to_its_tracking_clients() {
    // What tracking the replicas rests on, checked on the real server rather than assumed.
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    let (master, replica) = master_and_replica(&group);
    let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{replica}/?protocol=resp3")).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg(&["TRACKING", "ON", "BCAST", "PREFIX", "t:"])
        .exec_async(&mut conn)
        .await
        .unwrap();
    let mut on_master = group.node(master).connection();
    let _: () = redis::cmd("SET")
        .arg("t:k")
        .arg("v")
        .query(&mut on_master)
        .unwrap();
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .expect("the replica sent an invalidation within 10 s")
        .unwrap();
    assert_eq!(push.kind, redis::PushKind::Invalidate);
    assert_eq!(
        push.data,
        vec![redis::Value::Array(vec![redis::Value::BulkString(
            b"t:k".to_vec()
        )])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_sentinel_never_serve_what_the_other_wrote() {
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    group.wait_replica_listed();
    let (master, replica) = master_and_replica(&group);
    let a = cache_proxy(&group).await;
    let b = cache_proxy(&group).await;
    let cookie = a.login().await;
    a.until_cached(&cookie, WAIT).await;
    b.until_cached(&cookie, WAIT).await;
    // Each proxy tracks the master and the replica.
    assert_eq!(tracking_ids(&group, master).len(), 2);
    assert_eq!(tracking_ids(&group, replica).len(), 2);

    // An update through A: B's next request, started after A's answer, sees it.
    assert_eq!(
        a.send("/update", &cookie, r#"{"cart":[1]}"#).await.status,
        200
    );
    assert_eq!(
        b.data(&cookie).await.map(|d| d["cart"].clone()),
        Some(serde_json::json!([1]))
    );
    b.until_cached(&cookie, WAIT).await;

    // A destroys it: B does not serve it again, from its first request on.
    assert_eq!(a.send("/logout", &cookie, "").await.status, 200);
    for _ in 0..20 {
        assert!(!b.served(&cookie).await, "B served a destroyed session");
    }
    assert_eq!(
        b.counter(FLUSHES).await,
        0,
        "tracking dropped during the test"
    );

    // A replica added later is tracked too, once the Sentinels list it: B starts
    // tracking afresh.
    let added = RedisServer::start_replica_of(master).unwrap();
    until(WAIT, "both proxies to track the added replica", || async {
        tracking_ids_on(&added).len() == 2
    })
    .await;
    assert!(b.counter(FLUSHES).await >= 1);
    a.gate.join().await;
    b.gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_follows_a_failover() {
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    group.wait_replica_listed();
    let group = Arc::new(group);
    let old = group.master_port();
    let a = cache_proxy(&group).await;
    let b = cache_proxy(&group).await;
    let destroyed = a.login().await;
    let updated = a.login().await;
    a.until_cached(&updated, WAIT).await;
    b.until_cached(&destroyed, WAIT).await;
    b.until_cached(&updated, WAIT).await;
    let waiting = group.clone();
    tokio::task::spawn_blocking(move || waiting.wait_replicated())
        .await
        .unwrap();
    // A client of the replica, to see what the promotion does to its clients.
    let (_, replica) = master_and_replica(&group);
    let mut probe = group.node(replica).connection();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "probe"])
        .query(&mut probe)
        .unwrap();

    let failing_over = group.clone();
    let new = tokio::task::spawn_blocking(move || failing_over.failover())
        .await
        .unwrap();
    assert_eq!(new, replica);
    until_ready_on(&a.gate, new).await;
    until_ready_on(&b.gate, new).await;
    // Sentinel cut the promoted replica's clients (the README says so): the probe,
    // still open on this side, is gone.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut group.node(new).connection())
        .unwrap();
    assert!(!list.contains(" name=probe "), "{list}");
    // B emptied its cache: its tracking connections were cut, or it saw the new master.
    until(WAIT, "B to empty its cache over the failover", || async {
        b.counter(FLUSHES).await >= 1
    })
    .await;
    // Writes work once the old master has come back as the new one's replica.
    until(
        WAIT,
        "a write to be confirmed on the new master",
        || async { a.gate.get("/login").await.status == 200 },
    )
    .await;
    // Both proxies track the new master and its replica, the old master.
    until(
        WAIT,
        "both proxies to track the new master and its replica",
        || async { tracking_ids(&group, new).len() == 2 && tracking_ids(&group, old).len() == 2 },
    )
    .await;
    b.until_cached(&destroyed, WAIT).await;
    b.until_cached(&updated, WAIT).await;

    // A destroys one session and updates the other on the new master: B's next
    // requests see both.
    assert_eq!(a.send("/logout", &destroyed, "").await.status, 200);
    assert!(!b.served(&destroyed).await, "B served a destroyed session");
    assert_eq!(
        a.send("/update", &updated, r#"{"after":true}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        b.data(&updated).await.map(|d| d["after"].clone()),
        Some(serde_json::json!(true))
    );
    a.gate.join().await;
    b.gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_empties_the_cache_and_reads_stay_exact() {
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    group.wait_replica_listed();
    let (master, replica) = master_and_replica(&group);
    let b = cache_proxy(&group).await;
    let cookie = b.login().await;
    b.until_cached(&cookie, WAIT).await;

    // The replica's tracking connection is cut: the cache is emptied, reads still serve
    // the session, from Redis until tracking is back.
    for id in tracking_ids(&group, replica) {
        let _: () = redis::cmd("CLIENT")
            .arg(&["KILL", "ID", id.as_str()])
            .query(&mut group.node(replica).connection())
            .unwrap();
    }
    until(WAIT, "B to empty its cache", || async {
        b.counter(FLUSHES).await >= 1
    })
    .await;
    assert!(b.served(&cookie).await);
    b.until_cached(&cookie, WAIT).await;

    // The master's tracking connection is cut and, in the same breath, the session
    // deleted behind B's back: the deletion's invalidation goes nowhere, yet B's next
    // request does not get the session.
    let key = session_key(&group, master);
    let ids = tracking_ids(&group, master);
    assert_eq!(ids.len(), 1);
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT")
        .arg(&["KILL", "ID", ids[0].as_str()])
        .ignore();
    pipe.cmd("DEL").arg(&key).ignore();
    let mut on_master = group.node(master).connection();
    let _: () = pipe.query(&mut on_master).unwrap();
    assert!(
        !b.served(&cookie).await,
        "B served a session deleted from Redis"
    );
    assert!(b.counter(FLUSHES).await >= 1);

    // Tracking comes back by itself, and the cache serves again.
    let cookie = b.login().await;
    b.until_cached(&cookie, WAIT).await;
    b.gate.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_replica_promoted_behind_the_sentinels_back_reaches_the_cache() {
    // The window tracking the replicas closes: a replica that has just become master
    // takes another proxy's write before this proxy asks the Sentinels again. Here the
    // replica is promoted by hand, which (unlike Sentinel) leaves its clients connected,
    // and the write is made on it directly.
    trace_init();
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    group.wait_replica_listed();
    let (master, replica) = master_and_replica(&group);
    let b = cache_proxy(&group).await;
    let cookie = b.login().await;
    b.until_cached(&cookie, WAIT).await;
    let key = session_key(&group, master);
    group.wait_replicated();

    let mut on_replica = group.node(replica).connection();
    // Not in a transaction: the replica would refuse the write when it is queued.
    let _: () = redis::pipe()
        .cmd("REPLICAOF")
        .arg(&["NO", "ONE"])
        .ignore()
        .cmd("DEL")
        .arg(&key)
        .ignore()
        .query(&mut on_replica)
        .unwrap();
    // The old master still holds the session, and B still reads from it: what matters
    // is that B's next request is not a hit.
    let hits = b.counter(HITS).await;
    assert!(b.served(&cookie).await);
    assert_eq!(
        b.counter(HITS).await,
        hits,
        "B served from its cache a session deleted on the promoted replica"
    );
    b.gate.join().await;
}
