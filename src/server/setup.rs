//! What [`start`](super::start) needs before it serves: a listener bound for a takeover
//! (`SO_REUSEPORT`), the store the config asks for, and why either could fail
//! ([`StartError`], one line naming the setting to fix).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

use crate::config::{Config, StoreKind};
use crate::store::{MemoryStore, RedisStore, SessionStore, Store, StoreError};
use crate::tls::TlsError;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr} ({key}): {cause}; stop the other process or choose another address"
    )]
    Bind {
        /// The setting.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: std::io::Error,
    },
    /// A Redis URL in the config cannot be used.
    #[error("{key} = {target}: {cause}; fix {key} (redis://[user:password@]host[:port][/db])")]
    StoreInvalid {
        /// The setting: `store.url`, `store.cluster` or `store.sentinel`.
        key: &'static str,
        /// Its value, passwords masked.
        target: String,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: StoreError,
    },
    /// A `[server.tls]` or `server.upstream_ca` file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A runtime of `server.runtime = "per-core"`, or its thread, could not be started.
    #[error(
        "cannot start runtime {index} of {count} (server.threads with server.runtime = \"per-core\"): {cause}; lower server.threads"
    )]
    Runtime {
        /// Which runtime, from 0.
        index: usize,
        /// How many were asked for.
        count: usize,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: std::io::Error,
    },
    /// `store.require_on_start = true` and the store did not answer.
    #[error(
        "{key} = {target} is unreachable: {cause}; start Redis or fix {key}, or set store.require_on_start = false to start without it"
    )]
    StoreUnreachable {
        /// The setting: `store.url`, `store.cluster` or `store.sentinel`.
        key: &'static str,
        /// Its value, passwords masked.
        target: String,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: StoreError,
    },
}

/// Binds a TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    let err = |cause| StartError::Bind { key, addr, cause };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Builds the store the config asks for. A Redis store connects on first use, so the
/// proxy starts while Redis is down, unless `store.require_on_start` asks to ping it first.
///
/// # Errors
/// When a Redis URL cannot be used, or `store.require_on_start = true` and Redis does not
/// answer within `store.timeout_ms`.
pub async fn build_store(config: &Config) -> Result<Store, StartError> {
    let st = &config.store;
    match st.kind {
        StoreKind::Memory => Ok(Store::Memory(MemoryStore::new(st.max_sessions))),
        StoreKind::Redis => {
            let key = if !st.sentinel.is_empty() {
                "store.sentinel"
            } else if st.cluster.is_empty() {
                "store.url"
            } else {
                "store.cluster"
            };
            let namespace = &config.session.namespace;
            let opened = match &config.session.user_field {
                Some(field) => {
                    let ttl = Duration::from_secs(config.session.ttl_sec);
                    RedisStore::open_indexed(st, namespace, field, ttl)
                }
                None => RedisStore::open(st, namespace),
            };
            let store = opened.map_err(|cause| StartError::StoreInvalid {
                key,
                target: RedisStore::describe(st),
                cause,
            })?;
            if st.require_on_start {
                store
                    .ping()
                    .await
                    .map_err(|cause| StartError::StoreUnreachable {
                        key,
                        target: store.target().to_owned(),
                        cause,
                    })?;
                info!(store = store.target(), "session store answers");
            }
            Ok(Store::Redis(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_print_their_cause_once() {
        let timeout = || StoreError::Timeout(Duration::from_millis(5));
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let errors = [
            (
                in_use.to_string(),
                StartError::Bind {
                    key: "server.listen",
                    addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                    cause: in_use,
                },
            ),
            (
                timeout().to_string(),
                StartError::StoreInvalid {
                    key: "store.url",
                    target: "redis://127.0.0.1:6379".into(),
                    cause: timeout(),
                },
            ),
            (
                std::io::Error::from(std::io::ErrorKind::OutOfMemory).to_string(),
                StartError::Runtime {
                    index: 1,
                    count: 2,
                    cause: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                },
            ),
            (
                timeout().to_string(),
                StartError::StoreUnreachable {
                    key: "store.url",
                    target: "redis://127.0.0.1:6379".into(),
                    cause: timeout(),
                },
            ),
        ];
        // The message carries the cause, so it is not a `source` too: a chain reporter
        // prints the message and then each source.
        for (cause, err) in errors {
            assert!(err.to_string().contains(&cause), "{err}");
            assert!(std::error::Error::source(&err).is_none(), "{err}");
        }
    }
}
