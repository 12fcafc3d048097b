//! The command line (SPEC §1): run the proxy, `check` the config, or `gen-secret`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, RouteSession, Runtime, StoreKind};
use crate::secrets::{Env, ProcessEnv, Secrets};
use crate::store::RedisStore;
use crate::{server, signals, telemetry};

/// sessiongate: cookie-based, server-side sessions in front of any web application.
#[derive(Debug, Parser)]
#[command(name = "sessiongate", version, about)]
struct Cli {
    /// The config file.
    #[arg(short, long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and environment and print the resolved settings.
    Check,
    /// Print a fresh random secret for SESSION_SECRET.
    GenSecret,
}

/// Runs the command line; returns the process exit code. Errors are printed as one line.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenSecret) => {
            println!("{}", crate::secrets::generate());
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match load(&cli.config, &ProcessEnv) {
            Ok((config, secrets)) => {
                print!("{}", describe(&config, &secrets));
                ExitCode::SUCCESS
            }
            Err(line) => fail(&line),
        },
        None => match load(&cli.config, &ProcessEnv) {
            Ok((config, secrets)) => serve(&config, &secrets),
            Err(line) => fail(&line),
        },
    }
}

fn fail(line: &str) -> ExitCode {
    eprintln!("{line}");
    ExitCode::FAILURE
}

/// Loads the config and the secrets, or the one line that says what is wrong.
fn load(path: &std::path::Path, env: &dyn Env) -> Result<(Config, Secrets), String> {
    let config = config::load(path).map_err(|e| e.to_string())?;
    let secrets = Secrets::from_env(env).map_err(|e| e.to_string())?;
    Ok((config, secrets))
}

