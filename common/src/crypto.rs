//! The one crypto provider: aws-lc-rs, passed explicitly to every rustls builder, and the one
//! list of key-exchange groups every Picket TLS endpoint offers.
//!
//! Nothing in Picket installs a process-wide default provider; every `ServerConfig` and
//! `ClientConfig` is built with [`provider`] so the choice is visible at each use.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{CommonState, NamedGroup};

/// Key-exchange groups in order of preference, for every server and client Picket builds: the
/// sidecars' inbound and outbound sides, the CA API and its client, the admission webhook and
/// the CA's Kubernetes API client.
///
/// The post-quantum hybrid X25519MLKEM768 (ML-KEM-768 with X25519, the IETF's hybrid
/// design) comes first, so two Picket endpoints always agree on it and traffic recorded today
/// stays secret from a future quantum computer ("harvest now, decrypt later"). The classical
/// groups follow, in aws-lc-rs' own order, for peers without ML-KEM (OpenSSL 3.0, older Go).
///
/// A TLS 1.3 client's order decides: a rustls server takes the first group of the client's
/// list that it supports, so the order matters on Picket's clients and the membership on its
/// servers. A Picket client sends key shares for X25519MLKEM768 and for X25519 (the hybrid's
/// own X25519 half, at no extra cost), so a classical server picks X25519 without a
/// HelloRetryRequest round trip.
///
/// The order is written here rather than taken from rustls' `prefer-post-quantum` feature:
/// the provider's default list depends on rustls' version and on features any crate in the
/// build may switch on, while this list is what Picket promises and is checked by a test.
pub static KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
    kx_group::SECP384R1,
];

/// The crypto provider every TLS configuration in Picket uses: aws-lc-rs with [`KX_GROUPS`].
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: KX_GROUPS.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// The key-exchange group a TLS handshake agreed on, as metrics labels, flow records, logs and
/// `picket demo` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KxGroup {
    /// X25519MLKEM768: post-quantum hybrid.
    X25519Mlkem768,
    /// X25519: classical.
    X25519,
    /// NIST P-256 (secp256r1): classical.
    Secp256r1,
    /// NIST P-384 (secp384r1): classical.
    Secp384r1,
    /// Any other group. Picket offers none, so this only names what a future provider might
    /// add, keeping label values bounded.
    Other,
}

impl KxGroup {
    /// The group of a finished handshake; `None` while the handshake is not complete.
    pub fn of(connection: &CommonState) -> Option<Self> {
        connection
            .negotiated_key_exchange_group()
            .map(|group| Self::from_named(group.name()))
    }

    /// The group for a TLS `NamedGroup` code point.
    pub fn from_named(group: NamedGroup) -> Self {
        match group {
            NamedGroup::X25519MLKEM768 => Self::X25519Mlkem768,
            NamedGroup::X25519 => Self::X25519,
            NamedGroup::secp256r1 => Self::Secp256r1,
            NamedGroup::secp384r1 => Self::Secp384r1,
            _ => Self::Other,
        }
    }

    /// The lowercase name used in every output: `x25519mlkem768`, `x25519`, `secp256r1`,
    /// `secp384r1`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X25519Mlkem768 => "x25519mlkem768",
            Self::X25519 => "x25519",
            Self::Secp256r1 => "secp256r1",
            Self::Secp384r1 => "secp384r1",
            Self::Other => "other",
        }
    }

    /// Whether the group resists a quantum computer (a hybrid with ML-KEM).
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Self::X25519Mlkem768)
    }
}

impl std::fmt::Display for KxGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS protocol versions Picket speaks: TLS 1.3 only.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// No session resumption on a TLS server: no session cache and no TLS 1.3 session tickets.
///
/// A resumed session skips the certificate exchange, so it would outlive the peer
/// certificate (and the trust bundle) it was made with; short-lived certificates are the
/// mesh's only revocation. Every connection is a full handshake that verifies the peer's
/// current certificate against the current bundle. rustls' default ticketer is never enabled,
/// so with no cache and no tickets sent nothing can be resumed (ARCHITECTURE.md, "Session
/// resumption").
pub fn no_server_resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// No session resumption on a TLS client: no sessions kept, none offered.
pub fn no_client_resumption(config: &mut rustls::ClientConfig) {
    config.resumption = rustls::client::Resumption::disabled();
}

/// Whether `config` can resume a session (for tests and start-up checks).
pub fn server_can_resume(config: &rustls::ServerConfig) -> bool {
    config.session_storage.can_cache() || config.ticketer.enabled() || config.send_tls13_tickets > 0
}

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

#[cfg(test)]
mod tests;
