//! The command line (SPEC §1): `check`, `gen-secret`, and start-up errors, run as the built
//! binary.

use std::path::PathBuf;
use std::process::{Command, Output};

const SECRET: &str = "cli-test-secret-0123456789abcdefghij";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    c.env_remove("SESSION_SECRET")
        .env_remove("SESSION_SECRET_PREVIOUS")
        .env_remove("SESSION_UPSTREAM_SECRET")
        .env_remove("SESSION_ADMIN_TOKEN")
        .env("RUST_LOG", "warn");
    c
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sessiongate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Prints expected and got between rulers when they differ.
macro_rules! eqnice {
    ($expected:expr, $got:expr) => {{
        let (expected, got) = ($expected, $got);
        if expected != got {
            panic!("\n---- expected ----\n{expected}\n---- got ----\n{got}\n------------------\n");
        }
    }};
}

#[test]
fn check_accepts_the_shipped_config_and_hides_secrets() {
    let out = bin()
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"),
        ])
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("upstream = http://127.0.0.1:3000"), "{text}");
    assert!(text.contains(&format!("SESSION_SECRET = set ({} bytes)", SECRET.len())));
    assert!(text.contains("warning: SESSION_UPSTREAM_SECRET is not set"));
    assert!(!text.contains(SECRET), "secret printed");
    assert!(
        text.contains("[csrf]\nenabled = true\ntrusted_origins = []\nreport_only = false\n"),
        "{text}"
    );
    assert!(
        text.contains("[dbsc]\nenabled = false\nbound_cookie_sec = 600\n"),
        "{text}"
    );
}

#[test]
fn check_prints_the_sentinels_masked_and_the_master_name() {
    let cfg = write(
        "sentinel.toml",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n[store]\nkind = \"redis\"\n\
         sentinel = [\"redis://app:hunter2secret@10.0.0.1:26379\", \"rediss://10.0.0.2:26380\"]\n\
         sentinel_master = \"sessions\"\n",
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "kind = redis\nsentinel = [redis://app:***@10.0.0.1:26379, rediss://10.0.0.2:26380]\nsentinel_master = sessions\n"
        ),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "password printed: {text}");
}

#[test]
fn check_accepts_the_local_cache_with_sentinel_and_prints_it() {
    let cfg = write(
        "sentinel-cache.toml",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n[store]\nkind = \"redis\"\n\
         sentinel = [\"redis://10.0.0.1:26379\"]\nlocal_cache = 2000\n",
    );
    let out = bin()
        .args(["check", "-c"])
        .arg(&cfg)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sentinel_master = mymaster\n"), "{text}");
    assert!(
        text.contains("local_cache = 2000 sessions, kept exact by client tracking\n"),
        "{text}"
    );
}

#[test]
fn check_prints_the_redis_read_path_settings() {
    let cfg = write(
        "redis-reads.toml",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n[session]\nttl_sec = 3600\n\
         [store]\nkind = \"redis\"\nlocal_cache = 5000\n",
    );
    let out = bin()
        .args(["check", "-c"])
        .arg(&cfg)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("touch_interval_sec = 36\n"), "{text}");
    assert!(
        text.contains("local_cache = 5000 sessions, kept exact by client tracking\n"),
        "{text}"
    );
}

#[test]
fn check_reports_file_line_column_and_key() {
    let path = write(
        "typo.toml",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n\n[session]\nttl_secs = 60\n",
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(&format!("{}:5:1: unknown field `ttl_secs`", path.display())),
        "{err}"
    );

    let path = write(
        "samesite.toml",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n[cookie]\nsecure = false\nsame_site = \"None\"\n",
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    eqnice!(
        format!(
            "{}:5:13: cookie.same_site: \"None\" requires cookie.secure = true (browsers reject it otherwise)\n",
            path.display()
        ),
        stderr(&out)
    );
}

#[test]
fn missing_or_short_secret_names_the_variable_and_the_fix() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = bin().args(["check", "-c", cfg]).output().unwrap();
    assert!(!out.status.success());
    eqnice!(
        "SESSION_SECRET is not set; generate one with `sessiongate gen-secret` and export it\n",
        stderr(&out)
    );
    let out = bin()
        .args(["-c", cfg])
        .env("SESSION_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    eqnice!(
        "SESSION_SECRET must be at least 32 bytes, got 5; generate one with `sessiongate gen-secret`\n",
        stderr(&out)
    );
}

#[test]
fn unreadable_config_is_one_line() {
    let out = bin()
        .args(["check", "-c", "/nonexistent/proxy.toml"])
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("/nonexistent/proxy.toml: cannot read config file: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_config_path_that_is_no_regular_file_or_too_large_is_one_line() {
    // A FIFO would block a plain read until a writer came; /dev/zero would never end.
    let fifo = write("fifo-placeholder", "");
    std::fs::remove_file(&fifo).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let big = write("big.toml", &"# padding\n".repeat(120_000));
    for (path, reason) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (big.to_str().unwrap(), "larger than 1 MiB"),
    ] {
        let out = bin()
            .args(["check", "-c", path])
            .env("SESSION_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(!out.status.success());
        eqnice!(
            format!("{path}: cannot read config file: {reason}\n"),
            stderr(&out)
        );
    }
}

#[test]
fn port_in_use_is_one_clear_line() {
    // A listener without SO_REUSEPORT holds the port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let path = write(
        "busy.toml",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"http://127.0.0.1:9\"\n"),
    );
    let out = bin()
        .arg("-c")
        .arg(&path)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "cannot listen on 127.0.0.1:{port} (server.listen): "
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn gen_secret_prints_a_fresh_url_safe_secret() {
    let a = bin().arg("gen-secret").output().unwrap();
    let b = bin().arg("gen-secret").output().unwrap();
    assert!(a.status.success());
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap(),
        String::from_utf8(b.stdout).unwrap(),
    );
    assert!(a.trim().len() >= 43);
    assert!(
        a.trim()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(a, b);
}

