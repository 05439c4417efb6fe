//! The certificate authority: a root (generated, or the organisation's), an online intermediate
//! issuer, join tokens, and the rules every issued X.509-SVID follows.
//!
//! The identity in a certificate always comes from the credential — a join token or a still
//! valid certificate — and never from the CSR. The CSR only contributes its public key; a CSR
//! that asks for another identity or for a CA certificate is refused rather than trimmed, so a
//! confused or hostile client learns it at once. DNS, IP and e-mail SANs in a CSR are ignored:
//! an SVID carries exactly one URI SAN and nothing else.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
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
    self, CredentialKind, IssuedRecord, PUBLIC_MODE, SECRET_MODE, StateDir, StateError,
};
use crate::store::{Redemption, Store};
use crate::svid::hex_lower;
use crate::token::{self, TokenError};
use picket_common::crypto::{self, RandomError};

/// Leaf lifetime unless configured otherwise.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Ceiling on the leaf lifetime unless configured otherwise.
pub const DEFAULT_MAX_LEAF_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest leaf lifetime the CA issues. A sidecar renews at about two thirds of the
/// lifetime and retries a failed renewal with backoff (0.5 s doubling up to 30 s); below a
/// minute, one lost CA round trip or a strict client's clock a second ahead would see the
/// certificate expire before its successor arrives.
pub const MIN_LEAF_TTL: Duration = Duration::from_secs(60);

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
    /// This CA is a replica signing with shared material and redeems no join tokens.
    #[error(
        "this CA replica redeems no join tokens: their single-use state has one writer, the \
         enrollment CA (the state directory the shared signing material comes from)"
    )]
    JoinTokensNotServed,
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
    /// Sign with the intermediate and trust bundle in this directory (`issuer.pem`,
    /// `issuer.key`, `bundle.pem`; on Kubernetes a Secret volume shared by every CA replica)
    /// instead of making a root and an intermediate in the state directory. The material
    /// stays there and is read again when it changes. Such a CA is one of several replicas: it
    /// redeems no join tokens (each replica's token store would be its own).
    pub signer_dir: Option<PathBuf>,
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
            signer_dir: None,
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
    /// Where the signing material lives when it is not in the state directory
    /// ([`InitOptions::signer_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signer_dir: Option<PathBuf>,
}

/// A random serial the store has not recorded (`taken` asks it, inside the issuance's
/// transaction).
fn fresh_serial(
    taken: &mut dyn FnMut(&str) -> Result<bool, StateError>,
) -> Result<(SerialNumber, String), IssueError> {
    loop {
        let bytes = random_serial()?;
        let hex = hex_lower(&bytes);
        if !taken(&hex)? {
            return Ok((SerialNumber::from_slice(&bytes), hex));
        }
    }
}

/// The certificate authority, loaded from its state directory.
pub struct Authority {
    dir: StateDir,
    trust_domain: TrustDomain,
    leaf_lifetime: time::Duration,
    /// The directory the signing material is read from when it is not the state directory
    /// ([`InitOptions::signer_dir`]).
    signer_dir: Option<StateDir>,
    /// The issuer and the trust bundle in force. Replaced as a whole by [`Authority::reload`]
    /// when a rotation command changed them on disk; an issuance loads it once, so a request
    /// in flight finishes with the material it started with.
    signer: ArcSwap<Signer>,
    /// Tokens and issuance records. Held for the whole of an issuance, which is synchronous;
    /// never across an `.await`.
    store: Mutex<Store>,
}

/// The signing material read from the state directory: the intermediate and its key, the
/// root it chains to, and the trust bundle. Rotation changes all of it together.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_pem: String,
    issuer_not_after: OffsetDateTime,
    /// The subject of the root the issuer chains to.
    root_name: String,
    bundle_pem: String,
    trust_anchors: Vec<CertificateDer<'static>>,
}

