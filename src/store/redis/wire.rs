//! The tracking connections' sockets, made here rather than by redis, so that the local
//! cache can tell whether an invalidation has reached this proxy but is not applied yet
//! (SPEC §15).
//!
//! # The gap this closes
//!
//! A tracking connection's pushes are applied by its reader: a task of this runtime that
//! decodes what the socket holds and hands each push to the cache. Under load that task
//! may not have run yet when a request is served: the invalidation of a session destroyed
//! by another proxy is in this proxy's socket, the other proxy's client already has its
//! answer, and without a look at the socket the cache would serve the session once more.
//!
//! So every tracking connection carries a [`Wire`], shared with the cache, and a hit is
//! served only when every wire is *quiet*:
//!
//! 1. its socket holds no unread byte: a non-blocking `peek` of one byte finds nothing, and
//! 2. its reader is not *busy*: the flag is set before each read of the socket and cleared
//!    only when a read finds nothing (`Pending`). redis' reader (a `Framed` stream) reads
//!    again only after it decoded, and applied, every complete frame it holds, so a clear
//!    flag means that everything it took from the socket is in the cache.
//!
//! Anything else is a miss (read from Redis), never a wait. The order of the two looks is
//! what makes it exact: the peek comes first, then the flag. If the peek finds the socket
//! empty although the invalidation had arrived, a read took it out, and that read set the
//! flag before it asked the socket; the kernel's lock on the socket orders that store before
//! the peek, so the flag is seen set, unless the reader has applied everything since and
//! found the socket empty again (then the cache, read after this, has it). The cache is
//! consulted again after both looks.
//!
//! # Which socket is peeked
//!
//! A `dup` of the connection's socket, owned by its [`Wire`]: no raw descriptor is kept,
//! so a descriptor number reused by another socket can never be peeked, and no `unsafe`
//! is needed. The duplicate is closed (withdrawn from the wire) when the connection's
//! stream is dropped, before the original is, so the socket closes as it would without
//! it; a wire without a socket is never quiet. With `rediss://` the encrypted bytes are
//! peeked (TLS records the reader has not taken), and the flag covers the plaintext that
//! rustls holds, since its reader returns `Pending` only once both are drained.
//!
//! # What it assumes
//!
//! That the invalidation is in this proxy's socket before a request that started after
//! the writer's answer reaches this proxy. Redis queues the broadcast invalidations and
//! the writer's reply in the same event-loop turn, and writes both before it sleeps again;
//! over loopback (or one host's kernel), a write is in the receiving socket when the
//! writing call returns, and the writer's answer still has to travel to the other proxy,
//! then to its client, then to this proxy. Across hosts, with this proxy's link to Redis
//! slower than that path, the window is the difference in delivery times. A push that
//! Redis could only partly write (this socket's receive buffer full) is also outside it:
//! its first part may be read and its rest not yet sent.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use redis::{ConnectionAddr, ErrorKind, RedisError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the cache knows of one tracking connection; see the module docs.
pub(super) struct Wire {
    /// Set before each read of the socket, cleared when a read finds nothing.
    busy: AtomicBool,
    /// A duplicate of the socket (nonblocking), while the connection's stream exists.
    socket: RwLock<Option<std::net::TcpStream>>,
}

impl Wire {
    fn new(socket: std::net::TcpStream) -> Arc<Self> {
        Arc::new(Self {
            busy: AtomicBool::new(false),
            socket: RwLock::new(Some(socket)),
        })
    }

    /// True when nothing this connection received waits to be applied: the socket holds
    /// no unread byte, then the reader is not between a read and the end of its decoding.
    /// Never blocks.
    pub(super) fn is_quiet(&self) -> bool {
        {
            let socket = self.socket.read().unwrap_or_else(PoisonError::into_inner);
            let Some(socket) = socket.as_ref() else {
                return false;
            };
            // Nonblocking (set when it was made): WouldBlock is an empty socket. A byte, an
            // end of stream or an error all mean "not known to be applied".
            match socket.peek(&mut [0; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return false,
            }
        }
        !self.busy.load(Ordering::SeqCst)
    }

    /// The connection's stream is going: close the duplicate first.
    fn withdraw(&self) {
        *self.socket.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A socket, plain or TLS.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A tracking connection's stream: keeps its [`Wire`]'s busy flag, withdraws its socket
/// when dropped.
pub(super) struct Watched {
    inner: Box<dyn Io>,
    wire: Arc<Wire>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Before `inner` (dropped after this) closes the socket.
        self.wire.withdraw();
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Before the socket is asked: see the module docs for why not after.
        self.wire.busy.store(true, Ordering::SeqCst);
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_pending() {
            self.wire.busy.store(false, Ordering::SeqCst);
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects to `addr` (`redis://` or `rediss://`, whose certificate is checked against the
/// system's roots, as redis does), returning the stream and its wire.
pub(super) async fn connect(addr: &ConnectionAddr) -> Result<(Watched, Arc<Wire>), RedisError> {
    let (host, port, tls) = match addr {
        ConnectionAddr::Tcp(host, port) => (host, *port, false),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        } => {
            if *insecure || tls_params.is_some() {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "the local cache's tracking connections verify TLS certificates: expected a rediss:// URL without #insecure",
                )));
            }
            (host, *port, true)
        }
        _ => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "the local cache's tracking connections expected a redis:// or rediss:// address",
            )));
        }
    };
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let (tcp, wire) = watch(tcp)?;
    let inner: Box<dyn Io> = if tls {
        let config = crate::tls::client_config(None).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "no TLS client configuration",
                e.to_string(),
            ))
        })?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "not a TLS server name",
                e.to_string(),
            ))
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Box::new(connector.connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    };
    let stream = Watched {
        inner,
        wire: wire.clone(),
    };
    Ok((stream, wire))
}

