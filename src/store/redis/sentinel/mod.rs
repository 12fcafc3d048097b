//! Redis Sentinel (`store.sentinel`, SPEC §15): the master named `store.sentinel_master`
//! is asked of the Sentinels, checked with `ROLE`, and followed through failovers without
//! a restart.
//!
//! # Finding the master
//!
//! The Sentinels are asked in turn (the one that answered last first) for
//! `SENTINEL get-master-addr-by-name`; the proxy connects to the address given and uses it
//! only when its `ROLE` says `master`. The user, password, database and TLS of the
//! Sentinel URL that answered are used for the master too (Sentinels and the master share
//! their ACL user and password).
//!
//! # Following a failover
//!
//! The master is asked of the Sentinels again when the connection to it fails, when it
//! answers `READONLY` or `MASTERDOWN` (it was demoted), when a write was not confirmed
//! by a replica (below), after an operation timed out, and every [`WATCH_INTERVAL`] by a
//! background task, which also switches to a new master the Sentinels announce while the
//! old one still answers. Each change of master is logged once, and `/readyz` names the
//! master in use.
//!
//! # No acknowledged write is lost
//!
//! Sentinel promotes a replica and only later demotes the old master; in between the old
//! master still takes writes that the new one never sees. So a write is acknowledged only
//! once a replica holds it too: every write is sent together with `WAIT 1 <ms>`, and a
//! write no replica confirmed in time is an error (503), never an acknowledgement. With
//! one replica, the replica promoted holds every acknowledged write. With more, Sentinel
//! promotes the one with the most data, but a write confirmed by another one in the moment
//! before Sentinel re-points it can still be lost: `WAIT` narrows asynchronous
//! replication's window without closing it. Reads (`GET`, `GETEX`, the `EXPIRE` of a
//! touch) are not waited for: losing a touch only shortens an expiry. Writes therefore
//! need a replica: while the master has none, they answer 503.
//!
//! # The local cache
//!
//! With `store.local_cache`, the invalidation tracking asks these same Sentinels, in the
//! same order, for the master and the replicas they list for it ([`Sentinel::members`]),
//! and tracks them all; see `tracking.rs`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, Value,
};
use tracing::{debug, info, warn};

use super::conn::mask_password;

mod ask;
mod conn;
#[cfg(test)]
mod tests;

pub(super) use self::ask::Members;
pub(super) use self::conn::SentinelConn;

/// How often the Sentinels are asked whether the master moved.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The Sentinels, the master they name, and the connection to it. Shared by every clone
/// of the store (behind an `Arc`).
pub(super) struct Sentinel {
    nodes: Vec<Node>,
    name: Box<str>,
    /// Bounds each connection attempt and each question to a Sentinel.
    timeout: Duration,
    /// How long a write waits for a replica: half the operation timeout, so that a
    /// missing replica is reported as such before the operation times out.
    wait_ms: u64,
    /// The database of the first URL, which the connection reports.
    db: i64,
    state: Mutex<State>,
    /// Held while finding the master, so that one search runs at a time.
    resolving: tokio::sync::Mutex<()>,
}

/// One Sentinel.
struct Node {
    /// How to reach it (database 0: Sentinels have no databases).
    info: ConnectionInfo,
    /// The database its URL names, for the master.
    db: i64,
    /// Its URL, password masked.
    shown: String,
}

#[derive(Default)]
struct State {
    master: Option<Master>,
    made: u64,
    /// The master last used (`host:port`): logged once per change, shown by `/readyz`.
    in_use: Option<String>,
    /// The Sentinel that answered last, asked first next time, with its connection.
    preferred: usize,
    asked: Option<(usize, MultiplexedConnection)>,
    /// True while the Sentinels do not answer, so that this is logged once.
    unanswered: bool,
    watching: bool,
}

#[derive(Clone)]
struct Master {
    generation: u64,
    addr: String,
    conn: MultiplexedConnection,
}

/// `store.sentinel` and `store.sentinel_master` as messages show them: the URLs with
/// passwords masked, then the master name.
pub(super) fn describe(urls: &[String], name: &str) -> String {
    let nodes: Vec<String> = urls.iter().map(|u| mask_password(u)).collect();
    format!("[{}] master {name}", nodes.join(", "))
}

impl Sentinel {
    /// The Sentinels at `urls` monitoring `name`; contacts nobody yet.
    pub(super) fn new(urls: &[String], name: &str, timeout: Duration) -> Result<Self, RedisError> {
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let info = url.as_str().into_connection_info()?;
            let db = info.redis_settings().db();
            let settings = info.redis_settings().clone().set_db(0);
            nodes.push(Node {
                info: info.set_redis_settings(settings),
                db,
                shown: mask_password(url),
            });
        }
        let Some(db) = nodes.first().map(|n| n.db) else {
            return Err((ErrorKind::EmptySentinelList, "no Sentinel URL").into());
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(Self {
            nodes,
            name: name.into(),
            timeout,
            wait_ms: (timeout_ms / 2).max(1),
            db,
            state: Mutex::default(),
            resolving: tokio::sync::Mutex::new(()),
        })
    }

