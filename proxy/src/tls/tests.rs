#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
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

/// Runs one TLS handshake in memory (and delivers what follows it, such as session
/// tickets) and returns how the client saw it: full or resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> rustls::HandshakeKind {
    let name = ServerName::try_from("orders.shop").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            s.read_tls(&mut rest).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut wire = Vec::new();
        s.write_tls(&mut wire).unwrap();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            c.read_tls(&mut rest).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    c.handshake_kind().unwrap()
}

#[test]
fn data_path_connections_are_never_resumed() {
    let r = root("mesh");
    let server = creds(&r, ORDERS);
    let client = creds(&r, FRONTEND);
    let server_config = server.server_config().unwrap();
    let client_config = client
        .client_config(PeerIdentity::Exact(ORDERS.parse().unwrap()), &[ALPN_H2])
        .unwrap();
    assert!(!crypto::server_can_resume(&server_config));
    for _ in 0..3 {
        assert_eq!(
            handshake(&client_config, &server_config),
            rustls::HandshakeKind::Full
        );
    }

    // The same handshake with rustls' default session cache and client resumption does
    // resume: the check above would see it.
    let mut resuming_server = (*server_config).clone();
    resuming_server.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    resuming_server.send_tls13_tickets = 2;
    let resuming_server = Arc::new(resuming_server);
    let mut resuming_client = (*client_config).clone();
    resuming_client.resumption = rustls::client::Resumption::default();
    let resuming_client = Arc::new(resuming_client);
    assert_eq!(
        handshake(&resuming_client, &resuming_server),
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        handshake(&resuming_client, &resuming_server),
        rustls::HandshakeKind::Resumed
    );
    // Each side alone refuses: a resuming client against the data-path server, and the
    // data-path client against a resuming server.
    assert_eq!(
        handshake(&resuming_client, &server_config),
        rustls::HandshakeKind::Full
    );
    handshake(&client_config, &resuming_server);
    assert_eq!(
        handshake(&client_config, &resuming_server),
        rustls::HandshakeKind::Full
    );
}
