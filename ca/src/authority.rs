//! The certificate authority: a root (generated, or the organisation's), an online intermediate
//! issuer, join tokens, and the rules every issued X.509-SVID follows.
//!
//! The identity in a certificate always comes from the credential — a join token or a still
//! valid certificate — and never from the CSR. The CSR only contributes its public key; a CSR
//! that asks for another identity or for a CA certificate is refused rather than trimmed, so a
//! confused or hostile client learns it at once. DNS, IP and e-mail SANs in a CSR are ignored:
//! an SVID carries exactly one URI SAN and nothing else.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AlgorithmIdentifier;

use crate::identity::{SpiffeId, TrustDomain, WorkloadName};
use crate::state::{
    self, CredentialKind, IssuanceLog, IssuedRecord, PUBLIC_MODE, SECRET_MODE, StateDir, StateError,
};
use crate::svid::hex_lower;
use crate::token::{self, TokenError, TokenFile};
use picket_common::crypto::{self, RandomError};

/// Leaf lifetime unless configured otherwise.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Ceiling on the leaf lifetime unless configured otherwise.
pub const DEFAULT_MAX_LEAF_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

const ROOT_LIFETIME: time::Duration = time::Duration::days(3650);
const ISSUER_LIFETIME: time::Duration = time::Duration::days(365);
const SERVER_CERT_LIFETIME: time::Duration = time::Duration::days(30);
/// Every certificate starts this long before it is made, to absorb clock skew.
const BACKDATE: time::Duration = time::Duration::seconds(60);
const FORMAT_VERSION: u32 = 1;
const SERIAL_BYTES: usize = 16;

/// Why the CA could not be created, opened or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing the state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// `init` was pointed at a directory that already holds CA state.
    #[error("{} already holds CA state; refusing to overwrite it", .0.display())]
    AlreadyInitialised(PathBuf),
    /// A lifetime, use count or name given to the CA is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// The organisation root given to `init` cannot be used.
    #[error("organisation root: {0}")]
    ImportedRoot(String),
    /// Making or signing a certificate failed.
    #[error("cannot make certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The system random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The CA server's TLS configuration could not be built.
    #[error("CA server TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA server's client-certificate verifier could not be built.
    #[error("CA server client-certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The CA server's listening socket failed.
    #[error("CA server listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The Kubernetes API settings for service-account token review cannot be used.
    #[error("Kubernetes token review: {0}")]
    KubernetesApi(String),
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The CSR is not a PEM certificate request, does not parse, or its signature is wrong.
    #[error("malformed certificate signing request: {0}")]
    MalformedCsr(String),
    /// The CSR's key is not ECDSA P-256 (signed with SHA-256), P-384 (SHA-384) or Ed25519.
    #[error("unsupported key: use ECDSA P-256 with SHA-256, ECDSA P-384 with SHA-384, or Ed25519")]
    UnsupportedKey,
    /// The CSR asks for a CA certificate.
    #[error("the certificate signing request asks for a CA certificate")]
    CaRequested,
    /// The CSR names an identity other than the one the credential grants.
    #[error(
        "the certificate signing request asks for {requested:?} but the credential grants {granted}"
    )]
    IdentityMismatch {
        /// The URI SAN in the CSR.
        requested: String,
        /// The identity the credential grants.
        granted: SpiffeId,
    },
    /// A renewal presented an identity of another trust domain.
    #[error("{0} is outside this CA's trust domain")]
    ForeignTrustDomain(SpiffeId),
    /// A server certificate was asked for by an identity allowed no DNS names.
    #[error("{0} may not obtain server certificates")]
    ServerNamesNotAllowed(SpiffeId),
    /// A server certificate request named a DNS name or URI the identity is not allowed.
    #[error("{identity} may not obtain a server certificate for {requested:?}")]
    ServerNameMismatch {
        /// The name in the CSR.
        requested: String,
        /// The identity that asked.
        identity: SpiffeId,
    },
    /// The join token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The issuer CA certificate has expired; the CA cannot issue until it is replaced.
    #[error("the issuer CA certificate expired at {0}")]
    IssuerExpired(OffsetDateTime),
    /// The CA could not read or write its state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The system random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// Signing the certificate failed.
    #[error("cannot sign certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// What `init` needs to create a CA.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory for the CA's state; created with mode 0700 if absent.
    pub state_dir: PathBuf,
    /// The trust domain of every identity this CA issues.
    pub trust_domain: TrustDomain,
    /// An existing organisation CA (certificate PEM, key PEM) to sign the issuer with, instead
    /// of generating a root. Its key is not copied into the state directory.
    pub root: Option<(PathBuf, PathBuf)>,
    /// Lifetime of issued certificates.
    pub leaf_ttl: Duration,
    /// Ceiling on `leaf_ttl`.
    pub max_leaf_ttl: Duration,
}

impl InitOptions {
    /// Options for a CA with a generated root and the default lifetimes.
    pub fn new(state_dir: impl Into<PathBuf>, trust_domain: TrustDomain) -> Self {
        Self {
            state_dir: state_dir.into(),
            trust_domain,
            root: None,
            leaf_ttl: DEFAULT_LEAF_TTL,
            max_leaf_ttl: DEFAULT_MAX_LEAF_TTL,
        }
    }
}

/// How a workload proves who it is when asking for a certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A join token created with [`Authority::create_token`].
    JoinToken(String),
    /// The identity of a client certificate that TLS and [`crate::svid::verify_leaf`] have
    /// already verified.
    Renewal(SpiffeId),
    /// A Kubernetes service account that the API server vouched for
    /// ([`crate::tokenreview::TokenReviewer::review`]).
    ServiceAccount(WorkloadName),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::Renewal(id) => f.debug_tuple("Renewal").field(id).finish(),
            Self::ServiceAccount(name) => f.debug_tuple("ServiceAccount").field(name).finish(),
        }
    }
}

