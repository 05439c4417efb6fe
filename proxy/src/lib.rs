//! picket-proxy: the Picket sidecar.
//!
//! The library holds the data path (`inbound`, `outbound`), TLS and identity (`tls`,
//! `identity`), policy enforcement (`authz`), telemetry, the admin server and metrics, and the
//! built-in echo app (`echo`). The `picket` binary (crate `picket-cli`) runs it. It depends on
//! `picket-ca` for identity types and the CA client, `picket-policy` and `picket-common`, and
//! must not depend on the tools (`picket-analyze`, `picket-k8s`, `picket-cli`) nor on anything
//! that knows about a control plane.

// Every public item says what it is: a doc comment left above the wrong item (a constant
// placed between a struct and its comment) leaves the struct undocumented, which this catches.
#![warn(missing_docs)]

pub mod admin;
pub mod authz;
pub mod canonical;
pub mod config;
pub mod direction;
pub mod discover;
pub mod echo;
pub mod forward;
pub mod health;
pub mod identity;
pub mod inbound;
pub mod jwt;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod peer;
pub mod pipeline;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
mod validate;
pub mod yaml;
