//! Client connections (README, Scale and limits): the ceiling `server.max_connections`
//! with its gauge, and the keep-alive rules hyper leaves to the server.
//!
//! - **Ceiling.** The accept loop takes a [`Slot`] before it accepts: past the ceiling it
//!   stops accepting and the kernel's listen backlog holds new connections until one
//!   closes. The slot lives inside the connection's I/O ([`Tracked`]), so it is released
//!   exactly when the socket is closed, after an upgrade (WebSocket) too.
//! - **Keep-alive.** [`drive`] runs each connection next to one timer that enforces:
//!   the header read timeout (from the first byte of a request head to its end, HTTP/1),
//!   the idle timeout (no request in flight for `keepalive_timeout_ms`: an HTTP/1
//!   connection is closed, an HTTP/2 one gets GOAWAY), and the request cap (after
//!   `keepalive_requests` the HTTP/1 response carries `Connection: close`, an HTTP/2
//!   connection gets GOAWAY and finishes its streams). hyper's own header read timer is
//!   not used: it starts as soon as a connection waits for a request, which would make
//!   it an idle timeout as well.
//! - **Shutdown.** [`Connections::shutdown`] asks every connection to close gracefully;
//!   [`Connections::closed`] completes when all have.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::time::Instant;
use tracing::debug;

mod tracked;

pub use self::tracked::{PARK_AFTER, Tracked};

/// The keep-alive rules of every connection.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// From the first byte of a request head to its end (HTTP/1).
    pub header_read_timeout: Duration,
    /// With no request in flight, how long a connection stays open.
    pub idle_timeout: Duration,
    /// Requests per connection; the last one closes it.
    pub max_requests: u64,
}

/// The ceiling `server.max_connections`: room for at most that many open connections,
/// shared by every listener of the process (with `server.runtime = "per-core"`, one per
/// runtime), so it holds for the process as a whole. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Ceiling {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Ceiling {
    /// At most `max` open connections (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The number of connections it allows.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// The client connections of one listener: its share of the ceiling, the gauge, the
/// shutdown signal.
#[derive(Debug)]
pub struct Connections {
    permits: Arc<Semaphore>,
    open: Gauge,
    shutdown: watch::Sender<bool>,
}

impl Connections {
    /// Open connections under `ceiling` (which other listeners may share), counted in `open`.
    pub fn new(ceiling: &Ceiling, open: Gauge) -> Self {
        Self {
            permits: ceiling.permits.clone(),
            open,
            shutdown: watch::channel(false).0,
        }
    }

    /// Room under the ceiling for the next accepted connection, or `None` when full.
    pub fn try_reserve(&self) -> Option<Reservation> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Reservation(permit)),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// Waits until a connection closes and its room is free.
    pub async fn reserve(&self) -> Reservation {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Reservation(permit)
    }

    /// An accepted connection takes its reserved room: it is counted open until the
    /// returned slot is dropped.
    pub fn admit(&self, room: Reservation) -> Slot {
        self.open.inc();
        Slot {
            _permit: room.0,
            open: self.open.clone(),
        }
    }

    /// Connections still being served (an upgraded one no longer is).
    pub fn serving(&self) -> usize {
        self.shutdown.receiver_count()
    }

    /// The signal a connection's [`drive`] watches.
    pub fn watcher(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every connection to close gracefully: HTTP/1 after its current response,
    /// HTTP/2 with GOAWAY once its streams are done.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes when no connection is being served.
    pub async fn closed(&self) {
        self.shutdown.closed().await;
    }
}

/// Room under the ceiling, taken before a connection is accepted.
#[derive(Debug)]
pub struct Reservation(OwnedSemaphorePermit);

/// One open client connection under the ceiling; dropping it frees the room.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What a connection's requests, I/O and timer share.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    max_requests: u64,
    in_flight: AtomicU32,
    requests: AtomicU64,
    /// Milliseconds since `epoch` when the last request ended.
    idle_since_ms: AtomicU64,
    /// 1 + milliseconds since `epoch` when the first byte of the next request head came;
    /// 0 while none has.
    head_started_ms: AtomicU64,
    h2: AtomicBool,
    /// The last request had a body (its bytes may run on past the head).
    last_had_body: AtomicBool,
    /// A 101 was sent: the socket now carries another protocol.
    upgraded: AtomicBool,
    /// The request cap was reached.
    wake: Notify,
}

impl ConnState {
    /// A connection accepted now.
    pub fn new(rules: &KeepAlive) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            max_requests: rules.max_requests,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            // A new connection must send its first request head within the header read
            // timeout; the idle timeout only applies between requests.
            head_started_ms: AtomicU64::new(1),
            h2: AtomicBool::new(false),
            last_had_body: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request arrived: returns its ticket (held until its response body ends) and
    /// whether it is the connection's last.
    pub fn begin(self: &Arc<Self>, http2: bool, has_body: bool) -> (Ticket, bool) {
        if http2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.last_had_body.store(has_body, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Relaxed);
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.max_requests {
            self.wake.notify_one();
        }
        (Ticket(self.clone()), n >= self.max_requests)
    }

