//! Invalidation tracking for the local cache (SPEC §15): one background task per store
//! keeps a RESP3 connection to every Redis node with
//! `CLIENT TRACKING ON BCAST PREFIX <namespace>` and applies the `invalidate` pushes those
//! connections receive to the [`LocalCache`].
//!
//! # Why broadcast mode on connections of their own
//!
//! In broadcast mode Redis reports every write to a key under the prefix, whoever made it
//! and whoever read it, so the store's reads stay on its ordinary connection (the
//! `ConnectionManager`, or the cluster connection with its redirects) and need no tracking
//! state there; the tracking connections only receive. The price is that each proxy hears
//! of every session write (creates, updates, touches), not only of the sessions it holds:
//! a few dozen bytes per write, and writes are what touch throttling makes rare. Redis keeps
//! no per-key table for broadcast clients either.
//!
//! With a Redis Cluster, there is one tracking connection per node (primaries and
//! replicas, from `CLUSTER SLOTS`), since each node reports only its own keys; a replica
//! reports the writes it replicates, so a failover to it loses nothing. The node set is
//! checked every second, and a change (a node added, removed or moved) starts a new
//! tracking session.
//!
//! # With Sentinel
//!
//! With `store.sentinel` the nodes are the master the Sentinels name and every replica
//! the same Sentinel lists for it (`SENTINEL replicas`), each with a tracking connection
//! of its own, reached with the user, password, TLS and database of that Sentinel's URL,
//! as the store reaches the master (the store's own [`Sentinel`] is asked, in the same
//! order). Every second the Sentinels are asked again; another master, a replica added or
//! removed, or no Sentinel answering, starts a new tracking session (the cache is emptied
//! and serves again only once every node is tracked).
//!
//! Why the replicas: a failover makes a replica the master, and the proxies do not all
//! move to it at the same moment. A proxy that still tracks the old set already holds a
//! connection to the new master, which reports the writes of proxies that moved first
//! (a replica also reports the writes it replicates, so a write to the old master that a
//! replica confirmed reaches this proxy through that replica too). Sentinel itself cuts
//! every client of the replica it promotes, tracking connections included, in the same
//! transaction as the promotion, so in practice the cache is emptied before the new
//! master takes its first write; tracking the replicas does not rely on that.
//!
//! Why `SENTINEL replicas` rather than the master's `ROLE`: it is the set Sentinel
//! promotes from, and right after a failover it already lists the old master (as the new
//! master's replica) while that may still take writes from proxies that have not moved.
//! A replica listed but down is tracked too: the session cannot start, so the cache stays
//! off (every read goes to Redis) until it answers again or the Sentinels forget it
//! (`SENTINEL RESET`). Skipping it would trust one Sentinel's view: "down" is each
//! Sentinel's own judgement, and another one may promote that replica.
//!
//! # When the cache may serve
//!
//! A session is *live* once every connection has tracking on. The pushes are applied by the
//! connection's reader itself (a push sender closure, no channel or task hop), in order with
//! everything else that connection reads. That reader is a task of its own, which may not
//! have run yet when a request is served: the sockets are therefore made by
//! [`wire`](super::wire), and the cache serves a hit only while no connection holds a byte
//! that is not applied yet (see there). When a connection reports that it closed, the
//! same closure empties the cache before anything is served from it again. Every second
//! each connection is also sent a `PING` (bounded by `store.timeout_ms`): a connection that
//! went silent without closing (a host gone, a partition) is then noticed within about one
//! second plus the timeout, and the cache emptied. Then the task connects again, with a
//! growing pause between failed attempts; meanwhile every read goes to Redis.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::cache::LocalCache;
use super::sentinel::{Members, Sentinel};
use super::wire::{self, Wire};

/// How often each tracking connection is pinged, and a cluster's nodes (or the
/// Sentinels' master and replicas) listed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest and largest pause between attempts to start tracking.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The name the tracking connections carry in `CLIENT LIST`.
pub(super) const CLIENT_NAME: &str = "sessiongate-tracking";

/// Where the nodes are.
#[derive(Clone)]
pub(super) enum Nodes {
    /// One server.
    Single(Box<ConnectionInfo>),
    /// A cluster, found through these seeds.
    Cluster(Vec<ConnectionInfo>),
    /// The master the store's Sentinels name, and its replicas.
    Sentinel(Arc<Sentinel>),
}

