//! End-to-end tests: the real `picket` binary, real TLS, real clients. One test binary; each
//! module is one area of behaviour. Every test starts its own processes on `127.0.0.1:0` and
//! they are killed when the test ends.

mod admin;
mod analyze_views;
mod apps;
mod authn;
mod balance;
mod bypass;
mod ca;
mod ca_replicas;
mod ca_rotation;
mod ca_store;
mod cli_output;
mod demo;
mod detect_pods;
mod detect_state;
mod edge;
mod failures;
mod fairness;
mod garden;
mod jwt;
mod k8s_chart;
mod k8s_controller;
mod k8s_inject;
mod k8s_policy;
mod k8s_tokenreview;
mod k8s_webhook;
mod kx;
mod park;
mod peer_answer;
mod pods;
mod pods_dualstack;
mod pods_permissive;
mod pods_probes;
mod policy;
mod policy_cli;
mod resumption;
mod rotation;
mod telemetry_analyze;
mod telemetry_mesh;
mod telemetry_otlp;
mod traffic;
mod websocket;
