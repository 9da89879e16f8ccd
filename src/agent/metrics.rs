//! The agent's Prometheus metrics: credential expiry, refresh health, STS errors, requests.
//!
//! Everything a user reads about a sidecar's health is measured here, so alerts can fire on
//! "credentials expire in under 10 minutes" or "refreshes keep failing with AccessDenied"
//! before any app sees an error. One agent serves every binding of its pod, so each credential
//! metric carries a `binding` label; [`BindingMetrics`] holds one binding's series, resolved
//! once, for the refresher that owns that binding.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    register_gauge_vec_with_registry, register_histogram_vec_with_registry,
    register_int_counter_vec_with_registry,
};

use crate::metrics::REMOTE_CALL_BUCKETS;

/// Handles to every agent metric, registered in [`AgentMetrics::registry`].
#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub credentials_expiration: GaugeVec,
    pub refresh_total: IntCounterVec,
    pub refresh_duration: HistogramVec,
    pub sts_errors: IntCounterVec,
    pub token_errors: IntCounterVec,
    pub last_refresh_success: GaugeVec,
    pub token_expiration: GaugeVec,
    pub packed_policy_size: GaugeVec,
    pub endpoint_requests: IntCounterVec,
    pub cache_file_errors: IntCounterVec,
}

/// One binding's series of the agent's metrics.
#[derive(Clone)]
pub struct BindingMetrics {
    /// The binding, for the vectors resolved per call (error codes, hops).
    binding: String,
    pub(super) all: AgentMetrics,
    pub credentials_expiration: Gauge,
    pub refresh_duration: Histogram,
    pub last_refresh_success: Gauge,
    pub token_expiration: Gauge,
}

impl BindingMetrics {
    /// Counts one refresh by `result` (`success`, `failure`).
    pub fn refresh(&self, result: &str) {
        self.all
            .refresh_total
            .with_label_values(&[&self.binding, result])
            .inc();
    }

    /// Counts a failed STS call by code.
    pub fn sts_error(&self, code: &str) {
        self.all
            .sts_errors
            .with_label_values(&[&self.binding, code])
            .inc();
    }

    /// Counts a failed token read by reason.
    pub fn token_error(&self, reason: &str) {
        self.all
            .token_errors
            .with_label_values(&[&self.binding, reason])
            .inc();
    }

    /// Counts a cache file problem by reason.
    pub fn cache_file_error(&self, reason: &str) {
        self.all
            .cache_file_errors
            .with_label_values(&[&self.binding, reason])
            .inc();
    }

    /// Sets STS's PackedPolicySize of one step (`0` is the exchange, `1`… the hops).
    pub fn packed_policy_size(&self, hop: usize, percent: i32) {
        self.all
            .packed_policy_size
            .with_label_values(&[&self.binding, &hop.to_string()])
            .set(f64::from(percent));
    }
}

impl AgentMetrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let m = AgentMetrics {
            credentials_expiration: register_gauge_vec_with_registry!(
                "credvend_credentials_expiration_timestamp_seconds",
                "Expiry (Unix time) of the credentials being served, by binding; 0 before the first success.",
                &["binding"],
                r
            )?,
            refresh_total: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_credentials_refresh_total",
                    "Credential exchanges with STS, by binding and result (success, failure)."
                ),
                &["binding", "result"],
                r
            )?,
            refresh_duration: register_histogram_vec_with_registry!(
                HistogramOpts::new(
                    "credvend_credentials_refresh_duration_seconds",
                    "Time taken by one credential exchange (token read and every hop included), by binding."
                )
                .buckets(REMOTE_CALL_BUCKETS.to_vec()),
                &["binding"],
                r
            )?,
            sts_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_sts_errors_total",
                    "Failed STS calls, by binding and error code (AccessDenied, InvalidIdentityToken, Throttling, ConnectionRefused, TlsError, DnsError, InvalidResponse, CredentialsExpiredOnArrival, ...)."
                ),
                &["binding", "code"],
                r
            )?,
            token_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_token_errors_total",
                    "Failures to read the projected service-account token, by binding and reason (missing, empty, unreadable, not_text, too_large)."
                ),
                &["binding", "reason"],
                r
            )?,
            last_refresh_success: register_gauge_vec_with_registry!(
                "credvend_last_refresh_success_timestamp_seconds",
                "Unix time of the last successful exchange, by binding; 0 before the first.",
                &["binding"],
                r
            )?,
            token_expiration: register_gauge_vec_with_registry!(
                "credvend_web_identity_token_expiration_timestamp_seconds",
                "Expiry (Unix time) of the projected service-account token last read (from its unverified exp claim), by binding.",
                &["binding"],
                r
            )?,
            packed_policy_size: register_gauge_vec_with_registry!(
                "credvend_packed_policy_size_percent",
                "STS PackedPolicySize of the last refresh, by binding and hop (0 is the web-identity exchange, 1 the first AssumeRole hop, ...): how close session policies and tags are to their limit.",
                &["binding", "hop"],
                r
            )?,
            endpoint_requests: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_endpoint_requests_total",
                    "Requests to the credentials endpoint, by HTTP status."
                ),
                &["status"],
                r
            )?,
            cache_file_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_cache_file_errors_total",
                    "Credentials cache file copies that could not be written or were not used at start-up, by binding and reason (write_failed, garbled, expired, other_role, too_large, unreadable)."
                ),
                &["binding", "reason"],
                r
            )?,
            registry,
        };
        Ok(m)
    }

    /// The series of `binding`, created now so that they show (at 0) before anything happens.
    pub fn for_binding(&self, binding: &str) -> BindingMetrics {
        BindingMetrics {
            binding: binding.to_owned(),
            all: self.clone(),
            credentials_expiration: self.credentials_expiration.with_label_values(&[binding]),
            refresh_duration: self.refresh_duration.with_label_values(&[binding]),
            last_refresh_success: self.last_refresh_success.with_label_values(&[binding]),
            token_expiration: self.token_expiration.with_label_values(&[binding]),
        }
    }
}

/// Seconds since the Unix epoch as a float, for timestamp gauges.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
