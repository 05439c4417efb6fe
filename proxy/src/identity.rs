//! The workload's certificate lifecycle: first issuance with the join token, then renewal at
//! about two thirds of the lifetime (with jitter and exponential backoff) authenticated by the
//! current certificate. A fresh key pair is made in memory for every certificate and never
//! written anywhere. On renewal failure the current certificate keeps serving until it
//! expires; after expiry the join token file is tried again.
//!
//! Trust follows a root rotation without a restart: the trust bundle in force, for the data
//! path and for calls to the CA alike, is the one most recently received, either in a CA
//! answer (which arrived over a connection verified with the previous trust) or from the
//! trust bundle file, which is read again whenever its content changes ([`BundleWatch`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use picket_ca::SpiffeId;
use picket_ca::api::CertificateResponse;
use picket_ca::client::{CaClient, ClientError};
use picket_common::backoff::{Backoff, renewal_delay};
use picket_common::crypto::{KxGroup, random_unit};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use crate::config::CaConfig;
use crate::metrics::Metrics;
use crate::tls::{Credentials, TlsError};

/// Why the workload could not get or install a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file named in the configuration could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The join token file is empty.
    #[error("join token file {0} is empty")]
    EmptyToken(PathBuf),
    /// The CA client could not be set up.
    #[error("CA client: {0}")]
    Client(ClientError),
    /// The CA refused the request; retrying will not help.
    #[error("the CA refused the certificate request: {0}")]
    Refused(ClientError),
    /// The CA refused the join token: enrolling (again) needs a new one.
    #[error(
        "the CA refused the join token in {path} ({code}), and {identity} has no valid \
         certificate to renew with; create a new join token with `picket ca token create \
         --identity {workload}` and write it to {path}: the sidecar reads it again at its next \
         attempt (at most 30 s later), no restart needed"
    )]
    NeedsJoinToken {
        /// The token file.
        path: PathBuf,
        /// The CA's error code (`token_used`, `token_expired`, `token_unknown`).
        code: String,
        /// This workload's SPIFFE ID.
        identity: String,
        /// `ns/<namespace>/sa/<service-account>`.
        workload: String,
    },
    /// Making the key pair or the CSR failed.
    #[error("cannot make key pair or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The certificate the CA returned is unusable.
    #[error("certificate from the CA is unusable: {0}")]
    Install(#[from] TlsError),
    /// Shutdown was requested before a certificate arrived.
    #[error("shut down before a certificate was issued")]
    Cancelled,
}

/// The first retry waits up to this long (full jitter), doubling per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Gets certificates from the CA and keeps them fresh.
#[derive(Debug)]
pub struct IdentityManager {
    identity: SpiffeId,
    ca: CaClient,
    token_file: PathBuf,
    bundle_file: PathBuf,
    metrics: Arc<Metrics>,
}

/// How often the trust bundle file is read to see whether it changed. Reading is cheap, and
/// polling sees every way a file can change (a Kubernetes ConfigMap volume swaps a symlink).
const BUNDLE_POLL: Duration = Duration::from_secs(2);

/// A new key and a CSR for it.
struct KeyAndCsr {
    key: PrivateKeyDer<'static>,
    csr_pem: String,
}

