//! The CA's HTTP API wire types, shared by the server and the client.

use serde::{Deserialize, Serialize};

/// Path of the certificate issuing endpoint.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Path of the TLS server certificate endpoint (for the admission webhook).
pub const SERVER_CERTIFICATES_PATH: &str = "/v1/server-certificates";
/// Path of the trust bundle endpoint.
pub const TRUST_BUNDLE_PATH: &str = "/v1/trust-bundle";
/// Largest request body the CA reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /v1/certificates` and `POST /v1/server-certificates` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// The certificate signing request, PEM.
    pub csr: String,
}

/// `POST /v1/certificates` and `POST /v1/server-certificates` success body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// Leaf first, then the issuer: PEM.
    pub chain_pem: String,
    /// The roots to trust, PEM (may hold several during a root rotation).
    pub trust_bundle_pem: String,
    /// The SPIFFE ID the certificate carries (for a server certificate: the identity that
    /// asked for it; the certificate itself carries DNS names).
    pub spiffe_id: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Not-after as RFC 3339.
    pub not_after: String,
}

/// Body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// A stable machine-readable code, e.g. `token_used`.
    pub error: String,
    /// A sentence for people.
    pub message: String,
}
