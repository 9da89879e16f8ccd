//! What the server refused, for the process's registry: connections it closed and request
//! bodies it did not read, by port and reason. A rising `evicted` count on a port means it
//! is being flooded (or its cap is too small for its real clients); timeouts mean slow or
//! idle clients.

use prometheus::{IntCounterVec, Opts, Registry, register_int_counter_vec_with_registry};

/// Handles registered in the process's registry (the agent's or the operator's).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    /// `credvend_connections_closed_total{listener, reason}`.
    pub closed: IntCounterVec,
    /// `credvend_request_bodies_refused_total{listener, reason}`.
    pub bodies_refused: IntCounterVec,
}

impl ServerMetrics {
    pub fn register(registry: &Registry) -> Result<ServerMetrics, prometheus::Error> {
        Ok(ServerMetrics {
            closed: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_connections_closed_total",
                    "Connections the server closed, by listener and reason (evicted, handshake_timeout, head_timeout, idle_timeout, body_timeout)."
                ),
                &["listener", "reason"],
                registry
            )?,
            bodies_refused: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_request_bodies_refused_total",
                    "Request bodies not read, by listener and reason (too_large, timed_out, busy, client_error)."
                ),
                &["listener", "reason"],
                registry
            )?,
        })
    }
}
