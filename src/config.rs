//! `proxy.toml` (SPEC §3): raw serde tables with the SPEC defaults, validated into a typed
//! [`Config`] before anything binds a port or connects to a store.
//!
//! Every table denies unknown keys. Every error names the file, line, column and key:
//! syntax and type errors through the span toml reports, semantic errors through the span
//! of the offending key's value in the parsed document. A value that is not in the file (a
//! default) has no span, and its error says `PATH: ...` without pretending to a position.

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

pub use crate::cidr::Cidr;

/// A config file problem, with its location when known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
// Raw tables: exactly the keys of SPEC §3, with its defaults.

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
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The proxy's address.
    pub listen: SocketAddr,
    /// The upstream.
    pub upstream: Upstream,
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
}

/// The upstream application's address.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// host:port.
    pub authority: http::uri::Authority,
}

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

// ---------------------------------------------------------------------------------------
// Loading.

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// When the file cannot be read, is not valid TOML, has unknown keys or bad values.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let text = String::from_utf8(crate::fs::read_small_file(path).map_err(io_err)?).map_err(|_| {
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
            Some(span) => located(path, text, span, msg),
            None => ConfigError::Unlocated {
                path: path.to_owned(),
                msg,
            },
        }
    })?;
    Validator { path, text }.validate(raw)
}