    /// The master name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The master last used, `host:port`, once one was found.
    pub(super) fn in_use(&self) -> Option<String> {
        self.lock().in_use.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection through which every command reaches the master: asks the Sentinels
    /// afresh (the store calls this first, and again after a timeout) and starts the
    /// background watch once.
    pub(super) async fn connect(self: &Arc<Self>) -> Result<SentinelConn, RedisError> {
        let stale = self.lock().master.as_ref().map(|m| m.generation);
        if let Some(generation) = stale {
            self.forget(generation);
        }
        self.master().await?;
        let start = !std::mem::replace(&mut self.lock().watching, true);
        if start {
            tokio::spawn(watch(Arc::downgrade(self)));
        }
        Ok(SentinelConn(self.clone()))
    }

    /// The master connection, found through the Sentinels when there is none.
    async fn master(&self) -> Result<Master, RedisError> {
        if let Some(m) = self.lock().master.clone() {
            return Ok(m);
        }
        let _resolving = self.resolving.lock().await;
        if let Some(m) = self.lock().master.clone() {
            return Ok(m);
        }
        let (addr, conn) = self.find().await?;
        Ok(self.install(addr, conn))
    }

    /// Makes `conn` to `addr` the master in use; logs a change of address.
    fn install(&self, addr: String, conn: MultiplexedConnection) -> Master {
        let mut state = self.lock();
        state.made += 1;
        let master = Master {
            generation: state.made,
            addr,
            conn,
        };
        state.master = Some(master.clone());
        match state.in_use.replace(master.addr.clone()) {
            None => info!(name = %self.name, master = %master.addr, "redis sentinel: using master"),
            Some(old) if old != master.addr => warn!(
                name = %self.name,
                master = %master.addr,
                previous = %old,
                "redis sentinel: master changed"
            ),
            Some(_) => {}
        }
        master
    }

    /// Drops master connection `generation` (if still in use), so that the next
    /// operation asks the Sentinels again.
    fn forget(&self, generation: u64) {
        let mut state = self.lock();
        if state
            .master
            .as_ref()
            .is_some_and(|m| m.generation == generation)
        {
            state.master = None;
        }
    }

    /// Asks the Sentinels in turn for the master and connects to it; when none leads to a
    /// master, an error naming what each one answered.
    async fn find(&self) -> Result<(String, MultiplexedConnection), RedisError> {
        let first = self.lock().preferred;
        let mut failures = Vec::with_capacity(self.nodes.len());
        for k in 0..self.nodes.len() {
            let i = (first + k) % self.nodes.len();
            let found = match self.ask(i).await {
                Ok((host, port)) => self
                    .open_master(i, &host, port)
                    .await
                    .map(|conn| (format!("{host}:{port}"), conn)),
                Err(e) => Err(e),
            };
            match found {
                Ok(found) => {
                    self.lock().preferred = i;
                    return Ok(found);
                }
                Err(e) => failures.push(format!("{}: {e}", self.nodes[i].shown)),
            }
        }
        Err((
            ErrorKind::Client,
            "no sentinel led to a master",
            failures.join("; "),
        )
            .into())
    }

    /// A connection to `host:port` named by Sentinel `i`, with the user, password, TLS
    /// and database of that Sentinel's URL, once `ROLE` says it is a master.
    async fn open_master(
        &self,
        i: usize,
        host: &str,
        port: u16,
    ) -> Result<MultiplexedConnection, RedisError> {
        let node = &self.nodes[i];
        let info = master_info(&node.info, host, port, node.db);
        let mut conn = self.open(info).await?;
        let role = tokio::time::timeout(self.timeout, redis::cmd("ROLE").query_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))?;
        let role = match &role {
            Value::Array(items) => role_name(items.first()),
            _ => return Err((ErrorKind::UnexpectedReturnType, "unexpected reply to ROLE").into()),
        };
        if role != "master" {
            return Err((
                ErrorKind::Client,
                "the node the sentinel names is not a master",
                format!("{host}:{port} has role {role}"),
            )
                .into());
        }
        Ok(conn)
    }

    async fn open(&self, info: ConnectionInfo) -> Result<MultiplexedConnection, RedisError> {
        // No response timeout of redis' own: the store bounds each operation, and
        // questions to the Sentinels are bounded here.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// One look at the Sentinels: switches to the master they name when it is not the
    /// one in use.
    async fn poll(&self) {
        let first = self.lock().preferred;
        let mut named = None;
        for k in 0..self.nodes.len() {
            let i = (first + k) % self.nodes.len();
            match self.ask(i).await {
                Ok((host, port)) => {
                    self.lock().preferred = i;
                    named = Some(format!("{host}:{port}"));
                    break;
                }
                Err(e) => {
                    debug!(sentinel = %self.nodes[i].shown, error = %e, "redis sentinel: no answer")
                }
            }
        }
        let Some(named) = named else {
            if !std::mem::replace(&mut self.lock().unanswered, true) {
                warn!(name = %self.name, "redis sentinel: no sentinel answers; keeping the master in use");
            }
            return;
        };
        if std::mem::replace(&mut self.lock().unanswered, false) {
            info!(name = %self.name, "redis sentinel: sentinels answer again");
        }
        let current = self
            .lock()
            .master
            .as_ref()
            .map(|m| (m.generation, m.addr.clone()));
        match current {
            Some((generation, addr)) if addr != named => {
                self.forget(generation);
                if let Err(e) = self.master().await {
                    warn!(name = %self.name, error = %e, "redis sentinel: the new master does not answer yet");
                }
            }
            _ => {}
        }
    }
}

/// Asks the Sentinels every [`WATCH_INTERVAL`] while the store exists.
async fn watch(sentinel: std::sync::Weak<Sentinel>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(sentinel) = sentinel.upgrade() else {
            return;
        };
        sentinel.poll().await;
    }
}

/// How to reach the master at `host:port` named by the Sentinel reached with `sentinel`:
/// the same TLS, user and password, and database `db`.
fn master_info(sentinel: &ConnectionInfo, host: &str, port: u16, db: i64) -> ConnectionInfo {
    let addr = match sentinel.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    let settings = sentinel.redis_settings().clone().set_db(db);
    sentinel.clone().set_addr(addr).set_redis_settings(settings)
}

fn timed_out() -> RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

fn role_name(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => "(none)".to_owned(),
    }
}
