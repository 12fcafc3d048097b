//! The upstream client: keep-alive HTTP/1.1 connections to the one upstream, kept in a
//! LIFO pool of hyper's connection-level senders.
//!
//! A connection goes back to the pool once the response body it carried has been read to
//! its end (the [`UpstreamBody`] wrapper sees the last frame, or is dropped after it); a
//! response dropped early, a 101 (the connection then belongs to the upgraded stream) or an error retires
//! it. A request that a pooled connection closed before sending (the upstream's keep-alive
//! timeout raced us) is retried on the next connection, since nothing of it left the proxy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

/// `server.upstream` (or a route's `upstream`): the application's scheme and host:port (no
/// path, no userinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// host:port.
    pub authority: Authority,
}

/// How long an idle pooled connection is kept before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("cannot connect to {authority}: {cause}")]
    Connect {
        /// The upstream.
        authority: Authority,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The TLS handshake with an https upstream failed.
    #[error("TLS handshake with {authority} failed: {cause}")]
    Tls {
        /// The upstream.
        authority: Authority,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The exchange broke: a protocol error, a closed connection, or the client's body.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// True when the client's request body failed while it was being forwarded (hyper
    /// reports that as a user body error), not the upstream.
    pub fn is_client_body(&self) -> bool {
        matches!(self, UpstreamError::Http(e) if e.is_user())
    }
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// The connection pool for one upstream. Shared by all connections of the proxy.
pub struct UpstreamPool {
    authority: Authority,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    idle: Mutex<VecDeque<Idle>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// The pool for `scheme://authority`; `tls` is the client config used when the scheme
    /// is https.
    pub fn new(scheme: &Scheme, authority: Authority, tls: rustls::ClientConfig) -> Self {
        let https = *scheme == Scheme::HTTPS;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = https.then(|| {
            let mut config = tls;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        });
        Self {
            authority,
            host,
            port,
            tls,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled or new connection.
    ///
    /// # Errors
    /// When no connection can be opened or the exchange fails.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.wrap(res, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed under it; try the next one.
                    Some(back) => {
                        debug!(error = %e.error(), "pooled upstream connection closed; retrying");
                        req = back;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: a rare path whose future would otherwise enlarge every request's.
        let mut sender = Box::pin(self.connect()).await?;
        let res = sender.send_request(req).await?;
        Ok(self.wrap(res, sender))
    }

    fn wrap(
        self: &Arc<Self>,
        res: Response<Incoming>,
        sender: SendRequest<Incoming>,
    ) -> Response<UpstreamBody> {
        // After a 101 the connection belongs to the upgraded stream: never reuse it.
        let pooled =
            (res.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| (sender, self.clone()));
        res.map(|inner| UpstreamBody { inner, pooled })
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { sender, since }) = idle.pop_back() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose response has been read. One still busy (the upstream
    /// answered before the request body was all sent) is pooled once it is idle, so that
    /// no request waits behind another's upload.
    fn checkin(self: Arc<Self>, mut sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        self.pool(sender);
                    }
                });
            }
            return;
        }
        self.pool(sender);
    }

    fn pool(&self, sender: SendRequest<Incoming>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The front holds the longest idle: close those past the idle timeout.
        while idle
            .front()
            .is_some_and(|i| i.sender.is_closed() || now - i.since >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|cause| UpstreamError::Connect {
                authority: self.authority.clone(),
                cause,
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(connector) = &self.tls else {
            return handshake(tcp).await;
        };
        let tls_error = |cause| UpstreamError::Tls {
            authority: self.authority.clone(),
            cause,
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| tls_error(std::io::Error::other(e)))?;
        handshake(connector.connect(name, tcp).await.map_err(tls_error)?).await
    }
}

/// Starts HTTP/1.1 on `io`, driving the connection in a task of its own.
async fn handshake<T>(io: T) -> Result<SendRequest<Incoming>, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Flattened writes: a request's head and body chunks are copied into one buffer and
    // written at once. Requests are mostly heads alone, for which this is cheaper than
    // hyper's default queue of buffers (about 300 fewer instructions per request).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body from the upstream. Once it has been read to its end, dropping it
/// returns its connection to the pool; dropped early, it closes the connection.
pub struct UpstreamBody {
    inner: Incoming,
    pooled: Option<(SendRequest<Incoming>, Arc<UpstreamPool>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Read to the end: the connection is idle again.
            if let Some((sender, pool)) = this.pooled.take() {
                pool.checkin(sender);
            }
        }
        if let Poll::Ready(Some(Err(_))) = polled {
            this.pooled = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body whose last frame was read (or that had none) leaves its connection idle.
        if let Some((sender, pool)) = self.pooled.take()
            && self.inner.is_end_stream()
        {
            pool.checkin(sender);
        }
    }
}
