//! The controller's Prometheus metrics: reconciles, bindings by readiness, and leadership.
//!
//! Registered into whatever registry the process serves on `/metrics`, so the controller never
//! reaches up into the wiring that owns that registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles to the controller's metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// `credvend_reconciles_total{result="success|error"}`.
    pub reconciles: IntCounterVec,
    /// `credvend_reconcile_errors_total{reason}`: failed reconciles by error kind.
    pub reconcile_errors: IntCounterVec,
    /// `credvend_bindings{ready="true|false|unknown"}`: bindings by their Ready condition.
    pub bindings: IntGaugeVec,
    /// `credvend_leader`: 1 while this replica holds the Lease (or runs without election).
    pub leader: IntGauge,
    /// `credvend_leader_election_errors_total`: campaigns that failed (the Lease could not be
    /// created or held, or the controller stopped on its own); each is retried with backoff.
    pub leader_election_errors: IntCounter,
}

impl ControllerMetrics {
    /// Registers the controller's metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = ControllerMetrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "credvend_reconciles_total",
                    "AWSRoleBinding reconciles, by result.",
                ),
                &["result"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "credvend_reconcile_errors_total",
                    "Failed AWSRoleBinding reconciles, by reason.",
                ),
                &["reason"],
            )?,
            bindings: IntGaugeVec::new(
                Opts::new(
                    "credvend_bindings",
                    "AWSRoleBindings by the status of their Ready condition (true, false, unknown).",
                ),
                &["ready"],
            )?,
            leader: IntGauge::new(
                "credvend_leader",
                "1 while this operator replica reconciles AWSRoleBindings (holds the Lease), else 0.",
            )?,
            leader_election_errors: IntCounter::new(
                "credvend_leader_election_errors_total",
                "Leader-election campaigns that failed and were retried (Lease not creatable or not renewable, controller stopped).",
            )?,
        };
        registry.register(Box::new(metrics.reconciles.clone()))?;
        registry.register(Box::new(metrics.reconcile_errors.clone()))?;
        registry.register(Box::new(metrics.bindings.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        registry.register(Box::new(metrics.leader_election_errors.clone()))?;
        Ok(metrics)
    }

    /// Fresh handles in a registry of their own, for tests.
    pub fn unregistered() -> Self {
        // Registering into a new, empty registry cannot collide; the names are constants.
        #[allow(clippy::expect_used)]
        Self::register(&Registry::new()).expect("the controller's metrics are well-formed")
    }
}
