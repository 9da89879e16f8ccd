//! The webhook's Prometheus metrics: admissions by result and reason, and their latency.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Admission latency buckets: the API server gives the webhook 5 s at most; we aim for ms.
const ADMISSION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Handles to the webhook's admission metrics.
#[derive(Clone)]
pub struct AdmissionMetrics {
    /// `credvend_admissions_total{result="injected|completed|skipped|denied|error", reason}`.
    pub admissions: IntCounterVec,
    /// `credvend_admission_duration_seconds{result}`.
    pub admission_duration: HistogramVec,
}

impl AdmissionMetrics {
    /// Registers the admission metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = AdmissionMetrics {
            admissions: IntCounterVec::new(
                Opts::new(
                    "credvend_admissions_total",
                    "Pod admissions handled by the webhook, by result (injected, completed, skipped, denied, error) and reason.",
                ),
                &["result", "reason"],
            )?,
            admission_duration: HistogramVec::new(
                HistogramOpts::new(
                    "credvend_admission_duration_seconds",
                    "Time to answer an AdmissionReview, by result.",
                )
                .buckets(ADMISSION_BUCKETS.to_vec()),
                &["result"],
            )?,
        };
        registry.register(Box::new(metrics.admissions.clone()))?;
        registry.register(Box::new(metrics.admission_duration.clone()))?;
        Ok(metrics)
    }

    /// Fresh handles in a registry of their own, for tests.
    pub fn unregistered() -> Self {
        // Registering into a new, empty registry cannot collide; the names are constants.
        #[allow(clippy::expect_used)]
        Self::register(&Registry::new()).expect("the admission metrics are well-formed")
    }
}