/// The DNS names each identity may put in a TLS server certificate
/// ([`Authority::issue_server_certificate`]). Empty unless the operator allows some: on
/// Kubernetes the admission webhook's service account gets its Service's DNS name, because the
/// API server verifies the webhook by name, and an X.509-SVID carries no DNS name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames(std::collections::BTreeMap<WorkloadName, Vec<String>>);

impl ServerNames {
    /// Allows `workload` the DNS `names` (added to any it already has).
    pub fn allow(&mut self, workload: WorkloadName, names: &[String]) -> Result<(), CaError> {
        for name in names {
            let dns_ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !dns_ok {
                return Err(CaError::InvalidOption(format!(
                    "{name:?} is not a lowercase DNS name"
                )));
            }
        }
        self.add(workload, names.iter().cloned());
        Ok(())
    }

    /// Every allowance of `other` added to these.
    pub fn merge(&mut self, other: Self) {
        for (workload, names) in other.0 {
            self.add(workload, names.into_iter());
        }
    }

    fn add(&mut self, workload: WorkloadName, names: impl Iterator<Item = String>) {
        let allowed = self.0.entry(workload).or_default();
        for name in names {
            if !allowed.contains(&name) {
                allowed.push(name);
            }
        }
    }

    /// The names `workload` may use, if any.
    pub fn for_workload(&self, workload: &WorkloadName) -> Option<&[String]> {
        self.0
            .get(workload)
            .map(Vec::as_slice)
            .filter(|n| !n.is_empty())
    }
}

/// `ns/<namespace>/sa/<service-account>=<name>[,<name>...]`, as `picket ca serve
/// --server-name` takes it.
impl std::str::FromStr for ServerNames {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (workload, names) = s.split_once('=').ok_or_else(|| {
            CaError::InvalidOption(format!(
                "{s:?}: expected ns/<namespace>/sa/<service-account>=<dns-name>[,<dns-name>]"
            ))
        })?;
        let workload: WorkloadName = workload
            .parse()
            .map_err(|e: crate::IdentityError| CaError::InvalidOption(e.to_string()))?;
        let names: Vec<String> = names.split(',').map(str::to_owned).collect();
        let mut out = Self::default();
        out.allow(workload, &names)?;
        Ok(out)
    }
}

/// What kind of certificate an issuance makes.
enum Profile<'a> {
    /// An X.509-SVID: one URI SAN, serverAuth and clientAuth.
    Svid,
    /// A TLS server certificate for the given DNS names, serverAuth only.
    Server(&'a ServerNames),
}

/// A freshly issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// The roots to trust, PEM.
    pub trust_bundle_pem: String,
    /// The identity in the certificate.
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// `ca.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaConfig {
    format: u32,
    trust_domain: TrustDomain,
    leaf_ttl_secs: u64,
    max_leaf_ttl_secs: u64,
}

/// Issued serials and the log they are recorded in.
#[derive(Debug)]
struct Ledger {
    serials: HashSet<String>,
    log: IssuanceLog,
}

impl Ledger {
    /// A random serial never used by this issuer, reserved from now on.
    fn fresh_serial(&mut self) -> Result<(SerialNumber, String), RandomError> {
        loop {
            let bytes = random_serial()?;
            let hex = hex_lower(&bytes);
            if self.serials.insert(hex.clone()) {
                return Ok((SerialNumber::from_slice(&bytes), hex));
            }
        }
    }
}

/// The certificate authority, loaded from its state directory.
pub struct Authority {
    dir: StateDir,
    trust_domain: TrustDomain,
    leaf_lifetime: time::Duration,
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_pem: String,
    issuer_not_after: OffsetDateTime,
    bundle_pem: String,
    trust_anchors: Vec<CertificateDer<'static>>,
    /// Held for the whole of an issuance, which is synchronous; never across an `.await`.
    ledger: Mutex<Ledger>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("state_dir", &self.dir.path())
            .field("trust_domain", &self.trust_domain)
            .field("leaf_lifetime", &self.leaf_lifetime)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a new CA in `opts.state_dir`: a root (unless one is imported), an intermediate
    /// issuer signed by it, and empty token and issuance files. Refuses a directory that
    /// already holds CA state.
    pub fn init(opts: InitOptions) -> Result<Self, CaError> {
        validate_ttls(opts.leaf_ttl, opts.max_leaf_ttl)?;
        let dir = StateDir::create(&opts.state_dir)?;
        let lock = dir.lock()?;
        for name in state::STATE_FILES {
            if dir.exists(name)? {
                return Err(CaError::AlreadyInitialised(opts.state_dir));
            }
        }
        let now = now();

        let (root, root_not_after, bundle_pem) = match &opts.root {
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let not_after = now.saturating_add(ROOT_LIFETIME);
                let params =
                    ca_params("Picket root CA", 1, now.saturating_sub(BACKDATE), not_after)?;
                let cert = params.self_signed(&key)?;
                dir.write(state::ROOT_KEY, key.serialize_pem().as_bytes(), SECRET_MODE)?;
                dir.write(state::ROOT_CERT, cert.pem().as_bytes(), PUBLIC_MODE)?;
                (Issuer::new(params, key), not_after, cert.pem())
            }
            Some((cert_path, key_path)) => import_root(cert_path, key_path, now)?,
        };