fn serve(config: &Config, secrets: &Secrets) -> ExitCode {
    // Before anything opens a descriptor: every client connection needs one.
    let nofile = crate::fdlimit::raise();
    // With a runtime per core the serving runtimes are the server's own threads; this one
    // starts them and runs the signals and the admin listener.
    let runtime = if config.server.threads == 1 || config.server.runtime == Runtime::PerCore {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        telemetry::init(config.log);
        match nofile {
            Ok(n) => tracing::info!(
                soft = n.soft,
                hard = n.hard,
                was = n.was,
                "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the descriptor limit (RLIMIT_NOFILE)")
            }
        }
        // Before binding: once the proxy answers, no SIGHUP may stop it, and a SIGTERM or
        // SIGINT must drain it.
        let sighup = signals::Sighup::listen();
        let shutdown = signals::Shutdown::listen();
        for warning in warnings(config, secrets) {
            tracing::warn!("{warning}");
        }
        let running = match server::start(config, secrets).await {
            Ok(r) => r,
            Err(e) => return fail(&e.to_string()),
        };
        tokio::spawn(sighup.serve(running.tls().cloned()));
        shutdown.recv().await;
        tracing::info!("signal received");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Risky but legal settings, one sentence each.
pub fn warnings(config: &Config, secrets: &Secrets) -> Vec<String> {
    let mut w = Vec::new();
    if !secrets.upstream_is_separate {
        w.push("SESSION_UPSTREAM_SECRET is not set: the upstream token is signed with SESSION_SECRET, so the upstream holds the cookie key; set a separate secret".to_owned());
    }
    if !config.cookie.secure && !config.server.listen.ip().is_loopback() {
        w.push(format!(
            "cookie.secure = false while listening on {}: the session cookie can travel over plain HTTP",
            config.server.listen
        ));
    }
    if let (n, Ok((_, hard))) = (
        config.server.conn.max_connections,
        crate::fdlimit::current(),
    ) && n > crate::fdlimit::ceiling(hard)
    {
        w.push(format!(
            "server.max_connections = {n} is more than the descriptor limit ({hard}) allows ({}): accepts may fail with \"too many open files\"; raise the limit (LimitNOFILE=) or lower server.max_connections",
            crate::fdlimit::ceiling(hard)
        ));
    }
    if config
        .server
        .trusted_proxies
        .iter()
        .any(|c| c.to_string().ends_with("/0"))
    {
        w.push(
            "server.trusted_proxies contains a /0 network: every client can forge X-Forwarded-*"
                .to_owned(),
        );
    }
    // Admin API (SPEC §13): the token alone serves nothing without the admin listener.
    if secrets.admin_token.is_some() && config.server.admin_listen.is_none() {
        w.push("SESSION_ADMIN_TOKEN is set but server.admin_listen is not: the admin API and operator page are off; set server.admin_listen".to_owned());
    }
    // A required route the cookie is never sent to could only ever answer 401.
    let cookie_path = config.cookie.path.trim_end_matches('/');
    for r in config.routes.routes() {
        if let (RouteSession::Required, Some(prefix)) = (r.session, &r.prefix)
            && !(prefix == cookie_path || prefix.starts_with(&format!("{cookie_path}/")))
        {
            w.push(format!(
                "route {prefix:?} requires a session, but cookie.path = {:?} does not cover it: browsers never send the cookie there",
                config.cookie.path
            ));
        }
    }
    w
}

/// The route table (SPEC §11) in the order it is searched: longest prefix first, then
/// the paths under no route.
fn describe_routes(out: &mut String, config: &Config) {
    let _ = writeln!(out, "[routes] (longest prefix first)");
    let _ = writeln!(
        out,
        "case_insensitive_paths = {}",
        config.server.case_insensitive_paths
    );
    for r in config.routes.routes() {
        let upstream = r.upstream.as_ref().unwrap_or(&config.server.upstream);
        let mut line = match &r.prefix {
            Some(p) => format!("route {p:?} -> "),
            None => "other paths -> ".to_owned(),
        };
        let _ = write!(
            line,
            "{}://{}, session = {}",
            upstream.scheme,
            upstream.authority,
            r.session.as_str()
        );
        if !r.require.is_empty() {
            let require: serde_json::Map<String, serde_json::Value> =
                r.require.iter().cloned().collect();
            let _ = write!(line, ", require = {}", serde_json::Value::Object(require));
        }
        if r.max_auth_age_sec > 0 {
            let _ = write!(line, ", max_auth_age_sec = {}", r.max_auth_age_sec);
        }
        if let Some(url) = &r.login_url {
            let _ = write!(line, ", login_url = {url:?}");
        }
        let _ = writeln!(out, "{line}, csrf = {}", r.csrf);
    }
}

/// Scale and limits, as `check` prints them. `max_connections = 0` shows what the hard
/// descriptor limit allows, as the proxy raises its soft limit to it at start.
fn describe_conn(out: &mut String, c: &crate::config::ConnSettings) {
    match c.max_connections {
        0 => {
            let derived = crate::fdlimit::current().map_or_else(
                |e| format!("unknown: {e}"),
                |(_, hard)| {
                    format!(
                        "{} with the descriptor limit of {hard}",
                        crate::fdlimit::ceiling(hard)
                    )
                },
            );
            let _ = writeln!(out, "max_connections = 0 (derived: {derived})");
        }
        n => {
            let _ = writeln!(out, "max_connections = {n}");
        }
    }
    let _ = writeln!(
        out,
        "keepalive_timeout_ms = {}",
        c.keepalive_timeout.as_millis()
    );
    let _ = writeln!(out, "keepalive_requests = {}", c.keepalive_requests);
    let _ = writeln!(
        out,
        "h2_max_concurrent_streams = {}",
        c.h2_max_concurrent_streams
    );
    let _ = writeln!(
        out,
        "h2_max_pending_accept_reset_streams = {}",
        c.h2_max_pending_accept_reset_streams
    );
    let _ = writeln!(
        out,
        "h2_max_local_error_reset_streams = {}",
        c.h2_max_local_error_reset_streams
    );
    let _ = writeln!(out, "h2_max_send_buf_bytes = {}", c.h2_max_send_buf_bytes);
}

/// The resolved settings, as `check` prints them. Secrets appear only as their length.
pub fn describe(config: &Config, secrets: &Secrets) -> String {
    let mut out = String::new();
    let s = &config.server;
    let _ = writeln!(out, "config: {} (ok)", config.path.display());
    let _ = writeln!(out, "[server]");
    let _ = writeln!(out, "listen = {}", s.listen);
    let _ = writeln!(
        out,
        "upstream = {}://{}",
        s.upstream.scheme, s.upstream.authority
    );
    let _ = writeln!(out, "threads = {}", s.threads);
    let _ = writeln!(out, "runtime = {}", s.runtime.as_str());
    let _ = writeln!(
        out,
        "admin_listen = {}",
        s.admin_listen
            .map_or_else(|| "off".to_owned(), |a| a.to_string())
    );
    let _ = writeln!(
        out,
        "upstream_timeout_ms = {}",
        s.upstream_timeout.as_millis()
    );
    let proxies: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "trusted_proxies = [{}]", proxies.join(", "));
    let _ = writeln!(out, "underscores_in_headers = {}", s.underscores_in_headers);
    describe_conn(&mut out, &s.conn);
    let x = &config.session;
    let _ = writeln!(out, "[session]");
    let _ = writeln!(out, "cookie_name = {}", x.cookie_name);
    let _ = writeln!(out, "ttl_sec = {}", x.ttl_sec);
    let _ = writeln!(out, "absolute_ttl_sec = {}", x.absolute_ttl_sec);
    let _ = writeln!(out, "cookie_refresh_sec = {}", x.cookie_refresh_sec);
    let _ = writeln!(out, "namespace = {:?}", x.namespace);
    let _ = writeln!(out, "max_bytes = {}", x.max_bytes);
    let _ = writeln!(out, "regenerate_on_set = {}", x.regenerate_on_set);
    let _ = writeln!(
        out,
        "user_field = {:?}",
        x.user_field.as_deref().unwrap_or_default()
    );
    let _ = writeln!(out, "max_per_user = {}", x.max_per_user);
    let _ = writeln!(out, "revalidate_sec = {}", x.revalidate_sec);
    let c = &config.cookie;
    let _ = writeln!(out, "[cookie]");
    let _ = writeln!(out, "http_only = {}", c.http_only);
    let _ = writeln!(out, "secure = {}", c.secure);
    let _ = writeln!(out, "same_site = {:?}", c.same_site);
    let _ = writeln!(out, "path = {}", c.path);
    let _ = writeln!(
        out,
        "domain = {}",
        if c.domain.is_empty() {
            "(host-only)"
        } else {
            &c.domain
        }
    );
    let st = &config.store;
    let _ = writeln!(out, "[store]");
    match st.kind {
        StoreKind::Memory => {
            let _ = writeln!(out, "kind = memory");
            let _ = writeln!(out, "max_sessions = {}", st.max_sessions);
        }
        StoreKind::Redis => {
            let _ = writeln!(out, "kind = redis");
            if st.sentinel.is_empty() {
                let key = if st.cluster.is_empty() {
                    "url"
                } else {
                    "cluster"
                };
                let _ = writeln!(out, "{key} = {}", RedisStore::describe(st));
            } else {
                let nodes: Vec<String> =
                    st.sentinel.iter().map(|u| RedisStore::masked(u)).collect();
                let _ = writeln!(out, "sentinel = [{}]", nodes.join(", "));
                let _ = writeln!(out, "sentinel_master = {}", st.sentinel_master);
            }
            let _ = writeln!(out, "touch_interval_sec = {}", st.touch_interval.as_secs());
            let _ = match st.local_cache {
                0 => writeln!(out, "local_cache = off"),
                n => writeln!(
                    out,
                    "local_cache = {n} sessions, kept exact by client tracking"
                ),
            };
        }
    }
    let _ = writeln!(out, "timeout_ms = {}", st.timeout.as_millis());
    let _ = writeln!(out, "on_error = {:?}", st.on_error);
    let _ = writeln!(out, "require_on_start = {}", st.require_on_start);
    let f = &config.forward;
    let _ = writeln!(out, "[forward]");
    let _ = writeln!(out, "header = {}", f.header);
    let _ = writeln!(out, "token_ttl_sec = {}", f.token_ttl_sec);
    for (h, field) in &f.headers {
        let _ = writeln!(out, "headers.{h} = {field}");
    }
    let _ = writeln!(out, "[log]");
    let _ = writeln!(out, "format = {:?}", config.log);
    let cs = &config.csrf;
    let _ = writeln!(out, "[csrf]");
    let _ = writeln!(out, "enabled = {}", cs.enabled);
    let _ = writeln!(out, "trusted_origins = [{}]", cs.trusted_origins.join(", "));
    let _ = writeln!(out, "report_only = {}", cs.report_only);
    let _ = writeln!(out, "[dbsc]");
    let _ = writeln!(out, "enabled = {}", config.dbsc.enabled);
    let _ = writeln!(out, "bound_cookie_sec = {}", config.dbsc.bound_cookie_sec);
    describe_routes(&mut out, config);
    let _ = writeln!(out, "[secrets]");
    let _ = writeln!(
        out,
        "SESSION_SECRET = set ({} bytes)",
        secrets.session.len()
    );
    let _ = writeln!(
        out,
        "SESSION_SECRET_PREVIOUS = {} key(s)",
        secrets.previous.len()
    );
    let _ = writeln!(
        out,
        "SESSION_UPSTREAM_SECRET = {}",
        if secrets.upstream_is_separate {
            format!("set ({} bytes)", secrets.upstream.len())
        } else {
            "unset (SESSION_SECRET is used)".to_owned()
        }
    );
    // Admin API (SPEC §13): whether the token is set, never its value.
    let _ = writeln!(
        out,
        "SESSION_ADMIN_TOKEN = {}",
        match &secrets.admin_token {
            Some(t) => format!("set ({} bytes)", t.len()),
            None => "unset (admin API off)".to_owned(),
        }
    );
    for warning in warnings(config, secrets) {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}
