//! Upgraded connections (WebSocket) by session (SPEC §13): a connection opened with a
//! session closes when that session ends.
//!
//! - **At once**, when this proxy ends the session: every place that destroys, revokes or
//!   expires sessions calls [`Upgrades::ended`] with their handles, which signals each
//!   registered connection of those sessions; its bridge then drops both upgraded
//!   connections, so the client and the upstream see their TCP connection close.
//! - **Within `session.revalidate_sec`**, when another proxy sharing the store ended it:
//!   each connection loads its session once when it opens and then every
//!   `revalidate_sec` ([`Gate::watch_session`]), and closes when it is gone. With
//!   `absolute_ttl_sec` it also closes at the session's absolute deadline.
//!
//! Only a request that upgrades registers; the registry is not touched on any other
//! request. A registration is removed when its connection ends, whichever way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use super::{Ctx, Gate, Lookup};
use crate::metrics::StoreOp;
use crate::session::{SessionId, unix_now};
use crate::store::users::Handle;
use crate::store::{SessionStore, StoreError};
use http::header;

/// The upgraded connections open through this proxy, by session. Cheap to clone: clones
/// share one registry.
#[derive(Debug, Clone, Default)]
pub struct Upgrades {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Registrations in `by_session`: changed under its lock, read without it, to skip
    /// the lock when none is open.
    open: AtomicUsize,
    /// Tells registrations of one session apart.
    next_key: AtomicU64,
    by_session: Mutex<HashMap<Handle, Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    close: oneshot::Sender<()>,
}

impl Upgrades {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sessions `handles` name have ended: every upgraded connection opened with one of
    /// them is closed at once (both directions). Handles without a connection are ignored.
    pub fn ended(&self, handles: &[Handle]) {
        if self.is_empty() {
            return;
        }
        let closing: Vec<Entry> = {
            let mut by_session = self.lock();
            let closing: Vec<Entry> = handles
                .iter()
                .filter_map(|h| by_session.remove(h))
                .flatten()
                .collect();
            self.inner.open.fetch_sub(closing.len(), Ordering::Relaxed);
            closing
        };
        if closing.is_empty() {
            return;
        }
        debug!(
            connections = closing.len(),
            "closing upgraded connections of ended sessions"
        );
        for entry in closing {
            // The receiver is gone only when its connection is ending anyway.
            let _ = entry.close.send(());
        }
    }

    /// How many upgraded connections opened with a session are open.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// True when no upgraded connection opened with a session is open.
    pub fn is_empty(&self) -> bool {
        self.open() == 0
    }

    /// Registers a connection of the session `handle` names. The registration ends when
    /// it is dropped; its `closed` fires when [`ended`](Self::ended) names the session.
    pub(super) fn register(&self, handle: Handle) -> Registration {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = oneshot::channel();
        let mut by_session = self.lock();
        by_session
            .entry(handle)
            .or_default()
            .push(Entry { key, close });
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        drop(by_session);
        Registration {
            upgrades: self.clone(),
            handle,
            key,
            closed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Handle, Vec<Entry>>> {
        // Every critical section leaves the map consistent: a panic elsewhere cannot
        // leave it half-changed, so a poisoned lock is still good.
        self.inner
            .by_session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One upgraded connection in the registry; dropping it removes it.
pub(super) struct Registration {
    upgrades: Upgrades,
    handle: Handle,
    key: u64,
    /// Fires (or errs, which means the same) when the session ended on this proxy.
    pub(super) closed: oneshot::Receiver<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_session = self.upgrades.lock();
        let Some(entries) = by_session.get_mut(&self.handle) else {
            // `ended` took it already.
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.key != self.key);
        let removed = before - entries.len();
        if entries.is_empty() {
            by_session.remove(&self.handle);
        }
        self.upgrades
            .inner
            .open
            .fetch_sub(removed, Ordering::Relaxed);
    }
}

/// Why an upgraded connection was closed for its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEnd {
    /// This proxy destroyed, revoked or expired the session.
    Ended,
    /// The store no longer has the session (another proxy ended it, or it expired there).
    Gone,
    /// The session reached `absolute_ttl_sec`.
    Absolute,
}

impl SessionEnd {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Ended => "session ended",
            SessionEnd::Gone => "session no longer in the store",
            SessionEnd::Absolute => "session reached absolute_ttl_sec",
        }
    }
}

impl Gate {
    /// This proxy ended session `id`: close its upgraded connections. Costs nothing (no
    /// hash, no lock) while no upgraded connection is open.
    pub(super) fn close_upgrades(&self, id: &SessionId) {
        if !self.upgrades.is_empty() {
            self.upgrades.ended(&[Handle::of(id)]);
        }
    }