fn key_and_csr(identity: &SpiffeId) -> Result<KeyAndCsr, rcgen::Error> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
        identity.to_uri(),
    )?)];
    let csr_pem = params.serialize_request(&key_pair)?.pem()?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    Ok(KeyAndCsr { key, csr_pem })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl IdentityManager {
    /// A manager for `identity` using the CA settings.
    pub fn new(
        identity: SpiffeId,
        ca: &CaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IdentityError> {
        let trust = std::fs::read(&ca.trust_bundle).map_err(|source| IdentityError::Read {
            path: ca.trust_bundle.clone(),
            source,
        })?;
        let counted = Arc::clone(&metrics);
        let client = CaClient::with_urls(&ca.urls, &trust)
            .map_err(IdentityError::Client)?
            .with_handshake_observer(Arc::new(move |kx: KxGroup| counted.ca_handshake(kx)));
        Ok(Self {
            identity,
            ca: client,
            token_file: ca.join_token_file.clone(),
            bundle_file: ca.trust_bundle.clone(),
            metrics,
        })
    }

    /// The watcher of the trust bundle file, for [`BundleWatch::run`].
    pub fn bundle_watch(&self) -> BundleWatch {
        BundleWatch {
            ca: self.ca.clone(),
            path: self.bundle_file.clone(),
        }
    }

    /// The CA's answer's bundle becomes the CA client's trust too: it came over a connection
    /// the current trust verified, and a root switch needs it there.
    fn adopt_ca_bundle(&self, resp: &CertificateResponse) {
        if let Err(e) = self.ca.set_trust(resp.trust_bundle_pem.as_bytes()) {
            tracing::warn!(error = %e, "the CA's trust bundle is unusable for CA calls; keeping the current one");
        }
    }

    /// A refusal of the join token becomes [`IdentityError::NeedsJoinToken`], which tells the
    /// operator how to enroll the workload again; other errors are kept.
    fn token_refused(&self, e: ClientError) -> IdentityError {
        match e {
            ClientError::Rejected { code, .. } if code.starts_with("token_") => {
                IdentityError::NeedsJoinToken {
                    path: self.token_file.clone(),
                    code,
                    workload: self.identity.workload().to_string(),
                    identity: self.identity.to_string(),
                }
            }
            other => IdentityError::Refused(other),
        }
    }

    fn read_token(&self) -> Result<String, IdentityError> {
        let raw =
            std::fs::read_to_string(&self.token_file).map_err(|source| IdentityError::Read {
                path: self.token_file.clone(),
                source,
            })?;
        let token = raw.trim().to_owned();
        if token.is_empty() {
            return Err(IdentityError::EmptyToken(self.token_file.clone()));
        }
        Ok(token)
    }

    /// Obtains the first certificate with the join token, retrying with backoff while the CA
    /// is unreachable. A refusal by the CA is final.
    pub async fn bootstrap(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Credentials>, IdentityError> {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let token = self.read_token()?;
            let fresh = key_and_csr(&self.identity)?;
            match self.ca.issue_with_token(&fresh.csr_pem, &token).await {
                Ok(resp) => {
                    let creds = Credentials::new(
                        self.identity.clone(),
                        resp.chain_pem.as_bytes(),
                        fresh.key,
                        resp.trust_bundle_pem.as_bytes(),
                    )?;
                    self.installed(&resp);
                    return Ok(Arc::new(creds));
                }
                Err(e @ ClientError::Rejected { .. }) => return Err(self.token_refused(e)),
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "CA unreachable, will retry");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Err(IdentityError::Cancelled),
                    }
                }
            }
        }
    }

    /// After a certificate from `resp` is in force: the CA client takes the bundle it came
    /// with, the expiry gauge and the log say so.
    fn installed(&self, resp: &CertificateResponse) {
        self.adopt_ca_bundle(resp);
        let not_after = time::OffsetDateTime::parse(
            &resp.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp())
        .unwrap_or(0);
        self.metrics.cert_expiry.set(not_after);
        tracing::info!(
            spiffe_id = %resp.spiffe_id,
            serial = %resp.serial,
            not_after = %resp.not_after,
            "certificate installed"
        );
    }

    async fn renew_once(&self, creds: &Credentials) -> Result<(), IdentityError> {
        let current = creds.current();
        let fresh = key_and_csr(&self.identity)?;
        let expired = unix_now() > current.leaf.not_after;
        let resp = if expired {
            // The certificate can no longer authenticate; only a (new) join token can.
            let token = self.read_token()?;
            self.ca
                .issue_with_token(&fresh.csr_pem, &token)
                .await
                .map_err(|e| self.token_refused(e))?
        } else {
            self.ca
                .renew(&fresh.csr_pem, Arc::clone(&current.certified))
                .await
                .map_err(IdentityError::Refused)?
        };
        creds.rotate(
            resp.chain_pem.as_bytes(),
            fresh.key,
            resp.trust_bundle_pem.as_bytes(),
        )?;
        self.installed(&resp);
        Ok(())
    }

    /// Renews `creds` before they expire until `shutdown`.
    pub async fn run_renewals(&self, creds: Arc<Credentials>, shutdown: CancellationToken) {
        loop {
            let leaf = creds.current().leaf.clone();
            let now = unix_now();
            // The CA backdates not-before for clock skew; count the lifetime from when this
            // certificate arrived (just now) so the renewal lands at 2/3 of the usable part.
            let start = leaf.not_before.max(now);
            let delay = renewal_delay(start, leaf.not_after, now, random_unit());
            tracing::debug!(in_ = ?delay, "next certificate renewal scheduled");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
            loop {
                match self.renew_once(&creds).await {
                    Ok(()) => {
                        self.metrics
                            .cert_renewals
                            .get_or_create(&crate::metrics::RenewalLabels { result: "ok" })
                            .inc();
                        break;
                    }
                    Err(e) => {
                        self.metrics
                            .cert_renewals
                            .get_or_create(&crate::metrics::RenewalLabels { result: "failed" })
                            .inc();
                        let remaining = creds.current().leaf.not_after - unix_now();
                        let wait = backoff.next_delay();
                        if matches!(e, IdentityError::NeedsJoinToken { .. }) {
                            // Only the operator can fix this: say so at error level.
                            tracing::error!(error = %e, retry_in = ?wait, "certificate expired");
                        } else {
                            tracing::warn!(
                                error = %e,
                                seconds_left = remaining,
                                retry_in = ?wait,
                                "certificate renewal failed; the current certificate stays in use"
                            );
                        }
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        }
    }
}

/// Reads the trust bundle file whenever its content changes and hands it to every trust
/// consumer: the CA client (first issuance, renewal) and the data path's credentials.
#[derive(Debug)]
pub struct BundleWatch {
    ca: CaClient,
    path: PathBuf,
}

impl BundleWatch {
    /// Polls the file until `shutdown`. The content read at start is the baseline: the CA
    /// client was built from it.
    pub async fn run(self, creds: Arc<Credentials>, shutdown: CancellationToken) {
        let mut last = std::fs::read(&self.path).ok();
        loop {
            tokio::select! {
                () = tokio::time::sleep(BUNDLE_POLL) => {}
                () = shutdown.cancelled() => return,
            }
            let read = match tokio::fs::read(&self.path).await {
                Ok(read) => read,
                Err(e) => {
                    // A ConfigMap update briefly removes the link; the next poll reads it.
                    tracing::debug!(path = %self.path.display(), error = %e, "cannot read the trust bundle file");
                    continue;
                }
            };
            if last.as_deref() == Some(read.as_slice()) {
                continue;
            }
            self.apply(&creds, &read);
            last = Some(read);
        }
    }

    /// Installs `pem` everywhere it is usable; each consumer keeps its current trust if not.
    fn apply(&self, creds: &Credentials, pem: &[u8]) {
        let path = self.path.display();
        match self.ca.set_trust(pem) {
            Ok(()) => tracing::info!(
                path = %path,
                roots = self.ca.trusted_roots(),
                "trust bundle file changed: CA calls use it"
            ),
            Err(e) => tracing::warn!(
                path = %path,
                error = %e,
                "trust bundle file changed but is unusable; CA calls keep the current trust"
            ),
        }
        match creds.set_bundle(pem) {
            Ok(()) => tracing::info!(
                path = %path,
                roots = creds.current().roots.len(),
                "trust bundle file changed: the data path uses it"
            ),
            Err(e) => tracing::warn!(
                path = %path,
                error = %e,
                "trust bundle file changed but the data path keeps the current bundle until \
                 the next renewal"
            ),
        }
    }
}