impl Signer {
    /// Reads and checks `issuer.pem`, `issuer.key` and `bundle.pem`. The caller holds the
    /// directory lock, so a rotation command is never seen half done.
    fn load(dir: &StateDir) -> Result<Self, CaError> {
        let issuer_pem = dir.read_string(state::ISSUER_CERT)?;
        let issuer_der = CertificateDer::from_pem_slice(issuer_pem.as_bytes())
            .map_err(|e| corrupt(dir, state::ISSUER_CERT, e.to_string()))?;
        let issuer_key = KeyPair::from_pem(&dir.read_string(state::ISSUER_KEY)?)
            .map_err(|e| corrupt(dir, state::ISSUER_KEY, e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(&issuer_der)
            .map_err(|e| corrupt(dir, state::ISSUER_CERT, e.to_string()))?;
        if parsed.public_key().raw != issuer_key.subject_public_key_info().as_slice() {
            return Err(corrupt(dir, state::ISSUER_KEY, "does not match issuer.pem".into()).into());
        }
        let issuer_not_after = unix_time(parsed.validity().not_after.timestamp())
            .ok_or_else(|| corrupt(dir, state::ISSUER_CERT, "bad not-after".into()))?;
        let root_name = parsed.issuer().to_string();
        let issuer = Issuer::from_ca_cert_der(&issuer_der, issuer_key)
            .map_err(|e| corrupt(dir, state::ISSUER_CERT, e.to_string()))?;

        let bundle_pem = dir.read_string(state::BUNDLE)?;
        let trust_anchors = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(dir, state::BUNDLE, e.to_string()))?;
        if trust_anchors.is_empty() {
            return Err(corrupt(dir, state::BUNDLE, "holds no certificate".into()).into());
        }
        // The bundle and the intermediate change together in a rotation; material read while
        // a Secret volume was being swapped could pair them wrongly.
        let root_in_bundle = trust_anchors.iter().any(|anchor| {
            X509Certificate::from_der(anchor)
                .is_ok_and(|(_, root)| root.subject().as_raw() == parsed.issuer().as_raw())
        });
        if !root_in_bundle {
            return Err(corrupt(
                dir,
                state::BUNDLE,
                format!("does not hold {root_name:?}, the root issuer.pem chains to"),
            )
            .into());
        }
        Ok(Self {
            issuer,
            issuer_pem: pem_certificate(&issuer_der),
            issuer_der,
            issuer_not_after,
            root_name,
            bundle_pem,
            trust_anchors,
        })
    }

    /// Whether `other` is the same material (same intermediate, same bundle).
    fn same_as(&self, other: &Self) -> bool {
        self.issuer_der == other.issuer_der && self.trust_anchors == other.trust_anchors
    }

    /// `now + lifetime` rounded up to the whole second a certificate can record (so the
    /// certificate is never shorter than promised), but never past the issuer's own end of
    /// validity.
    fn not_after(&self, now: OffsetDateTime, lifetime: time::Duration) -> OffsetDateTime {
        ceil_to_second(now.saturating_add(lifetime)).min(self.issuer_not_after)
    }
}

/// What [`Authority::reload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The state directory holds the material already in force.
    Unchanged,
    /// New material is in force: the subjects of the new intermediate and of its root, and
    /// the number of roots in the trust bundle.
    Changed {
        /// The new intermediate's subject.
        issuer: String,
        /// The subject of the root it chains to.
        root: String,
        /// How many roots the trust bundle holds.
        bundle_roots: usize,
    },
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

/// The subject alternative names and extended key usages a certificate of `profile` for
/// `spiffe_id` carries, once the CSR is checked to ask for nothing else.
fn certificate_names(
    profile: &Profile<'_>,
    csr: &CertificateSigningRequestParams,
    spiffe_id: &SpiffeId,
) -> Result<(Vec<SanType>, Vec<ExtendedKeyUsagePurpose>), IssueError> {
    Ok(match profile {
        Profile::Svid => {
            check_requested_identity(csr, spiffe_id)?;
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
            check_requested_server_names(csr, names, spiffe_id)?;
            (
                CertificateParams::new(names.to_vec())?.subject_alt_names,
                vec![ExtendedKeyUsagePurpose::ServerAuth],
            )
        }
    })
}

/// Writes the CA's config, last in `init`: its presence is what makes the directory an
/// initialised CA. `signer_dir` names the shared material of a replica.
fn write_config(
    dir: &StateDir,
    opts: &InitOptions,
    signer_dir: Option<&Path>,
) -> Result<(), CaError> {
    dir.write_json(
        state::CONFIG,
        &CaConfig {
            format: FORMAT_VERSION,
            trust_domain: opts.trust_domain.clone(),
            leaf_ttl_secs: whole_seconds_up(opts.leaf_ttl),
            max_leaf_ttl_secs: whole_seconds_up(opts.max_leaf_ttl),
            signer_dir: signer_dir.map(Path::to_path_buf),
        },
    )?;
    Ok(())
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
        match &opts.signer_dir {
            Some(signer_dir) => Self::init_replica(&opts, &dir, signer_dir)?,
            None => Self::init_issuer(&opts, &dir)?,
        }
        drop(lock);
        Self::open(&opts.state_dir)
    }

