//! `[server]` and `[server.tls]`: addresses, the upstream URL, timeouts and limits, trusted
//! proxies, and the TLS and CA files (loaded once here, so `check` catches a bad pair).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use crate::cidr::Cidr;
use crate::config::{ConfigError, ConnSettings, RawServer, ServerSettings, UpstreamUrl};

impl Validator<'_> {
    /// Checks `[server]` and resolves `threads = 0` and the `""` that means "off".
    /// `https_routes`: some `[[route]]` has an https upstream (`upstream_ca` applies to it).
    pub(super) fn server(
        &self,
        server: RawServer,
        https_routes: bool,
    ) -> Result<ServerSettings, ConfigError> {
        let listen = self.socket_addr("server.listen", &server.listen)?;
        const KEY: &str = "server.upstream";
        if server.upstream.is_empty() {
            return Err(self.err(
                KEY,
                "is required: the application behind the proxy, e.g. upstream = \"http://127.0.0.1:3000\"",
            ));
        }
        let upstream = self.upstream_url(KEY, &server.upstream)?;
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
        } else if upstream.scheme != http::uri::Scheme::HTTPS && !https_routes {
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
        Ok(ServerSettings {
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
            case_insensitive_paths: server.case_insensitive_paths,
            conn: self.conn(&server)?,
            runtime: server.runtime,
        })
    }

    /// Scale and limits: connections, keep-alive, HTTP/2.
    fn conn(&self, server: &RawServer) -> Result<ConnSettings, ConfigError> {
        for (key, v) in [
            ("server.keepalive_timeout_ms", server.keepalive_timeout_ms),
            ("server.keepalive_requests", server.keepalive_requests),
            (
                "server.h2_max_concurrent_streams",
                u64::from(server.h2_max_concurrent_streams),
            ),
            (
                "server.h2_max_pending_accept_reset_streams",
                server.h2_max_pending_accept_reset_streams as u64,
            ),
            (
                "server.h2_max_local_error_reset_streams",
                server.h2_max_local_error_reset_streams as u64,
            ),
        ] {
            if v == 0 {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        if server.h2_max_send_buf_bytes < 16_384 {
            return Err(self.err(
                "server.h2_max_send_buf_bytes",
                format!(
                    "{} is too small; the minimum is 16384 (one HTTP/2 frame)",
                    server.h2_max_send_buf_bytes
                ),
            ));
        }
        if server.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(self.err(
                "server.max_connections",
                format!(
                    "{} is too large; the maximum is {} (0 = derived from the descriptor limit)",
                    server.max_connections,
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            ));
        }
        Ok(ConnSettings {
            max_connections: server.max_connections,
            keepalive_timeout: Duration::from_millis(server.keepalive_timeout_ms),
            keepalive_requests: server.keepalive_requests,
            h2_max_concurrent_streams: server.h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: server.h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: server.h2_max_local_error_reset_streams,
            h2_max_send_buf_bytes: server.h2_max_send_buf_bytes,
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

    /// An application's URL (`server.upstream`, `route[i].upstream`): http or https,
    /// host:port, nothing else.
    pub(super) fn upstream_url(&self, key: &str, value: &str) -> Result<UpstreamUrl, ConfigError> {
        let uri: http::Uri = value
            .parse()
            .map_err(|_| self.err(key, format!("{value:?} is not a URL")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(self.err(
                key,
                format!("{value:?} must be an absolute URL such as \"http://127.0.0.1:3000\""),
            ));
        };
        if scheme != &http::uri::Scheme::HTTP && scheme != &http::uri::Scheme::HTTPS {
            return Err(self.err(
                key,
                format!("scheme {scheme:?} is not supported; use http:// or https://"),
            ));
        }
        if authority.as_str().contains('@') {
            return Err(self.err(key, "must not carry user:password@"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(self.err(
                key,
                format!("{value:?} must not have a path or query; requests keep their own path"),
            ));
        }
        Ok(UpstreamUrl {
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn scale_limits_have_safe_defaults_and_refuse_zero() {
        let config =
            crate::config::parse(std::path::Path::new("proxy.toml"), MIN).expect("a valid config");
        let c = config.server.conn;
        assert_eq!(c.max_connections, 0, "0 = derived at start");
        assert_eq!(c.keepalive_timeout.as_millis(), 75_000);
        assert_eq!(c.keepalive_requests, 10_000);
        assert_eq!(c.h2_max_concurrent_streams, 100);
        assert_eq!(c.h2_max_pending_accept_reset_streams, 20);
        assert_eq!(c.h2_max_local_error_reset_streams, 1024);
        assert_eq!(c.h2_max_send_buf_bytes, 65_536);
        for key in [
            "keepalive_timeout_ms",
            "keepalive_requests",
            "h2_max_concurrent_streams",
            "h2_max_pending_accept_reset_streams",
            "h2_max_local_error_reset_streams",
        ] {
            let err = parse_str(&format!("{MIN}{key} = 0\n")).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "proxy.toml:3:{}: server.{key}: must be greater than 0",
                    key.len() + 4
                )
            );
        }
        let err = parse_str(&format!("{MIN}h2_max_send_buf_bytes = 100\n")).unwrap_err();
        assert_eq!(
            err,
            "proxy.toml:3:25: server.h2_max_send_buf_bytes: 100 is too small; the minimum is 16384 (one HTTP/2 frame)"
        );
    }
}
