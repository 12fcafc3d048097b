//! Listeners and lifecycle: bind (with `SO_REUSEPORT`, so a new process can take over the
//! address while the old one drains), serve connections with hyper's auto builder
//! (HTTP/1.1 with upgrades, and h2c), and shut down gracefully within a bounded grace.
//!
//! [`start`] binds before it returns, so callers (and tests) know the address at once and
//! never wait for the server to come up.
//!
//! With `server.runtime = "work-stealing"` the accept loop runs on the caller's runtime;
//! with `"per-core"`, `server.threads` current-thread runtimes each run their own on a
//! thread of their own (`server/cores.rs`), and the admin listener stays on the caller's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{self, Admin};
use crate::config::{Config, ConnSettings, Runtime};
use crate::conn::{Ceiling, KeepAlive};
use crate::fdlimit;
use crate::metrics::{DestroyReason, Metrics};
use crate::proxy::{Gate, Upgrades};
use crate::secrets::Secrets;
use crate::store::Store;
use crate::tls::Reloadable;

mod accept;
mod cores;
mod setup;

pub use self::accept::serve;
pub use self::setup::{StartError, bind, build_store};

/// How long busy keep-alive connections get to finish with `Connection: close` before
/// idle ones are closed, at shutdown.
pub const LAME_DUCK: Duration = Duration::from_secs(1);
/// Connection limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// The largest request head accepted, in bytes; larger ones get 431.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Connections, keep-alive and HTTP/2 limits; `max_connections = 0` is resolved by
    /// [`start_on`] from the descriptor limit.
    pub conn: ConnSettings,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_read_timeout: config.server.header_read_timeout,
            max_header_bytes: config.server.max_header_bytes,
            shutdown_grace: config.server.shutdown_grace,
            conn: config.server.conn,
        }
    }

    /// The client connection ceiling: `server.max_connections`, or when it is 0 the one
    /// the descriptor limit allows ([`fdlimit::ceiling`]).
    pub fn max_connections(&self) -> usize {
        match self.conn.max_connections {
            0 => fdlimit::current()
                .map_or(fdlimit::ceiling(1024), |(soft, _)| fdlimit::ceiling(soft)),
            n => n,
        }
    }

    fn keep_alive(&self) -> KeepAlive {
        KeepAlive {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.conn.keepalive_timeout,
            max_requests: self.conn.keepalive_requests,
        }
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// The address the proxy serves.
    pub addr: SocketAddr,
    /// The admin listener's address, when one is configured.
    pub admin_addr: Option<SocketAddr>,
    gate: Arc<Gate>,
    store: Store,
    tls: Option<Arc<Reloadable>>,
    shutdown: watch::Sender<bool>,
    workers: Workers,
}

/// What serves the listener(s): a task on the caller's runtime, or the per-core threads.
#[derive(Debug)]
enum Workers {
    Task(JoinHandle<()>),
    Threads(Vec<std::thread::JoinHandle<()>>),
}

impl Running {
    /// The gate (with `server.runtime = "per-core"`, the first runtime's; every runtime
    /// has its own, sharing the metrics).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The store the proxy was started with, which the admin listener uses. With
    /// `server.runtime = "per-core"` and `store.url` or `store.cluster`, each runtime has
    /// its own connection to the same Redis; any other store is this one, shared by every
    /// runtime.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The serving certificate when serving HTTPS, to reload it (SIGHUP).
    pub fn tls(&self) -> Option<&Arc<Reloadable>> {
        self.tls.as_ref()
    }

