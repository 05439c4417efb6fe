//! picket-common: the small utilities every Picket crate shares, in one home.
//!
//! Durations as written in flags and files ([`duration`]), IP blocks ([`cidr::Cidr`], the one
//! CIDR type for policy `ipBlocks`, the sidecar's `meshed:` destinations and the Kubernetes
//! opt-outs), and, with the `runtime` feature, the one crypto provider with the system random
//! generator ([`crypto`]), retry timing ([`backoff`]) and the one listener skeleton every
//! server uses ([`server`]: connection limit, header timeout, HTTP settings, bounded body
//! reading), and bounded UTF-8 text files with byte offsets for bad bytes ([`text`]). The
//! spelling rules of a SPIFFE ID's parts ([`spiffe`]) are pure too. The pure parts build
//! without the feature, so the policy engine can use them and stay free of I/O and crypto.
//!
//! With the `discovery` feature it holds the destination and endpoint types that discovery
//! sources announce to sidecars ([`discovery`]), and the policy set the controller sends them
//! ([`policies`]).
//!
//! It must not depend on any other Picket crate.

pub mod cidr;
#[cfg(feature = "discovery")]
pub mod discovery;
pub mod duration;
#[cfg(feature = "discovery")]
pub mod policies;
pub mod spiffe;
#[cfg(feature = "yaml")]
pub mod yaml;

#[cfg(feature = "runtime")]
pub mod backoff;
#[cfg(feature = "runtime")]
pub mod crypto;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod text;

pub use cidr::{Cidr, CidrError};
