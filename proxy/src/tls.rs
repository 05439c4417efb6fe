//! TLS for the data path: the workload's current credentials and the SPIFFE verifiers.
//!
//! [`Credentials`] holds one [`Snapshot`] (certificate chain, key, trust bundle) behind an
//! `ArcSwap`. The rustls configurations are built once and read the snapshot at every
//! handshake, so a renewed certificate or a new trust bundle reaches new handshakes at once
//! while established connections keep the keys they negotiated.
//!
//! Verification always runs webpki chain validation against the current bundle first, then the
//! X.509-SVID rules ([`picket_ca::svid`]), then (outbound) the exact expected identity.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use picket_ca::svid::{self, SvidError, SvidInfo};
use picket_ca::{SpiffeId, TrustDomain};
use picket_common::crypto::{self, PROTOCOL_VERSIONS};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::peer::PeerIdentity;

/// ALPN for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why credentials could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM document held no usable certificate.
    #[error("{0}: no certificate found in PEM")]
    NoCertificate(&'static str),
    /// A PEM document could not be parsed.
    #[error("{what}: invalid PEM: {source}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: rustls_pki_types::pem::Error,
    },
    /// The trust bundle has no usable root.
    #[error("trust bundle holds no usable root certificate")]
    EmptyBundle,
    /// The private key is not usable by the crypto provider.
    #[error("private key rejected: {0}")]
    Key(rustls::Error),
    /// The certificate is not an acceptable SVID for this workload.
    #[error("certificate is not a valid SVID: {0}")]
    Svid(#[from] SvidError),
    /// The certificate names another workload.
    #[error("certificate is for {got}, expected {expected}")]
    WrongIdentity {
        /// What the certificate says.
        got: String,
        /// What this workload is.
        expected: String,
    },
    /// A verifier could not be built from the bundle.
    #[error("cannot build certificate verifier: {0}")]
    Verifier(String),
    /// A rustls configuration could not be built.
    #[error("cannot build TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Parses every certificate in a PEM document.
pub fn parse_certs(
    what: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// One consistent set of credentials: what this workload presents and what it trusts.
pub struct Snapshot {
    /// Chain and signing key presented in handshakes.
    pub certified: Arc<CertifiedKey>,
    /// Facts about the leaf, for `/identity` and metrics.
    pub leaf: SvidInfo,
    /// The trust bundle.
    pub roots: Arc<RootCertStore>,
    /// webpki client-chain verifier over `roots`.
    client_chain: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: only public facts.
        f.debug_struct("Snapshot")
            .field("leaf", &self.leaf)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// The workload's live credentials, swapped atomically on renewal.
pub struct Credentials {
    identity: SpiffeId,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Snapshot>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials for `identity` from a PEM chain (leaf first), its PKCS#8 key and the PEM
    /// trust bundle. The chain must verify against the bundle and name `identity`.
    pub fn new(
        identity: SpiffeId,
        chain_pem: &[u8],
        key: PrivateKeyDer<'static>,
        bundle_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let provider = crypto::provider();
        let chain = parse_certs("certificate chain", chain_pem)?;
        let key = load_key(&provider, key)?;
        let snapshot = build_snapshot(&identity, &provider, chain, key, bundle_pem)?;
        Ok(Self {
            identity,
            provider,
            current: ArcSwap::from_pointee(snapshot),
        })
    }

    /// Replaces the credentials; handshakes from now on use the new ones. On error the current
    /// credentials stay in force.
    pub fn rotate(
        &self,
        chain_pem: &[u8],
        key: PrivateKeyDer<'static>,
        bundle_pem: &[u8],
    ) -> Result<(), TlsError> {
        let chain = parse_certs("certificate chain", chain_pem)?;
        let key = load_key(&self.provider, key)?;
        let snapshot = build_snapshot(&self.identity, &self.provider, chain, key, bundle_pem)?;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }

    /// Replaces the trust bundle and keeps the certificate (the bundle file changed during a
    /// root rotation). Refused, and the current bundle kept, if this workload's own
    /// certificate does not chain to the new bundle: peers would refuse it anyway, and its
    /// next renewal brings a certificate that does.
    pub fn set_bundle(&self, bundle_pem: &[u8]) -> Result<(), TlsError> {
        let current = self.current.load_full();
        let snapshot = build_snapshot(
            &self.identity,
            &self.provider,
            current.certified.cert.clone(),
            Arc::clone(&current.certified.key),
            bundle_pem,
        )?;
        // A renewal that landed meanwhile is kept: its bundle came from the CA.
        let previous = self.current.compare_and_swap(&current, Arc::new(snapshot));
        if !Arc::ptr_eq(&*previous, &current) {
            tracing::debug!("credentials changed while the bundle was being replaced; kept them");
        }
        Ok(())
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// This workload's identity.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.identity.trust_domain()
    }

    /// Server configuration for the inbound listener: TLS 1.3, client certificate required and
    /// verified as an SVID of this trust domain, ALPN h2 and http/1.1 (none means opaque TCP).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = Arc::new(SpiffeClientVerifier {
            creds: Arc::clone(self),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCert {
                creds: Arc::clone(self),
            }));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        crypto::no_server_resumption(&mut config);
        Ok(Arc::new(config))
    }

    /// Client configuration for connections to a peer that must present `expected`.
    pub fn client_config(
        self: &Arc<Self>,
        expected: PeerIdentity,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(SpiffeServerVerifier {
            creds: Arc::clone(self),
            expected,
        });
        // The one place a custom server verifier is installed. It performs full webpki chain
        // validation and then checks the SPIFFE ID; nothing is skipped.
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentCert {
                creds: Arc::clone(self),
            }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        crypto::no_client_resumption(&mut config);
        Ok(Arc::new(config))
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

fn load_key(
    provider: &CryptoProvider,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsError> {
    provider
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Key)
}

fn build_snapshot(
    identity: &SpiffeId,
    provider: &Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    bundle_pem: &[u8],
) -> Result<Snapshot, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) =
        roots.add_parsable_certificates(parse_certs("trust bundle", bundle_pem)?);
    if added == 0 {
        return Err(TlsError::EmptyBundle);
    }
    let roots = Arc::new(roots);
    let leaf = chain
        .first()
        .ok_or(TlsError::NoCertificate("certificate chain"))?;
    let now = UnixTime::now();
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| TlsError::Verifier(e.to_string()))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        now,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| {
        TlsError::Verifier(format!("own certificate does not chain to the bundle: {e}"))
    })?;
    let info = svid::verify_leaf(leaf, identity.trust_domain(), unix_seconds(now))?;
    if &info.id != identity {
        return Err(TlsError::WrongIdentity {
            got: info.id.to_string(),
            expected: identity.to_string(),
        });
    }
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(TlsError::Key)?;
    let client_chain =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Snapshot {
        certified: Arc::new(certified),
        leaf: info,
        roots,
        client_chain,
    })
}