    // Neither the end of a request nor the start of a head wakes the connection's timer:
    // that would cost every request two extra polls of hyper's connection. The timer
    // never sleeps longer than the header read timeout, and works out on waking what the
    // state now asks for (see `check`).
    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Bytes came from the client: with no request in flight on HTTP/1, a head started.
    fn on_read(&self) {
        if !self.h2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// The response switched protocols (101): the connection is never parked again.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Whether HTTP/1 may be parked now: idle at a request boundary. Nothing is in flight,
    /// nothing came since the last response, the last request had no body and every byte
    /// read so far ends a request head, so hyper's read buffer holds no partial request.
    fn may_park(&self, tail: u32) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.at_boundary(tail)
    }

    /// [`may_park`](Self::may_park) but for a request still in flight, which may end
    /// without the socket being read again.
    fn at_boundary(&self, tail: u32) -> bool {
        tail == u32::from_be_bytes(*b"\r\n\r\n")
            && self.head_started_ms.load(Ordering::Relaxed) == 0
            && self.requests.load(Ordering::Relaxed) > 0
            && !self.last_had_body.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
            && !self.h2.load(Ordering::Relaxed)
    }

    /// When a parked connection has been idle for the idle timeout.
    pub fn idle_deadline(&self, rules: &KeepAlive) -> Instant {
        let since = self.idle_since_ms.load(Ordering::Relaxed);
        self.at(since) + rules.idle_timeout
    }

    fn cap_reached(&self) -> bool {
        self.requests.load(Ordering::Acquire) >= self.max_requests
    }

    /// What the timer should do now.
    fn check(&self, rules: &KeepAlive, closing_since: Option<u64>) -> Verdict {
        let now = self.now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let busy = self.in_flight.load(Ordering::Acquire) > 0;
        if let Some(since) = closing_since {
            // Asked to close: give it the time of a header read to finish its goodbye
            // (HTTP/2 GOAWAY and PING), then drop it if nothing is in flight.
            let end = since.saturating_add(ms(rules.header_read_timeout));
            return if !busy && now >= end {
                Verdict::Drop("did not close after GOAWAY")
            } else {
                Verdict::Wait(end.max(now + 1))
            };
        }
        if busy {
            return Verdict::Wait(now + ms(rules.idle_timeout.min(rules.header_read_timeout)));
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let end = (head - 1).saturating_add(ms(rules.header_read_timeout));
            return if now >= end {
                Verdict::Drop("request headers not received within server.header_read_timeout_ms")
            } else {
                Verdict::Wait(end)
            };
        }
        let end = self
            .idle_since_ms
            .load(Ordering::Relaxed)
            .saturating_add(ms(rules.idle_timeout));
        if now >= end {
            Verdict::Close("idle for server.keepalive_timeout_ms")
        } else {
            // A request head may start meanwhile without waking the timer: look again
            // within the header read timeout, so that its deadline is kept exactly.
            Verdict::Wait(end.min(now + ms(rules.header_read_timeout)))
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

enum Verdict {
    /// Check again at this many milliseconds since the epoch.
    Wait(u64),
    /// Close gracefully (HTTP/1: now, as it is idle; HTTP/2: GOAWAY).
    Close(&'static str),
    /// Drop the connection: the socket closes with nothing more sent.
    Drop(&'static str),
}

/// A request in flight on its connection, until its response body ends.
#[derive(Debug)]
pub struct Ticket(Arc<ConnState>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that holds its request's [`Ticket`] until it ends.
#[derive(Debug)]
pub struct TicketBody<B> {
    body: B,
    _ticket: Ticket,
}

impl<B> TicketBody<B> {
    /// `body`, counted in flight until it is dropped.
    pub fn new(body: B, ticket: Ticket) -> Self {
        Self {
            body,
            _ticket: ticket,
        }
    }
}

impl<B: Body + Unpin> Body for TicketBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `conn` under the keep-alive rules until it ends; `close` starts its graceful
/// shutdown (the connection type's `graceful_shutdown`).
///
/// # Errors
/// The connection's own error.
pub async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    close: impl Fn(Pin<&mut C>),
    state: &ConnState,
    rules: KeepAlive,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let timer = tokio::time::sleep_until(
        state.at(u64::try_from(
            rules
                .idle_timeout
                .min(rules.header_read_timeout)
                .as_millis(),
        )
        .unwrap_or(u64::MAX)),
    );
    let mut timer = std::pin::pin!(timer);
    let mut closing_since: Option<u64> = None;
    loop {
        let verdict = tokio::select! {
            res = conn.as_mut() => return res,
            _ = shutdown.wait_for(|stop| *stop), if closing_since.is_none() => {
                Verdict::Close("shutting down")
            }
            () = state.wake.notified(), if closing_since.is_none() => {
                if state.cap_reached() {
                    Verdict::Close("served server.keepalive_requests")
                } else {
                    state.check(&rules, None)
                }
            }
            () = timer.as_mut() => state.check(&rules, closing_since),
        };
        match verdict {
            Verdict::Wait(at) => timer.as_mut().reset(state.at(at)),
            Verdict::Close(reason) => {
                debug!(reason, "closing connection");
                close(conn.as_mut());
                let now = state.now_ms();
                closing_since = Some(now);
                timer.as_mut().reset(state.at(now));
            }
            Verdict::Drop(reason) => {
                debug!(reason, "dropping connection");
                return Ok(());
            }
        }
    }
}
