//! The Redis store's read-path counters (SPEC §15): touches and the local cache. The store
//! owns them (it exists before the registry); [`Metrics::register_redis_reads`] exposes them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Metrics;

/// `sessiongate_session_touches_total`: expiry extensions sent by reads (Redis store).
pub const SESSION_TOUCHES: &str = "sessiongate_session_touches";
/// `sessiongate_local_cache_lookups_total{result="hit|miss"}`.
pub const LOCAL_CACHE_LOOKUPS: &str = "sessiongate_local_cache_lookups";
/// `sessiongate_local_cache_invalidations_total`: cached sessions dropped because Redis
/// reported a write (by any proxy) or this proxy wrote them.
pub const LOCAL_CACHE_INVALIDATIONS: &str = "sessiongate_local_cache_invalidations";
/// `sessiongate_local_cache_flushes_total`: times the whole cache was emptied because an
/// invalidation connection dropped or failed its health check.
pub const LOCAL_CACHE_FLUSHES: &str = "sessiongate_local_cache_flushes";

/// A local cache lookup's result.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    /// Served from this proxy's memory.
    hit,
    /// Read from Redis.
    miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    result: CacheResult,
}

/// The counters the Redis store keeps about its read path. The store owns them (it exists
/// before the registry); [`Metrics::register_redis_reads`] exposes them.
#[derive(Clone, Debug)]
pub struct RedisReadMetrics {
    /// Reads that extended the expiry.
    pub touches: Counter,
    /// Local cache hits.
    pub cache_hits: Counter,
    /// Local cache misses (with the cache on).
    pub cache_misses: Counter,
    /// Cached sessions dropped by an invalidation.
    pub invalidations: Counter,
    /// Whole-cache flushes.
    pub flushes: Counter,
    lookups: Family<CacheLabel, Counter>,
}

impl Default for RedisReadMetrics {
    fn default() -> Self {
        let lookups = Family::<CacheLabel, Counter>::default();
        let counter = |result| lookups.get_or_create(&CacheLabel { result }).clone();
        Self {
            touches: Counter::default(),
            cache_hits: counter(CacheResult::hit),
            cache_misses: counter(CacheResult::miss),
            invalidations: Counter::default(),
            flushes: Counter::default(),
            lookups,
        }
    }
}

impl Metrics {
    /// Exposes the Redis store's read-path counters: touches always, the local cache's
    /// when `local_cache` is on.
    pub fn register_redis_reads(&mut self, m: &RedisReadMetrics, local_cache: bool) {
        let r = &mut self.registry;
        r.register(
            SESSION_TOUCHES,
            "Session expiry extensions sent by reads (at most one per touch_interval_sec)",
            m.touches.clone(),
        );
        if local_cache {
            r.register(
                LOCAL_CACHE_LOOKUPS,
                "Local session cache lookups, by result",
                m.lookups.clone(),
            );
            r.register(
                LOCAL_CACHE_INVALIDATIONS,
                "Cached sessions dropped because they were written",
                m.invalidations.clone(),
            );
            r.register(
                LOCAL_CACHE_FLUSHES,
                "Local cache emptied because an invalidation connection dropped",
                m.flushes.clone(),
            );
        }
    }
}
