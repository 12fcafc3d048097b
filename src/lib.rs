//! sessiongate: a reverse proxy that gives an existing web application cookie-based,
//! server-side sessions.
//!
//! # The request path
//!
//! [`server::serve`] accepts connections and hands each request to [`proxy::Gate::handle`],
//! which runs these steps, each in one file:
//!
//! 0. `proxy/route.rs`: one `Host`; the path normalized (or 400) and its route picked
//!    ([`route`]); after step 1, a `session = "required"` route answers 401/302/403 itself;
//! 1. `proxy/request.rs`: strip hop-by-hop headers, then every client header in the
//!    reserved namespace (`x-session*` and the forward header names, `_` read as `-`)
//!    ([`protocol`]); refuse a cross-origin unsafe request with 403 ([`proxy::csrf`], before
//!    any session is read); take our cookie out of `Cookie` and verify its HMAC in constant time
//!    ([`cookie`]); load the session, only for a verified cookie ([`store`]), and judge its
//!    age ([`session::Lifetime`]);
//! 2. `proxy/request.rs`: add `Host`, `X-Forwarded-*` and the signed HS256 token of the
//!    session ([`token`]); [`upstream`] sends it over the route's pooled keep-alive
//!    connection;
//! 3. `proxy/response.rs`: apply the upstream's `X-Session-Destroy` / `-Set` / `-Update` to
//!    the store ([`protocol`] parses them), strip every `x-session*` response header, and
//!    set, refresh or clear the cookie;
//! 4. `proxy/mod.rs`: a drop guard writes the access line ([`telemetry`]) and the request
//!    metrics ([`metrics`]) once the response is ready, or when the client went away.
//!
//! Around it: [`cli`] (the commands), [`config`] (proxy.toml, parsed then validated),
//! [`secrets`] (the environment), [`signals`], [`tls`], [`admin`] (health and metrics),
//! [`conn`] (the connection ceiling and keep-alive rules) and [`fdlimit`] (descriptors).
//! Leaf modules: [`cidr`], [`fs`], [`error`].

#![warn(missing_docs)]

pub mod admin;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod conn;
pub mod cookie;
pub mod dbsc;
pub mod error;
pub mod fdlimit;
pub mod fs;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod route;
pub mod secrets;
pub mod server;
pub mod session;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
