//! Headless Chromium, driven by its command line only (no WebDriver): it loads one URL,
//! runs the page's scripts (a form that submits itself) and prints the final DOM.
//! [`Chromium::open`] keeps a page open instead and drives it over the DevTools protocol on
//! a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL on descriptors 3 and 4),
//! to type, click, read the DOM and take screenshots.
//!
//! When `chromium` is not on `PATH`, [`Chromium::find`] prints
//! `skipping: chromium not found on PATH` and returns `None` (the test returns early),
//! except under `CI=true`, where it panics: CI must run these tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one page visit may take, start-up included.
const VISIT_DEADLINE: Duration = Duration::from_secs(90);
/// How long one DevTools command may take (the first includes the browser's start-up).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How long [`Tab::wait_for`] polls a condition.
const WAIT_DEADLINE: Duration = Duration::from_secs(15);

static PROFILE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The `chromium` program.
pub struct Chromium {
    program: PathBuf,
}

impl Chromium {
    /// `chromium` from `PATH`; `None` (test skipped) without it, a panic under `CI=true`.
    pub fn find() -> Option<Self> {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        });
        if let Some(program) = found {
            return Some(Self { program });
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium not found on PATH; CI must install it (apt-get install chromium)");
        }
        println!("skipping: chromium not found on PATH");
        None
    }

    /// The program's path.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// Loads `url` in a fresh profile, lets its scripts and the navigations they start run
    /// (in virtual time, so no wall-clock wait), and returns the final DOM.
    pub async fn visit(&self, url: &str) -> String {
        let profile = fresh_profile();
        let run = tokio::process::Command::new(&self.program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(VISIT_DEADLINE, run)
            .await
            .unwrap_or_else(|_| panic!("chromium did not finish {url} within {VISIT_DEADLINE:?}"))
            .expect("chromium runs");
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium failed on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn fresh_profile() -> PathBuf {
    let n = PROFILE_COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sessiongate-chromium-{}-{n}", std::process::id()))
}

impl Chromium {
    /// Starts a browser with one page at `url` (`width` x `height` CSS pixels), and waits
    /// until the page has loaded.
    pub async fn open(&self, url: &str, width: u32, height: u32) -> Tab {
        let profile = fresh_profile();
        // The protocol runs on descriptors 3 (commands in) and 4 (answers out); the shell
        // moves our pipes there, so no unsafe code is needed to arrange them.
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(&self.program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let commands = child.stdin.take().expect("piped stdin");
        let answers = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut tab = Tab {
            child,
            commands,
            answers,
            next_id: 0,
            session: None,
            profile,
        };
        let target = tab
            .browser_call("Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone();
        let attached = tab
            .browser_call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        tab.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        );
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        tab.call("Page.navigate", json!({ "url": url })).await;
        tab.wait_for(
            &format!(
                "location.href === {} && document.readyState === 'complete'",
                json!(url)
            ),
            "the page loads",
        )
        .await;
        tab
    }
}

/// One page in a running headless Chromium, driven over the DevTools protocol.
pub struct Tab {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
    session: Option<String>,
    profile: PathBuf,
}

impl Tab {
    /// Sends a command to the browser itself and returns its result.
    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// Sends a command to the page and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, session).await
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        let exchange = async {
            self.commands
                .write_all(&bytes)
                .await
                .expect("chromium reads commands");
            loop {
                let mut buf = Vec::new();
                let n = self
                    .answers
                    .read_until(0, &mut buf)
                    .await
                    .expect("chromium answers");
                assert!(n > 0, "chromium closed the protocol pipe during {method}");
                buf.pop();
                let answer: Value = serde_json::from_slice(&buf).expect("protocol JSON");
                // Events (no id) and answers to other commands are not this answer.
                if answer["id"] == json!(id) {
                    return answer;
                }
            }
        };
        let answer = tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| {
                panic!("chromium did not answer {method} within {COMMAND_DEADLINE:?}")
            });
        if let Some(err) = answer.get("error") {
            panic!("{method} failed: {err}");
        }
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `condition` (a JavaScript expression) until it is `true`, for at most 15 s.
    pub async fn wait_for(&mut self, condition: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        while self.eval(condition).await != json!(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} ({condition})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `textContent` of the element `selector` names.
    pub async fn text(&mut self, selector: &str) -> String {
        let v = self
            .eval(&format!(
                "document.querySelector({}).textContent",
                json!(selector)
            ))
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element {selector}"))
            .to_owned()
    }

    /// Focuses the element `selector` names and types `text` into it, as a keyboard would.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; e.focus(); return document.activeElement === e; }})()",
                json!(selector)
            ))
            .await;
        assert_eq!(found, json!(true), "cannot focus {selector}");
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the middle of the element `selector` names with the mouse.
    pub async fn click(&mut self, selector: &str) {
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                json!(selector)
            ))
            .await;
        let (x, y) = match at.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.clone(), y.clone()),
            _ => panic!("no element {selector} to click"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Closes the browser and removes its profile.
    pub async fn close(mut self) {
        // The browser may exit before it answers, so no answer is awaited.
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\",\"params\":{}}\0")
            .await;
        let _ = tokio::time::timeout(COMMAND_DEADLINE, self.child.wait()).await;
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
