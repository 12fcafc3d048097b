//! Logging (SPEC §9): `tracing` with `RUST_LOG` filtering (default `info`), as text or as
//! one JSON object per line, and the one access line per request. Nothing logged carries a
//! cookie, token, session data or secret.

use std::time::Instant;

use http::{Method, Uri};
use tracing::{Level, info};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The tracing target of the access line (SPEC §9); `RUST_LOG=sessiongate::access=off`
/// turns it off, and then none of its fields are even taken.
pub const ACCESS_LOG: &str = "sessiongate::access";

/// Installs the global subscriber. A second call (tests) keeps the first.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What became of the request's session; the `session` field of the access event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No cookie of ours.
    None,
    /// A verified cookie whose session is active.
    Hit,
    /// A verified cookie whose session is gone.
    Miss,
    /// A cookie that failed format or signature checks.
    Invalid,
    /// The store could not be read.
    Error,
    /// The response created a session.
    Created,
    /// The response destroyed the session.
    Destroyed,
    /// The response revoked the session with the rest of its user's (SPEC §13), or the
    /// session it would have replaced had been revoked meanwhile.
    Revoked,
    /// Refused as cross-origin (SPEC §12) before any session lookup.
    Csrf,
    /// A session registered for DBSC came without a valid bound cookie (SPEC §16): no
    /// session for the upstream.
    Unbound,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
            Outcome::Created => "created",
            Outcome::Destroyed => "destroyed",
            Outcome::Revoked => "revoked",
            Outcome::Csrf => "csrf",
            Outcome::Unbound => "unbound",
        }
    }
}

/// The fields of a request's access line that must be taken before the request is
/// forwarded (it is consumed then). Taken only when the access line is enabled.
#[derive(Debug)]
pub struct Access {
    started: Instant,
    method: Method,
    /// The request target; only its path is ever logged.
    uri: Uri,
}

impl Access {
    /// The access fields of a request, or `None` when the access line is disabled.
    pub fn take(method: &Method, uri: &Uri) -> Option<Self> {
        tracing::enabled!(target: ACCESS_LOG, Level::INFO).then(|| Self {
            started: Instant::now(),
            method: method.clone(),
            uri: uri.clone(),
        })
    }

    /// Writes the access line: method, path (never the query), status, duration and the
    /// session outcome. Never a cookie, a token or session data.
    pub fn log(&self, status: u16, outcome: Outcome) {
        info!(
            target: ACCESS_LOG,
            method = %self.method,
            path = self.uri.path(),
            status,
            duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0,
            session = outcome.as_str(),
        );
    }
}
