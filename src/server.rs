//! Listeners and lifecycle: bind (with `SO_REUSEPORT`, so a new process can take over the
//! address while the old one drains), serve connections with hyper's auto builder
//! (HTTP/1.1 with upgrades, and h2c), and shut down gracefully within a bounded grace.
//!
//! [`start`] binds before it returns, so callers (and tests) know the address at once and
//! never wait for the server to come up.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, header};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::admin::{self, Admin};
use crate::config::{Config, ConnSettings, StoreKind};
use crate::conn::{ConnState, Connections, KeepAlive, TicketBody, Tracked, drive};
use crate::fdlimit;
use crate::metrics::Metrics;
use crate::proxy::{Gate, Peer};
use crate::secrets::Secrets;
use crate::store::{MemoryStore, RedisStore, SessionStore, Store, StoreError};
use crate::tls::{Reloadable, TlsError};

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
    /// [`serve`] from the descriptor limit.
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

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr} ({key}): {cause}; stop the other process or choose another address"
    )]
    Bind {
        /// The setting.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: std::io::Error,
    },
    /// A Redis URL in the config cannot be used.
    #[error("{key} = {target}: {cause}; fix {key} (redis://[user:password@]host[:port][/db])")]
    StoreInvalid {
        /// The setting: `store.url`, `store.cluster` or `store.sentinel`.
        key: &'static str,
        /// Its value, passwords masked.
        target: String,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: StoreError,
    },
    /// A `[server.tls]` or `server.upstream_ca` file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `store.require_on_start = true` and the store did not answer.
    #[error(
        "{key} = {target} is unreachable: {cause}; start Redis or fix {key}, or set store.require_on_start = false to start without it"
    )]
    StoreUnreachable {
        /// The setting: `store.url`, `store.cluster` or `store.sentinel`.
        key: &'static str,
        /// Its value, passwords masked.
        target: String,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: StoreError,
    },
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// The address the proxy serves.
    pub addr: SocketAddr,
    /// The admin listener's address, when one is configured.
    pub admin_addr: Option<SocketAddr>,
    gate: Arc<Gate>,
    tls: Option<Arc<Reloadable>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// The gate, for inspecting its store in tests.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The serving certificate when serving HTTPS, to reload it (SIGHUP).
    pub fn tls(&self) -> Option<&Arc<Reloadable>> {
        self.tls.as_ref()
    }

    /// Stops accepting, lets in-flight requests finish (within the grace), and waits.
    ///
    /// # Panics
    /// Re-raises a panic from the server task, so tests see it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    let err = |cause| StartError::Bind { key, addr, cause };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Builds the store the config asks for. A Redis store connects on first use, so the
