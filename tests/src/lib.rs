//! picket-tests: the end-to-end harness.
//!
//! It runs the real `picket` binary (the CA and sidecars) as child processes, in-process echo
//! apps behind them ([`picket_proxy::echo`]), and real clients in front: `curl`, `openssl
//! s_client`, and hyper or rustls where a test needs byte-level control. Everything binds
//! `127.0.0.1:0` and reports its address through a ready file; every wait is a poll with a
//! deadline ([`eventually`], [`assert_eventually!`]), never a fixed sleep. Child processes are
//! killed when their handle is dropped, and their logs are printed then, so a failing test
//! shows what the processes said.

pub mod analyze;
pub mod apps;
pub mod browser;
pub mod ca;
pub mod clients;
pub mod controller;
pub mod jwt;
pub mod k8s;
pub mod kube_api;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod strict;
pub mod telemetry;
pub mod wait;

pub use apps::App;
pub use ca::{TRUST_DOMAIN, TestCa, spiffe_id};
pub use mesh::{Mesh, MeshOptions};
pub use ports::closed_port;
pub use process::{Daemon, picket_bin};
pub use proxy::{CaAccess, ProxyAddrs, Sidecar, TestProxy, Upstream};
pub use wait::eventually;
