//! A store under test, for the suites that run one contract on every store
//! (`tests/store_conformance.rs`, `tests/user_index.rs`): memory, or Redis on real processes
//! (one server, a Cluster, or a master behind Sentinels), with the servers kept so that a
//! case can look at what the store wrote. Each constructor answers `None` (the case is
//! skipped, with the reason printed) when the servers it needs are not installed.

use std::time::Duration;

use sessiongate::config::{OnError, StoreKind, StoreSettings};
use sessiongate::store::{MemoryStore, Store};

use super::redis_sentinel::SentinelGroup;
use super::redis_server::{RedisCluster, RedisServer};

/// A store and, for Redis, the servers behind it.
pub struct Fixture {
    pub store: Store,
    pub redis: Redis,
}

/// The servers behind a Redis store.
pub enum Redis {
    None,
    Server(RedisServer),
    Cluster(RedisCluster),
    /// The store writes to `nodes[0]`, the master (no failover in these suites).
    Sentinel(SentinelGroup),
}

/// `[store] kind = "redis"` at `url`, or a cluster of `cluster`, with a 2 s timeout, errors
/// failing the request, and touches at most once a second.
pub fn redis_settings(url: String, cluster: Vec<String>) -> StoreSettings {
    StoreSettings {
        kind: StoreKind::Redis,
        max_sessions: 1,
        url,
        cluster,
        timeout: Duration::from_secs(2),
        on_error: OnError::Fail,
        require_on_start: false,
        sentinel: Vec::new(),
        sentinel_master: "mymaster".into(),
        touch_interval: Duration::from_secs(1),
        local_cache: 0,
    }
}

impl Fixture {
    pub fn memory(store: MemoryStore) -> Option<Self> {
        Some(Self {
            store: Store::Memory(store),
            redis: Redis::None,
        })
    }

    /// A store `open` makes for one `redis-server`.
    pub fn redis(open: impl FnOnce(&StoreSettings) -> Store) -> Option<Self> {
        let server = RedisServer::start()?;
        Some(Self {
            store: open(&redis_settings(server.url(), Vec::new())),
            redis: Redis::Server(server),
        })
    }

    /// A store `open` makes for a Redis Cluster.
    pub fn cluster(open: impl FnOnce(&StoreSettings) -> Store) -> Option<Self> {
        let cluster = RedisCluster::start()?;
        Some(Self {
            store: open(&redis_settings(
                "redis://127.0.0.1:1".into(),
                cluster.urls(),
            )),
            redis: Redis::Cluster(cluster),
        })
    }

    /// A store `open` makes for the master Sentinels name (one replica).
    pub fn sentinel(open: impl FnOnce(&StoreSettings) -> Store) -> Option<Self> {
        let group = SentinelGroup::start_with(1)?;
        let mut settings = redis_settings("redis://127.0.0.1:1".into(), Vec::new());
        settings.sentinel = group.urls();
        Some(Self {
            store: open(&settings),
            redis: Redis::Sentinel(group),
        })
    }

    pub fn is_redis(&self) -> bool {
        !matches!(self.redis, Redis::None)
    }

    /// Every server that holds the store's data (for Sentinel, the master); none for memory.
    pub fn servers(&self) -> Vec<&RedisServer> {
        match &self.redis {
            Redis::None => Vec::new(),
            Redis::Server(s) => vec![s],
            Redis::Cluster(c) => c.nodes.iter().collect(),
            Redis::Sentinel(g) => vec![&g.nodes[0]],
        }
    }

    /// Runs `cmd` on the Redis behind the store, following a cluster's slots (`None` for
    /// memory).
    pub fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Option<T> {
        match &self.redis {
            Redis::None => None,
            Redis::Server(s) => Some(cmd.query(&mut s.connection()).unwrap()),
            Redis::Cluster(c) => Some(cmd.query(&mut c.connection()).unwrap()),
            Redis::Sentinel(g) => Some(cmd.query(&mut g.nodes[0].connection()).unwrap()),
        }
    }
}
