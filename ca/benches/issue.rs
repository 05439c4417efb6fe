//! CA signing rate: `Authority::issue` on its real path, one thread, as `bench/run` reports it.
//!
//! Four cases separate where an issuance's time goes:
//! - `join_token_disk`: the first-issuance path as a sidecar meets it: parse and check the CSR,
//!   redeem the token (token file rewritten atomically: temp file, fsync, rename), sign, append
//!   to the issuance log with fsync. State on the ordinary disk.
//! - `renewal_disk`: a renewal credential skips the token file; signing plus the log append.
//! - `join_token_tmpfs` / `renewal_tmpfs`: the same with the state in /dev/shm, where fsync costs
//!   next to nothing, so `renewal_tmpfs` is close to the pure CPU cost of an issuance.
//!
//! - `join_token_100k_disk`: the first-issuance path with 100,000 other outstanding tokens, so
//!   a redemption's cost shows whether it grows with the number of tokens.
//!
//! The same CSR is sent every time: the CA keeps no record of public keys, so this signs a fresh
//! certificate (new serial) on each call exactly as for distinct workloads.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use picket_ca::{Authority, Credential, InitOptions, SpiffeId, WorkloadName};
use rcgen::{CertificateParams, KeyPair};

const TRUST_DOMAIN: &str = "cluster.local";

fn csr_pem() -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn authority(parent: &Path) -> Authority {
    let options = InitOptions::new(parent.join("state"), TRUST_DOMAIN.parse().unwrap());
    Authority::init(options).unwrap()
}

fn issue(c: &mut Criterion) {
    let csr = csr_pem();
    let workload = WorkloadName::new("shop", "orders").unwrap();
    let renewing = SpiffeId::new(TRUST_DOMAIN.parse().unwrap(), workload.clone());

    let mut places = vec![("disk", tempfile::tempdir().unwrap())];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        places.push(("tmpfs", tempfile::tempdir_in(shm).unwrap()));
    }

    let mut group = c.benchmark_group("ca_issue");
    group.throughput(Throughput::Elements(1));
    for (place, dir) in &places {
        let ca = authority(dir.path());
        let token = ca
            .create_token(&workload, Duration::from_secs(24 * 3600), u32::MAX)
            .unwrap();
        group.bench_function(format!("join_token_{place}"), |b| {
            b.iter(|| {
                ca.issue(&csr, Credential::JoinToken(token.clone()))
                    .unwrap()
            });
        });
        group.bench_function(format!("renewal_{place}"), |b| {
            b.iter(|| {
                ca.issue(&csr, Credential::Renewal(renewing.clone()))
                    .unwrap()
            });
        });
    }
    group.finish();

    // 100,000 outstanding tokens, written in the CA's token file format before the CA opens
    // its state (a CA that keeps tokens elsewhere takes them over from this file at start).
    let dir = tempfile::tempdir().unwrap();
    drop(authority(dir.path()));
    let state = dir.path().join("state");
    let mut tokens = Vec::with_capacity(OUTSTANDING);
    for i in 0..OUTSTANDING {
        let digest = picket_common::crypto::sha256(format!("outstanding token {i}").as_bytes());
        tokens.push(serde_json::json!({
            "sha256": base64_url(&digest),
            "identity": format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/w{i}"),
            "expires_at": "2099-01-01T00:00:00Z",
            "uses_left": 1,
        }));
    }
    std::fs::write(
        state.join("tokens.json"),
        serde_json::to_vec(&serde_json::json!({ "tokens": tokens })).unwrap(),
    )
    .unwrap();
    let ca = Authority::open(&state).unwrap();
    let token = ca
        .create_token(&workload, Duration::from_secs(24 * 3600), u32::MAX)
        .unwrap();
    let mut group = c.benchmark_group("ca_issue_outstanding");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("join_token_100k_disk", |b| {
        b.iter(|| {
            ca.issue(&csr, Credential::JoinToken(token.clone()))
                .unwrap()
        });
    });
    group.finish();
}

/// Outstanding tokens in the `join_token_100k_disk` case.
const OUTSTANDING: usize = 100_000;

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

criterion_group!(benches, issue);
criterion_main!(benches);
