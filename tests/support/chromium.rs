//! Headless Chromium, driven by its command line only (no WebDriver): it loads one URL,
//! runs the page's scripts (a form that submits itself) and prints the final DOM.
//!
//! When `chromium` is not on `PATH`, [`Chromium::find`] prints
//! `skipping: chromium not found on PATH` and returns `None` (the test returns early),
//! except under `CI=true`, where it panics: CI must run these tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one page visit may take, start-up included.
const VISIT_DEADLINE: Duration = Duration::from_secs(90);

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
        let n = PROFILE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("sessiongate-chromium-{}-{n}", std::process::id()));
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