    /// Stops accepting, lets in-flight requests finish (within the grace), and waits.
    ///
    /// # Panics
    /// Re-raises a panic from the server task (or a runtime's thread), so tests see it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.workers {
            Workers::Task(task) => {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            Workers::Threads(threads) => {
                for thread in threads {
                    match tokio::task::spawn_blocking(move || thread.join()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(panic)) => std::panic::resume_unwind(panic),
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// Binds `server.listen` (and `server.admin_listen`) and serves in background tasks.
///
/// # Errors
/// When binding fails or the store cannot be built.
pub async fn start(config: &Config, secrets: &Secrets) -> Result<Running, StartError> {
    let store = build_store(config).await?;
    let listener = bind(config.server.listen, "server.listen")?;
    let admin = config
        .server
        .admin_listen
        .map(|addr| bind(addr, "server.admin_listen"))
        .transpose()?;
    start_on(listener, admin, config, secrets, store)
}

/// Completes when [`Running::shutdown`] is called or the [`Running`] is dropped.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves on already bound listeners with `store`, in background tasks. With
/// `server.runtime = "per-core"`, `listener` is the first runtime's and the others bind its
/// address too (`SO_REUSEPORT`), so it must have been bound by [`bind`].
///
/// # Errors
/// When a TLS file named in the config cannot be loaded, or with `"per-core"` when a
/// runtime, its listener or its Redis store cannot be set up.
pub fn start_on(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: &Config,
    secrets: &Secrets,
    store: Store,
) -> Result<Running, StartError> {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut metrics = Metrics::new();
    if let Store::Redis(redis) = &store {
        metrics.register_redis_reads(redis.read_metrics(), redis.has_local_cache());
    }
    let store = match store {
        Store::Memory(memory) => Store::Memory(memory.counting(
            metrics.destroyed_counter(DestroyReason::expired),
            metrics.destroyed_counter(DestroyReason::evicted),
        )),
        redis => redis,
    };
    let runtimes = match config.server.runtime {
        Runtime::PerCore => config.server.threads.max(1),
        Runtime::WorkStealing => 1,
    };
    let accepted = metrics.register_runtimes(runtimes);
    let metrics = Arc::new(metrics);
    let tls = match &config.server.tls {
        Some(files) => Some(Arc::new(Reloadable::new(files.clone())?)),
        None => None,
    };
    let (tx, rx) = watch::channel(false);
    // One registry of upgraded connections for every runtime's gate and the admin API.
    let upgrades = Upgrades::new();
    let admin_addr = admin.map(|listener| {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let admin = Admin {
            metrics: metrics.clone(),
            store: store.clone(),
            store_timeout: config.store.timeout,
            token: secrets.admin_token.as_ref().map(admin::AdminToken::new),
            upgrades: upgrades.clone(),
        };
        tokio::spawn(admin::serve(listener, admin, stopped(rx.clone())));
        info!(%addr, "admin listening");
        addr
    });
    let limits = Limits::from_config(config);
    // One ceiling for the process, however many listeners take from it.
    let ceiling = Ceiling::new(limits.max_connections());
    info!(max_connections = ceiling.max(), "client connection ceiling");
    let (gate, workers) = match config.server.runtime {
        Runtime::WorkStealing => {
            let gate = Arc::new(
                Gate::new(config, secrets, store.clone(), metrics)?.sharing_upgrades(upgrades),
            );
            let accepted = accepted.into_iter().next().unwrap_or_default();
            let task = tokio::spawn(serve(
                listener,
                gate.clone(),
                tls.clone(),
                limits,
                ceiling,
                accepted,
                stopped(rx),
            ));
            (gate, Workers::Task(task))
        }
        Runtime::PerCore => {
            let cores = cores::Cores {
                config,
                secrets,
                store: &store,
                metrics: &metrics,
                tls: &tls,
                limits,
                ceiling,
                upgrades: &upgrades,
            };
            let (gate, threads) = cores.spawn(listener, accepted, &rx)?;
            (gate, Workers::Threads(threads))
        }
    };
    info!(
        %addr,
        https = tls.is_some(),
        upstream = %config.server.upstream.authority,
        runtime = config.server.runtime.as_str(),
        threads = config.server.threads,
        "sessiongate listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        gate,
        store,
        tls,
        shutdown: tx,
        workers,
    })
}
