//! credvend gives Kubernetes pods short-lived AWS credentials without long-lived keys.
//!
//! One crate, three roles: the `agent` sidecar exchanges a projected service-account token
//! through STS and serves the result on a loopback container-credentials endpoint; the
//! `operator` reconciles `AWSRoleBinding` objects and runs the mutating webhook that injects
//! the agent. Pure decisions (refresh schedule, endpoint responses, the pod mutation) live in
//! plain functions; servers, watches and STS calls wrap them at the edges.
// Denied, not forbidden: `agent::resident` allows it for its two system calls, each with the
// argument why it is sound.
#![deny(unsafe_code)]

pub mod agent;
pub mod aws;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod inject;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod server;
pub mod session_name;
pub mod sts_fields;
pub mod telemetry;
pub mod trust_policy;
pub mod webhook;
