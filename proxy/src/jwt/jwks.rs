//! JWK sets fetched over HTTPS, cached per URL, refreshed in the background, kept when the
//! endpoint fails.
//!
//! - One [`JwksCache`] per `jwksUri`, shared by every rule (and every policy reload) that
//!   names it, through the [`JwksRegistry`]; its fetch task ends when no rule uses it any more.
//! - The task fetches at once, then every `refresh_interval`; after a failure it retries with
//!   exponential backoff (1 s doubling, at most the refresh interval). A failed or unusable
//!   answer never replaces the keys in force.
//! - A token naming an unknown `kid` asks for an early fetch ([`JwksCache::refetch_soon`]),
//!   at most once per `refetch_min_interval`; the token itself is refused (401) without
//!   waiting, so a flood of made-up `kid`s costs one fetch per interval, not one per request.
//! - Every fetch is bounded by `fetch_timeout` (connect, TLS, answer) and 1 MiB of body.
//! - Until the first fetch succeeds the issuer has no keys: its tokens are refused (401),
//!   requests without a token are not affected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::JwtSettings;
use super::token::KeySet;
use crate::metrics::Metrics;

/// The largest JWKS answer read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The first retry after a failed fetch.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The keys of one `jwksUri`, and what is known about fetching them.
#[derive(Debug)]
pub struct JwksCache {
    uri: String,
    keys: ArcSwapOption<KeySet>,
    /// When the keys in force were fetched.
    fetched: Mutex<Option<Instant>>,
    /// When an early fetch was last asked for.
    early: Mutex<Option<Instant>>,
    wake: Notify,
    min_interval: Duration,
}

impl JwksCache {
    /// The keys in force; `None` until the first successful fetch.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// The URL.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// How old the keys in force are; `None` without keys.
    pub fn age(&self) -> Option<Duration> {
        self.fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// Asks for a fetch before the next refresh (a token named a `kid` the keys do not
    /// have). Ignored when one was asked for within `refetch_min_interval`, or the keys are
    /// younger than that. Returns whether a fetch was asked for.
    pub fn refetch_soon(&self) -> bool {
        let now = Instant::now();
        let mut early = self
            .early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let asked_recently = early.is_some_and(|t| now.duration_since(t) < self.min_interval);
        let fresh = self.age().is_some_and(|a| a < self.min_interval);
        if asked_recently || fresh {
            return false;
        }
        *early = Some(now);
        self.wake.notify_one();
        true
    }

    fn store(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
        *self
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Every [`JwksCache`] of the sidecar, by URL, with what fetching needs.
pub struct JwksRegistry {
    caches: Mutex<HashMap<String, Weak<JwksCache>>>,
    settings: Arc<JwtSettings>,
    tls: Arc<ClientConfig>,
    metrics: Arc<Metrics>,
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry").finish_non_exhaustive()
    }
}

impl JwksRegistry {
    /// A registry fetching with `settings`; fetch tasks run on the current tokio runtime
    /// (none outside one: caches then never get keys, and their issuers' tokens are refused).
    pub fn new(
        settings: Arc<JwtSettings>,
        tls: Arc<ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let registry = Arc::new(Self {
            caches: Mutex::new(HashMap::new()),
            settings,
            tls,
            metrics,
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        let weak = Arc::downgrade(&registry);
        registry.metrics.before_encode(Box::new(move |m: &Metrics| {
            if let Some(r) = weak.upgrade() {
                r.report_ages(m);
            }
        }));
        registry
    }

    /// The cache of `uri`, made (and its fetch task started) if no rule uses it yet.
    pub fn get(&self, uri: &str) -> Arc<JwksCache> {
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cache) = caches.get(uri).and_then(Weak::upgrade) {
            return cache;
        }
        let cache = Arc::new(JwksCache {
            uri: uri.to_owned(),
            keys: ArcSwapOption::empty(),
            fetched: Mutex::new(None),
            early: Mutex::new(None),
            wake: Notify::new(),
            min_interval: self.settings.refetch_min_interval,
        });
        caches.retain(|_, w| w.strong_count() > 0);
        caches.insert(uri.to_owned(), Arc::downgrade(&cache));
        if let Some(rt) = &self.runtime {
            let fetcher = Fetcher {
                tls: Arc::clone(&self.tls),
                settings: Arc::clone(&self.settings),
                metrics: Arc::clone(&self.metrics),
            };
            rt.spawn(fetcher.run(Arc::downgrade(&cache)));
        }
        cache
    }

    /// Sets `picket_jwt_jwks_key_age_seconds` for every cache in use (called at scrape).
    fn report_ages(&self, metrics: &Metrics) {
        let caches = self
            .caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for cache in caches.values().filter_map(Weak::upgrade) {
            metrics.jwks_key_age(cache.uri(), cache.age());
        }
    }
}

struct Fetcher {
    tls: Arc<ClientConfig>,
    settings: Arc<JwtSettings>,
    metrics: Arc<Metrics>,
}

impl Fetcher {
    async fn run(self, cache: Weak<JwksCache>) {
        let mut retry = FIRST_RETRY;
        loop {
            let Some(c) = cache.upgrade() else { return };
            let next = match self.fetch(&c.uri).await {
                Ok(keys) => {
                    self.metrics.jwks_fetch(&c.uri, "ok");
                    tracing::info!(jwks = %c.uri, keys = keys.keys.len(), "JWKS fetched");
                    c.store(keys);
                    retry = FIRST_RETRY;
                    self.settings.refresh_interval
                }
                Err(e) => {
                    self.metrics.jwks_fetch(&c.uri, "error");
                    let kept = c.keys().is_some();
                    tracing::warn!(jwks = %c.uri, error = %e, keeping_last_good_keys = kept, "JWKS fetch failed");
                    let wait = retry;
                    retry = (retry * 2).min(self.settings.refresh_interval);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = c.wake.notified() => {}
            }
            drop(c);
        }
    }

    async fn fetch(&self, uri: &str) -> Result<KeySet, String> {
        let body = tokio::time::timeout(self.settings.fetch_timeout, self.get(uri))
            .await
            .map_err(|_| format!("no answer within {:?}", self.settings.fetch_timeout))??;
        let (keys, skipped) = KeySet::parse(&body).map_err(|e| e.to_string())?;
        for s in skipped {
            tracing::warn!(jwks = %uri, "JWKS key skipped: {s}");
        }
        Ok(keys)
    }

    async fn get(&self, uri: &str) -> Result<Bytes, String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("invalid URL: {e}"))?;
        let authority = parsed.authority().ok_or("URL without host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = parsed
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = Request::get(path)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("body: {e}"))
    }
}

/// The TLS client configuration JWKS fetches use: the roots in `pem`, TLS 1.3 (the build has
/// no TLS 1.2), the one aws-lc-rs provider, no resumption.
pub fn client_config(pem: &[u8]) -> Result<ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the trust roots".into());
    }
    let mut config = ClientConfig::builder_with_provider(picket_common::crypto::provider())
        .with_protocol_versions(picket_common::crypto::PROTOCOL_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    picket_common::crypto::no_client_resumption(&mut config);
    Ok(config)
}
