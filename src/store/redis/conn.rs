//! The connection a [`RedisStore`](super::RedisStore) shares: what it connects to
//! ([`Target`], from the settings), one server's `ConnectionManager`, a cluster's
//! connection or the master named by Sentinels behind one type, the slot that holds it
//! with its generation, how every operation is bounded by `store.timeout_ms`, and how its
//! URLs are shown (passwords masked).
//!
//! # Connections and failures
//!
//! No connection is made until the first operation, so the proxy starts while Redis is
//! down (unless `store.require_on_start`, which pings first). A failed connection attempt
//! is simply made again by a later operation. Once connected, a single server is served by
//! redis' `ConnectionManager`, which reconnects by itself after Redis restarts; a cluster
//! by `cluster_async::ClusterConnection`, which follows `MOVED`/`ASK` redirects and
//! always sends to primaries (reads from replicas stay off).
//!
//! Every operation, connecting included, is bounded by `store.timeout_ms`
//! ([`StoreError::Timeout`]); Redis errors are [`StoreError::Unavailable`] with the
//! redis error as the source; a value that does not open is [`StoreError::Corrupt`], named
//! by its key hash.
//! After a timeout the connection is dropped and the next operation connects afresh:
//! a server that vanished without closing the connection (host down, network partition,
//! failover to another address) would otherwise keep timing out until TCP gives up.
//! An operation that timed out may still be applied by Redis later (it was sent); the
//! caller treats it as failed, so nothing it acknowledged is lost.
//!
//! Passwords in the URLs never appear in `Debug` output or errors: the store only keeps
//! a masked copy of its URLs for display.

use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Value};

use super::sentinel::{Sentinel, SentinelConn};
use super::{RedisStore, StoreError, unavailable};
use crate::config::StoreSettings;

/// Reconnection attempts per reconnect (after the first), for a single server.
const RECONNECT_RETRIES: usize = 2;
/// Smallest pause between reconnection attempts.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// Largest pause between reconnection attempts (also capped by `store.timeout_ms`).
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Retries of one cluster request (redirects, a node being reconnected).
const CLUSTER_RETRIES: u32 = 3;
/// Smallest pause between cluster retries, in milliseconds.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;

/// What the store connects to.
pub(super) enum Target {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(Arc<Sentinel>),
}

impl Target {
    /// The target `settings` name: `store.sentinel`, else `store.cluster`, else
    /// `store.url`. Checks the URLs; contacts nothing.
    pub(super) fn for_settings(settings: &StoreSettings) -> Result<Self, StoreError> {
        let timeout = settings.timeout;
        let urls: Vec<&str> = if !settings.sentinel.is_empty() {
            settings.sentinel.iter().map(String::as_str).collect()
        } else if settings.cluster.is_empty() {
            vec![settings.url.as_str()]
        } else {
            settings.cluster.iter().map(String::as_str).collect()
        };
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            // redis' rustls needs a process-wide crypto provider; use ring (no C toolchain
            // beyond cc, no cmake). Err means one is installed already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Ok(if !settings.sentinel.is_empty() {
            let sentinel = Sentinel::new(&settings.sentinel, &settings.sentinel_master, timeout)
                .map_err(unavailable)?;
            Target::Sentinel(Arc::new(sentinel))
        } else if settings.cluster.is_empty() {
            let client = redis::Client::open(settings.url.as_str()).map_err(unavailable)?;
            // No response timeout of redis' own: `run` bounds every operation (connecting
            // included) with `timeout` and drops a connection that timed out, so a second
            // timer per command would only cost.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(None)
                .set_number_of_retries(RECONNECT_RETRIES)
                .set_min_delay(RECONNECT_MIN_DELAY)
                .set_max_delay(RECONNECT_MAX_DELAY.min(timeout).max(RECONNECT_MIN_DELAY));
            Target::Single(client, config)
        } else {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            // Reads from replicas stay off (the default), so every command goes to the
            // primary that owns the slot.
            let client = ClusterClientBuilder::new(settings.cluster.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                .max_retry_wait(timeout_ms.max(CLUSTER_MIN_RETRY_WAIT_MS + 1))
                .build()
                .map_err(unavailable)?;
            Target::Cluster(client)
        })
    }
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) conn: Option<(u64, Conn)>,
    pub(super) made: u64,
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// `redis://user:secret@host` -> `redis://user:***@host`.
pub(super) fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

impl RedisStore {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Nothing panics while holding the lock; a poisoned slot is still consistent.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn cached(&self) -> Option<(u64, Conn)> {
        self.lock().conn.clone()
    }

    /// The connection and its generation, made on first use; a failed attempt is made
    /// again by the next call.
    pub(super) async fn conn(&self) -> Result<(u64, Conn), RedisError> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let conn = match &self.inner.target {
            Target::Single(client, config) => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::Single)?
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster)?,
            Target::Sentinel(sentinel) => sentinel.connect().await.map(Conn::Sentinel)?,
        };
        let mut slot = self.lock();
        slot.made += 1;
        let made = (slot.made, conn);
        slot.conn = Some(made.clone());
        Ok(made)
    }

    /// Drops connection `generation` (if still current) so that the next call connects
    /// afresh. Called after a timeout: a connection whose peer vanished without closing
    /// it (host down, network partition) would otherwise time out until TCP gives up.
    pub(super) fn forget(&self, generation: u64) {
        let mut slot = self.lock();
        if slot.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.conn = None;
        }
    }

    /// Runs `op` on the connection within `store.timeout_ms`.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let timeout = self.inner.timeout;
        let mut generation = None;
        let result = tokio::time::timeout(timeout, async {
            let (made, conn) = self.conn().await.map_err(unavailable)?;
            generation = Some(made);
            op(conn).await
        })
        .await;
        let timed_out = match &result {
            Err(_) => true,
            Ok(Err(StoreError::Unavailable(e))) => e
                .downcast_ref::<RedisError>()
                .is_some_and(RedisError::is_timeout),
            Ok(_) => false,
        };
        if timed_out {
            if let Some(made) = generation {
                self.forget(made);
            }
            return Err(StoreError::Timeout(timeout));
        }
        match result {
            Ok(done) => done,
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }
}
