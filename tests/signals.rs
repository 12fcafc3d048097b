//! SIGHUP on the built binary never stops the proxy (SPEC §9): `systemctl reload` and log
//! rotation send it. With `[server.tls]` it reloads the certificate pair; without, it is
//! logged and ignored. Either way the proxy keeps serving, and SIGTERM still exits 0.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A config listening on an ephemeral port (the address is read from the log), with
/// `extra` appended.
fn config_file(dir: &Path, upstream: SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nthreads = 1\n{extra}\n[cookie]\nsecure = false\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    path
}

fn test_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sessiongate-signals-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA and a leaf for localhost it signed, written into `dir`; the `[server.tls]` table
/// and a client connector that trusts the CA.
fn pki(dir: &Path) -> (String, TlsConnector) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let table = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    (table, TlsConnector::from(Arc::new(client)))
}

/// `GET /` on a fresh connection, over TLS when `tls` is set: the raw response, or the
/// reason there is none.
async fn get(addr: SocketAddr, tls: Option<&TlsConnector>) -> String {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut out = Vec::new();
        match tls {
            None => {
                let mut s = tcp;
                s.write_all(REQUEST).await?;
                s.read_to_end(&mut out).await?;
            }
            Some(connector) => {
                let name = "localhost".try_into().expect("a valid server name");
                let mut s = connector.connect(name, tcp).await?;
                s.write_all(REQUEST).await?;
                // A close without close_notify after the whole response is fine here.
                let _ = s.read_to_end(&mut out).await;
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => format!("no response: {e}"),
        Err(_) => "no response within 5 s".to_owned(),
    }
}

/// Polls until `GET /` is answered 200.
async fn serves(addr: SocketAddr, tls: Option<&TlsConnector>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(addr, tls).await;
        if response.starts_with("HTTP/1.1 200 ") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy does not serve: {response}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the binary, checks that it serves, sends SIGHUP twice (each answered with the
/// `answer` log line), checks that it is alive and still serves, then stops it with SIGTERM.
async fn survives_sighup(config: &Path, tls: Option<&TlsConnector>, answer: &str) {
    let mut proc = spawn_binary(config);
    let started = proc.wait_for("sessiongate listening").await;
    let addr: SocketAddr = started["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(started["https"], tls.is_some());
    serves(addr, tls).await;

    for _ in 0..2 {
        proc.signal("-HUP");
        proc.wait_for(answer).await;
    }
    assert!(
        proc.is_running(),
        "SIGHUP stopped the proxy; log: {:?}",
        proc.log()
    );
    serves(addr, tls).await;

    proc.signal("-TERM");
    proc.wait_for("stopped").await;
    assert_eq!(proc.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_is_logged_and_the_proxy_keeps_serving() {
    trace_init();
    let app = app().await;
    let config = config_file(&test_dir("plain"), app.addr, "");
    survives_sighup(&config, None, "SIGHUP received; nothing to reload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_tls_reloads_and_the_proxy_keeps_serving() {
    trace_init();
    let app = app().await;
    let dir = test_dir("tls");
    let (tls_table, connector) = pki(&dir);
    let config = config_file(&dir, app.addr, &tls_table);
    survives_sighup(
        &config,
        Some(&connector),
        "reloaded the TLS certificate and key",
    )
    .await;
}