#[test]
fn check_prints_the_route_table_longest_prefix_first() {
    let path = write(
        "routes.toml",
        concat!(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n\n",
            "[[route]]\nprefix = \"/admin\"\nsession = \"required\"\nupstream = \"https://127.0.0.1:4443\"\n",
            "require = { role = \"admin\", level = 3 }\nmax_auth_age_sec = 300\nlogin_url = \"/login?next={return_to}\"\ncsrf = false\n\n",
            "[[route]]\nprefix = \"/admin/public\"\nsession = \"off\"\n",
        ),
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let routes = text
        .split_once("[routes]")
        .map(|(_, r)| r)
        .unwrap_or_default()
        .lines()
        .take_while(|l| !l.starts_with('['))
        .collect::<Vec<_>>()
        .join("\n");
    eqnice!(
        concat!(
            " (longest prefix first)\n",
            "case_insensitive_paths = false\n",
            "route \"/admin/public\" -> http://127.0.0.1:3000, session = off, csrf = true\n",
            "route \"/admin\" -> https://127.0.0.1:4443, session = required, require = {\"level\":3,\"role\":\"admin\"}, max_auth_age_sec = 300, login_url = \"/login?next={return_to}\", csrf = false\n",
            "other paths -> http://127.0.0.1:3000, session = optional, csrf = true",
        ),
        routes
    );
}

#[test]
fn check_reports_route_errors_with_file_line_column() {
    for (text, want) in [
        (
            "[[route]]\nprefix = \"/a\"\n[[route]]\nprefix = \"/a/\"\n",
            ":6:10: route[1].prefix: \"/a/\" is already the prefix of route[0]; give each prefix one route",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://\"\n",
            ":5:12: route[0].upstream: \"http://\" is not a URL",
        ),
        (
            "[[route]]\nprefix = \"/\"\nsession = \"required\"\nlogin_url = \"/login\"\n",
            ":6:13: route[0].login_url: \"/login\" is under the route for \"/\", which requires a session, so a browser could never reach it; add a [[route]] with prefix = \"/login\" and session = \"optional\"",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nsession = \"off\"\nrequire = { role = \"admin\" }\n",
            ":6:11: route[0].require: require applies only to session = \"required\", and this route's session is \"off\"",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nsession = \"sometimes\"\n",
            ":5:11: unknown variant `sometimes`, expected one of `optional`, `required`, `off`",
        ),
        (
            "[[route]]\nprefix = \"a\"\n",
            ":4:10: route[0].prefix: \"a\" must start with \"/\"",
        ),
    ] {
        let path = write(
            "bad-route.toml",
            &format!("[server]\nupstream = \"http://127.0.0.1:3000\"\n{text}"),
        );
        let out = bin()
            .arg("check")
            .arg("-c")
            .arg(&path)
            .env("SESSION_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(!out.status.success());
        eqnice!(format!("{}{want}\n", path.display()), stderr(&out));
    }
}

#[test]
fn check_warns_about_a_required_route_the_cookie_never_reaches() {
    let path = write(
        "cookie-path.toml",
        concat!(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n",
            "[cookie]\npath = \"/app\"\n",
            "[[route]]\nprefix = \"/admin\"\nsession = \"required\"\n",
            "[[route]]\nprefix = \"/app/account\"\nsession = \"required\"\n",
        ),
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("warning: route"))
        .collect();
    eqnice!(
        "warning: route \"/admin\" requires a session, but cookie.path = \"/app\" does not cover it: browsers never send the cookie there",
        warnings.join("\n")
    );
}

// --- Admin API (SPEC §13) ---

#[test]
fn check_says_whether_the_admin_token_is_set_never_its_value() {
    const TOKEN: &str = "cli-admin-token-0123456789abcdefghij";
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = bin()
        .args(["check", "-c", config])
        .env("SESSION_SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("SESSION_ADMIN_TOKEN = unset (admin API off)\n"),
        "{text}"
    );

    let out = bin()
        .args(["check", "-c", config])
        .env("SESSION_SECRET", SECRET)
        .env("SESSION_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "SESSION_ADMIN_TOKEN = set ({} bytes)\n",
            TOKEN.len()
        )),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "token printed");
    // The shipped config has no admin listener, so the token would serve nothing.
    assert!(
        text.contains("warning: SESSION_ADMIN_TOKEN is set but server.admin_listen is not"),
        "{text}"
    );

    let out = bin()
        .args(["check", "-c", config])
        .env("SESSION_SECRET", SECRET)
        .env("SESSION_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    eqnice!(
        "SESSION_ADMIN_TOKEN must be at least 32 bytes, got 5; generate one with `sessiongate gen-secret`\n",
        stderr(&out)
    );
}

#[test]
fn check_prints_the_runtime_and_its_threads() {
    for (lines, want) in [
        ("runtime = \"per-core\"\n", "runtime = per-core\n"),
        (
            "threads = 3\nruntime = \"work-stealing\"\n",
            "threads = 3\nruntime = work-stealing\n",
        ),
    ] {
        let cfg = write(
            &format!("runtime-{}.toml", lines.len()),
            &format!("[server]\nupstream = \"http://127.0.0.1:3000\"\n{lines}"),
        );
        let out = bin()
            .args(["check", "-c"])
            .arg(&cfg)
            .env("SESSION_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(want), "{text}");
    }
}