    /// `init` of a replica: no root and no intermediate, only the config naming the shared
    /// signing material (checked now, so that a replica with unusable material never starts).
    fn init_replica(opts: &InitOptions, dir: &StateDir, signer_dir: &Path) -> Result<(), CaError> {
        if opts.root.is_some() {
            return Err(CaError::InvalidOption(
                "a CA that signs with shared material (--signer-dir) makes no intermediate: \
                 it takes no root"
                    .into(),
            ));
        }
        Signer::load(&StateDir::signing_material(signer_dir))?;
        Store::open(dir)?;
        write_config(dir, opts, Some(signer_dir))?;
        tracing::info!(
            state_dir = %opts.state_dir.display(),
            signer_dir = %signer_dir.display(),
            trust_domain = %opts.trust_domain,
            "initialised a CA replica signing with shared material"
        );
        Ok(())
    }

    /// `init` of a CA that signs with its own material: a root (made or imported), an
    /// intermediate under it and the bundle, then the config.
    fn init_issuer(opts: &InitOptions, dir: &StateDir) -> Result<(), CaError> {
        let now = now();
        let (root, root_not_after, bundle_pem) = match &opts.root {
            None => {
                let (key, cert_pem, params, not_after) = new_root(now)?;
                dir.write(state::ROOT_KEY, key.serialize_pem().as_bytes(), SECRET_MODE)?;
                dir.write(state::ROOT_CERT, cert_pem.as_bytes(), PUBLIC_MODE)?;
                (Issuer::new(params, key), not_after, cert_pem)
            }
            Some((cert_path, key_path)) => import_root(cert_path, key_path, now)?,
        };
        let (issuer_key, issuer_pem) = new_issuer(&root, root_not_after, now)?;
        dir.write(
            state::ISSUER_KEY,
            issuer_key.serialize_pem().as_bytes(),
            SECRET_MODE,
        )?;
        dir.write(state::ISSUER_CERT, issuer_pem.as_bytes(), PUBLIC_MODE)?;
        dir.write(state::BUNDLE, bundle_pem.as_bytes(), PUBLIC_MODE)?;
        Store::open(dir)?;
        write_config(dir, opts, None)?;
        tracing::info!(
            state_dir = %opts.state_dir.display(),
            trust_domain = %opts.trust_domain,
            imported_root = opts.root.is_some(),
            "initialised CA"
        );
        Ok(())
    }

    /// Loads the CA from `state_dir`, with the serials it has already issued.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, CaError> {
        let dir = StateDir::open(state_dir.as_ref())?;
        let lock = dir.lock()?;
        crate::state::finish_interrupted_rotation(&dir)?;
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
        validate_ttls(leaf_ttl, Duration::from_secs(config.max_leaf_ttl_secs)).map_err(|e| {
            corrupt(
                &dir,
                state::CONFIG,
                format!(
                    "{e}; set leaf_ttl_secs to at least {}",
                    MIN_LEAF_TTL.as_secs()
                ),
            )
        })?;
        let leaf_lifetime = time::Duration::try_from(leaf_ttl)
            .map_err(|e| corrupt(&dir, state::CONFIG, e.to_string()))?;

        let signer_dir = config.signer_dir.as_deref().map(StateDir::signing_material);
        let signer = Signer::load(signer_dir.as_ref().unwrap_or(&dir))?;
        let store = Store::open(&dir)?;
        drop(lock);

