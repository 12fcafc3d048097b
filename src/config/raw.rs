//! The raw tables of `proxy.toml`: exactly the keys of SPEC §3, each table with its own
//! `Default` holding the SPEC values, and the enumerations the file may name. Nothing here
//! is checked beyond its type; [`super::parse`] validates.

use serde::Deserialize;

/// The whole file as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[server]`
    pub server: RawServer,
    /// `[session]`
    pub session: RawSession,
    /// `[cookie]`
    pub cookie: RawCookie,
    /// `[store]`
    pub store: RawStore,
    /// `[forward]`
    pub forward: RawForward,
    /// `[log]`
    pub log: RawLog,
    /// `[csrf]`
    pub csrf: RawCsrf,
    /// `[dbsc]` (SPEC §16)
    pub dbsc: RawDbsc,
    /// `[[route]]` (SPEC §11)
    pub route: Vec<RawRoute>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// address:port the proxy serves.
    pub listen: String,
    /// The application behind the proxy (required).
    pub upstream: String,
    /// Worker threads, 0 = one per CPU.
    pub threads: usize,
    /// Admin listener address, "" = off.
    pub admin_listen: String,
    /// Connect + response-header timeout.
    pub upstream_timeout_ms: u64,
    /// Peers whose X-Forwarded-* are kept and extended.
    pub trusted_proxies: Vec<String>,
    /// Keep request headers with `_` (outside the reserved namespace).
    pub underscores_in_headers: bool,
    /// How long a client may take to send a request's headers (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_ms: u64,
    /// Extra PEM bundle for an https upstream.
    pub upstream_ca: String,
    /// `[server.tls]`
    pub tls: Option<RawTls>,
    /// Match route prefixes case-insensitively (SPEC §11).
    pub case_insensitive_paths: bool,
    // --- Scale and limits (connections, keep-alive, HTTP/2) ---
    /// Open client connections at most; 0 = derived from the descriptor limit.
    pub max_connections: usize,
    /// How long an idle keep-alive connection stays open.
    pub keepalive_timeout_ms: u64,
    /// Requests per connection; after it the connection closes.
    pub keepalive_requests: u64,
    /// HTTP/2: streams a client may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: streams reset by the client before being served, at most, per connection.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the proxy resets for a client's protocol error, before GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/2: response bytes buffered per stream while the client does not read.
    pub h2_max_send_buf_bytes: usize,
    // --- Runtime (README, Threads and runtimes) ---
    /// How the `threads` are used: one runtime per core, or one work-stealing runtime.
    pub runtime: Runtime,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            upstream: String::new(),
            threads: 0,
            admin_listen: String::new(),
            upstream_timeout_ms: 30_000,
            trusted_proxies: Vec::new(),
            underscores_in_headers: false,
            header_read_timeout_ms: 30_000,
            max_header_bytes: 65_536,
            shutdown_grace_ms: 30_000,
            upstream_ca: String::new(),
            tls: None,
            case_insensitive_paths: false,
            max_connections: 0,
            keepalive_timeout_ms: 75_000,
            keepalive_requests: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_max_send_buf_bytes: 65_536,
            runtime: Runtime::default(),
        }
    }
}

/// `server.runtime`: how the `server.threads` serve (README, Threads and runtimes). The
/// default is the variant marked `#[default]`; moving that line flips it (and the value
/// shown in `proxy.toml` and the README with it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// One current-thread runtime per thread, each with its own listener (`SO_REUSEPORT`),
    /// upstream connections and Redis connection.
    #[default]
    PerCore,
    /// One multi-thread runtime whose threads take work from each other, one listener.
    WorkStealing,
}

