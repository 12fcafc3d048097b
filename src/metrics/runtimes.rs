//! Connections accepted by each runtime's listener (README, Threads and runtimes): with
//! `server.runtime = "per-core"` the kernel spreads new connections over the runtimes'
//! listeners, and this shows how evenly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Metrics;

/// `sessiongate_runtime_accepted_connections_total{runtime="0"}`.
pub const RUNTIME_ACCEPTED: &str = "sessiongate_runtime_accepted_connections";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabel {
    runtime: u32,
}

impl Metrics {
    /// Exposes one counter of accepted connections per listener, `runtime` = 0 to
    /// `runtimes - 1`, and returns them in that order (at zero, so every series shows).
    pub fn register_runtimes(&mut self, runtimes: usize) -> Vec<Counter> {
        let family = Family::<RuntimeLabel, Counter>::default();
        let counters = (0..runtimes)
            .map(|i| {
                let runtime = u32::try_from(i).unwrap_or(u32::MAX);
                family.get_or_create(&RuntimeLabel { runtime }).clone()
            })
            .collect();
        self.registry.register(
            RUNTIME_ACCEPTED,
            "Client connections accepted, by the runtime whose listener accepted them",
            family,
        );
        counters
    }
}