        Ok(Self {
            dir,
            signer_dir,
            trust_domain: config.trust_domain,
            leaf_lifetime,
            signer: ArcSwap::from_pointee(signer),
            store: Mutex::new(store),
        })
    }

    /// Reads the signing material again (under the directory lock, so a rotation command is
    /// never seen half done) and puts it in force if a rotation command changed it. Issuances
    /// in flight finish with the material they started with. On error the material in force
    /// stays.
    pub fn reload(&self) -> Result<Reloaded, CaError> {
        let fresh = match &self.signer_dir {
            // A Secret volume is swapped as a whole; a read that straddles a swap fails the
            // pairing checks and is tried again at the next reload.
            Some(shared) => Signer::load(shared)?,
            None => {
                let lock = self.dir.lock()?;
                crate::state::finish_interrupted_rotation(&self.dir)?;
                let fresh = Signer::load(&self.dir)?;
                drop(lock);
                fresh
            }
        };
        if fresh.same_as(&self.signer.load()) {
            return Ok(Reloaded::Unchanged);
        }
        let changed = Reloaded::Changed {
            issuer: x509_subject(&fresh.issuer_der),
            root: fresh.root_name.clone(),
            bundle_roots: fresh.trust_anchors.len(),
        };
        self.signer.store(Arc::new(fresh));
        Ok(changed)
    }

    /// Every serial the store has recorded (for tests).
    #[cfg(test)]
    pub(crate) fn issued_serials(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serials()
    }

    /// The trust domain of every identity this CA issues.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots workloads should trust now, PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.signer.load().bundle_pem.clone()
    }

    /// The roots workloads should trust now, DER.
    pub fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        self.signer.load().trust_anchors.clone()
    }

    /// The subject of the intermediate issuing now.
    pub fn issuer_subject(&self) -> String {
        x509_subject(&self.signer.load().issuer_der)
    }

    /// Creates a join token that grants `workload` in this trust domain up to `uses`
    /// certificates during `ttl`. The token is returned once; only its digest is kept.
    pub fn create_token(
        &self,
        workload: &WorkloadName,
        ttl: Duration,
        uses: u32,
    ) -> Result<String, CaError> {
        if let Some(shared) = &self.signer_dir {
            return Err(CaError::InvalidOption(join_tokens_not_served(
                shared.path(),
            )));
        }
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
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add_token(&token, &identity, expires_at, uses, now)?;
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
        // Loaded once: a reload during this issuance does not mix two generations.
        let signer = self.signer.load_full();
        let exact_now = OffsetDateTime::now_utc();
        let now = exact_now.truncate_to_second();
        if now >= signer.issuer_not_after {
            return Err(IssueError::IssuerExpired(signer.issuer_not_after));
        }
        let (redemption, kind, known) = self.redemption(&credential)?;
        // One transaction: the token's use, the serial's uniqueness and the record commit
        // together or not at all; any error below rolls the token's use back. The store stays
        // consistent even if a holder of the lock panicked (its transaction rolled back).
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let issued = store.issue(redemption, now, |granted, serial_taken| {
            let spiffe_id = known
                .or(granted)
                .ok_or(IssueError::Token(TokenError::Unknown))?;
            let (subject_alt_names, extended_key_usages) =
                certificate_names(&profile, &csr, &spiffe_id)?;
            let (serial, serial_hex) = fresh_serial(serial_taken)?;
            let not_after = signer.not_after(exact_now, self.leaf_lifetime);
            let mut params = end_entity_params(serial, now, not_after);
            params.subject_alt_names = subject_alt_names;
            params.extended_key_usages = extended_key_usages;
            let leaf = params.signed_by(&csr.public_key, &signer.issuer)?;
            let record = IssuedRecord {
                serial: serial_hex.clone(),
                spiffe_id: spiffe_id.clone(),
                not_after,
                credential: kind,
                issued_at: now,
                root: Some(signer.root_name.clone()),
            };
            let issued = Issued {
                chain_pem: format!("{}{}", leaf.pem(), signer.issuer_pem),
                trust_bundle_pem: signer.bundle_pem.clone(),
                spiffe_id,
                serial: serial_hex,
                not_after,
            };
            Ok::<_, IssueError>((issued, record))
        })?;
        drop(store);
        tracing::info!(
            spiffe_id = %issued.spiffe_id,
            serial = %issued.serial,
            credential = ?kind,
            "issued certificate"
        );
        Ok(issued)
    }

    /// What `credential` redeems, its kind for the record, and the identity it proves when
    /// that is known before the store is asked (a join token's identity is the token's).
    fn redemption<'c>(
        &self,
        credential: &'c Credential,
    ) -> Result<(Redemption<'c>, CredentialKind, Option<SpiffeId>), IssueError> {
        Ok(match credential {
            Credential::JoinToken(_) if self.signer_dir.is_some() => {
                return Err(IssueError::JoinTokensNotServed);
            }
            Credential::JoinToken(token) => {
                (Redemption::Token(token), CredentialKind::JoinToken, None)
            }
            Credential::Renewal(id) if id.trust_domain() == &self.trust_domain => {
                (Redemption::None, CredentialKind::Renewal, Some(id.clone()))
            }
            Credential::Renewal(id) => return Err(IssueError::ForeignTrustDomain(id.clone())),
            Credential::ServiceAccount(name) => (
                Redemption::None,
                CredentialKind::ServiceAccountToken,
                Some(SpiffeId::new(self.trust_domain.clone(), name.clone())),
            ),
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
        // Never recorded (it is made at each start and never leaves the CA): 127 random bits
        // make a repeat of any recorded serial as likely as guessing a key.
        let serial = SerialNumber::from_slice(&random_serial()?);
        let signer = self.signer.load_full();
        let exact_now = OffsetDateTime::now_utc();
        let mut params = end_entity_params(
            serial,
            exact_now.truncate_to_second(),
            signer.not_after(exact_now, SERVER_CERT_LIFETIME),
        );
        params.subject_alt_names = names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &signer.issuer)?;
        Ok((
            vec![cert.der().clone(), signer.issuer_der.clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        ))
    }
}

/// Why a CA replica signing with shared material makes no join token.
fn join_tokens_not_served(signer_dir: &Path) -> String {
    format!(
        "this CA signs with the shared material in {} and is one of several replicas: a join \
         token made here would be known to this replica only. Create join tokens at the \
         enrollment CA, whose state directory the material comes from",
        signer_dir.display()
    )
}

/// Whether the CA in `dir` signs with shared material, and where it lives.
pub(crate) fn shared_signer_dir(dir: &StateDir) -> Result<Option<PathBuf>, StateError> {
    let config: CaConfig = dir.read_json(state::CONFIG)?;
    Ok(config.signer_dir)
}

/// The subject of a certificate, as text (empty if it does not parse: only certificates this
/// module already parsed are passed).
fn x509_subject(der: &CertificateDer<'_>) -> String {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_default()
}

fn validate_ttls(leaf: Duration, max: Duration) -> Result<(), CaError> {
    if leaf < MIN_LEAF_TTL {
        return Err(CaError::InvalidOption(format!(
            "leaf lifetime {leaf:?} is shorter than the minimum of {}s: sidecars renew at two \
             thirds of the lifetime and need time to retry a failed renewal",
            MIN_LEAF_TTL.as_secs()
        )));
    }
    if leaf > max {
        return Err(CaError::InvalidOption(format!(
            "leaf lifetime {}s is longer than the maximum leaf lifetime {}s",
            whole_seconds_up(leaf),
            whole_seconds_up(max)
        )));
    }
    Ok(())
}

/// `d` in whole seconds, a started second counting as one: a lifetime is never shortened.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
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

/// A short name for a CA key: the first four bytes of the SHA-256 of its public key, as eight
/// hex digits (leading zeros kept: one key in 256 hashes to a zero first byte). It goes into
/// the CA's common name, so every root and intermediate generation has its own subject and
/// chains stay unambiguous while two of them overlap.
pub(crate) fn key_generation(key: &KeyPair) -> String {
    generation_of(key.subject_public_key_info().as_slice())
}

fn generation_of(spki: &[u8]) -> String {
    picket_common::text::hex(&crypto::sha256(spki)[..4])
}

/// A new self-signed root valid from `now` for ten years: key, certificate PEM, the
/// parameters it was made with, and its end of validity.
pub(crate) fn new_root(
    now: OffsetDateTime,
) -> Result<(KeyPair, String, CertificateParams, OffsetDateTime), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let not_after = now.saturating_add(ROOT_LIFETIME);
    let name = format!("Picket root CA {}", key_generation(&key));
    let params = ca_params(&name, 1, now.saturating_sub(BACKDATE), not_after)?;
    let cert = params.self_signed(&key)?;
    Ok((key, cert.pem(), params, not_after))
}

/// A new intermediate issuer signed by `root` (which ends at `root_not_after`), valid for a
/// year or until the root ends: its key and certificate PEM.
pub(crate) fn new_issuer(
    root: &Issuer<'_, KeyPair>,
    root_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(KeyPair, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(
        &format!("Picket issuer CA {}", key_generation(&key)),
        0,
        now.saturating_sub(BACKDATE),
        now.saturating_add(ISSUER_LIFETIME).min(root_not_after),
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, root)?;
    Ok((key, cert.pem()))
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
pub(crate) fn import_root(
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

/// `t` rounded up to a whole second.
fn ceil_to_second(t: OffsetDateTime) -> OffsetDateTime {
    let floor = t.truncate_to_second();
    if floor == t {
        t
    } else {
        floor.saturating_add(time::Duration::SECOND)
    }
}

/// The current time, whole seconds (as certificates record it).
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().truncate_to_second()
}

pub(crate) fn unix_time(secs: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

pub(crate) fn corrupt(dir: &StateDir, name: &str, reason: String) -> StateError {
    StateError::Corrupt {
        path: dir.file(name),
        reason,
    }
}

pub(crate) fn pem_certificate(der: &[u8]) -> String {
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
mod tests;
