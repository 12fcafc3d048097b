//! Prometheus metrics (SPEC §9), kept in a `prometheus-client` registry and rendered as
//! text by the admin listener. Names are constants matching the SPEC; labels never carry
//! a session ID, cookie, path or anything else a client chooses.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::telemetry::Outcome;

mod labels;
mod redis_reads;
// Threads and runtimes: connections accepted per runtime.
mod runtimes;

pub use self::redis_reads::{
    CacheResult, LOCAL_CACHE_FLUSHES, LOCAL_CACHE_INVALIDATIONS, LOCAL_CACHE_LOOKUPS,
    RedisReadMetrics, SESSION_TOUCHES,
};
pub use self::runtimes::RUNTIME_ACCEPTED;

use self::labels::{
    ByLookup, ByOp, KindLabel, LookupLabel, OpLabel, ReasonLabel, StatusLabel, UpstreamLabel,
};
pub use self::labels::{DestroyReason, LookupResult, StoreOp, UpstreamFailure};

/// `sessiongate_requests_total{status}`.
pub const REQUESTS: &str = "sessiongate_requests";
/// `sessiongate_session_lookups_total{result}`.
pub const SESSION_LOOKUPS: &str = "sessiongate_session_lookups";
/// `sessiongate_sessions_created_total`.
pub const SESSIONS_CREATED: &str = "sessiongate_sessions_created";
/// `sessiongate_sessions_destroyed_total`.
pub const SESSIONS_DESTROYED: &str = "sessiongate_sessions_destroyed";
/// `sessiongate_store_seconds{op}` (histogram).
pub const STORE_SECONDS: &str = "sessiongate_store_seconds";
/// `sessiongate_upstream_errors_total{kind,upstream}`.
pub const UPSTREAM_ERRORS: &str = "sessiongate_upstream_errors";
/// `sessiongate_upstream_seconds{upstream}` (histogram): time to the upstream's response
/// headers.
pub const UPSTREAM_SECONDS: &str = "sessiongate_upstream_seconds";
/// `sessiongate_in_flight_requests` (gauge).
pub const IN_FLIGHT: &str = "sessiongate_in_flight_requests";
/// `sessiongate_csrf_refused_total`: requests refused as cross-origin (SPEC §12).
pub const CSRF_REFUSED: &str = "sessiongate_csrf_refused";
/// `sessiongate_csrf_reported_total`: requests `csrf.report_only` let through that would
/// have been refused.
pub const CSRF_REPORTED: &str = "sessiongate_csrf_reported";
// --- Scale and limits ---
/// Gauge: open client connections (`server.max_connections` is their ceiling).
pub const CLIENT_CONNECTIONS: &str = "sessiongate_client_connections";

/// The metrics of one upstream, looked up once when the proxy is built.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    label: String,
    seconds: Histogram,
}