/// `tcp` and a wire holding a nonblocking duplicate of its socket.
fn watch(tcp: TcpStream) -> io::Result<(TcpStream, Arc<Wire>)> {
    let std = tcp.into_std()?;
    let dup = std.try_clone()?;
    dup.set_nonblocking(true)?;
    Ok((TcpStream::from_std(std)?, Wire::new(dup)))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::cache::{Entry, LocalCache};
    use super::*;
    use crate::metrics::RedisReadMetrics;
    use crate::session::Record;

    /// A watched client stream, its wire and the server's end, on loopback.
    async fn pair() -> (Watched, Arc<Wire>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let addr = ConnectionAddr::Tcp("127.0.0.1".into(), port);
        let (connected, accepted) = tokio::join!(connect(&addr), listener.accept());
        let (stream, wire) = connected.unwrap();
        (stream, wire, accepted.unwrap().0)
    }

    /// Polls one read: true when it found nothing (`Pending`).
    async fn read_finds_nothing(stream: &mut Watched) -> bool {
        let mut bytes = [0; 16];
        poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut bytes);
            Poll::Ready(Pin::new(&mut *stream).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    /// Waits (deadline-polled) until the bytes sent reached the socket.
    async fn until_unread(wire: &Wire) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while wire.is_quiet() {
            assert!(Instant::now() < deadline, "the bytes sent never arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn quiet_only_when_nothing_received_waits_to_be_applied() {
        let (mut stream, wire, mut server) = pair().await;
        assert!(wire.is_quiet(), "nothing sent yet");
        server.write_all(b">2\r\n+invalidate\r\n").await.unwrap();
        // In the socket, not read: the reader has not run.
        until_unread(&wire).await;
        let mut part = [0; 4];
        stream.read_exact(&mut part).await.unwrap();
        assert!(!wire.is_quiet(), "a part still in the socket");
        let mut rest = [0; 13];
        stream.read_exact(&mut rest).await.unwrap();
        // Out of the socket, but the reader did not come back for more: not applied yet.
        assert!(!wire.is_quiet(), "read but not known to be applied");
        assert!(read_finds_nothing(&mut stream).await);
        assert!(wire.is_quiet(), "everything read was applied");
        drop(stream);
        assert!(!wire.is_quiet(), "a closed connection is never quiet");
    }

    /// The reported race: another proxy's write was answered and its invalidation is in
    /// this proxy's socket, but the task that reads it has not run (here: is never polled).
    /// The cached entry must not be served; once the reader has applied what it read, hits
    /// are served again.
    #[tokio::test]
    async fn a_hit_is_not_served_while_an_invalidation_waits_in_the_socket() {
        const NOW: u64 = 1_700_000_000;
        let (mut stream, wire, mut server) = pair().await;
        let metrics = RedisReadMetrics::default();
        let cache = LocalCache::new(10, metrics.clone());
        cache.begin(1);
        assert!(cache.go_live(1, vec![wire.clone()]));
        let Err(Some(ticket)) = cache.get("k", NOW, 60) else {
            panic!("expected a miss with a ticket");
        };
        let entry = Entry {
            rec: Record::new("{}".into(), NOW),
            touched: NOW,
        };
        cache.insert("k".into(), ticket, entry);
        assert!(cache.get("k", NOW, 60).is_ok(), "served while quiet");
        server.write_all(b">2\r\n+invalidate\r\n").await.unwrap();
        until_unread(&wire).await;
        assert!(
            matches!(cache.get("k", NOW, 60), Err(Some(_))),
            "served with an invalidation unread in the socket"
        );
        let mut all = [0; 17];
        stream.read_exact(&mut all).await.unwrap();
        assert!(
            cache.get("k", NOW, 60).is_err(),
            "served between a read and its decoding"
        );
        assert!(read_finds_nothing(&mut stream).await);
        assert!(cache.get("k", NOW, 60).is_ok(), "quiet again");
        assert_eq!(metrics.cache_hits.get(), 2);
        assert_eq!(metrics.cache_misses.get(), 3);
    }
}
