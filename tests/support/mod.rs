//! Helpers shared by the integration tests; each test file pulls them in with `mod support;`.
//! Every test binary uses only some of them, hence `dead_code` is allowed here.
// Test helpers panic with a message when a step fails; that is their error handling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod http;
pub mod image;
pub mod k8s;
pub mod manifests;
pub mod node;
pub mod operator;
pub mod pods;
pub mod ports;
pub mod python;
pub mod release;
pub mod sts;
