//! What goes over the wire to a server under test: an HTTP client, a fully read response,
//! and raw bytes on a fresh connection (for what a well-behaved client would never send).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain-http client (HTTP/1.1, keep-alive).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response, fully read.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Every `Set-Cookie` for `name`.
    pub fn set_cookies(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| v.starts_with(&format!("{name}=")))
            .collect()
    }

    /// The value of the one `Set-Cookie` for `name`, if any.
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        let all = self.set_cookies(name);
        assert!(
            all.len() <= 1,
            "more than one Set-Cookie for {name}: {all:?}"
        );
        all.first().map(|c| {
            let first = c.split(';').next().unwrap();
            first[name.len() + 1..].to_owned()
        })
    }

    /// `session=VALUE` for a `Cookie` header, from this response's `Set-Cookie`.
    pub fn session_cookie(&self) -> String {
        format!(
            "session={}",
            self.cookie_value("session")
                .expect("a session cookie was set")
        )
    }

    pub fn is_clear(&self, name: &str) -> bool {
        self.set_cookies(name)
            .iter()
            .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it or 5 seconds pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
