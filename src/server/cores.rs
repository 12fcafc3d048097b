//! `server.runtime = "per-core"`: `server.threads` current-thread runtimes, each on a thread
//! of its own with its own listener on the shared address (`SO_REUSEPORT`: the kernel
//! spreads new connections over them), its own [`Gate`] (so its own upstream connection
//! pools) and, with Redis, its own connection to it. What they share: the metrics, the
//! TLS certificate (one [`Reloadable`], so a SIGHUP reload reaches every runtime), the
//! connection ceiling, the shutdown signal and a memory store.
//!
//! Everything that can fail is done before the first thread starts, on the caller's
//! thread: binding, building each runtime and registering its listener with it, opening
//! the stores, so [`start_on`](super::start_on) returns the error.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Limits, StartError, bind, serve, stopped};
use crate::config::{Config, StoreKind};
use crate::conn::Ceiling;
use crate::metrics::Metrics;
use crate::proxy::{Gate, Upgrades};
use crate::secrets::Secrets;
use crate::store::{RedisStore, Store};
use crate::tls::Reloadable;

/// What every runtime is built from.
pub(super) struct Cores<'a> {
    pub(super) config: &'a Config,
    pub(super) secrets: &'a Secrets,
    /// The store the proxy was started with.
    pub(super) store: &'a Store,
    pub(super) metrics: &'a Arc<Metrics>,
    pub(super) tls: &'a Option<Arc<Reloadable>>,
    pub(super) limits: Limits,
    pub(super) ceiling: Ceiling,
    /// The process's one registry of upgraded connections.
    pub(super) upgrades: &'a Upgrades,
}

impl Cores<'_> {
    /// Starts one runtime per counter in `accepted` (its listener's), the first on
    /// `listener`, the others on listeners bound to its address. Returns the first
    /// runtime's gate and the threads, which end once `shutdown` says stop (or its sender
    /// is dropped) and their connections are drained.
    pub(super) fn spawn(
        self,
        listener: TcpListener,
        accepted: Vec<Counter>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(Arc<Gate>, Vec<std::thread::JoinHandle<()>>), StartError> {
        let count = accepted.len();
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let bind_err = |cause| StartError::Bind {
            key: "server.listen",
            addr,
            cause,
        };
        let runtime_err = |index, cause| StartError::Runtime {
            index,
            count,
            cause,
        };
        // The listeners leave the caller's runtime: each is registered with its own below.
        let mut listeners = vec![listener.into_std().map_err(bind_err)?];
        for _ in 1..count {
            listeners.push(bind(addr, "server.listen")?.into_std().map_err(bind_err)?);
        }
        let mut ready = Vec::with_capacity(count);
        for (index, (listener, accepted)) in listeners.into_iter().zip(accepted).enumerate() {
            let gate = Arc::new(
                Gate::new(
                    self.config,
                    self.secrets,
                    self.store_for_runtime()?,
                    self.metrics.clone(),
                )?
                .sharing_upgrades(self.upgrades.clone()),
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| Unstarted(Some(rt)))
                .map_err(|cause| runtime_err(index, cause))?;
            let listener = runtime.register(listener).map_err(bind_err)?;
            ready.push((runtime, listener, gate, accepted));
        }
        let first = ready[0].2.clone();
        let mut threads = Vec::with_capacity(count);
        for (index, (runtime, listener, gate, accepted)) in ready.into_iter().enumerate() {
            let serving = serve(
                listener,
                gate,
                self.tls.clone(),
                self.limits,
                self.ceiling.clone(),
                accepted,
                stopped(shutdown.clone()),
            );
            let thread = std::thread::Builder::new()
                .name(format!("sessiongate-rt{index}"))
                .spawn(move || runtime.run(serving))
                .map_err(|cause| runtime_err(index, cause))?;
            threads.push(thread);
        }
        Ok((first, threads))
    }

    /// A runtime's store: a memory store is shared (a session created through one runtime
    /// is seen by every other); the Redis store of the config (`store.url` or
    /// `store.cluster`) gets a connection per runtime, counted in the same read metrics.
    /// With `store.sentinel` the store is shared too: which master is in use is one state
    /// for the process, followed once and named by `/readyz`.
    fn store_for_runtime(&self) -> Result<Store, StartError> {
        let st = &self.config.store;
        match self.store {
            Store::Redis(redis) if st.kind == StoreKind::Redis && st.sentinel.is_empty() => redis
                .open_like(st)
                .map(Store::Redis)
                .map_err(|cause| StartError::StoreInvalid {
                    key: if st.cluster.is_empty() {
                        "store.url"
                    } else {
                        "store.cluster"
                    },
                    target: RedisStore::describe(st),
                    cause,
                }),
            other => Ok(other.clone()),
        }
    }
}

/// A runtime not yet running on its thread. Dropping a runtime waits for its tasks, which
/// may not happen in the async context [`start_on`](super::start_on) is called from: when
/// start-up fails before its thread runs it, it is shut down in the background instead.
struct Unstarted(Option<tokio::runtime::Runtime>);

impl Unstarted {
    /// `listener`, registered with this runtime.
    fn register(&self, listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
        let _entered = self.0.as_ref().map(tokio::runtime::Runtime::enter);
        TcpListener::from_std(listener)
    }

    /// Runs `serving` to its end on the current thread, then drops the runtime there.
    fn run(mut self, serving: impl Future<Output = ()>) {
        if let Some(runtime) = self.0.take() {
            runtime.block_on(serving);
        }
    }
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