/// The nodes a tracking session started with; another answer ends it.
#[derive(PartialEq, Eq)]
enum Topology {
    Single,
    /// Every node of the cluster.
    Cluster(BTreeSet<(String, u16)>),
    /// The master and the replicas the Sentinels list for it.
    Sentinel(Members),
}

/// What the task needs; built when the store opens, run on first use.
pub(super) struct Tracker {
    pub(super) nodes: Nodes,
    pub(super) prefix: Box<str>,
    pub(super) timeout: Duration,
}

/// One tracking connection: its handle, the task that reads it (ended when this is
/// dropped) and its wire.
struct Tracked {
    conn: MultiplexedConnection,
    driver: JoinHandle<()>,
    wire: Arc<Wire>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One set of tracking connections, alive until one of them drops.
struct Session {
    conns: Vec<Tracked>,
    /// The nodes when it started.
    topology: Topology,
    /// Signalled by a connection that closed.
    dropped: Arc<Notify>,
}

impl Tracker {
    /// Runs until the cache is dropped (its store is gone).
    pub(super) async fn run(self, cache: Weak<LocalCache>) {
        let mut number = 0u64;
        let mut pause = RETRY_MIN;
        loop {
            number += 1;
            {
                let Some(cache) = cache.upgrade() else { return };
                cache.begin(number);
            }
            match self.start(&cache, number).await {
                Ok(session) => {
                    let wires = session.conns.iter().map(|t| t.wire.clone()).collect();
                    let Some(live) = cache.upgrade().map(|c| c.go_live(number, wires)) else {
                        return;
                    };
                    if live {
                        info!(
                            nodes = session.conns.len(),
                            "local cache: invalidation tracking on; serving from the cache"
                        );
                        pause = RETRY_MIN;
                        let why = self.watch(&cache, &session).await;
                        warn!(
                            reason = why,
                            "local cache: invalidation tracking lost; cache emptied, reading from Redis until it is back"
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "local cache: could not start invalidation tracking; reading from Redis");
                }
            }
            match cache.upgrade() {
                Some(c) => c.drop_session(number),
                None => return,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Connects to every node and turns tracking on.
    async fn start(&self, cache: &Weak<LocalCache>, number: u64) -> Result<Session, RedisError> {
        let dropped = Arc::new(Notify::new());
        let (infos, topology) = match &self.nodes {
            Nodes::Single(info) => (vec![(**info).clone()], Topology::Single),
            Nodes::Cluster(seeds) => {
                let nodes = self.cluster_nodes(seeds).await?;
                let seed = &seeds[0];
                let infos = nodes
                    .iter()
                    .map(|(host, port)| at(seed, host.clone(), *port))
                    .collect();
                (infos, Topology::Cluster(nodes))
            }
            Nodes::Sentinel(sentinel) => {
                let (members, master) = sentinel.members().await?;
                let infos = std::iter::once(master.clone())
                    .chain(
                        members
                            .replicas
                            .iter()
                            .filter(|r| **r != members.master)
                            .map(|(host, port)| at(&master, host.clone(), *port)),
                    )
                    .collect();
                (infos, Topology::Sentinel(members))
            }
        };
        let mut conns = Vec::with_capacity(infos.len());
        for info in infos {
            conns.push(self.connect(info, cache, number, &dropped).await?);
        }
        Ok(Session {
            conns,
            topology,
            dropped,
        })
    }

    /// A RESP3 connection whose pushes go to the cache, with tracking on, on a socket of
    /// our own (see [`wire`](super::wire)); its reader runs as a task of this runtime.
    async fn connect(
        &self,
        info: ConnectionInfo,
        cache: &Weak<LocalCache>,
        number: u64,
        dropped: &Arc<Notify>,
    ) -> Result<Tracked, RedisError> {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let (cache, dropped) = (cache.clone(), dropped.clone());
        let sender = move |push: PushInfo| -> Result<(), ()> {
            let Some(cache) = cache.upgrade() else {
                return Err(());
            };
            apply(&cache, number, &dropped, push);
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(sender);
        let opened = tokio::time::timeout(self.timeout, async {
            let (stream, wire) = wire::connect(info.addr()).await?;
            let (conn, driver) =
                MultiplexedConnection::new_with_config(&settings, stream, config).await?;
            Ok::<_, RedisError>(Tracked {
                conn,
                driver: tokio::spawn(driver),
                wire,
            })
        })
        .await;
        let tracked = opened.map_err(|_| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out connecting a tracking connection",
            ))
        })??;
        let mut conn = tracked.conn.clone();
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .exec_async(&mut conn)
            .await?;
        let mut on = redis::cmd("CLIENT");
        on.arg("TRACKING").arg("ON").arg("BCAST");
        if !self.prefix.is_empty() {
            on.arg("PREFIX").arg(&*self.prefix);
        }
        on.exec_async(&mut conn).await?;
        Ok(tracked)
    }

    /// Every node of the cluster (primaries and replicas), from the first seed that answers.
    async fn cluster_nodes(
        &self,
        seeds: &[ConnectionInfo],
    ) -> Result<BTreeSet<(String, u16)>, RedisError> {
        let mut last = None;
        for seed in seeds {
            let attempt = async {
                let client = redis::Client::open(seed.clone())?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                slots_nodes(&mut conn, seed).await
            };
            match attempt.await {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((redis::ErrorKind::Client, "no cluster seed configured"))
        }))
    }

    /// Waits until a connection drops, fails a health check, or (cluster, Sentinel) the
    /// node set changes; returns why.
    async fn watch(&self, cache: &Weak<LocalCache>, session: &Session) -> &'static str {
        loop {
            tokio::select! {
                () = session.dropped.notified() => return "a tracking connection closed",
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
            if cache.strong_count() == 0 {
                return "the store was dropped";
            }
            for tracked in &session.conns {
                let mut conn = tracked.conn.clone();
                let ping = redis::cmd("PING");
                let answer =
                    tokio::time::timeout(self.timeout, ping.query_async::<Value>(&mut conn));
                if !matches!(answer.await, Ok(Ok(_))) {
                    return "a tracking connection did not answer PING";
                }
            }
            match (&self.nodes, session.conns.first()) {
                (Nodes::Cluster(seeds), Some(first)) => {
                    let mut conn = first.conn.clone();
                    let listed = slots_nodes(&mut conn, &seeds[0]);
                    match tokio::time::timeout(self.timeout, listed).await {
                        Ok(Ok(nodes)) => {
                            if session.topology != Topology::Cluster(nodes) {
                                return "the cluster's nodes changed";
                            }
                        }
                        _ => return "CLUSTER SLOTS failed",
                    }
                }
                // Each question to a Sentinel is bounded by the timeout already.
                (Nodes::Sentinel(sentinel), _) => match sentinel.members().await {
                    Ok((members, _)) => {
                        if session.topology != Topology::Sentinel(members) {
                            return "the master or its replicas changed";
                        }
                    }
                    Err(_) => return "no sentinel listed the master and its replicas",
                },
                _ => {}
            }
        }
    }
}

/// Applies one push from a connection of tracking session `number`.
fn apply(cache: &LocalCache, number: u64, dropped: &Notify, push: PushInfo) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(key) = key
                        && let Ok(key) = std::str::from_utf8(key)
                    {
                        cache.invalidate(key);
                    }
                }
            }
            // FLUSHALL / FLUSHDB: a null instead of the keys.
            _ => cache.invalidate_all(),
        },
        PushKind::Disconnection => {
            cache.drop_session(number);
            dropped.notify_one();
        }
        _ => {}
    }
}

