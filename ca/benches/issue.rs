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
}

criterion_group!(benches, issue);
criterion_main!(benches);
