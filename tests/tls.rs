//! HTTPS on `listen` (HTTP/1.1 and HTTP/2 by ALPN), certificate reload, and https upstreams.

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls::pki_types::CertificateDer;
use support::*;
use tokio::net::TcpListener;

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sessiongate-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a leaf for localhost / 127.0.0.1 into `<prefix>-cert.pem` / `<prefix>-key.pem`.
    fn leaf(&self, prefix: &str) -> (PathBuf, PathBuf) {
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{prefix}-cert.pem")),
            self.dir.join(format!("{prefix}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn https_client(
    ca: &Path,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector)
}

async fn get(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: &str,
    cookie: Option<&str>,
) -> http::Response<Bytes> {
    let mut req = http::Request::get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

fn session_cookie(res: &http::Response<Bytes>) -> (String, String) {
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    (set.split(';').next().unwrap().to_owned(), set)
}

#[tokio::test]
async fn https_round_trip_over_http1_and_http2() {
    trace_init();
    let pki = Pki::new("roundtrip");
    let (cert, key) = pki.leaf("server");
    let app = app().await;
    let gate = gate(app.addr)
        .cookie("secure = true")
        .toml(&tls_table(&cert, &key))
        .run()
        .await;
    let base = format!("https://localhost:{}", gate.addr.port());

    for h2 in [false, true] {
        let client = https_client(&pki.ca_path(), h2);
        let login = get(&client, &format!("{base}/login"), None).await;
        assert_eq!(
            login.version(),
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(login.status(), 200);
        let (cookie, set) = session_cookie(&login);
        assert!(set.contains("Secure"), "{set}");
        assert_eq!(app.last().header("x-forwarded-proto"), Some("https"));

        let me = get(&client, &format!("{base}/me"), Some(&cookie)).await;
        assert_eq!(me.status(), 200);
        verify_token(app.last().header("x-session").unwrap(), UPSTREAM_SECRET);

        let logout = get(&client, &format!("{base}/logout"), Some(&cookie)).await;
        assert!(
            logout.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        get(&client, &format!("{base}/me"), Some(&cookie)).await;
        assert!(app.last().header("x-session").is_none(), "h2={h2}");
    }
    gate.join().await;
}

/// The certificate the server presents to a fresh connection.
async fn presented(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_traffic_and_a_bad_pair_is_refused() {
    trace_init();
    let pki = Pki::new("reload");
    let (cert, key) = pki.leaf("live");
    let app = app().await;
    let gate = gate(app.addr).toml(&tls_table(&cert, &key)).run().await;
    let first = presented(gate.addr, &pki.ca_path()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("https://localhost:{}/", gate.addr.port());
        let client = https_client(&pki.ca_path(), false);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                let req = http::Request::get(&url)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    eventually(
        || ok.load(Ordering::Relaxed) > 20,
        "traffic before the reload",
    )
    .await;

    // A new pair in place of the old files, then reload.
    let (new_cert, new_key) = pki.leaf("next");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    gate.running.tls().unwrap().reload().unwrap();
    let second = presented(gate.addr, &pki.ca_path()).await;
    assert_ne!(first, second, "reload did not take effect");

    // A mismatched pair is refused and the current one stays in service.
    let (_, stray_key) = pki.leaf("stray");
    std::fs::copy(&stray_key, &key).unwrap();
    let err = gate
        .running
        .tls()
        .unwrap()
        .reload()
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(presented(gate.addr, &pki.ca_path()).await, second);

    let seen = ok.load(Ordering::Relaxed);
    eventually(
        || ok.load(Ordering::Relaxed) > seen + 20,
        "traffic after the reload",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reload"
    );
    gate.join().await;
}

#[tokio::test]
async fn bad_tls_files_are_refused_naming_the_file() {
    let pki = Pki::new("bad");
    let (cert, _) = pki.leaf("a");
    let (_, other_key) = pki.leaf("b");
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:1\"\n{}\n",
        tls_table(&cert, &other_key)
    );
    let err = sessiongate::config::parse(Path::new("proxy.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("proxy.toml:5:7: server.tls.key: "), "{err}");
    assert!(
        err.contains("b-key.pem") && err.contains("does not match"),
        "{err}"
    );

    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:1\"\n{}\n",
        tls_table(&pki.dir.join("nope.pem"), &other_key)
    );
    let err = sessiongate::config::parse(Path::new("proxy.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.tls.cert: ") && err.contains("nope.pem: cannot read"),
        "{err}"
    );

    // A device is refused at once instead of read without end.
    let text = format!(
        "[server]\nupstream = \"http://127.0.0.1:1\"\n{}\n",
        tls_table(Path::new("/dev/zero"), &other_key)
    );
    let err = sessiongate::config::parse(Path::new("proxy.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.tls.cert: ")
            && err.ends_with("/dev/zero: cannot read: not a regular file"),
        "{err}"
    );
}

/// An HTTPS upstream with a certificate from `pki`.
async fn https_upstream(pki: &Pki) -> std::net::SocketAddr {
    let (cert, key) = pki.leaf("upstream");
    let config =
        sessiongate::tls::server_config(&sessiongate::tls::TlsFiles { cert, key }).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let proto = req.headers().get("x-forwarded-proto").cloned();
                        let mut res =
                            http::Response::new(Full::new(Bytes::from_static(b"secure hello")));
                        if let Some(p) = proto {
                            res.headers_mut().insert("x-saw-proto", p);
                        }
                        res.headers_mut().insert(
                            "x-session-set",
                            http::HeaderValue::from_static(r#"{"via":"https"}"#),
                        );
                        Ok::<_, Infallible>(res)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_is_verified_against_upstream_ca() {
    trace_init();
    let pki = Pki::new("upstream");
    let up = https_upstream(&pki).await;
    let upstream = format!("https://localhost:{}", up.port());

    let text = |ca: &Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nupstream_ca = {:?}\n[cookie]\nsecure = false\n",
            ca.display().to_string()
        )
    };
    let secrets = sessiongate::secrets::Secrets::from_env(
        &[("SESSION_SECRET".to_owned(), SECRET.to_owned())]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
    )
    .unwrap();

    // Trusted CA: the request goes through and the directive is applied.
    let config = sessiongate::config::parse(Path::new("t.toml"), &text(&pki.ca_path())).unwrap();
    let running = sessiongate::server::start(&config, &secrets).await.unwrap();
    let res = raw(
        running.addr,
        b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with("secure hello"));
    assert!(res.contains("set-cookie: session="));
    assert!(res.contains("x-saw-proto: http\r\n"));
    running.shutdown().await;

    // Another CA: the upstream's certificate does not verify -> 502.
    let other = Pki::new("other");
    let config = sessiongate::config::parse(Path::new("t.toml"), &text(&other.ca_path())).unwrap();
    let running = sessiongate::server::start(&config, &secrets).await.unwrap();
    let res = raw(
        running.addr,
        b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 502"), "{res}");
    assert!(!res.contains("set-cookie"));
    running.shutdown().await;
}

/// The binary reloads its certificate on SIGHUP, and keeps the old one when the new pair is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_in_the_running_binary() {
    trace_init();
    let pki = Pki::new("sighup");
    let (cert, key) = pki.leaf("live");
    let config = pki.dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n{}\n[log]\nformat = \"json\"\n",
            tls_table(&cert, &key)
        ),
    )
    .unwrap();
    let mut proc = spawn_binary(&config);
    let addr = proc.listening().await;
    let first = presented(addr, &pki.ca_path()).await;

    // A mismatched key: refused, the old certificate stays.
    let (_, stray_key) = pki.leaf("stray");
    std::fs::copy(&stray_key, &key).unwrap();
    proc.signal("-HUP");
    let refused = proc
        .wait_for("TLS reload refused; the old certificate stays in service")
        .await
        .to_string();
    assert!(refused.contains("does not match"), "{refused}");
    // A good pair: taken on the next SIGHUP.
    let (new_cert, new_key) = pki.leaf("next");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert_eq!(
        presented(addr, &pki.ca_path()).await,
        first,
        "a bad pair replaced the certificate"
    );
    proc.signal("-HUP");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while presented(addr, &pki.ca_path()).await == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(proc.is_running(), "the process died");
}
