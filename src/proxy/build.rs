//! Building the proxy: the validated configuration, the secrets, the store and the metrics
//! turned into a [`Gate`], with one upstream pool per distinct application.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::header::HeaderValue;

use super::{Gate, Upgrades, Upstream, csrf};
use crate::config::{Config, UpstreamUrl};
use crate::cookie::{CookieCodec, SetCookieBuilder};
use crate::metrics::Metrics;
use crate::protocol::ReservedNames;
use crate::secrets::Secrets;
use crate::session::Lifetime;
use crate::store::Store;
use crate::token::TokenSigner;
use crate::upstream::UpstreamPool;

impl Gate {
    /// Builds the proxy from validated config, secrets, a store and the metrics it updates.
    ///
    /// # Errors
    /// When the `server.upstream_ca` bundle of an https upstream cannot be loaded.
    pub fn new(
        config: &Config,
        secrets: &Secrets,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let any_https = std::iter::once(&config.server.upstream)
            .chain(
                config
                    .routes
                    .routes()
                    .iter()
                    .filter_map(|r| r.upstream.as_ref()),
            )
            .any(|u| u.scheme == http::uri::Scheme::HTTPS);
        let tls = if any_https {
            crate::tls::client_config(config.server.upstream_ca.as_deref())?
        } else {
            // Never used: the upstream is plain http.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        // One pool per distinct application: routes to the same one share its connections.
        let mut urls: Vec<&UpstreamUrl> = vec![&config.server.upstream];
        let route_upstream = config
            .routes
            .routes()
            .iter()
            .map(|r| match &r.upstream {
                None => 0,
                Some(url) => urls.iter().position(|u| *u == url).unwrap_or_else(|| {
                    urls.push(url);
                    urls.len() - 1
                }),
            })
            .collect();
        let upstreams = urls
            .into_iter()
            .map(|url| Upstream {
                pool: Arc::new(UpstreamPool::new(
                    &url.scheme,
                    url.authority.clone(),
                    tls.clone(),
                )),
                authority: HeaderValue::from_str(url.authority.as_str())
                    .expect("a URI authority is a valid header value"),
                metrics: metrics.for_upstream(&format!("{}://{}", url.scheme, url.authority)),
            })
            .collect();
        let forward_names = std::iter::once(&config.forward.header)
            .chain(config.forward.headers.iter().map(|(h, _)| h));
        Ok(Self {
            upstreams,
            routes: config.routes.clone(),
            route_upstream,
            upstream_timeout: config.server.upstream_timeout,
            trusted_proxies: config.server.trusted_proxies.clone(),
            underscores_in_headers: config.server.underscores_in_headers,
            cookie_name: config.session.cookie_name.clone(),
            lifetime: Lifetime {
                ttl_sec: config.session.ttl_sec,
                absolute_ttl_sec: config.session.absolute_ttl_sec,
                cookie_refresh_sec: config.session.cookie_refresh_sec,
            },
            max_bytes: config.session.max_bytes,
            regenerate_on_set: config.session.regenerate_on_set,
            user_field: config.session.user_field.clone(),
            max_per_user: config.session.max_per_user,
            on_error: config.store.on_error,
            forward_header: config.forward.header.clone(),
            forward_headers: config.forward.headers.clone(),
            reserved: ReservedNames::new(forward_names),
            codec: CookieCodec::new(&secrets.session, &secrets.previous),
            signer: TokenSigner::new(&secrets.upstream, config.forward.token_ttl_sec),
            set_cookie: SetCookieBuilder::new(
                &config.session.cookie_name,
                config.cookie.clone(),
                config.session.ttl_sec,
            ),
            store,
            metrics,
            draining: AtomicBool::new(false),
            csrf: config.csrf.enabled.then(|| csrf::CsrfPolicy {
                trusted_origins: config.csrf.trusted_origins.clone(),
            }),
            csrf_report_only: config.csrf.report_only,
            upgrades: Upgrades::new(),
            revalidate_sec: config.session.revalidate_sec,
            dbsc: config.dbsc.enabled.then(|| {
                crate::dbsc::Dbsc::new(
                    &secrets.session,
                    &config.session.cookie_name,
                    &config.cookie,
                    config.dbsc.bound_cookie_sec,
                )
            }),
        })
    }
}