fn unix_seconds(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

fn svid_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Presents the current certificate, for both server and client handshakes.
#[derive(Debug)]
struct CurrentCert {
    creds: Arc<Credentials>,
}

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.creds.current.load().certified))
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.creds.current.load().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Inbound: the client must present an SVID of our trust domain chained to the bundle.
#[derive(Debug)]
struct SpiffeClientVerifier {
    creds: Arc<Credentials>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let snapshot = self.creds.current.load();
        snapshot
            .client_chain
            .verify_client_cert(end_entity, intermediates, now)?;
        svid::verify_leaf(end_entity, self.creds.trust_domain(), unix_seconds(now))
            .map_err(svid_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.creds.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.creds.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.creds.algorithms().supported_schemes()
    }
}

/// Outbound: the server must present an SVID chained to the bundle and matching `expected`.
#[derive(Debug)]
struct SpiffeServerVerifier {
    creds: Arc<Credentials>,
    expected: PeerIdentity,
}

/// The peer presented a valid SVID for another workload.
#[derive(Debug, thiserror::Error)]
#[error("peer presented {got}, expected {expected}")]
pub struct IdentityMismatch {
    /// What the peer presented.
    pub got: String,
    /// What the configuration requires.
    pub expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let snapshot = self.creds.current.load();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &snapshot.roots,
            intermediates,
            now,
            self.creds.algorithms().all,
        )?;
        // The expected identity names the trust domain the server must belong to.
        let info = svid::verify_leaf(end_entity, self.expected.trust_domain(), unix_seconds(now))
            .map_err(svid_error)?;
        if let PeerIdentity::Exact(expected) = &self.expected
            && &info.id != expected
        {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    got: info.id.to_string(),
                    expected: self.expected.to_string(),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.creds.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.creds.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.creds.algorithms().supported_schemes()
    }
}

/// The peer identity of an established connection, from its verified leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    svid::inspect_leaf(leaf).ok().map(|i| i.id)
}

/// A short, bounded reason for a failed handshake, used as a metric label and in logs.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    if e.kind() == ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            if other.0.downcast_ref::<IdentityMismatch>().is_some() {
                "wrong_identity"
            } else if let Some(s) = other.0.downcast_ref::<SvidError>() {
                match s {
                    SvidError::ForeignTrustDomain { .. } => "foreign_trust_domain",
                    SvidError::Expired => "expired",
                    _ => "not_an_svid",
                }
            } else {
                "bad_certificate"
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "untrusted",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "expired",
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::AlertReceived(_) => "peer_alert",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        _ => "tls",
    }
}

#[cfg(test)]
mod tests;