        let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut issuer_params = ca_params(
            "Picket issuer CA",
            0,
            now.saturating_sub(BACKDATE),
            now.saturating_add(ISSUER_LIFETIME).min(root_not_after),
        )?;
        issuer_params.use_authority_key_identifier_extension = true;
        let issuer_cert = issuer_params.signed_by(&issuer_key, &root)?;

        dir.write(
            state::ISSUER_KEY,
            issuer_key.serialize_pem().as_bytes(),
            SECRET_MODE,
        )?;
        dir.write(
            state::ISSUER_CERT,
            issuer_cert.pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        dir.write(state::BUNDLE, bundle_pem.as_bytes(), PUBLIC_MODE)?;
        dir.write_json(state::TOKENS, &TokenFile::default())?;
        // Written last: its presence is what makes the directory an initialised CA.
        dir.write_json(
            state::CONFIG,
            &CaConfig {
                format: FORMAT_VERSION,
                trust_domain: opts.trust_domain.clone(),
                leaf_ttl_secs: opts.leaf_ttl.as_secs(),
                max_leaf_ttl_secs: opts.max_leaf_ttl.as_secs(),
            },
        )?;
        drop(lock);
        tracing::info!(
            state_dir = %opts.state_dir.display(),
            trust_domain = %opts.trust_domain,
            imported_root = opts.root.is_some(),
            "initialised CA"
        );
        Self::open(&opts.state_dir)
    }

    /// Loads the CA from `state_dir`, with the serials it has already issued.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, CaError> {
        let dir = StateDir::open(state_dir.as_ref())?;
        let config: CaConfig = dir.read_json(state::CONFIG)?;
        if config.format != FORMAT_VERSION {
            return Err(corrupt(
                &dir,
                state::CONFIG,
                format!("unsupported format version {}", config.format),
            )
            .into());
        }
        let leaf_ttl = Duration::from_secs(config.leaf_ttl_secs);
        validate_ttls(leaf_ttl, Duration::from_secs(config.max_leaf_ttl_secs))?;
        let leaf_lifetime = time::Duration::try_from(leaf_ttl)
            .map_err(|e| corrupt(&dir, state::CONFIG, e.to_string()))?;

        let issuer_pem = dir.read_string(state::ISSUER_CERT)?;
        let issuer_der = CertificateDer::from_pem_slice(issuer_pem.as_bytes())
            .map_err(|e| corrupt(&dir, state::ISSUER_CERT, e.to_string()))?;
        let issuer_key = KeyPair::from_pem(&dir.read_string(state::ISSUER_KEY)?)
            .map_err(|e| corrupt(&dir, state::ISSUER_KEY, e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(&issuer_der)
            .map_err(|e| corrupt(&dir, state::ISSUER_CERT, e.to_string()))?;
        if parsed.public_key().raw != issuer_key.subject_public_key_info().as_slice() {
            return Err(
                corrupt(&dir, state::ISSUER_KEY, "does not match issuer.pem".into()).into(),
            );
        }
        let issuer_not_after = unix_time(parsed.validity().not_after.timestamp())
            .ok_or_else(|| corrupt(&dir, state::ISSUER_CERT, "bad not-after".into()))?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der, issuer_key)
            .map_err(|e| corrupt(&dir, state::ISSUER_CERT, e.to_string()))?;

        let bundle_pem = dir.read_string(state::BUNDLE)?;
        let trust_anchors = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(&dir, state::BUNDLE, e.to_string()))?;
        if trust_anchors.is_empty() {
            return Err(corrupt(&dir, state::BUNDLE, "holds no certificate".into()).into());
        }

        let lock = dir.lock()?;
        let (log, records) = IssuanceLog::open(&dir)?;
        drop(lock);
        let serials = records.into_iter().map(|r| r.serial).collect();