/// Every metric the proxy keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    created: Counter,
    destroyed: Family<ReasonLabel, Counter>,
    /// The fixed-label series, looked up once: `lookups` by result, `store_seconds` by op.
    lookup_counters: ByLookup<Counter>,
    store_histograms: ByOp<Histogram>,
    upstream_errors: Family<KindLabel, Counter>,
    upstream_seconds: Family<UpstreamLabel, Histogram>,
    in_flight: Gauge,
    csrf_refused: Counter,
    csrf_reported: Counter,
    /// Scale and limits: open client connections.
    client_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabel, Counter>::default();
        let lookups = Family::<LookupLabel, Counter>::default();
        let created = Counter::default();
        let destroyed = Family::<ReasonLabel, Counter>::default();
        let store_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let upstream_errors = Family::<KindLabel, Counter>::default();
        let upstream_seconds = Family::<UpstreamLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        let in_flight = Gauge::default();
        registry.register(REQUESTS, "Requests answered, by status", requests.clone());
        registry.register(
            SESSION_LOOKUPS,
            "Session cookie lookups, by result",
            lookups.clone(),
        );
        registry.register(SESSIONS_CREATED, "Sessions created", created.clone());
        registry.register(
            SESSIONS_DESTROYED,
            "Sessions ended, by reason",
            destroyed.clone(),
        );
        registry.register(
            STORE_SECONDS,
            "Session store operation latency in seconds",
            store_seconds.clone(),
        );
        registry.register(
            UPSTREAM_ERRORS,
            "Upstream failures, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            UPSTREAM_SECONDS,
            "Time to the upstream's response headers in seconds",
            upstream_seconds.clone(),
        );
        registry.register(IN_FLIGHT, "Requests being served", in_flight.clone());
        let csrf_refused = Counter::default();
        let csrf_reported = Counter::default();
        registry.register(
            CSRF_REFUSED,
            "Requests refused as cross-origin",
            csrf_refused.clone(),
        );
        registry.register(
            CSRF_REPORTED,
            "Cross-origin requests forwarded because csrf.report_only is set",
            csrf_reported.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            CLIENT_CONNECTIONS,
            "Open client connections",
            client_connections.clone(),
        );
        // Every label value exists from the start, so dashboards and rate() see zeros
        // rather than absent series.
        for reason in DestroyReason::ALL {
            let _ = destroyed.get_or_create(&ReasonLabel { reason });
        }
        let lookup_counters =
            ByLookup::new(|result| lookups.get_or_create(&LookupLabel { result }).clone());
        let store_histograms = ByOp::new(|op| store_seconds.get_or_create(&OpLabel { op }).clone());
        Self {
            registry,
            requests,
            created,
            destroyed,
            lookup_counters,
            store_histograms,
            upstream_errors,
            upstream_seconds,
            in_flight,
            csrf_refused,
            csrf_reported,
            client_connections,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A request finished with `status` and session `outcome`.
    pub fn request(&self, status: u16, outcome: Outcome) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
        match outcome {
            Outcome::Created => {
                self.created.inc();
            }
            Outcome::Destroyed => {
                self.destroyed(DestroyReason::logout, 1);
            }
            Outcome::None
            | Outcome::Hit
            | Outcome::Miss
            | Outcome::Invalid
            | Outcome::Error
            | Outcome::Revoked
            | Outcome::Csrf
            | Outcome::Unbound => {}
        }
    }

    /// A cookie was looked up.
    pub fn lookup(&self, result: LookupResult) {
        self.lookup_counters.get(result).inc();
    }

    /// `n` sessions ended for `reason`.
    pub fn destroyed(&self, reason: DestroyReason, n: u64) {
        self.destroyed
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// The counter of sessions ended for `reason`, for a store that sees them end itself
    /// (the memory store's expiry and eviction).
    pub fn destroyed_counter(&self, reason: DestroyReason) -> Counter {
        self.destroyed
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    /// A store operation took `elapsed`.
    pub fn store(&self, op: StoreOp, elapsed: Duration) {
        self.store_histograms.get(op).observe(elapsed.as_secs_f64());
    }

    /// The series of the upstream `label` (its `scheme://host:port`), every error kind at
    /// zero, so that dashboards and rate() see zeros rather than absent series.
    pub fn for_upstream(&self, label: &str) -> UpstreamMetrics {
        for kind in [
            UpstreamFailure::unreachable,
            UpstreamFailure::timeout,
            UpstreamFailure::bad_directive,
        ] {
            let _ = self.upstream_errors.get_or_create(&KindLabel {
                kind,
                upstream: label.to_owned(),
            });
        }
        let seconds = self
            .upstream_seconds
            .get_or_create(&UpstreamLabel {
                upstream: label.to_owned(),
            })
            .clone();
        UpstreamMetrics {
            label: label.to_owned(),
            seconds,
        }
    }

    /// `upstream` failed.
    pub fn upstream_error(&self, upstream: &UpstreamMetrics, kind: UpstreamFailure) {
        self.upstream_errors
            .get_or_create(&KindLabel {
                kind,
                upstream: upstream.label.clone(),
            })
            .inc();
    }

    /// A request was refused as cross-origin (`reported`: forwarded under
    /// `csrf.report_only` instead).
    pub fn csrf(&self, reported: bool) {
        if reported {
            self.csrf_reported.inc();
        } else {
            self.csrf_refused.inc();
        }
    }

    /// The in-flight gauge; increment on entry and decrement on exit.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The open client connections gauge (a connection's slot keeps it up to date).
    pub fn client_connections(&self) -> &Gauge {
        &self.client_connections
    }
}

impl UpstreamMetrics {
    /// The upstream answered with headers after `elapsed`.
    pub fn answered(&self, elapsed: Duration) {
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_spec_names() {
        let m = Metrics::new();
        m.request(200, Outcome::Created);
        m.lookup(LookupResult::hit);
        m.store(StoreOp::load, Duration::from_micros(20));
        let up = m.for_upstream("http://127.0.0.1:3000");
        m.upstream_error(&up, UpstreamFailure::timeout);
        up.answered(Duration::from_millis(2));
        let text = m.render();
        for needle in [
            "sessiongate_requests_total{status=\"200\"} 1",
            "sessiongate_session_lookups_total{result=\"hit\"} 1",
            "sessiongate_session_lookups_total{result=\"invalid\"} 0",
            "sessiongate_sessions_created_total 1",
            "sessiongate_sessions_destroyed_total{reason=\"logout\"} 0",
            "sessiongate_sessions_destroyed_total{reason=\"evicted\"} 0",
            "sessiongate_store_seconds_count{op=\"load\"} 1",
            "sessiongate_upstream_errors_total{kind=\"timeout\",upstream=\"http://127.0.0.1:3000\"} 1",
            "sessiongate_upstream_errors_total{kind=\"unreachable\",upstream=\"http://127.0.0.1:3000\"} 0",
            "sessiongate_upstream_seconds_count{upstream=\"http://127.0.0.1:3000\"} 1",
            "sessiongate_in_flight_requests 0",
            "sessiongate_csrf_refused_total 0",
            "sessiongate_csrf_reported_total 0",
            "# TYPE sessiongate_upstream_seconds histogram",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
