//! The operator's Prometheus metrics: reconciles, bindings, admissions, certificate expiry.
//!
//! One registry per operator process; the controller and the webhook record into these
//! handles, and the TLS manager registers its certificate gauge in the same registry.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_vec_with_registry,
};

/// Admission latency buckets: the API server gives the webhook 5 s at most; we aim for ms.
const ADMISSION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Handles to every operator metric, registered in [`OperatorMetrics::registry`].
#[derive(Clone)]
pub struct OperatorMetrics {
    pub registry: Registry,
    /// `credvend_reconciles_total{result="success|error"}`.
    pub reconciles: IntCounterVec,
    /// `credvend_reconcile_errors_total{reason}`: failed reconciles by error kind.
    pub reconcile_errors: IntCounterVec,
    /// `credvend_bindings{ready="true|false|unknown"}`: bindings by their Ready condition.
    pub bindings: IntGaugeVec,
    /// `credvend_admissions_total{result="injected|skipped|denied|error", reason}`.
    pub admissions: IntCounterVec,
    /// `credvend_admission_duration_seconds{result}`.
    pub admission_duration: HistogramVec,
}

impl OperatorMetrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        Ok(OperatorMetrics {
            reconciles: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_reconciles_total",
                    "AWSRoleBinding reconciles, by result."
                ),
                &["result"],
                r
            )?,
            reconcile_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_reconcile_errors_total",
                    "Failed AWSRoleBinding reconciles, by reason."
                ),
                &["reason"],
                r
            )?,
            bindings: register_int_gauge_vec_with_registry!(
                Opts::new(
                    "credvend_bindings",
                    "AWSRoleBindings by the status of their Ready condition (true, false, unknown)."
                ),
                &["ready"],
                r
            )?,
            admissions: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_admissions_total",
                    "Pod admissions handled by the webhook, by result (injected, skipped, denied, error) and reason."
                ),
                &["result", "reason"],
                r
            )?,
            admission_duration: register_histogram_vec_with_registry!(
                HistogramOpts::new(
                    "credvend_admission_duration_seconds",
                    "Time to answer an AdmissionReview, by result."
                )
                .buckets(ADMISSION_BUCKETS.to_vec()),
                &["result"],
                r
            )?,
            registry,
        })
    }
}
