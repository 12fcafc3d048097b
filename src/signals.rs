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

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the proxy");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