/// The nodes `CLUSTER SLOTS` lists (primaries and replicas); an empty host means the node
/// that answered.
async fn slots_nodes(
    conn: &mut MultiplexedConnection,
    asked: &ConnectionInfo,
) -> Result<BTreeSet<(String, u16)>, RedisError> {
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let asked_host = match asked.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => String::new(),
    };
    let mut nodes = BTreeSet::new();
    let Value::Array(ranges) = slots else {
        return Err(RedisError::from((
            redis::ErrorKind::Parse,
            "CLUSTER SLOTS did not answer an array",
        )));
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        for node in parts.into_iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let host = match fields.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = fields.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.clone()
            } else {
                host
            };
            nodes.insert((host, port));
        }
    }
    if nodes.is_empty() {
        return Err(RedisError::from((
            redis::ErrorKind::Parse,
            "CLUSTER SLOTS listed no node",
        )));
    }
    Ok(nodes)
}

/// `seed`'s settings (credentials, TLS) for the node at `host:port`.
fn at(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    seed.clone().set_addr(addr)
}

/// Starts `tracker` for `cache` on the current runtime.
pub(super) fn spawn(tracker: Tracker, cache: &Arc<LocalCache>) {
    tokio::spawn(tracker.run(Arc::downgrade(cache)));
}
