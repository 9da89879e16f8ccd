//! The operator's `/metrics` registry: one per process, into which each part registers its own
//! metrics ([`ControllerMetrics`], [`AdmissionMetrics`], [`TlsMetrics`]). The parts own their
//! metric definitions; this module only puts them side by side.

use prometheus::Registry;

use crate::controller::ControllerMetrics;
use crate::webhook::metrics::AdmissionMetrics;
use crate::webhook::tls::TlsMetrics;

/// Every metric the operator serves, registered in [`OperatorMetrics::registry`].
#[derive(Clone)]
pub struct OperatorMetrics {
    pub registry: Registry,
    /// Reconciles, bindings, leadership.
    pub controller: ControllerMetrics,
    /// Admissions and their latency.
    pub admission: AdmissionMetrics,
    /// The webhook's serving certificate.
    pub tls: TlsMetrics,
}

impl OperatorMetrics {
    /// Registers every part's metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        Ok(OperatorMetrics {
            controller: ControllerMetrics::register(&registry)?,
            admission: AdmissionMetrics::register(&registry)?,
            tls: TlsMetrics::register(&registry)?,
            registry,
        })
    }
}