impl Runtime {
    /// The value as written in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::PerCore => "per-core",
            Runtime::WorkStealing => "work-stealing",
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `[session]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    /// Cookie name.
    pub cookie_name: String,
    /// Idle timeout.
    pub ttl_sec: u64,
    /// Hard limit since creation, 0 = none.
    pub absolute_ttl_sec: u64,
    /// Re-send the cookie this long after it was last sent; 0 = ttl_sec / 2.
    pub cookie_refresh_sec: u64,
    /// Store key prefix.
    pub namespace: String,
    /// Largest session data accepted from the upstream.
    pub max_bytes: usize,
    /// X-Session-Set always issues a new ID.
    pub regenerate_on_set: bool,
    /// The top-level data field naming the user; "" = no per-user index (SPEC §13).
    pub user_field: String,
    /// Sessions per user, 0 = no limit.
    pub max_per_user: usize,
    /// How often an upgraded connection checks that its session still exists.
    pub revalidate_sec: u64,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            cookie_name: "session".into(),
            ttl_sec: 86_400,
            absolute_ttl_sec: 0,
            cookie_refresh_sec: 0,
            namespace: "session:".into(),
            max_bytes: 8192,
            regenerate_on_set: true,
            user_field: String::new(),
            max_per_user: 0,
            revalidate_sec: 30,
        }
    }
}

/// `[cookie]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCookie {
    /// HttpOnly attribute.
    pub http_only: bool,
    /// Secure attribute.
    pub secure: bool,
    /// SameSite attribute.
    pub same_site: SameSite,
    /// Path attribute.
    pub path: String,
    /// Domain attribute, "" = host-only.
    pub domain: String,
}

impl Default for RawCookie {
    fn default() -> Self {
        Self {
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: String::new(),
        }
    }
}

/// The cookie's SameSite attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SameSite {
    /// `SameSite=Strict`
    Strict,
    /// `SameSite=Lax`
    Lax,
    /// `SameSite=None` (requires Secure)
    None,
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// Which store.
    pub kind: StoreKind,
    /// Memory store bound.
    pub max_sessions: usize,
    /// Redis URL.
    pub url: String,
    /// Redis Cluster seed URLs.
    pub cluster: Vec<String>,
    /// Per-operation timeout.
    pub timeout_ms: u64,
    /// What a failed read does.
    pub on_error: OnError,
    /// Refuse to start while the store is unreachable.
    pub require_on_start: bool,
    // Redis Sentinel (SPEC §15).
    /// Redis Sentinel URLs (instead of url / cluster).
    pub sentinel: Vec<String>,
    /// The master name the Sentinels monitor.
    pub sentinel_master: String,
    /// Redis: extend a session's expiry at most this often; 0 = max(1, ttl_sec / 100).
    pub touch_interval_sec: u64,
    /// Redis: sessions kept in this proxy's memory, kept exact by client tracking; 0 = off.
    pub local_cache: usize,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            max_sessions: 1_000_000,
            url: "redis://127.0.0.1:6379".into(),
            cluster: Vec::new(),
            timeout_ms: 1000,
            on_error: OnError::Fail,
            require_on_start: false,
            sentinel: Vec::new(),
            sentinel_master: "mymaster".into(),
            touch_interval_sec: 0,
            local_cache: 0,
        }
    }
}

/// `store.kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process, bounded LRU.
    Memory,
    /// Redis or Redis Cluster.
    Redis,
}

/// `store.on_error`: what a failed store read does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Answer 503.
    Fail,
    /// Forward the request as having no session.
    Anonymous,
}

/// `[forward]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    /// Name of the signed token header.
    pub header: String,
    /// exp - iat of the token.
    pub token_ttl_sec: u64,
    /// Plain headers from top-level session fields: header name = field.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Default for RawForward {
    fn default() -> Self {
        Self {
            header: "X-Session".into(),
            token_ttl_sec: 60,
            headers: Default::default(),
        }
    }
}

/// `[log]`
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// Output format.
    pub format: LogFormat,
}

/// `log.format`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[csrf]` (SPEC §12)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCsrf {
    /// Refuse cross-origin unsafe requests.
    pub enabled: bool,
    /// Origins that may send unsafe requests, exact `scheme://host[:port]`.
    pub trusted_origins: Vec<String>,
    /// Forward what would be refused; log and count it.
    pub report_only: bool,
}

impl Default for RawCsrf {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_origins: Vec::new(),
            report_only: false,
        }
    }
}

/// `[dbsc]` (SPEC §16)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDbsc {
    /// Offer Device Bound Session Credentials to browsers.
    pub enabled: bool,
    /// Life of the short, device-bound cookie.
    pub bound_cookie_sec: u64,
}

impl Default for RawDbsc {
    fn default() -> Self {
        Self {
            enabled: false,
            bound_cookie_sec: 600,
        }
    }
}

/// `[[route]]` (SPEC §11): one path prefix's upstream and session policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    /// The path prefix (required, starts with "/").
    pub prefix: String,
    /// "" = `server.upstream`; else another application's URL.
    pub upstream: String,
    /// What the route asks of the session.
    pub session: RouteSession,
    /// Where a browser without a session is sent; `{return_to}` = the original path.
    pub login_url: String,
    /// Top-level session fields that must equal (or, for arrays, contain) the value.
    pub require: std::collections::BTreeMap<String, serde_json::Value>,
    /// The session's last X-Session-Set must be at most this old; 0 = no limit.
    pub max_auth_age_sec: u64,
    /// The cross-origin check of `[csrf]` applies on this route.
    pub csrf: bool,
}

impl Default for RawRoute {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            upstream: String::new(),
            session: RouteSession::Optional,
            login_url: String::new(),
            require: Default::default(),
            max_auth_age_sec: 0,
            csrf: true,
        }
    }
}

pub use crate::route::RouteSession;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse_str;

    #[test]
    fn shipped_example_equals_the_defaults_except_secure_and_the_demo_route() {
        let text = include_str!("../../proxy.toml");
        let raw: RawConfig = toml::from_str(text).unwrap();
        let mut want = RawConfig::default();
        want.server.upstream = "http://127.0.0.1:3000".into();
        want.cookie.secure = false;
        // The demo's /account page (src/bin/sessiongate-demo.rs) is behind a route.
        want.route = vec![RawRoute {
            prefix: "/account".into(),
            session: RouteSession::Required,
            login_url: "/login?return_to={return_to}".into(),
            ..RawRoute::default()
        }];
        assert_eq!(raw, want);
        parse_str(text).unwrap();
    }
}
