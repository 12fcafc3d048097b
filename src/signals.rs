//! Process signals (SPEC §9): SIGTERM and SIGINT stop the proxy gracefully; SIGHUP never
//! stops it, and reloads what can be reloaded (the TLS pair).

use std::sync::Arc;

use tracing::{info, warn};

use crate::tls::Reloadable;

/// SIGHUP, which never stops the proxy (SPEC §9): `systemctl reload` and log rotation send
/// it. [`Sighup::listen`] takes the signal over at once, so call it before binding;
/// [`Sighup::serve`] then answers every one.
#[derive(Debug)]
pub struct Sighup {
    /// `None` when the handler could not be installed.
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Sighup {
    /// Replaces SIGHUP's default action, ending the process, from now on.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGHUP; it will stop the proxy");
                    None
                }
            };
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Answers every SIGHUP: with `tls`, reloads the serving certificate (a bad new pair is
    /// refused with a log line and the old one stays in service); without, logs it.
    pub async fn serve(self, tls: Option<Arc<Reloadable>>) {
        #[cfg(unix)]
        {
            let Some(mut hup) = self.signal else { return };
            while hup.recv().await.is_some() {
                let Some(tls) = &tls else {
                    info!("SIGHUP received; nothing to reload");
                    continue;
                };
                match tls.reload() {
                    Ok(()) => info!("reloaded the TLS certificate and key"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload refused; the old certificate stays in service")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (self, tls);
    }
}

/// SIGTERM and SIGINT, which stop the proxy gracefully. [`Shutdown::listen`] takes both
/// signals over at once, so call it before binding: a SIGTERM that arrives as soon as the
/// proxy answers (an orchestrator that changed its mind) then drains the connections
/// instead of killing the process under them.
#[derive(Debug)]
pub struct Shutdown {
    /// SIGTERM, `None` when its handler could not be installed.
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    /// SIGINT, `None` when its handler could not be installed.
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    /// Replaces the default actions of SIGTERM and SIGINT, ending the process, from now on.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .inspect_err(|e| warn!(error = %e, "cannot listen for SIGTERM; it will stop the proxy at once"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .inspect_err(|e| warn!(error = %e, "cannot listen for SIGINT; it will stop the proxy at once"))
                .ok();
            Self { term, int }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Completes on the first SIGTERM or SIGINT since [`listen`](Self::listen).
    pub async fn recv(self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.term) => {},
                () = next(self.int) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
