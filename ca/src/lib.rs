//! picket-ca: SPIFFE identity types, the embedded certificate authority and its HTTPS API.
//!
//! This crate owns everything about identity: the [`identity::SpiffeId`] newtype, the
//! X.509-SVID rules ([`svid`]), the CA itself (issuing, join tokens, Kubernetes
//! service-account attestation through the TokenReview API, state on disk) and the HTTPS
//! server and client of its API. It must not depend on the proxy or the policy engine.

pub mod api;
pub mod authority;
pub mod client;
pub mod identity;
pub mod server;
pub mod state;
pub mod svid;
#[cfg(test)]
mod test_support;
pub mod token;
pub mod tokenreview;

pub use authority::{Authority, CaError, Credential, InitOptions, IssueError, Issued, ServerNames};
pub use client::{CaClient, ClientError};
pub use identity::{IdentityError, SpiffeId, TrustDomain, WorkloadName};
