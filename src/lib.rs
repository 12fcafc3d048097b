//! sessiongate: a reverse proxy that gives an existing web application cookie-based,
//! server-side sessions. The contract is `SPEC.md`; the request path is:
//!
//! 1. strip hop-by-hop headers, then every client header in the reserved namespace
//!    (`x-session*` and the forward header names, `_` read as `-`) ([`protocol`]);
//! 2. take our cookie out of `Cookie` and verify its HMAC in constant time ([`cookie`]);
//! 3. load the session, sliding its idle TTL, only for a verified cookie ([`store`]);
//! 4. forward the request with a signed HS256 token of the session ([`token`]);
//! 5. apply the upstream's `X-Session-Destroy` / `-Set` / `-Update` to the store, strip
//!    every `x-session*` response header, and set, refresh or clear the cookie ([`proxy`]);
//! 6. log one access event with no secret, cookie or session data in it ([`telemetry`]).

#![warn(missing_docs)]

pub mod admin;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod cookie;
pub mod error;
pub mod fs;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod secrets;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
