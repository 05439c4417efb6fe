#![allow(clippy::unwrap_used)]

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;

/// Runs one in-memory TLS 1.3 handshake between a server built with [`provider`] and a
/// client offering `client_groups`; returns the group each side saw.
fn handshake(client_groups: &[&'static dyn SupportedKxGroup]) -> (KxGroup, KxGroup) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["picket.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client_provider = CryptoProvider {
        kx_groups: client_groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let client = ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("picket.test").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    let mut wire = Vec::new();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        wire.clear();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        wire.clear();
        s.write_tls(&mut wire).unwrap();
        c.read_tls(&mut wire.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake did not finish"
    );
    (KxGroup::of(&c).unwrap(), KxGroup::of(&s).unwrap())
}

#[test]
fn two_picket_endpoints_agree_on_the_hybrid_group() {
    assert_eq!(
        handshake(KX_GROUPS),
        (KxGroup::X25519Mlkem768, KxGroup::X25519Mlkem768)
    );
}

#[test]
fn classical_clients_still_get_a_classical_group() {
    assert_eq!(
        handshake(&[kx_group::X25519]),
        (KxGroup::X25519, KxGroup::X25519)
    );
    assert_eq!(
        handshake(&[kx_group::SECP256R1]),
        (KxGroup::Secp256r1, KxGroup::Secp256r1)
    );
}

#[test]
fn the_hybrid_group_comes_first_and_the_classical_ones_stay() {
    let names: Vec<NamedGroup> = provider().kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(
        names,
        [
            NamedGroup::X25519MLKEM768,
            NamedGroup::X25519,
            NamedGroup::secp256r1,
            NamedGroup::secp384r1
        ]
    );
    // Every other field is aws-lc-rs' own.
    let ours = provider();
    let stock = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(
        ours.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>(),
        stock
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    );
    assert!(ours.fips() == stock.fips());
}

#[test]
fn group_names_are_bounded_and_only_the_hybrid_is_post_quantum() {
    let all = [
        (NamedGroup::X25519MLKEM768, "x25519mlkem768", true),
        (NamedGroup::X25519, "x25519", false),
        (NamedGroup::secp256r1, "secp256r1", false),
        (NamedGroup::secp384r1, "secp384r1", false),
        (NamedGroup::secp521r1, "other", false),
        (NamedGroup::Unknown(0x1234), "other", false),
    ];
    for (named, text, pq) in all {
        let group = KxGroup::from_named(named);
        assert_eq!(
            (group.as_str(), group.is_post_quantum()),
            (text, pq),
            "{named:?}"
        );
    }
}
