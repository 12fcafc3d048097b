//! `proxy.toml` (SPEC §3): raw serde tables with the SPEC defaults ([`RawConfig`]),
//! validated into a typed [`Config`] before anything binds a port or connects to a store.
//!
//! Every table denies unknown keys. Every error names the file, line, column and key:
//! syntax and type errors through the span toml reports, semantic errors through the span
//! of the offending key's value in the parsed document. A value that is not in the file (a
//! default) has no span, and its error says `PATH: ...` without pretending to a position.
//!
//! This module holds the error type, the validated settings and the entry points; `raw`
//! the serde tables and their defaults; `validate` the checks, one file per table.

mod raw;
mod validate;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use self::raw::RawCsrf;
pub use self::raw::RawDbsc;
pub use self::raw::Runtime;
pub use self::raw::{
    LogFormat, OnError, RawConfig, RawCookie, RawForward, RawLog, RawRoute, RawServer, RawSession,
    RawStore, RawTls, RouteSession, SameSite, StoreKind,
};
pub use crate::cidr::Cidr;

/// A session's `last_seen` in its user's index is kept to within this many seconds
/// (SPEC §13); with `session.user_field`, `store.touch_interval_sec` is at most this.
pub const LAST_SEEN_EVERY_SEC: u64 = 60;

/// A config file problem, with its location when known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {cause}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: std::io::Error,
    },
    /// A problem at a known place in the file.
    #[error("{path}:{line}:{col}: {msg}", path = path.display())]
    Located {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
        /// What is wrong.
        msg: String,
    },
    /// A problem with a value that is not in the file (a default or a combination).
    #[error("{path}: {msg}", path = path.display())]
    Unlocated {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

// ---------------------------------------------------------------------------------------
// Validated config.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// `[server]`
    pub server: ServerSettings,
    /// `[session]`
    pub session: SessionSettings,
    /// `[cookie]`
    pub cookie: CookieSettings,
    /// `[store]`
    pub store: StoreSettings,
    /// `[forward]`
    pub forward: ForwardSettings,
    /// `[log]`
    pub log: LogFormat,
    /// `[csrf]`
    pub csrf: CsrfSettings,
    /// `[dbsc]` (SPEC §16)
    pub dbsc: DbscSettings,
    /// `[[route]]` and `server.case_insensitive_paths` (SPEC §11).
    pub routes: crate::route::RouteTable,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The proxy's address.
    pub listen: SocketAddr,
    /// The upstream.
    pub upstream: UpstreamUrl,
    /// Worker threads (resolved: never 0).
    pub threads: usize,
    /// Admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Connect + response-header timeout.
    pub upstream_timeout: Duration,
    /// Peers whose X-Forwarded-* are trusted.
    pub trusted_proxies: Vec<Cidr>,
    /// Keep underscore headers.
    pub underscores_in_headers: bool,
    /// Request header read timeout.
    pub header_read_timeout: Duration,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// HTTPS on `listen`, when `[server.tls]` is set.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Extra CA bundle for an https upstream.
    pub upstream_ca: Option<PathBuf>,
    /// Match route prefixes case-insensitively.
    pub case_insensitive_paths: bool,
    /// Connections, keep-alive and HTTP/2 limits.
    pub conn: ConnSettings,
    /// How the threads serve: a runtime per core, or one work-stealing runtime.
    pub runtime: Runtime,
}

/// Validated connection limits of `[server]` (README, Scale and limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    /// Open client connections at most; 0 = derived from the descriptor limit at start.
    pub max_connections: usize,
    /// Idle keep-alive timeout.
    pub keepalive_timeout: Duration,
    /// Requests per connection (never 0).
    pub keepalive_requests: u64,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: client-reset streams not yet served, at most (rapid reset guard).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams reset for protocol errors before the connection gets GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/2: bytes buffered per stream for a client that does not read.
    pub h2_max_send_buf_bytes: usize,
}

pub use crate::upstream::UpstreamUrl;

/// Validated `[session]`.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Cookie name.
    pub cookie_name: String,
    /// Idle timeout, seconds.
    pub ttl_sec: u64,
    /// Hard limit, seconds, 0 = none.
    pub absolute_ttl_sec: u64,
    /// Cookie re-send interval, seconds (resolved: never 0).
    pub cookie_refresh_sec: u64,
    /// Store key prefix.
    pub namespace: String,
    /// Largest session data, bytes.
    pub max_bytes: usize,
    /// Set always issues a new ID.
    pub regenerate_on_set: bool,
    /// The top-level data field naming the user; `None` = no per-user index.
    pub user_field: Option<String>,
    /// Sessions per user, 0 = no limit.
    pub max_per_user: usize,
    /// Seconds between an upgraded connection's checks that its session still exists.
    pub revalidate_sec: u64,
}

/// Validated `[cookie]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// HttpOnly.
    pub http_only: bool,
    /// Secure.
    pub secure: bool,
    /// SameSite.
    pub same_site: SameSite,
    /// Path.
    pub path: String,
    /// Domain, "" = host-only.
    pub domain: String,
}

