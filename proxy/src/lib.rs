//! picket-proxy: the Picket sidecar.
//!
//! The library holds the data path (`inbound`, `outbound`), TLS and identity (`tls`,
//! `identity`), the admin server and metrics, and the command-line front ends (`cmd`) that the
//! one `picket` binary dispatches to. It depends on `picket-ca` for identity types and the CA
//! client, and must not depend on anything that knows about a control plane.

pub mod admin;
pub mod analyze;
pub mod authz;
pub mod canonical;
pub mod cmd;
pub mod config;
pub mod echo;
pub mod forward;
pub mod health;
pub mod identity;
pub mod inbound;
pub mod inject;
pub mod iptables;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod webhook;
pub mod yaml;
