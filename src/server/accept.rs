//! The accept loop and each client connection: the connection ceiling and accept backoff,
//! TLS, hyper's HTTP/1 (parked between requests) and auto (h2c) builders, and the drain
//! at shutdown.

use std::future::Future;
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
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::conn::{Ceiling, ConnState, Connections, KeepAlive, TicketBody, Tracked, drive};
use crate::proxy::{Gate, Peer};
use crate::tls::Reloadable;

use super::{LAME_DUCK, Limits};

/// Accepts connections until `shutdown` completes, then drains them within the grace.
/// Each accepted connection counts in `accepted`.
///
/// At most [`Ceiling::max`] are served at once, on this listener and every other that
/// shares `ceiling`. Past it the loop holds the connection it has just accepted, unserved,
/// until one closes, and accepts no other meanwhile: the kernel's listen backlog holds new
/// ones. (It takes room only for a connection it has: a listener with none to accept never
/// holds room that connections waiting at another listener sharing the ceiling need.)
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<Arc<Reloadable>>,
    limits: Limits,
    ceiling: Ceiling,
    accepted: Counter,
    shutdown: impl Future<Output = ()>,
) {
    // Shared, so a connection's task holds pointers, not copies.
    let builder = Arc::new(builder(&limits));
    let http1 = Arc::new(http1_builder(&limits));
    let rules = limits.keep_alive();
    let max_connections = ceiling.max();
    let connections = Connections::new(&ceiling, gate.metrics().client_connections().clone());
    let mut backoff = AcceptBackoff::default();
    let mut ceiling_logged: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            pair = listener.accept() => match pair {
                Ok(pair) => {
                    backoff.reset();
                    pair
                }
                Err(e) => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = backoff.wait(&e) => continue,
                    }
                }
            },
        };
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
        accepted.inc();
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