/// Validated `[store]`.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Which store.
    pub kind: StoreKind,
    /// Memory bound.
    pub max_sessions: usize,
    /// Redis URL (when `cluster` is empty).
    pub url: String,
    /// Cluster seeds.
    pub cluster: Vec<String>,
    /// Per-operation timeout.
    pub timeout: Duration,
    /// Failed reads.
    pub on_error: OnError,
    /// Refuse to start while unreachable.
    pub require_on_start: bool,
    // Redis Sentinel (SPEC §15).
    /// Sentinel URLs; when not empty, the master is asked of them (`url` and `cluster`
    /// are then unused).
    pub sentinel: Vec<String>,
    /// The master name the Sentinels monitor.
    pub sentinel_master: String,
    /// Redis: how often at most a read extends a session's expiry (resolved: never 0).
    pub touch_interval: Duration,
    /// Redis: sessions kept in this proxy's memory; 0 = no local cache.
    pub local_cache: usize,
}

/// Validated `[forward]`.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Token header name.
    pub header: HeaderName,
    /// Token lifetime, seconds.
    pub token_ttl_sec: u64,
    /// Plain headers: (header, top-level field).
    pub headers: Vec<(HeaderName, String)>,
}

/// Validated `[csrf]` (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrfSettings {
    /// Refuse cross-origin unsafe requests.
    pub enabled: bool,
    /// Trusted origins, normalized as a browser sends them (lowercase scheme and host).
    pub trusted_origins: Vec<String>,
    /// Forward what would be refused; log and count it.
    pub report_only: bool,
}

/// Validated `[dbsc]` (SPEC §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbscSettings {
    /// Offer Device Bound Session Credentials to browsers.
    pub enabled: bool,
    /// Life of the bound cookie, seconds (never 0).
    pub bound_cookie_sec: u64,
}

// ---------------------------------------------------------------------------------------
// Loading.

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// When the file cannot be read, is not valid TOML, has unknown keys or bad values.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let io_err = |cause| ConfigError::Io {
        path: path.to_owned(),
        cause,
    };
    let text =
        String::from_utf8(crate::fs::read_small_file(path).map_err(io_err)?).map_err(|_| {
            io_err(std::io::Error::new(
                ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        })?;
    parse(path, &text)
}

/// Parses and validates config `text` that came from `path`.
///
/// # Errors
/// As [`load`], without the I/O.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim_end().to_owned();
        match e.span() {
            Some(span) => validate::located(path, text, span, msg),
            None => ConfigError::Unlocated {
                path: path.to_owned(),
                msg,
            },
        }
    })?;
    validate::validate(path, text, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as `proxy.toml`, the error as the line `check` prints.
    pub(super) fn parse_str(text: &str) -> Result<Config, String> {
        parse(Path::new("proxy.toml"), text).map_err(|e| e.to_string())
    }

    /// The smallest valid file.
    pub(super) const MIN: &str = "[server]\nupstream = \"http://127.0.0.1:3000\"\n";

    #[test]
    fn minimal_file_gets_spec_defaults() {
        let c = parse_str(MIN).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.upstream.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(c.server.upstream_timeout, Duration::from_secs(30));
        assert!(c.server.threads >= 1);
        assert_eq!(c.session.cookie_name, "session");
        assert_eq!(c.session.ttl_sec, 86_400);
        assert_eq!(c.session.cookie_refresh_sec, 43_200);
        assert_eq!(c.session.namespace, "session:");
        assert_eq!(c.session.max_bytes, 8192);
        assert!(c.session.regenerate_on_set);
        assert!(c.cookie.secure && c.cookie.http_only);
        assert_eq!(c.cookie.same_site, SameSite::Lax);
        assert_eq!(c.store.kind, StoreKind::Memory);
        assert_eq!(c.store.max_sessions, 1_000_000);
        assert_eq!(c.store.on_error, OnError::Fail);
        assert_eq!(c.forward.header.as_str(), "x-session");
        assert_eq!(c.forward.token_ttl_sec, 60);
        assert_eq!(c.log, LogFormat::Text);
    }

    #[test]
    fn unreadable_file_prints_its_cause_once() {
        let path = Path::new("/nonexistent/proxy.toml");
        let cause = std::fs::metadata(path).unwrap_err().to_string();
        let err = load(path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("/nonexistent/proxy.toml: cannot read config file: {cause}")
        );
        // The message carries the cause, so it is not a `source` too: a chain reporter
        // prints the message and then each source.
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn unknown_key_is_located() {
        let err = parse_str(&format!("{MIN}[session]\nttl_secs = 5\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:1: unknown field `ttl_secs`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_and_bad_enum_are_located() {
        let err = parse_str(&format!("{MIN}[session]\nttl_sec = \"long\"\n")).unwrap_err();
        assert!(err.starts_with("proxy.toml:4:11: "), "{err}");
        let err = parse_str(&format!("{MIN}[cookie]\nsame_site = \"lax\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:13: unknown variant `lax`"),
            "{err}"
        );
        let err = parse_str("[server\n").unwrap_err();
        assert!(err.starts_with("proxy.toml:1:"), "{err}");
    }

    #[test]
    fn server_runtime_takes_its_two_values() {
        let with =
            |v: &str| parse_str(&MIN.replace("[server]\n", &format!("[server]\nruntime = {v}\n")));
        assert_eq!(
            with("\"per-core\"").unwrap().server.runtime,
            Runtime::PerCore
        );
        assert_eq!(
            with("\"work-stealing\"").unwrap().server.runtime,
            Runtime::WorkStealing
        );
        let err = with("\"threads\"").unwrap_err();
        assert!(
            err.starts_with(
                "proxy.toml:2:11: unknown variant `threads`, expected `per-core` or `work-stealing`"
            ),
            "{err}"
        );
    }
}