    /// Returns when the upgraded connection of session `id` must close because the session
    /// is no longer live: loads it now and then every `revalidate_sec`, and waits for its
    /// absolute deadline. A load slides the idle expiry, as a request's does (an open
    /// WebSocket is use). A store that cannot answer keeps the connection (logged once per
    /// run of failures): a blip in the store does not cut every WebSocket.
    pub(super) async fn watch_session(&self, id: &SessionId) -> SessionEnd {
        let mut failing = false;
        let mut deadline: Option<u64> = None;
        loop {
            match self
                .timed(StoreOp::load, self.store.load(id, self.lifetime.ttl()))
                .await
            {
                Ok(Some(rec)) => {
                    if failing {
                        info!("session store answers again; upgraded connection re-checked");
                        failing = false;
                    }
                    if self.lifetime.is_past_absolute(&rec, unix_now()) {
                        return SessionEnd::Absolute;
                    }
                    deadline = (self.lifetime.absolute_ttl_sec > 0)
                        .then(|| rec.created + self.lifetime.absolute_ttl_sec);
                }
                Ok(None) | Err(StoreError::Corrupt { .. }) => return SessionEnd::Gone,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "could not re-check the session of an upgraded connection; keeping it open");
                        failing = true;
                    }
                }
            }
            let left = deadline.map(|d| d.saturating_sub(unix_now()));
            match left {
                // Whole seconds: the deadline is `created + absolute_ttl_sec` in Unix
                // seconds, reached at the start of that second at the latest.
                Some(left) if left <= self.revalidate_sec => {
                    tokio::time::sleep(Duration::from_secs(left)).await;
                    return SessionEnd::Absolute;
                }
                _ => tokio::time::sleep(Duration::from_secs(self.revalidate_sec)).await,
            }
        }
    }
}

/// How long closing an upgraded connection for its session's end may take to say goodbye
/// (TLS `close_notify`, FIN) before both connections are dropped anyway.
const UPGRADE_CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Gate {
    /// The session an upgraded connection belongs to: the one the client holds once the
    /// 101 is sent. That is the cookie the response sets (a Set on the 101 itself), none
    /// when it clears it, and otherwise the session the request carried.
    pub(super) fn upgraded_session(
        &self,
        ctx: &Ctx,
        headers: &http::HeaderMap,
    ) -> Option<SessionId> {
        let name = self.cookie_name.as_bytes();
        // Only the proxy's own `Set-Cookie` for our name is left (phase 3 drops upstream ones).
        let set = headers.get_all(header::SET_COOKIE).iter().find_map(|v| {
            let value = v.as_bytes().strip_prefix(name)?.strip_prefix(b"=")?;
            value.split(|b| *b == b';').next()
        });
        match (set, &ctx.lookup) {
            (Some(value), _) => self.codec.verify(value).map(|v| v.id),
            (None, Lookup::Active { id, .. }) => Some(*id),
            (None, _) => None,
        }
    }

    /// Joins the client's and the upstream's upgraded connections. One opened with a
    /// session (registered as `session`) is closed, both ways, when that session ends.
    pub(super) async fn bridge(
        self: Arc<Self>,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        session: Option<(SessionId, Registration)>,
    ) {
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => return debug!(error = %e, "upgrade did not complete"),
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
        let Some((id, mut registration)) = session else {
            if let Err(e) = copy.await {
                debug!(error = %e, "upgraded connection ended");
            }
            return;
        };
        let end = tokio::select! {
            copied = copy => {
                if let Err(e) = copied {
                    debug!(error = %e, "upgraded connection ended");
                }
                return;
            }
            _ = &mut registration.closed => SessionEnd::Ended,
            end = self.watch_session(&id) => end,
        };
        drop(registration);
        info!(
            reason = end.as_str(),
            "closing an upgraded connection: its session ended"
        );
        // Both ways: the client and the upstream each see their connection close. A
        // WebSocket close frame would need the proxy to parse the stream; it does not.
        let _ = tokio::time::timeout(UPGRADE_CLOSE_GRACE, async {
            let _ = tokio::join!(c.shutdown(), u.shutdown());
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Handle {
        Handle::of(&SessionId::random())
    }

    #[test]
    fn ended_signals_only_the_named_sessions_and_forgets_them() {
        let upgrades = Upgrades::new();
        let (a, b) = (handle(), handle());
        let mut a1 = upgrades.register(a);
        let mut a2 = upgrades.register(a);
        let mut b1 = upgrades.register(b);
        assert_eq!(upgrades.open(), 3);

        upgrades.ended(&[a, handle()]);
        assert_eq!(a1.closed.try_recv(), Ok(()));
        assert_eq!(a2.closed.try_recv(), Ok(()));
        assert!(b1.closed.try_recv().is_err());
        assert_eq!(upgrades.open(), 1);

        // Dropping an already-ended registration changes nothing.
        drop((a1, a2));
        assert_eq!(upgrades.open(), 1);
        drop(b1);
        assert!(upgrades.is_empty());
        assert!(upgrades.lock().is_empty());
    }

    #[test]
    fn a_dropped_registration_leaves_the_others_of_its_session() {
        let upgrades = Upgrades::new();
        let a = handle();
        let first = upgrades.register(a);
        let mut second = upgrades.register(a);
        drop(first);
        assert_eq!(upgrades.open(), 1);
        upgrades.ended(&[a]);
        assert_eq!(second.closed.try_recv(), Ok(()));
        assert!(upgrades.is_empty());
        drop(second);
        assert!(upgrades.lock().is_empty());
    }
}
