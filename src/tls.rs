//! TLS with rustls and the ring provider (no OpenSSL, no cmake): serving HTTPS on `listen`
//! from `[server.tls]` PEM files (HTTP/1.1 and HTTP/2 by ALPN), reloading them on SIGHUP,
//! and verifying an `https://` upstream against the system roots plus `server.upstream_ca`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The certificate chain and key files of `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What is wrong with a certificate, key or CA file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why; shown in the message, so it is not also the error's `source`.
        cause: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no usable private key.
    #[error("{}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate, or rustls refused them.
    #[error("{} and {}: {reason}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// A CA bundle certificate was refused.
    #[error("{}: invalid CA certificate: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::fs::read_small_file(path).map_err(|cause| TlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads `files` into a server config offering `h2` and `http/1.1` by ALPN.
///
/// # Errors
/// When a file is unreadable, holds no certificate or key, or the key does not match.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: files.key.clone(),
    })?;
    let pair_err = |e: rustls::Error| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the certificate".to_owned()
            }
            other => other.to_string(),
        },
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The serving certificate, swappable while connections are open.
#[derive(Debug)]
pub struct Reloadable {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    /// Loads `files` for the first time.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let current = RwLock::new(server_config(&files)?);
        Ok(Self { files, current })
    }

    /// An acceptor with the current certificate; connections keep the one they started with.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reads the files again and swaps them in. On error the old pair stays in service.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = server_config(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }
}

/// The client config for an `https://` upstream: system roots plus `extra_ca`.
///
/// # Errors
/// When `extra_ca` is unreadable or holds no valid certificate.
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::BadCa {
            path: extra_ca.map_or_else(PathBuf::new, Path::to_owned),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // ALPN is left to the connector, which offers what it speaks (HTTP/1.1).
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("sessiongate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &a.cert.pem());
        let key = write(&dir, "key.pem", &a.signing_key.serialize_pem());
        let other_key = write(&dir, "other.pem", &b.signing_key.serialize_pem());
        let garbage = write(&dir, "garbage.pem", "hello");

        server_config(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();

        let err = server_config(&TlsFiles {
            cert: cert.clone(),
            key: other_key.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with("the private key does not match the certificate"),
            "{err}"
        );
        assert!(err.contains("cert.pem") && err.contains("other.pem"));

        let err = server_config(&TlsFiles {
            cert: garbage.clone(),
            key: key.clone(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("garbage.pem: no PEM certificate found"),
            "{err}"
        );

        let err = server_config(&TlsFiles {
            cert: cert.clone(),
            key: garbage,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("garbage.pem: no PEM private key found"),
            "{err}"
        );

        let err = server_config(&TlsFiles {
            cert: dir.join("missing.pem"),
            key,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.pem: cannot read"), "{err}");

        client_config(Some(&cert)).unwrap();
    }

    #[test]
    fn unreadable_file_prints_its_cause_once() {
        let path = Path::new("/nonexistent/cert.pem");
        let cause = std::fs::metadata(path).unwrap_err().to_string();
        let err = certificates(path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("/nonexistent/cert.pem: cannot read: {cause}")
        );
        // The message carries the cause, so it is not a `source` too.
        assert!(std::error::Error::source(&err).is_none());
    }
}