        Ok(Self {
            dir,
            trust_domain: config.trust_domain,
            leaf_lifetime,
            issuer,
            issuer_pem: pem_certificate(&issuer_der),
            issuer_der,
            issuer_not_after,
            bundle_pem,
            trust_anchors,
            ledger: Mutex::new(Ledger { serials, log }),
        })
    }

    /// The trust domain of every identity this CA issues.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots workloads should trust, PEM.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The roots workloads should trust, DER.
    pub fn trust_anchors(&self) -> &[CertificateDer<'static>] {
        &self.trust_anchors
    }

    /// Creates a join token that grants `workload` in this trust domain up to `uses`
    /// certificates during `ttl`. The token is returned once; only its digest is kept.
    pub fn create_token(
        &self,
        workload: &WorkloadName,
        ttl: Duration,
        uses: u32,
    ) -> Result<String, CaError> {
        if ttl < Duration::from_secs(1) {
            return Err(CaError::InvalidOption(
                "token lifetime must be at least 1s".into(),
            ));
        }
        if uses == 0 {
            return Err(CaError::InvalidOption(
                "a token must allow at least one use".into(),
            ));
        }
        let now = now();
        let expires_at = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or_else(|| CaError::InvalidOption("token lifetime is too long".into()))?;
        let identity = SpiffeId::new(self.trust_domain.clone(), workload.clone());
        let token = token::generate()?;
        let _lock = self.dir.lock()?;
        let mut tokens: TokenFile = self.dir.read_json(state::TOKENS)?;
        tokens.prune(now);
        tokens.add(&token, identity.clone(), expires_at, uses);
        self.dir.write_json(state::TOKENS, &tokens)?;
        tracing::info!(%identity, uses, expires_at = %expires_at, "created join token");
        Ok(token)
    }

    /// Issues an X.509-SVID for the public key in `csr_pem` to the identity `credential`
    /// proves. A join token's use is on disk before this returns, as is the issuance record.
    pub fn issue(&self, csr_pem: &str, credential: Credential) -> Result<Issued, IssueError> {
        self.issue_as(csr_pem, credential, Profile::Svid)
    }

    /// Issues a TLS server certificate (serverAuth only, no URI SAN) for the public key in
    /// `csr_pem`, carrying every DNS name `allowed` grants the identity `credential` proves.
    /// The CSR may name no URI and only allowed DNS names. Recorded in the issuance log like
    /// an SVID, under the identity that asked.
    pub fn issue_server_certificate(
        &self,
        csr_pem: &str,
        credential: Credential,
        allowed: &ServerNames,
    ) -> Result<Issued, IssueError> {
        self.issue_as(csr_pem, credential, Profile::Server(allowed))
    }

    fn issue_as(
        &self,
        csr_pem: &str,
        credential: Credential,
        profile: Profile<'_>,
    ) -> Result<Issued, IssueError> {
        let csr = parse_csr(csr_pem)?;
        let now = now();
        if now >= self.issuer_not_after {
            return Err(IssueError::IssuerExpired(self.issuer_not_after));
        }
        // The ledger's contents stay consistent even if a holder panicked: a serial is
        // reserved before use and a log line is either written or not.
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = self.dir.lock()?;
        let (spiffe_id, kind, tokens) = match credential {
            Credential::JoinToken(token) => {
                let mut tokens: TokenFile = self.dir.read_json(state::TOKENS)?;
                let id = tokens.redeem(&token, now)?;
                (id, CredentialKind::JoinToken, Some(tokens))
            }
            Credential::Renewal(id) if id.trust_domain() == &self.trust_domain => {
                (id, CredentialKind::Renewal, None)
            }
            Credential::Renewal(id) => return Err(IssueError::ForeignTrustDomain(id)),
            Credential::ServiceAccount(name) => (
                SpiffeId::new(self.trust_domain.clone(), name),
                CredentialKind::ServiceAccountToken,
                None,
            ),
        };
        let (subject_alt_names, extended_key_usages) = match profile {
            Profile::Svid => {
                check_requested_identity(&csr, &spiffe_id)?;
                let uri = Ia5String::try_from(spiffe_id.to_uri())?;
                (
                    vec![SanType::URI(uri)],
                    vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                )
            }
            Profile::Server(allowed) => {
                let names = allowed
                    .for_workload(spiffe_id.workload())
                    .ok_or_else(|| IssueError::ServerNamesNotAllowed(spiffe_id.clone()))?;
                check_requested_server_names(&csr, names, &spiffe_id)?;
                (
                    CertificateParams::new(names.to_vec())?.subject_alt_names,
                    vec![ExtendedKeyUsagePurpose::ServerAuth],
                )
            }
        };

        let (serial, serial_hex) = ledger.fresh_serial()?;
        let not_after = self.not_after(now, self.leaf_lifetime);
        let mut params = end_entity_params(serial, now, not_after);
        params.subject_alt_names = subject_alt_names;
        params.extended_key_usages = extended_key_usages;
        let leaf = params.signed_by(&csr.public_key, &self.issuer)?;

        if let Some(mut tokens) = tokens {
            tokens.prune(now);
            self.dir.write_json(state::TOKENS, &tokens)?;
        }
        ledger.log.append(&IssuedRecord {
            serial: serial_hex.clone(),
            spiffe_id: spiffe_id.clone(),
            not_after,
            credential: kind,
            issued_at: now,
        })?;
        tracing::info!(%spiffe_id, serial = %serial_hex, credential = ?kind, "issued certificate");
        Ok(Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.issuer_pem),
            trust_bundle_pem: self.bundle_pem.clone(),
            spiffe_id,
            serial: serial_hex,
            not_after,
        })
    }

    /// A short-lived TLS server certificate for the CA's own API, valid for the DNS names and
    /// IP addresses in `sans`. It is made fresh for each server start and never written down.
    pub fn server_certificate(
        &self,
        sans: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        if sans.is_empty() {
            return Err(CaError::InvalidOption(
                "the CA server certificate needs at least one name".into(),
            ));
        }
        let names = CertificateParams::new(sans.to_vec())?.subject_alt_names;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let (serial, _) = self
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fresh_serial()?;
        let now = now();
        let mut params = end_entity_params(serial, now, self.not_after(now, SERVER_CERT_LIFETIME));
        params.subject_alt_names = names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.der().clone(), self.issuer_der.clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        ))
    }

    /// `now + lifetime`, but never past the issuer's own end of validity.
    fn not_after(&self, now: OffsetDateTime, lifetime: time::Duration) -> OffsetDateTime {
        now.saturating_add(lifetime).min(self.issuer_not_after)
    }
}

fn validate_ttls(leaf: Duration, max: Duration) -> Result<(), CaError> {
    if leaf < Duration::from_secs(1) {
        return Err(CaError::InvalidOption(
            "leaf lifetime must be at least 1s".into(),
        ));
    }
    if leaf > max {
        return Err(CaError::InvalidOption(format!(
            "leaf lifetime {}s is longer than the maximum leaf lifetime {}s",
            leaf.as_secs(),
            max.as_secs()
        )));
    }
    Ok(())
}

