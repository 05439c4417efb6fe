//! Helpers shared by this crate's unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;

use crate::authority::{Authority, InitOptions};
use crate::identity::{SpiffeId, WorkloadName};

/// The trust domain of every test CA.
pub(crate) const TRUST_DOMAIN: &str = "example.org";

/// Options for a CA in `<dir>/state` with default lifetimes.
pub(crate) fn options(dir: &Path) -> InitOptions {
    InitOptions::new(dir.join("state"), TRUST_DOMAIN.parse().unwrap())
}

/// A freshly initialised CA with a generated root.
pub(crate) fn new_ca() -> (TempDir, Authority) {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::init(options(dir.path())).unwrap();
    (dir, authority)
}

pub(crate) fn workload(namespace: &str, service_account: &str) -> WorkloadName {
    WorkloadName::new(namespace, service_account).unwrap()
}

pub(crate) fn spiffe_id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new(
        TRUST_DOMAIN.parse().unwrap(),
        workload(namespace, service_account),
    )
}

pub(crate) fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// A CSR for `key` with the given URI SANs (none is fine).
pub(crate) fn csr(key: &KeyPair, uris: &[&str]) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Every certificate in a PEM text.
pub(crate) fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Checks `chain_pem` (leaf first) with webpki against `bundle_pem`, as a TLS peer would.
pub(crate) fn verify_chain(bundle_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for root in certs(bundle_pem) {
        roots.add(root).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        picket_common::crypto::provider(),
    )
    .build()
    .unwrap();
    let chain = certs(chain_pem);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now())
        .map(|_| ())
}
