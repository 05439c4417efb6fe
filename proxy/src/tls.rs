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
        let snapshot = build_snapshot(&identity, &provider, chain_pem, key, bundle_pem)?;
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
        let snapshot = build_snapshot(&self.identity, &self.provider, chain_pem, key, bundle_pem)?;
        self.current.store(Arc::new(snapshot));
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
        Ok(Arc::new(config))
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

fn build_snapshot(
    identity: &SpiffeId,
    provider: &Arc<CryptoProvider>,
    chain_pem: &[u8],
    key: PrivateKeyDer<'static>,
    bundle_pem: &[u8],
) -> Result<Snapshot, TlsError> {
    let chain = parse_certs("certificate chain", chain_pem)?;
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
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Key)?;
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

/// Which server identity an outbound connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Exactly this workload.
    Exact(SpiffeId),
    /// Any workload of this trust domain (transparent destinations configured without a pinned
    /// identity: the chain and trust domain are checked, the workload is not).
    AnyIn(TrustDomain),
}

impl PeerIdentity {
    fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Exact(id) => id.trust_domain(),
            Self::AnyIn(td) => td,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::AnyIn(td) => write!(f, "any identity of {td}"),
        }
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration as TimeDuration, OffsetDateTime};

    struct TestRoot {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn root(cn: &str) -> TestRoot {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        TestRoot {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf_params(uris: &[&str]) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = OffsetDateTime::now_utc() - TimeDuration::minutes(1);
        p.not_after = OffsetDateTime::now_utc() + TimeDuration::hours(1);
        p
    }

    fn issue(root: &TestRoot, p: &CertificateParams) -> (CertificateDer<'static>, KeyPair) {
        let (cert, key) = issue_cert(root, p);
        (cert.der().clone(), key)
    }

    fn issue_cert(root: &TestRoot, p: &CertificateParams) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &root.issuer).unwrap();
        (cert, key)
    }

    const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    fn creds(root: &TestRoot, id: &str) -> Arc<Credentials> {
        let (cert, key) = issue_cert(root, &leaf_params(&[id]));
        let chain_pem = cert.pem();
        Arc::new(
            Credentials::new(
                id.parse().unwrap(),
                chain_pem.as_bytes(),
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                root.pem.as_bytes(),
            )
            .unwrap(),
        )
    }

    /// Runs both verifiers on `der` (as a client cert for the inbound side, and as the server
    /// cert of an outbound connection expecting FRONTEND).
    fn verdicts(
        server: &Arc<Credentials>,
        der: &CertificateDer<'_>,
    ) -> (Result<(), String>, Result<(), String>) {
        let now = UnixTime::now();
        let inbound = SpiffeClientVerifier {
            creds: Arc::clone(server),
        }
        .verify_client_cert(der, &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string());
        let outbound = SpiffeServerVerifier {
            creds: Arc::clone(server),
            expected: PeerIdentity::Exact(FRONTEND.parse().unwrap()),
        }
        .verify_server_cert(der, &[], &ServerName::try_from("x").unwrap(), &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string());
        (inbound, outbound)
    }

    #[test]
    fn valid_svid_is_accepted_both_ways() {
        let r = root("mesh");
        let server = creds(&r, ORDERS);
        let (der, _) = issue(&r, &leaf_params(&[FRONTEND]));
        let (i, o) = verdicts(&server, &der);
        i.unwrap();
        o.unwrap();
    }

    #[test]
    fn spiffe_verification_table_rejects_every_bad_certificate() {
        let r = root("mesh");
        let foreign = root("foreign");
        let server = creds(&r, ORDERS);
        let now = OffsetDateTime::now_utc();

        let mut cases: Vec<(&str, CertificateDer<'static>)> = Vec::new();
        let mut add =
            |name, root: &TestRoot, p: CertificateParams| cases.push((name, issue(root, &p).0));

        let mut p = leaf_params(&[]);
        p.subject_alt_names = vec![SanType::DnsName("frontend.shop".try_into().unwrap())];
        add("no URI SAN", &r, p);
        add(
            "two URI SANs",
            &r,
            leaf_params(&[FRONTEND, "spiffe://cluster.local/ns/shop/sa/other"]),
        );
        add(
            "non-spiffe URI",
            &r,
            leaf_params(&["https://cluster.local/ns/shop/sa/frontend"]),
        );
        add(
            "other trust domain",
            &r,
            leaf_params(&["spiffe://evil.example/ns/shop/sa/frontend"]),
        );
        let mut p = leaf_params(&[FRONTEND]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        add("CA:true leaf", &r, p);
        let mut p = leaf_params(&[FRONTEND]);
        p.not_before = now - TimeDuration::hours(3);
        p.not_after = now - TimeDuration::hours(1);
        add("expired", &r, p);
        let mut p = leaf_params(&[FRONTEND]);
        p.not_before = now + TimeDuration::hours(1);
        p.not_after = now + TimeDuration::hours(3);
        add("not yet valid", &r, p);
        let mut p = leaf_params(&[FRONTEND]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        add("wrong EKU", &r, p);
        let mut p = leaf_params(&[FRONTEND]);
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        add("no digitalSignature", &r, p);
        add(
            "chain to a foreign root",
            &foreign,
            leaf_params(&[FRONTEND]),
        );

        for (name, der) in &cases {
            let (i, o) = verdicts(&server, der);
            assert!(i.is_err(), "inbound accepted {name}");
            assert!(o.is_err(), "outbound accepted {name}");
        }
    }

    #[test]
    fn outbound_rejects_valid_svid_of_another_workload() {
        let r = root("mesh");
        let server = creds(&r, ORDERS);
        let (der, _) = issue(&r, &leaf_params(&[ORDERS]));
        let (i, o) = verdicts(&server, &der);
        i.unwrap();
        let e = o.unwrap_err();
        assert!(
            e.contains("IdentityMismatch") && e.contains("sa/frontend"),
            "{e}"
        );
    }

    #[test]
    fn rotation_to_a_certificate_for_another_identity_is_refused() {
        let r = root("mesh");
        let c = creds(&r, ORDERS);
        let before = c.current().leaf.serial_hex.clone();
        let (cert, key) = issue_cert(&r, &leaf_params(&[FRONTEND]));
        let err = c
            .rotate(
                cert.pem().as_bytes(),
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                r.pem.as_bytes(),
            )
            .unwrap_err();
        assert!(matches!(err, TlsError::WrongIdentity { .. }), "{err}");
        assert_eq!(c.current().leaf.serial_hex, before);
    }
}