/// Parses and checks a CSR; see the module documentation for what is refused.
fn parse_csr(pem: &str) -> Result<CertificateSigningRequestParams, IssueError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| IssueError::MalformedCsr("expected one PEM CERTIFICATE REQUEST".into()))?;
    let (_, raw) = X509CertificationRequest::from_der(&der)
        .map_err(|e| IssueError::MalformedCsr(e.to_string()))?;
    let spki = &raw.certification_request_info.subject_pki;
    if !is_supported_key(&spki.algorithm) {
        return Err(IssueError::UnsupportedKey);
    }
    // Verifies the self-signature and refuses extensions it does not understand.
    let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::UnsupportedSignatureAlgorithm => IssueError::UnsupportedKey,
        rcgen::Error::InvalidCertificationRequestSignature => {
            IssueError::MalformedCsr("signature does not verify".into())
        }
        other => IssueError::MalformedCsr(other.to_string()),
    })?;
    // rcgen names the key's algorithm after the signature algorithm; make sure the key it
    // would put in the certificate is exactly the key in the CSR (this refuses, say, a P-384
    // key signed with SHA-256).
    if csr.public_key.subject_public_key_info() != spki.raw {
        return Err(IssueError::UnsupportedKey);
    }
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err(IssueError::CaRequested);
    }
    Ok(csr)
}

/// ECDSA on P-256 or P-384, or Ed25519.
fn is_supported_key(algorithm: &AlgorithmIdentifier<'_>) -> bool {
    if algorithm.algorithm == OID_SIG_ED25519 {
        return algorithm.parameters.is_none();
    }
    algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256 || curve == OID_NIST_EC_P384)
}

/// A CSR may leave the identity out, or ask for exactly the one the credential grants.
fn check_requested_identity(
    csr: &CertificateSigningRequestParams,
    granted: &SpiffeId,
) -> Result<(), IssueError> {
    let granted_uri = granted.to_uri();
    for san in &csr.params.subject_alt_names {
        if let SanType::URI(uri) = san
            && uri.as_str() != granted_uri
        {
            return Err(IssueError::IdentityMismatch {
                requested: uri.as_str().to_owned(),
                granted: granted.clone(),
            });
        }
    }
    Ok(())
}

/// A server certificate's CSR may leave names out, or ask for some of the allowed DNS names;
/// a URI, IP address or any other name is refused.
fn check_requested_server_names(
    csr: &CertificateSigningRequestParams,
    allowed: &[String],
    identity: &SpiffeId,
) -> Result<(), IssueError> {
    for san in &csr.params.subject_alt_names {
        let refused = match san {
            SanType::DnsName(name) if allowed.iter().any(|a| a == name.as_str()) => continue,
            SanType::DnsName(name) => name.as_str().to_owned(),
            SanType::URI(uri) => uri.as_str().to_owned(),
            SanType::IpAddress(ip) => ip.to_string(),
            SanType::Rfc822Name(mail) => mail.as_str().to_owned(),
            other => format!("{other:?}"),
        };
        return Err(IssueError::ServerNameMismatch {
            requested: refused,
            identity: identity.clone(),
        });
    }
    Ok(())
}

/// Parameters shared by every end-entity certificate: empty subject (the SAN carries the
/// name), CA:false, digitalSignature only, authority key identifier.
fn end_entity_params(
    serial: SerialNumber,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(serial);
    params.not_before = now.saturating_sub(BACKDATE);
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    params
}