fn located(path: &Path, text: &str, span: Range<usize>, msg: String) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    ConfigError::Located {
        path: path.to_owned(),
        line,
        col,
        msg,
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    /// An error about `key` (dotted, e.g. `cookie.same_site`), pointing at its value in
    /// the file when it is there.
    fn err(&self, key: &str, msg: impl fmt::Display) -> ConfigError {
        let msg = format!("{key}: {msg}");
        match self.span_of(key) {
            Some(span) => located(self.path, self.text, span, msg),
            None => ConfigError::Unlocated {
                path: self.path.to_owned(),
                msg,
            },
        }
    }

    /// The span of the value at dotted `key` (a trailing `[i]` picks an array element, a
    /// trailing `{name}` picks a table key), from the parsed document.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(self.text).ok()?;
        let (key, pick) = match key.find(['[', '{']) {
            Some(i) => (&key[..i], Some(&key[i..])),
            None => (key, None),
        };
        let mut table = doc.get_ref();
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
            if parts.peek().is_none() {
                return match (pick, v.get_ref()) {
                    (None, _) => Some(v.span()),
                    (Some(p), DeValue::Array(items)) if p.starts_with('[') => {
                        let i: usize = p.trim_matches(['[', ']']).parse().ok()?;
                        items.get(i).map(|item| item.span())
                    }
                    (Some(p), DeValue::Table(t)) if p.starts_with('{') => {
                        let name = p.trim_matches(['{', '}']);
                        t.iter()
                            .find(|(k, _)| k.get_ref().as_ref() == name)
                            .map(|(k, _)| k.span())
                    }
                    _ => Some(k.span()),
                };
            }
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
        None
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            server,
            session,
            cookie,
            store,
            forward,
            log,
        } = raw;

        let listen = self.socket_addr("server.listen", &server.listen)?;
        let upstream = self.upstream(&server.upstream)?;
        let admin_listen = if server.admin_listen.is_empty() {
            None
        } else {
            Some(self.socket_addr("server.admin_listen", &server.admin_listen)?)
        };
        for (key, v) in [
            ("server.upstream_timeout_ms", server.upstream_timeout_ms),
            (
                "server.header_read_timeout_ms",
                server.header_read_timeout_ms,
            ),
        ] {
            if v == 0 {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        if server.max_header_bytes < 8192 {
            return Err(self.err(
                "server.max_header_bytes",
                format!(
                    "{} is too small; the minimum is 8192",
                    server.max_header_bytes
                ),
            ));
        }
        let trusted_proxies = server
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<Cidr>()
                    .map_err(|m| self.err(&format!("server.trusted_proxies[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upstream_ca = if server.upstream_ca.is_empty() {
            None
        } else if upstream.scheme != http::uri::Scheme::HTTPS {
            return Err(self.err(
                "server.upstream_ca",
                "only applies to an https:// upstream; remove it or use https://",
            ));
        } else {
            let path = PathBuf::from(&server.upstream_ca);
            crate::tls::client_config(Some(&path))
                .map_err(|e| self.err("server.upstream_ca", e))?;
            Some(path)
        };
        let tls = match &server.tls {
            None => None,
            Some(raw) => {
                for (key, value) in [("server.tls.cert", &raw.cert), ("server.tls.key", &raw.key)] {
                    if value.is_empty() {
                        return Err(self.err(key, "is required in [server.tls] (a PEM file path)"));
                    }
                }
                let files = crate::tls::TlsFiles {
                    cert: PathBuf::from(&raw.cert),
                    key: PathBuf::from(&raw.key),
                };
                crate::tls::server_config(&files).map_err(|e| {
                    let key = match &e {
                        crate::tls::TlsError::Read { path, .. } if *path == files.cert => {
                            "server.tls.cert"
                        }
                        crate::tls::TlsError::NoCertificate { .. } => "server.tls.cert",
                        _ => "server.tls.key",
                    };
                    self.err(key, e)
                })?;
                Some(files)
            }
        };
        let threads = match server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };

        let session = self.session(session)?;
        let cookie = self.cookie(cookie, &session.cookie_name)?;
        let store = self.store(store)?;
        let forward = self.forward(forward)?;

        Ok(Config {
            path: self.path.to_owned(),
            server: ServerSettings {
                listen,
                upstream,
                threads,
                admin_listen,
                upstream_timeout: Duration::from_millis(server.upstream_timeout_ms),
                trusted_proxies,
                underscores_in_headers: server.underscores_in_headers,
                header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
                max_header_bytes: server.max_header_bytes,
                shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
                tls,
                upstream_ca,
            },
            session,
            cookie,
            store,
            forward,
            log: log.format,
        })
    }

    fn socket_addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "{value:?} is not an address:port (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
                ),
            )
        })
    }

    fn upstream(&self, value: &str) -> Result<Upstream, ConfigError> {
        const KEY: &str = "server.upstream";
        if value.is_empty() {
            return Err(self.err(
                KEY,
                "is required: the application behind the proxy, e.g. upstream = \"http://127.0.0.1:3000\"",
            ));
        }
        let uri: http::Uri = value
            .parse()
            .map_err(|_| self.err(KEY, format!("{value:?} is not a URL")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(self.err(
                KEY,
                format!("{value:?} must be an absolute URL such as \"http://127.0.0.1:3000\""),
            ));
        };
        if scheme != &http::uri::Scheme::HTTP && scheme != &http::uri::Scheme::HTTPS {
            return Err(self.err(
                KEY,
                format!("scheme {scheme:?} is not supported; use http:// or https://"),
            ));
        }
        if authority.as_str().contains('@') {
            return Err(self.err(KEY, "must not carry user:password@"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(self.err(
                KEY,
                format!("{value:?} must not have a path or query; requests keep their own path"),
            ));
        }
        Ok(Upstream {
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }

    fn session(&self, raw: RawSession) -> Result<SessionSettings, ConfigError> {
        let name = &raw.cookie_name;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(self.err(
                "session.cookie_name",
                format!(
                    "{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        for (key, v) in [
            ("session.ttl_sec", raw.ttl_sec),
            ("session.max_bytes", raw.max_bytes as u64),
        ] {
            if v == 0 {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        let cookie_refresh_sec = match raw.cookie_refresh_sec {
            0 => (raw.ttl_sec / 2).max(1),
            n if n > raw.ttl_sec => {
                return Err(self.err(
                    "session.cookie_refresh_sec",
                    format!(
                        "{n} is longer than session.ttl_sec = {}: the cookie would expire before it is re-sent",
                        raw.ttl_sec
                    ),
                ));
            }
            n => n,
        };
        Ok(SessionSettings {
            cookie_name: raw.cookie_name,
            ttl_sec: raw.ttl_sec,
            absolute_ttl_sec: raw.absolute_ttl_sec,
            cookie_refresh_sec,
            namespace: raw.namespace,
            max_bytes: raw.max_bytes,
            regenerate_on_set: raw.regenerate_on_set,
        })
    }

    fn cookie(&self, raw: RawCookie, name: &str) -> Result<CookieSettings, ConfigError> {
        if !raw.path.starts_with('/') || !raw.path.bytes().all(is_attr_byte) {
            return Err(self.err(
                "cookie.path",
                format!(
                    "{:?} must start with '/' and hold no ';' or control characters",
                    raw.path
                ),
            ));
        }
        if !raw
            .domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(self.err(
                "cookie.domain",
                format!("{:?} is not a domain name", raw.domain),
            ));
        }
        if raw.same_site == SameSite::None && !raw.secure {
            return Err(self.err(
                "cookie.same_site",
                "\"None\" requires cookie.secure = true (browsers reject it otherwise)",
            ));
        }
        // SPEC §10.9 and RFC 6265bis §4.1.3: the browser drops a prefixed cookie otherwise.
        if name.starts_with("__Host-") {
            if !raw.secure {
                return Err(self.err("cookie.secure", "must be true for a cookie named __Host-*"));
            }
            if raw.path != "/" {
                return Err(self.err("cookie.path", "must be \"/\" for a cookie named __Host-*"));
            }
            if !raw.domain.is_empty() {
                return Err(self.err("cookie.domain", "must be \"\" for a cookie named __Host-*"));
            }
        }
        if name.starts_with("__Secure-") && !raw.secure {
            return Err(self.err(
                "cookie.secure",
                "must be true for a cookie named __Secure-*",
            ));
        }
        Ok(CookieSettings {
            http_only: raw.http_only,
            secure: raw.secure,
            same_site: raw.same_site,
            path: raw.path,
            domain: raw.domain,
        })
    }

    fn store(&self, raw: RawStore) -> Result<StoreSettings, ConfigError> {
        if raw.max_sessions == 0 {
            return Err(self.err("store.max_sessions", "must be greater than 0"));
        }
        if raw.timeout_ms == 0 {
            return Err(self.err("store.timeout_ms", "must be greater than 0"));
        }
        if raw.kind == StoreKind::Redis {
            let check = |key: &str, url: &str| {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(self.err(key, "must start with redis:// or rediss://"));
                }
                redis::Client::open(url).map(drop).map_err(|e| {
                    self.err(
                        key,
                        format!(
                            "is not a valid Redis URL: {}",
                            e.detail().unwrap_or("bad URL")
                        ),
                    )
                })
            };
            if raw.cluster.is_empty() {
                check("store.url", &raw.url)?;
            }
            for (i, url) in raw.cluster.iter().enumerate() {
                check(&format!("store.cluster[{i}]"), url)?;
            }
        }
        Ok(StoreSettings {
            kind: raw.kind,
            max_sessions: raw.max_sessions,
            url: raw.url,
            cluster: raw.cluster,
            timeout: Duration::from_millis(raw.timeout_ms),
            on_error: raw.on_error,
            require_on_start: raw.require_on_start,
        })
    }

    fn forward(&self, raw: RawForward) -> Result<ForwardSettings, ConfigError> {
        let header = self.header_name("forward.header", &raw.header)?;
        if raw.token_ttl_sec == 0 {
            return Err(self.err("forward.token_ttl_sec", "must be greater than 0"));
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (name, field) in &raw.headers {
            let key = format!("forward.headers{{{name}}}");
            let h = self.header_name(&key, name)?;
            if h == header {
                return Err(self.err(&key, "is already the token header forward.header"));
            }
            if field.is_empty() {
                return Err(self.err(&key, "names an empty session field"));
            }
            headers.push((h, field.clone()));
        }
        Ok(ForwardSettings {
            header,
            token_ttl_sec: raw.token_ttl_sec,
            headers,
        })
    }

    fn header_name(&self, key: &str, name: &str) -> Result<HeaderName, ConfigError> {
        let h = HeaderName::try_from(name)
            .map_err(|_| self.err(key, format!("{name:?} is not a valid header name")))?;
        if crate::protocol::is_hop_by_hop(&h)
            || matches!(
                h.as_str(),
                "host"
                    | "cookie"
                    | "content-length"
                    | "x-forwarded-for"
                    | "x-forwarded-proto"
                    | "x-forwarded-host"
            )
        {
            return Err(self.err(
                key,
                format!("{name:?} is a header the proxy manages itself"),
            ));
        }
        Ok(h)
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a cookie attribute value (RFC 6265 `av-octet`).
fn is_attr_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b';'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(Path::new("proxy.toml"), text).map_err(|e| e.to_string())
    }

    const MIN: &str = "[server]\nupstream = \"http://127.0.0.1:3000\"\n";

    #[test]
    fn shipped_example_equals_the_defaults_except_secure() {
        let text = include_str!("../proxy.toml");
        let raw: RawConfig = toml::from_str(text).unwrap();
        let mut want = RawConfig::default();
        want.server.upstream = "http://127.0.0.1:3000".into();
        want.cookie.secure = false;
        assert_eq!(raw, want);
        parse_str(text).unwrap();
    }

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
    fn semantic_errors_point_at_the_value_and_name_the_key() {
        let err = parse_str("[server]\nupstream = \"ftp://x\"\n").unwrap_err();
        assert_eq!(
            err,
            "proxy.toml:2:12: server.upstream: scheme \"ftp\" is not supported; use http:// or https://"
        );
        let err =
            parse_str("[server]\nlisten = \"nowhere\"\nupstream = \"http://a:1\"\n").unwrap_err();
        assert!(err.starts_with("proxy.toml:2:10: server.listen: "), "{err}");
        let err = parse_str(&format!(
            "{MIN}trusted_proxies = [\"10.0.0.0/8\", \"bad\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:3:34: server.trusted_proxies[1]: "),
            "{err}"
        );
        let err = parse_str(&format!(
            "{MIN}[forward.headers]\n\"Bad Header\" = \"userId\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:1: forward.headers{Bad Header}: "),
            "{err}"
        );
    }

    #[test]
    fn missing_upstream_has_no_fake_position() {
        let err = parse_str("").unwrap_err();
        assert!(
            err.starts_with("proxy.toml: server.upstream: is required"),
            "{err}"
        );
    }

    #[test]
    fn host_prefix_rules() {
        let base = format!("{MIN}[session]\ncookie_name = \"__Host-sid\"\n[cookie]\n");
        let err = parse_str(&format!("{base}secure = false\n")).unwrap_err();
        assert_eq!(
            err,
            "proxy.toml:6:10: cookie.secure: must be true for a cookie named __Host-*"
        );
        let err = parse_str(&format!("{base}path = \"/app\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:6:8: cookie.path: must be \"/\""),
            "{err}"
        );
        let err = parse_str(&format!("{base}domain = \"example.com\"\n")).unwrap_err();
        assert!(err.starts_with("proxy.toml:6:10: cookie.domain: "), "{err}");
        parse_str(&base).unwrap();
    }

    #[test]
    fn same_site_none_requires_secure() {
        let err = parse_str(&format!(
            "{MIN}[cookie]\nsecure = false\nsame_site = \"None\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5:13: cookie.same_site: "),
            "{err}"
        );
    }

    #[test]
    fn zero_and_inconsistent_durations_are_rejected() {
        for (text, key) in [
            ("[session]\nttl_sec = 0\n", "session.ttl_sec"),
            (
                "[session]\nttl_sec = 10\ncookie_refresh_sec = 11\n",
                "session.cookie_refresh_sec",
            ),
            ("[store]\ntimeout_ms = 0\n", "store.timeout_ms"),
            (
                "header_read_timeout_ms = 0\n",
                "server.header_read_timeout_ms",
            ),
            ("max_header_bytes = 100\n", "server.max_header_bytes"),
            ("[store]\nmax_sessions = 0\n", "store.max_sessions"),
            ("[forward]\ntoken_ttl_sec = 0\n", "forward.token_ttl_sec"),
        ] {
            let err = parse_str(&format!("{MIN}{text}")).unwrap_err();
            assert!(err.contains(&format!(": {key}: ")), "{err}");
        }
    }

    #[test]
    fn redis_urls_are_checked() {
        let err = parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\nurl = \"http://x\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5:7: store.url: must start with redis://"),
            "{err}"
        );
        parse_str(&format!(
            "{MIN}[store]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\"]\n"
        ))
        .unwrap();
    }

    #[test]
    fn reserved_header_names_are_refused_for_forwarding() {
        let err = parse_str(&format!("{MIN}[forward]\nheader = \"Cookie\"\n")).unwrap_err();
        assert!(
            err.contains("forward.header: \"Cookie\" is a header the proxy manages"),
            "{err}"
        );
    }
}
