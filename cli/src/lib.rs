//! picket-cli: the command-line front ends of the one `picket` binary.
//!
//! Each module under [`cmd`] parses its arguments with clap and calls the libraries: the
//! sidecar (`picket-proxy`), the CA (`picket-ca`), the policy engine (`picket-policy`), flow
//! analysis (`picket-analyze`) and the Kubernetes tools (`picket-k8s`). This is the only crate
//! where `anyhow` and printing to stdout live. Nothing depends on it.

pub mod cmd;
