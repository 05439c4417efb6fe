//! End-to-end tests: the real `picket` binary, real TLS, real clients. One test binary; each
//! module is one area of behaviour. Every test starts its own processes on `127.0.0.1:0` and
//! they are killed when the test ends.

mod admin;
mod apps;
mod authn;
mod ca;
mod demo;
mod failures;
mod rotation;
mod traffic;
