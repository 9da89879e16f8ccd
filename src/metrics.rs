//! Prometheus plumbing shared by the agent and the operator.
//!
//! Each role owns a `prometheus::Registry` (never the global default registry, so tests can
//! build several agents in one process) and exposes it in the text format on `/metrics`.

use prometheus::{Encoder, Registry, TextEncoder};

/// Content type of the Prometheus text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    // Encoding into a Vec only fails on a malformed metric family, which our own
    // registrations cannot produce; an empty page is the safe answer if it ever did.
    if TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .is_err()
    {
        out.clear();
    }
    out
}

/// Buckets for latencies of remote calls (STS, API server), in seconds: 5 ms to 30 s.
pub const REMOTE_CALL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
