//! A one-command demo: a tiny application on 127.0.0.1:3000 that uses sessions only
//! through sessiongate's headers, with sessiongate in front of it on 127.0.0.1:8080,
//! configured by the shipped `proxy.toml` (memory store).
//!
//! ```text
//! cargo run --bin sessiongate-demo
//! curl -i -c jar -b jar -X POST 'http://127.0.0.1:8080/login?user=alice'
//! curl -i -c jar -b jar http://127.0.0.1:8080/me
//! curl -i -c jar -b jar http://127.0.0.1:8080/account
//! curl -i -c jar -b jar -X POST 'http://127.0.0.1:8080/cart?item=book'
//! curl -i -c jar -b jar -X POST http://127.0.0.1:8080/logout
//! curl -i -c jar -b jar http://127.0.0.1:8080/me
//! ```
//!
//! `/account` is under the shipped `proxy.toml`'s `session = "required"` route: without a
//! session the proxy answers 401 itself, or sends a browser to `/login`, whose form logs in
//! and comes back (open http://127.0.0.1:8080/account in a browser).
//!
//! SESSION_SECRET comes from the environment; when it is unset the demo generates a
//! throw-away one (sessions then end when the demo stops), which the real binary never does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sessiongate::secrets::{ProcessEnv, SESSION_SECRET, SESSION_UPSTREAM_SECRET, Secrets};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = sessiongate::config::load(Path::new("proxy.toml"))?;
    sessiongate::telemetry::init(config.log);
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if Secrets::from_env(&ProcessEnv).is_err() {
        eprintln!("demo: SESSION_SECRET is not set; using a throw-away secret for this run");
        env.insert(SESSION_SECRET.into(), sessiongate::secrets::generate());
    }
    if !env.contains_key(SESSION_UPSTREAM_SECRET) {
        env.insert(
            SESSION_UPSTREAM_SECRET.into(),
            sessiongate::secrets::generate(),
        );
    }
    let secrets = Secrets::from_env(&env)?;
    let token_key = env[SESSION_UPSTREAM_SECRET].clone();

    let app_addr = config.server.upstream.authority.as_str().to_owned();
    let listener = TcpListener::bind(&app_addr).await?;
    tokio::spawn(serve_app(listener, token_key));

    let shutdown = sessiongate::signals::Shutdown::listen();
    let running = sessiongate::server::start(&config, &secrets).await?;
    let base = match config.server.tls {
        Some(_) => format!(
            "https://localhost:{} (add --cacert cert.pem)",
            running.addr.port()
        ),
        None => format!("http://{}", running.addr),
    };
    eprintln!(
        "demo: app on http://{app_addr}, sessiongate on {base} — try:\n  curl -i -c jar -b jar -X POST '{url}/login?user=alice'\n  curl -i -c jar -b jar {url}/me\n  curl -i -c jar -b jar {url}/account   (or open it in a browser)",
        url = base.split(' ').next().unwrap_or_default(),
    );
    shutdown.recv().await;
    running.shutdown().await;
    Ok(())
}

async fn serve_app(listener: TcpListener, key: String) {
    while let Ok((stream, _)) = listener.accept().await {
        let key = key.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let key = key.clone();
                async move { Ok::<_, Infallible>(app(req, &key).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The application: it never sees a cookie, only the signed `X-Session` token.
async fn app(req: Request<Incoming>, key: &str) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let session = parts
        .headers
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .and_then(|token| verify(token, key));
    // Parameters from the query, then from a form body (the login page's form).
    let mut params = parts.uri.query().unwrap_or("").to_owned();
    if parts.method == http::Method::POST
        && let Ok(body) = body.collect().await
    {
        params.push('&');
        params.push_str(&String::from_utf8_lossy(&body.to_bytes()));
    }
    let param = |name: &str| {
        params
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(decode)
            .unwrap_or_default()
    };
    let reply = |body: String| Response::new(Full::new(Bytes::from(body + "\n")));
    match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/login") => {
            let user = param("user");
            let user = if user.is_empty() {
                "guest".into()
            } else {
                user
            };
            let data = serde_json::json!({ "user": user, "cart": [] });
            // Back to the page that sent the browser here: a local path only, never
            // `//host` (an open redirect).
            let return_to = param("return_to");
            let mut res = if return_to.starts_with('/') && !return_to.starts_with("//") {
                let mut res = reply(format!("logged in as {user}; back to {return_to}"));
                *res.status_mut() = StatusCode::SEE_OTHER;
                if let Ok(location) = return_to.parse() {
                    res.headers_mut().insert("location", location);
                }
                res
            } else {
                reply(format!("logged in as {user}"))
            };
            res.headers_mut().insert(
                "x-session-set",
                data.to_string().parse().expect("JSON is a header value"),
            );
            res
        }
        ("GET", "/login") => {
            let return_to = param("return_to");
            let mut res = reply(format!(
                "<!doctype html><title>log in</title><form method=\"post\" action=\"/login\">\
                 <input type=\"hidden\" name=\"return_to\" value=\"{}\">\
                 <label>user <input name=\"user\" autofocus></label> <button>log in</button></form>",
                html_escape(&return_to)
            ));
            res.headers_mut().insert(
                "content-type",
                "text/html; charset=utf-8".parse().expect("valid"),
            );
            res
        }
        // Only reached with a session: the shipped proxy.toml makes /account "required".
        (_, "/account") => match session {
            Some(s) => reply(format!(
                "account of {}, logged in at {} (auth_time)",
                s["data"]["user"], s["auth_time"]
            )),
            None => reply("no session: the proxy's [[route]] for /account is missing".into()),
        },
        ("POST", "/cart") => match session {
            Some(s) => {
                let mut cart = s["data"]["cart"].as_array().cloned().unwrap_or_default();
                cart.push(param("item").into());
                let patch = serde_json::json!({ "cart": cart });
                let mut res = reply(format!("cart: {}", patch["cart"]));
                res.headers_mut().insert(
                    "x-session-update",
                    patch.to_string().parse().expect("JSON is a header value"),
                );
                res
            }
            None => reply("log in first".into()),
        },
        ("POST", "/logout") => {
            let mut res = reply("logged out".into());
            res.headers_mut()
                .insert("x-session-destroy", "1".parse().expect("valid"));
            res
        }
        (_, "/me") => match session {
            Some(s) => reply(format!(
                "you are {} with session data {}",
                s["data"]["user"], s["data"]
            )),
            None => reply("not logged in".into()),
        },
        _ => reply(
            "sessiongate demo app: POST /login?user=NAME, GET /me, GET /account, POST /cart?item=X, POST /logout"
                .into(),
        ),
    }
}

/// A form or query value: `+` is a space, `%XX` a byte.
fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Verifies the HS256 token and returns its claims, as any upstream would.
fn verify(token: &str, key: &str) -> Option<serde_json::Value> {
    let (signing_input, sig) = token.rsplit_once('.')?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(signing_input.split_once('.')?.1)
            .ok()?,
    )
    .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    (claims["exp"].as_u64()? > now).then_some(claims)
}