fn ca_params(
    common_name: &str,
    path_len: u8,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, RandomError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Picket");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// Loads and checks an organisation CA: one CA certificate, currently valid, allowed to sign
/// certificates and to have a CA below it, and the key that goes with it.
fn import_root(
    cert_path: &Path,
    key_path: &Path,
    now: OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime, String), CaError> {
    let read = |path: &Path| {
        fs::read_to_string(path)
            .map_err(|e| CaError::ImportedRoot(format!("{}: {e}", path.display())))
    };
    let certs = CertificateDer::pem_slice_iter(read(cert_path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::ImportedRoot(format!("{}: {e}", cert_path.display())))?;
    let [der] = certs.as_slice() else {
        return Err(CaError::ImportedRoot(format!(
            "{}: expected exactly one certificate, found {}",
            cert_path.display(),
            certs.len()
        )));
    };
    let key = KeyPair::from_pem(&read(key_path)?)
        .map_err(|e| CaError::ImportedRoot(format!("{}: {e}", key_path.display())))?;
    let bad = |reason: &str| CaError::ImportedRoot(format!("{}: {reason}", cert_path.display()));
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("not an X.509 certificate"))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca && bc.value.path_len_constraint != Some(0) => {}
        Ok(Some(bc)) if bc.value.ca => {
            return Err(bad(
                "its path length constraint 0 leaves no room for an issuer CA",
            ));
        }
        _ => {
            return Err(bad(
                "not a CA certificate (basic constraints CA:true missing)",
            ));
        }
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(bad("its key usage does not allow signing certificates"));
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::ImportedRoot(format!(
            "{} does not belong to {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    let not_after =
        unix_time(cert.validity().not_after.timestamp()).ok_or_else(|| bad("bad not-after"))?;
    if unix_time(cert.validity().not_before.timestamp()).is_none_or(|t| t > now) || not_after <= now
    {
        return Err(bad("not valid at this time"));
    }
    let issuer = Issuer::from_ca_cert_der(der, key)?;
    Ok((issuer, not_after, pem_certificate(der)))
}

/// 16 random bytes, top bit clear (a positive DER integer of at most 16 bytes), not zero.
fn random_serial() -> Result<[u8; SERIAL_BYTES], RandomError> {
    loop {
        let mut bytes = [0u8; SERIAL_BYTES];
        crypto::fill_random(&mut bytes)?;
        bytes[0] &= 0x7f;
        if bytes.iter().any(|b| *b != 0) {
            return Ok(bytes);
        }
    }
}

/// The current time, whole seconds (as certificates record it).
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().truncate_to_second()
}

fn unix_time(secs: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

fn corrupt(dir: &StateDir, name: &str, reason: String) -> StateError {
    StateError::Corrupt {
        path: dir.file(name),
        reason,
    }
}

fn pem_certificate(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use base64::engine::general_purpose::STANDARD;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;
    use crate::test_support::{
        certs, csr, new_ca, options, p256, spiffe_id, verify_chain, workload,
    };

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn server_names_parse_identity_and_dns_names() {
        let mut names: ServerNames = "ns/picket/sa/injector=injector.picket.svc,injector"
            .parse()
            .unwrap();
        names.merge("ns/picket/sa/injector=injector.picket.svc".parse().unwrap());
        assert_eq!(
            names.for_workload(&workload("picket", "injector")),
            Some(&["injector.picket.svc".to_owned(), "injector".to_owned()][..])
        );
        assert_eq!(names.for_workload(&workload("shop", "orders")), None);
        for bad in [
            "injector.picket.svc",
            "ns/picket/sa/injector=",
            "ns/picket/sa/injector=Injector.svc",
            "ns/picket/sa/injector=*.picket.svc",
            "ns/picket/sa/injector=-a.svc",
            "picket/injector=a.svc",
        ] {
            assert!(bad.parse::<ServerNames>().is_err(), "{bad}");
        }
    }

    fn token(authority: &Authority, uses: u32) -> String {
        authority
            .create_token(&workload("shop", "orders"), HOUR, uses)
            .unwrap()
    }

    fn issue_with_token(authority: &Authority, csr_pem: &str) -> Result<Issued, IssueError> {
        authority.issue(csr_pem, Credential::JoinToken(token(authority, 1)))
    }

    fn leaf(issued: &Issued) -> CertificateDer<'static> {
        certs(&issued.chain_pem).remove(0)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn issued_leaf_follows_the_svid_rules() {
        let (_dir, ca) = new_ca();
        let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        let der = leaf(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [GeneralName::URI("spiffe://example.org/ns/shop/sa/orders")]
        );
        assert!(san.critical, "SAN is critical since the subject is empty");
        assert_eq!(cert.subject().iter().count(), 0);

        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basic constraints");
        assert!(!bc.value.ca);

        let ku = cert.key_usage().unwrap().expect("key usage").value;
        assert!(ku.digital_signature());
        assert!(
            !(ku.non_repudiation()
                || ku.key_encipherment()
                || ku.data_encipherment()
                || ku.key_agreement()
                || ku.key_cert_sign()
                || ku.crl_sign()
                || ku.encipher_only()
                || ku.decipher_only())
        );

        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(
            !(eku.any
                || eku.code_signing
                || eku.email_protection
                || eku.time_stamping
                || eku.ocsp_signing)
                && eku.other.is_empty()
        );
        assert!(cert.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));

        assert_eq!(certs(&issued.chain_pem).len(), 2, "leaf then issuer");
        verify_chain(ca.trust_bundle_pem(), &issued.chain_pem).unwrap();
        let info = crate::svid::inspect_leaf(&der).unwrap();
        assert_eq!(info.id, issued.spiffe_id);
        assert_eq!(info.serial_hex, issued.serial);
        assert_eq!(issued.trust_bundle_pem, ca.trust_bundle_pem());
    }

    #[test]
    fn serials_are_random_positive_at_least_64_bits_and_unique() {
        let (_dir, ca) = new_ca();
        let token = token(&ca, 20);
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let issued = ca
                .issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
                .unwrap();
            let der = leaf(&issued);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let raw = cert.raw_serial();
            assert!(raw[0] < 0x80, "serial is a positive integer");
            assert!(raw.len() <= 17);
            assert!(
                issued.serial.len() >= 16,
                "at least 64 bits: {}",
                issued.serial
            );
            assert!(seen.insert(issued.serial), "serial repeated");
        }
    }

    #[test]
    fn leaf_is_backdated_60s_and_lives_24h_by_default() {
        let (_dir, ca) = new_ca();
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        let info = crate::svid::inspect_leaf(&leaf(&issued)).unwrap();
        assert!((before - 62..=before - 58).contains(&info.not_before));
        assert_eq!(info.not_after - info.not_before, 24 * 3600 + 60);
        assert_eq!(issued.not_after.unix_timestamp(), info.not_after);
    }

    #[test]
    fn configured_leaf_ttl_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.leaf_ttl = Duration::from_secs(90);
        let ca = Authority::init(opts).unwrap();
        let info =
            crate::svid::inspect_leaf(&leaf(&issue_with_token(&ca, &csr(&p256(), &[])).unwrap()))
                .unwrap();
        assert_eq!(info.not_after - info.not_before, 90 + 60);
    }

    #[test]
    fn leaf_ttl_above_the_maximum_is_refused_at_init() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.leaf_ttl = Duration::from_secs(8 * 24 * 3600);
        assert!(matches!(
            Authority::init(opts.clone()),
            Err(CaError::InvalidOption(_))
        ));
        opts.leaf_ttl = Duration::ZERO;
        assert!(matches!(
            Authority::init(opts),
            Err(CaError::InvalidOption(_))
        ));
    }

    #[test]
    fn leaf_never_outlives_its_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.leaf_ttl = Duration::from_secs(400 * 24 * 3600);
        opts.max_leaf_ttl = opts.leaf_ttl;
        let ca = Authority::init(opts).unwrap();
        let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        let chain = certs(&issued.chain_pem);
        let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
        assert_eq!(
            issued.not_after.unix_timestamp(),
            issuer.validity().not_after.timestamp()
        );
    }

    #[test]
    fn identity_comes_from_the_token_not_the_csr() {
        let (_dir, ca) = new_ca();
        // The CSR's subject claims something else; only the credential counts.
        let key = p256();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            "spiffe://example.org/ns/kube-system/sa/admin",
        );
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = issue_with_token(&ca, &csr_pem).unwrap();
        assert_eq!(issued.spiffe_id, spiffe_id("shop", "orders"));
        let der = leaf(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().iter().count(), 0);
    }

    #[test]
    fn csr_naming_its_own_identity_is_accepted_and_dns_sans_are_dropped() {
        let (_dir, ca) = new_ca();
        let key = p256();
        let mut params = CertificateParams::new(vec!["orders.shop.svc".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/ns/shop/sa/orders".try_into().unwrap(),
        ));
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = issue_with_token(&ca, &csr_pem).unwrap();
        let der = leaf(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [GeneralName::URI("spiffe://example.org/ns/shop/sa/orders")]
        );
    }

    #[test]
    fn csr_asking_for_another_identity_is_refused_without_using_the_token() {
        let (_dir, ca) = new_ca();
        let token = token(&ca, 1);
        let other = csr(&p256(), &["spiffe://example.org/ns/kube-system/sa/admin"]);
        let err = ca
            .issue(&other, Credential::JoinToken(token.clone()))
            .unwrap_err();
        assert!(matches!(err, IssueError::IdentityMismatch { .. }), "{err}");
        let two = csr(
            &p256(),
            &[
                "spiffe://example.org/ns/shop/sa/orders",
                "spiffe://example.org/ns/shop/sa/payments",
            ],
        );
        let err = ca
            .issue(&two, Credential::JoinToken(token.clone()))
            .unwrap_err();
        assert!(matches!(err, IssueError::IdentityMismatch { .. }), "{err}");
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token))
            .expect("the refused attempts did not use the token");
    }

    #[test]
    fn csr_asking_for_a_ca_certificate_is_refused() {
        let (_dir, ca) = new_ca();
        let key = p256();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(
            issue_with_token(&ca, &csr_pem),
            Err(IssueError::CaRequested)
        ));
    }

    #[test]
    fn malformed_or_mis_signed_csr_is_refused() {
        let (_dir, ca) = new_ca();
        for bad in [
            "",
            "not a csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(
                matches!(issue_with_token(&ca, bad), Err(IssueError::MalformedCsr(_))),
                "{bad:?}"
            );
        }
        let good = csr(&p256(), &[]);
        let mut der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            STANDARD.encode(&der)
        );
        assert!(matches!(
            issue_with_token(&ca, &tampered),
            Err(IssueError::MalformedCsr(_))
        ));
    }

    #[test]
    fn only_p256_p384_and_ed25519_keys_are_accepted() {
        let (_dir, ca) = new_ca();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            issue_with_token(&ca, &csr(&key, &[])).unwrap();
        }
        let p521 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
        assert!(matches!(
            issue_with_token(&ca, &csr(&p521, &[])),
            Err(IssueError::UnsupportedKey)
        ));
    }

    #[test]
    fn single_use_token_is_refused_the_second_time() {
        let (_dir, ca) = new_ca();
        let token = token(&ca, 1);
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
            .unwrap();
        assert!(matches!(
            ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
            Err(IssueError::Token(TokenError::Used))
        ));
    }

    #[test]
    fn token_with_two_uses_issues_twice() {
        let (_dir, ca) = new_ca();
        let token = token(&ca, 2);
        for _ in 0..2 {
            ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
                .unwrap();
        }
        assert!(matches!(
            ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
            Err(IssueError::Token(TokenError::Used))
        ));
    }

    #[test]
    fn unknown_token_is_refused() {
        let (_dir, ca) = new_ca();
        token(&ca, 1);
        assert!(matches!(
            ca.issue(
                &csr(&p256(), &[]),
                Credential::JoinToken(token::generate().unwrap())
            ),
            Err(IssueError::Token(TokenError::Unknown))
        ));
    }

    #[test]
    fn expired_token_is_refused() {
        let (_dir, ca) = new_ca();
        let expired = token::generate().unwrap();
        let mut tokens: TokenFile = ca.dir.read_json(state::TOKENS).unwrap();
        tokens.add(
            &expired,
            spiffe_id("shop", "orders"),
            now().saturating_sub(time::Duration::minutes(1)),
            1,
        );
        ca.dir.write_json(state::TOKENS, &tokens).unwrap();
        assert!(matches!(
            ca.issue(&csr(&p256(), &[]), Credential::JoinToken(expired)),
            Err(IssueError::Token(TokenError::Expired))
        ));
    }

    #[test]
    fn concurrent_redemptions_of_a_single_use_token_issue_once() {
        let (_dir, ca) = new_ca();
        let token = token(&ca, 1);
        let successes = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
                            .is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(successes, 1);
    }

    #[test]
    fn token_options_must_be_positive() {
        let (_dir, ca) = new_ca();
        let w = workload("shop", "orders");
        assert!(matches!(
            ca.create_token(&w, Duration::ZERO, 1),
            Err(CaError::InvalidOption(_))
        ));
        assert!(matches!(
            ca.create_token(&w, HOUR, 0),
            Err(CaError::InvalidOption(_))
        ));
    }

    #[test]
    fn renewal_keeps_the_identity_of_the_presented_certificate() {
        let (_dir, ca) = new_ca();
        let id = spiffe_id("shop", "payments");
        let issued = ca
            .issue(&csr(&p256(), &[]), Credential::Renewal(id.clone()))
            .unwrap();
        assert_eq!(issued.spiffe_id, id);
        let foreign: SpiffeId = "spiffe://other.org/ns/shop/sa/payments".parse().unwrap();
        assert!(matches!(
            ca.issue(&csr(&p256(), &[]), Credential::Renewal(foreign)),
            Err(IssueError::ForeignTrustDomain(_))
        ));
        let other = csr(&p256(), &["spiffe://example.org/ns/shop/sa/orders"]);
        assert!(matches!(
            ca.issue(&other, Credential::Renewal(id)),
            Err(IssueError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn restart_keeps_root_and_issuer_and_never_reuses_a_serial() {
        let (dir, ca) = new_ca();
        let first = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        let bundle = ca.trust_bundle_pem().to_owned();
        drop(ca);

        let ca = Authority::open(dir.path().join("state")).unwrap();
        assert_eq!(ca.trust_bundle_pem(), bundle);
        let second = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        assert_eq!(certs(&first.chain_pem)[1], certs(&second.chain_pem)[1]);
        verify_chain(&bundle, &second.chain_pem).unwrap();
        drop(ca);

        let ca = Authority::open(dir.path().join("state")).unwrap();
        let serials = &ca.ledger.lock().unwrap().serials;
        assert!(serials.contains(&first.serial) && serials.contains(&second.serial));
        let log = fs::read_to_string(dir.path().join("state").join(state::ISSUED_LOG)).unwrap();
        assert_eq!(log.lines().count(), 2);
        assert!(log.contains(&first.serial) && log.contains("\"credential\":\"join_token\""));
    }

    #[test]
    fn used_token_is_refused_after_restart() {
        let (dir, ca) = new_ca();
        let token = token(&ca, 1);
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
            .unwrap();
        drop(ca);
        let ca = Authority::open(dir.path().join("state")).unwrap();
        assert!(matches!(
            ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
            Err(IssueError::Token(TokenError::Used))
        ));
    }

    #[test]
    fn keys_are_owner_only_and_tokens_are_stored_hashed() {
        let (dir, ca) = new_ca();
        let token = token(&ca, 1);
        let state = dir.path().join("state");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(state::ROOT_KEY)), 0o600);
        assert_eq!(mode(&state.join(state::ISSUER_KEY)), 0o600);
        for entry in fs::read_dir(&state).unwrap() {
            let content = fs::read(entry.unwrap().path()).unwrap();
            assert!(!content.windows(token.len()).any(|w| w == token.as_bytes()));
        }
    }

    #[test]
    fn init_refuses_a_directory_that_holds_state() {
        let (dir, ca) = new_ca();
        let bundle = ca.trust_bundle_pem().to_owned();
        assert!(matches!(
            Authority::init(options(dir.path())),
            Err(CaError::AlreadyInitialised(_))
        ));
        assert_eq!(
            Authority::open(dir.path().join("state"))
                .unwrap()
                .trust_bundle_pem(),
            bundle
        );
    }

    #[test]
    fn open_refuses_a_directory_without_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Authority::open(dir.path()),
            Err(CaError::State(StateError::Corrupt { .. }))
        ));
    }

    fn organisation_root(dir: &Path) -> (PathBuf, PathBuf, String) {
        let key = p256();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Example Org Root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join("org-root.pem");
        let key_path = dir.join("org-root.key");
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.pem())
    }

    #[test]
    fn imported_organisation_root_signs_the_issuer_and_stays_outside_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path, root_pem) = organisation_root(dir.path());
        let mut opts = options(dir.path());
        opts.root = Some((cert_path, key_path));
        let ca = Authority::init(opts).unwrap();

        assert_eq!(certs(ca.trust_bundle_pem()), certs(&root_pem));
        let state = dir.path().join("state");
        assert!(!state.join(state::ROOT_KEY).exists());
        assert!(!state.join(state::ROOT_CERT).exists());

        let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        verify_chain(&root_pem, &issued.chain_pem).unwrap();
        let chain = certs(&issued.chain_pem);
        let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
        assert_eq!(issuer.issuer().to_string(), "CN=Example Org Root");
        let bc = issuer.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
    }

    #[test]
    fn imported_root_must_be_a_ca_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, _, _) = organisation_root(dir.path());
        let stranger = dir.path().join("stranger.key");
        fs::write(&stranger, p256().serialize_pem()).unwrap();
        let mut opts = options(dir.path());
        opts.root = Some((cert_path, stranger.clone()));
        assert!(matches!(
            Authority::init(opts.clone()),
            Err(CaError::ImportedRoot(_))
        ));

        let key = p256();
        let leaf = CertificateParams::new(vec!["example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let leaf_path = dir.path().join("leaf.pem");
        fs::write(&leaf_path, leaf.pem()).unwrap();
        fs::write(&stranger, key.serialize_pem()).unwrap();
        opts.root = Some((leaf_path, stranger));
        assert!(matches!(
            Authority::init(opts),
            Err(CaError::ImportedRoot(_))
        ));
    }

    #[test]
    fn server_certificate_names_the_given_hosts_for_server_auth_only() {
        let (_dir, ca) = new_ca();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (chain, _key) = ca.server_certificate(&names).unwrap();
        assert_eq!(chain.len(), 2);
        let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1])
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let validity = cert.validity();
        assert!(validity.not_after.timestamp() - validity.not_before.timestamp() <= 31 * 86_400);
        assert!(ca.server_certificate(&[]).is_err());
    }
}
