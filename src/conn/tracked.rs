//! The client socket as hyper sees it: [`Tracked`] reports bytes read to the connection's
//! [`ConnState`] and parks an idle HTTP/1 connection (README, Scale and limits).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{ConnState, Slot};

/// A client socket with its [`Slot`], telling its [`ConnState`] when bytes arrive.
///
/// With parking on (plain HTTP/1), it ends hyper's connection when it has stayed idle at a
/// request boundary for [`PARK_AFTER`]: the read that would wait reports end of stream
/// instead (a busy keep-alive connection, whose next request follows within milliseconds,
/// is never parked, so it does not pay for a new hyper connection per request), hyper closes
/// the connection cleanly without shutting the socket down, and [`Tracked::take_parked`]
/// tells the caller to wait for the next request outside hyper, so that hyper's read and
/// write buffers (8 KiB each) are freed between requests (README, Scale and limits).
#[derive(Debug)]
pub struct Tracked<S> {
    io: S,
    state: Arc<ConnState>,
    _slot: Slot,
    parking: bool,
    parked: bool,
    /// Everything written has been flushed.
    flushed: bool,
    /// The last four bytes read, big-endian.
    tail: u32,
    /// Fires [`PARK_AFTER`] into an idle spell at a request boundary; dropped on parking.
    park_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `park_timer` is set for the current idle spell.
    park_armed: bool,
}

/// How long an HTTP/1 connection stays idle at a request boundary before it is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

impl<S> Tracked<S> {
    /// `io`, holding `slot` until it is closed; `parking` as described above.
    pub fn new(io: S, state: Arc<ConnState>, slot: Slot, parking: bool) -> Self {
        Self {
            io,
            state,
            _slot: slot,
            parking,
            parked: false,
            flushed: true,
            tail: 0,
            park_timer: None,
            park_armed: false,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Turns parking off, for a connection hyper's auto builder serves (HTTP/2 or not yet
    /// known): it could not be resumed.
    pub fn no_parking(&mut self) {
        self.parking = false;
    }

    /// Whether hyper's connection ended because it was parked (then the socket is open and
    /// at a request boundary); resets it for the next connection.
    pub fn take_parked(&mut self) -> bool {
        std::mem::take(&mut self.parked)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.state.on_read();
                this.park_armed = false;
                let read = &buf.filled()[before..];
                for &b in &read[read.len().saturating_sub(4)..] {
                    this.tail = this.tail << 8 | u32::from(b);
                }
            }
            // Armed at a request boundary even while the response is still being sent:
            // its end does not wake this task, so the timer is what brings hyper back
            // here to park. It parks only once everything is answered and flushed, and
            // waits another spell otherwise.
            Poll::Pending if this.parking && this.state.at_boundary(this.tail) => {
                let deadline = Instant::now() + PARK_AFTER;
                let timer = this
                    .park_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.park_armed {
                    timer.as_mut().reset(deadline);
                    this.park_armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    if this.flushed && this.state.may_park(this.tail) {
                        this.park_timer = None;
                        this.park_armed = false;
                        this.parked = true;
                        return Poll::Ready(Ok(()));
                    }
                    timer.as_mut().reset(deadline);
                    // Registers the waker for the new deadline.
                    let _ = timer.as_mut().poll(cx);
                }
            }
            _ => {}
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.flushed = false;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.flushed = false;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.flushed = true;
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.parked {
            // hyper closing a parked connection: the socket stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
