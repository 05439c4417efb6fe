//! The one crypto provider: aws-lc-rs, passed explicitly to every rustls builder.
//!
//! Nothing in Picket installs a process-wide default provider; every `ServerConfig` and
//! `ClientConfig` is built with [`provider`] so the choice is visible at each use.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS configuration in Picket uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS protocol versions Picket speaks: TLS 1.3 only.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Fills `buf` from the operating system's secure random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| RandomError)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The system random generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// A uniformly random fraction in `[0, 1)` for jitter; 0.5 if the random generator fails,
/// since jitter only spreads load and must never stop a retry.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 4];
    if fill_random(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}
