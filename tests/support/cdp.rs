//! Headless Chromium driven over the DevTools protocol: a minimal WebSocket client (RFC
//! 6455: masked text frames out, unmasked frames in) on the browser's debugging port, one
//! page target in flattened session mode, commands answered by id, events kept in order.
//!
//! [`Browser::launch`] returns `None` (the test is skipped, with a printed reason) when
//! `chromium` is not on `PATH`, except under `CI=true`, where it panics.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a launch or one command may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running headless Chromium and the page it drives.
pub struct Browser {
    _child: Child,
    profile: PathBuf,
    ws: TcpStream,
    next_id: u64,
    session: String,
    /// Every event received so far, in order.
    pub events: Vec<Value>,
}

impl Browser {
    /// Starts `chromium` with `flags` in a fresh profile and opens one page.
    pub async fn launch(flags: &[&str]) -> Option<Self> {
        let program = super::chromium::Chromium::find()?.program().to_owned();
        let profile = std::env::temp_dir().join(format!(
            "sessiongate-cdp-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let mut child = Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.to_owned();
                }
            }
            panic!("chromium exited before it listened for DevTools");
        })
        .await
        .expect("chromium listens for DevTools in time");
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let rest = url.strip_prefix("ws://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut ws = TcpStream::connect(authority).await.unwrap();
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        ws.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(ws.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut browser = Self {
            _child: child,
            profile,
            ws,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        Some(browser)
    }

    /// Sends a command to the page and returns its result (panics on a protocol error).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|err| panic!("{method}: {err}"))
    }

    /// Sends a command to the page: its result, or the protocol error.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.send(&msg.to_string()).await;
        tokio::time::timeout(DEADLINE, async {
            loop {
                let msg: Value = serde_json::from_str(&self.recv().await).unwrap();
                if msg["id"] == id {
                    if let Some(err) = msg.get("error") {
                        return Err(err.clone());
                    }
                    return Ok(msg["result"].clone());
                }
                self.events.push(msg);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} answered within {DEADLINE:?}"))
    }

    /// Evaluates `expr` in the page, awaiting a promise, and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// The browser's cookies for `url`, HttpOnly ones included.
    pub async fn cookies(&mut self, url: &str) -> Vec<Value> {
        let r = self
            .call("Network.getCookies", json!({"urls": [url]}))
            .await;
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    async fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = rand_suffix().to_be_bytes();
        let mask = [mask[4], mask[5], mask[6], mask[7]];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).await.unwrap();
    }

    async fn recv(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let b0 = self.ws.read_u8().await.unwrap();
            let b1 = self.ws.read_u8().await.unwrap();
            let len = match b1 & 0x7f {
                126 => u64::from(self.ws.read_u16().await.unwrap()),
                127 => self.ws.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.ws.read_exact(&mut payload).await.unwrap();
            match b0 & 0x0f {
                0 | 1 => message.extend_from_slice(&payload),
                8 => panic!("chromium closed the DevTools connection"),
                _ => continue,
            }
            if b0 & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A value that differs between calls (for profile names and mask keys).
fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_be_bytes(b)
}