/// proxy starts while Redis is down, unless `store.require_on_start` asks to ping it first.
///
/// # Errors
/// When a Redis URL cannot be used, or `store.require_on_start = true` and Redis does not
/// answer within `store.timeout_ms`.
pub async fn build_store(config: &Config) -> Result<Store, StartError> {
    let st = &config.store;
    match st.kind {
        StoreKind::Memory => Ok(Store::Memory(MemoryStore::new(st.max_sessions))),
        StoreKind::Redis => {
            let key = if !st.sentinel.is_empty() {
                "store.sentinel"
            } else if st.cluster.is_empty() {
                "store.url"
            } else {
                "store.cluster"
            };
            let store = RedisStore::open(st, &config.session.namespace).map_err(|cause| {
                StartError::StoreInvalid {
                    key,
                    target: RedisStore::describe(st),
                    cause,
                }
            })?;
            if st.require_on_start {
                store
                    .ping()
                    .await
                    .map_err(|cause| StartError::StoreUnreachable {
                        key,
                        target: store.target().to_owned(),
                        cause,
                    })?;
                info!(store = store.target(), "session store answers");
            }
            Ok(Store::Redis(store))
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

/// Serves on already bound listeners with `store`, in background tasks.
///
/// # Errors
/// When a TLS file named in the config cannot be loaded.
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
    let metrics = Arc::new(metrics);
    let gate = Arc::new(Gate::new(config, secrets, store.clone(), metrics.clone())?);
    let tls = match &config.server.tls {
        Some(files) => Some(Arc::new(Reloadable::new(files.clone())?)),
        None => None,
    };
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_addr = admin.map(|listener| {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let admin = Admin {
            metrics,
            store,
            store_timeout: config.store.timeout,
        };
        tokio::spawn(admin::serve(listener, admin, stopped(rx.clone())));
        info!(%addr, "admin listening");
        addr
    });
    let limits = Limits::from_config(config);
    let task = tokio::spawn(serve(
        listener,
        gate.clone(),
        tls.clone(),
        limits,
        stopped(rx),
    ));
    info!(
        %addr,
        https = tls.is_some(),
        upstream = %config.server.upstream.authority,
        "sessiongate listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        gate,
        tls,
        shutdown: tx,
        task,
    })
}

/// Accepts connections until `shutdown` completes, then drains them within the grace.
///
/// At most [`Limits::max_connections`] are open at once: past it the loop waits for one
/// to close before it accepts again, and the kernel's listen backlog holds new ones.
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<Arc<Reloadable>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    // Shared, so a connection's task holds pointers, not copies.
    let builder = Arc::new(builder(&limits));
    let http1 = Arc::new(http1_builder(&limits));
    let rules = limits.keep_alive();
    let max_connections = limits.max_connections();
    let connections =
        Connections::new(max_connections, gate.metrics().client_connections().clone());
    info!(max_connections, "client connection ceiling");
    let mut backoff = AcceptBackoff::default();
    let mut ceiling_logged: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);

    loop {
        let room = match connections.try_reserve() {
            Some(room) => room,
            None => {
                // Once a minute at most: a saturated proxy reaches it on every accept.
                if ceiling_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    ceiling_logged = Some(tokio::time::Instant::now());
                    warn!(
                        max_connections,
                        "server.max_connections reached: new connections wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    room = connections.reserve() => room,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.reset();
                    pair
                }
                Err(e) => {
                    drop(room);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = backoff.wait(&e) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = ConnState::new(&rules);
        let slot = connections.admit(room);
        let service = {
            let gate = gate.clone();
            let state = state.clone();
            move |tls: bool| {
                let peer = Peer::new(peer, tls);
                let state = state.clone();
                let gate = gate.clone();
                service_fn(move |req: Request<Incoming>| {
                    let http1 = req.version() <= http::Version::HTTP_11;
                    let has_body = !req.body().is_end_stream();
                    let (ticket, last) = state.begin(!http1, has_body);
                    let res = gate.clone().handle(req, peer.clone());
                    let state = state.clone();
                    async move {
                        let mut res = res.await?;
                        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            state.upgraded();
                        }
                        if last && http1 {
                            // server.keepalive_requests: hyper closes after this response.
                            res.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(
                            res.map(|body| TicketBody::new(body, ticket)),
                        )
                    }
                })
            }
        };
        let mut watcher = connections.watcher();
        match &tls {
            None => {
                let stream = Tracked::new(stream, state.clone(), slot, true);
                let builder = builder.clone();
                let http1 = http1.clone();
                tokio::spawn(async move {
                    serve_plain(
                        stream,
                        &builder,
                        &http1,
                        service,
                        &state,
                        rules,
                        &mut watcher,
                    )
                    .await;
                });
            }
            Some(tls) => {
                let stream = Tracked::new(stream, state.clone(), slot, false);
                // The handshake runs in the connection's task, bounded like a header read.
                let acceptor = tls.acceptor();
                let builder = builder.clone();
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return debug!("TLS handshake timed out"),
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service(true))
                        .into_owned();
                    let conn = std::pin::pin!(conn);
                    let close = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
                    if let Err(e) = drive(conn, close, &state, rules, &mut watcher).await {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    info!(
        connections = connections.serving(),
        "shutting down: draining connections"
    );
    // Lame-duck phase: responses now carry `Connection: close`, so busy keep-alive
    // connections end cleanly after their current request. Only then are idle ones closed,
    // which keeps the close-while-the-client-sends race to connections idle all along.
    gate.start_draining();
    let lame_duck_end = tokio::time::Instant::now() + LAME_DUCK;
    while connections.serving() > 0 && tokio::time::Instant::now() < lame_duck_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connections.shutdown();
    tokio::select! {
        () = connections.closed() => info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => warn!("shutdown grace over; closing remaining connections"),
    }
}

/// A plain-text connection: HTTP/1 is served by hyper's HTTP/1 connection, one per burst
/// of requests. When it goes idle at a request boundary it is parked ([`Tracked`]): hyper's
/// connection and its buffers are dropped, the socket waits for its next request here, and
/// a fresh connection serves it. Anything that starts like the HTTP/2 preface goes to the
/// auto builder (h2c), unparked.
async fn serve_plain<F>(
    mut io: Tracked<tokio::net::TcpStream>,
    builder: &auto::Builder<TokioExecutor>,
    http1: &http1::Builder,
    service: impl Fn(bool) -> F,
    state: &ConnState,
    rules: KeepAlive,
    watcher: &mut watch::Receiver<bool>,
) where
    F: hyper::service::Service<
            Request<Incoming>,
            Response = http::Response<TicketBody<crate::proxy::Body>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    F::Future: Send + 'static,
{
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // The first bytes tell HTTP/1 from h2c; the first request must come within the header
    // read timeout.
    let mut first = [0u8; 4];
    let n = tokio::select! {
        n = io.get_ref().peek(&mut first) => n.unwrap_or(0),
        () = tokio::time::sleep(rules.header_read_timeout) => 0,
        _ = watcher.wait_for(|stop| *stop) => 0,
    };
    if n == 0 {
        return;
    }
    if first[..n] == PREFACE[..n] {
        io.no_parking();
        // Boxed: the task of every connection would otherwise have room for it.
        let mut conn = Box::pin(
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service(false))
                .into_owned(),
        );
        let close = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
        if let Err(e) = drive(conn.as_mut(), close, state, rules, watcher).await {
            debug!(error = %e, "connection ended with an error");
        }
        return;
    }
    loop {
        // Boxed: a parked connection's task then holds a pointer, not hyper's state.
        let mut conn = Box::new(
            http1
                .serve_connection(TokioIo::new(io), service(false))
                .with_upgrades(),
        );
        let close = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
        if let Err(e) = drive(Pin::new(&mut *conn), close, state, rules, watcher).await {
            return debug!(error = %e, "connection ended with an error");
        }
        // hyper ended cleanly: only with an empty read buffer, so `read_buf` holds nothing.
        let Some(parts) = conn.into_parts() else {
            return; // upgraded: the socket belongs to the upgraded stream now
        };
        io = parts.io.into_inner();
        if !io.take_parked() {
            return;
        }
        tokio::select! {
            ready = io.get_ref().readable() => if ready.is_err() {
                return;
            },
            () = tokio::time::sleep_until(state.idle_deadline(&rules)) => {
                return debug!(reason = "idle for server.keepalive_timeout_ms", "closing connection");
            }
            _ = watcher.wait_for(|stop| *stop) => return,
        }
    }
}

/// hyper's HTTP/1 connection builder; the header read timer is [`drive`]'s, not hyper's.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    http1
}

/// The auto connection builder (HTTP/1 or HTTP/2, told apart by the preface): HTTP/1 as
/// [`http1_builder`], HTTP/2 with the `[server]` limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    let c = &limits.conn;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(c.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(c.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(c.h2_max_local_error_reset_streams)
        .max_send_buf_size(c.h2_max_send_buf_bytes);
    builder
}

/// Failed accepts. Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`)
/// the listener would fail again at once, so the loop sleeps, doubling from 10 ms to 1 s,
/// and logs once per episode. Anything else concerns one connection only (it was reset
/// before it was accepted): the loop goes on.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    async fn wait(&mut self, e: &std::io::Error) {
        // ENFILE, EMFILE, ENOBUFS, ENOMEM (Linux values).
        let exhausted = matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
            || e.kind() == std::io::ErrorKind::OutOfMemory;
        if !exhausted {
            return debug!(error = %e, "accept failed");
        }
        if self.failures == 0 {
            warn!(error = %e, "accept failed: out of descriptors or memory; retrying with backoff (raise the descriptor limit or lower server.max_connections)");
        }
        let delay = Duration::from_millis(10 << self.failures.min(7)).min(Duration::from_secs(1));
        self.failures += 1;
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        if self.failures > 0 {
            info!(failures = self.failures, "accepting again");
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_print_their_cause_once() {
        let timeout = || StoreError::Timeout(Duration::from_millis(5));
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let errors = [
            (
                in_use.to_string(),
                StartError::Bind {
                    key: "server.listen",
                    addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                    cause: in_use,
                },
            ),
            (
                timeout().to_string(),
                StartError::StoreInvalid {
                    key: "store.url",
                    target: "redis://127.0.0.1:6379".into(),
                    cause: timeout(),
                },
            ),
            (
                timeout().to_string(),
                StartError::StoreUnreachable {
                    key: "store.url",
                    target: "redis://127.0.0.1:6379".into(),
                    cause: timeout(),
                },
            ),
        ];
        // The message carries the cause, so it is not a `source` too: a chain reporter
        // prints the message and then each source.
        for (cause, err) in errors {
            assert!(err.to_string().contains(&cause), "{err}");
            assert!(std::error::Error::source(&err).is_none(), "{err}");
        }
    }
}
