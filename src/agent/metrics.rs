//! The agent's Prometheus metrics: credential expiry, refresh health, STS errors, requests.
//!
//! Everything a user reads about a sidecar's health is measured here, so alerts can fire on
//! "credentials expire in under 10 minutes" or "refreshes keep failing with AccessDenied"
//! before any app sees an error.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, register_gauge_with_registry,
    register_histogram_with_registry, register_int_counter_vec_with_registry,
};

use crate::metrics::REMOTE_CALL_BUCKETS;

/// Handles to every agent metric, registered in [`AgentMetrics::registry`].
#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub credentials_expiration: Gauge,
    pub refresh_total: IntCounterVec,
    pub refresh_duration: Histogram,
    pub sts_errors: IntCounterVec,
    pub token_errors: IntCounterVec,
    pub last_refresh_success: Gauge,
    pub token_expiration: Gauge,
    pub packed_policy_size: Gauge,
    pub endpoint_requests: IntCounterVec,
    pub cache_file_errors: IntCounterVec,
}

impl AgentMetrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let m = AgentMetrics {
            credentials_expiration: register_gauge_with_registry!(
                "credvend_credentials_expiration_timestamp_seconds",
                "Expiry (Unix time) of the credentials being served; 0 before the first success.",
                r
            )?,
            refresh_total: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_credentials_refresh_total",
                    "Credential exchanges with STS, by result (success, failure)."
                ),
                &["result"],
                r
            )?,
            refresh_duration: register_histogram_with_registry!(
                HistogramOpts::new(
                    "credvend_credentials_refresh_duration_seconds",
                    "Time taken by one credential exchange, token read included."
                )
                .buckets(REMOTE_CALL_BUCKETS.to_vec()),
                r
            )?,
            sts_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_sts_errors_total",
                    "Failed STS calls, by error code (AccessDenied, InvalidIdentityToken, Throttling, ConnectionRefused, TlsError, DnsError, InvalidResponse, CredentialsExpiredOnArrival, ...)."
                ),
                &["code"],
                r
            )?,
            token_errors: register_int_counter_vec_with_registry!(
                Opts::new(
                    "credvend_token_errors_total",
                    "Failures to read the projected service-account token, by reason (missing, empty, unreadable, not_text, too_large)."
                ),
                &["reason"],
                r
            )?,
            last_refresh_success: register_gauge_with_registry!(
                "credvend_last_refresh_success_timestamp_seconds",
                "Unix time of the last successful exchange; 0 before the first.",
                r
            )?,
            token_expiration: register_gauge_with_registry!(
                "credvend_web_identity_token_expiration_timestamp_seconds",
                "Expiry (Unix time) of the projected service-account token last read (from its unverified exp claim).",
                r
            )?,
            packed_policy_size: register_gauge_with_registry!(
                "credvend_packed_policy_size_percent",
                "STS PackedPolicySize of the last exchange: how close session policies and tags are to their limit.",
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
                    "Credentials cache file copies that could not be written or were not used at start-up, by reason (write_failed, garbled, expired, other_role, too_large, unreadable)."
                ),
                &["reason"],
                r
            )?,
            registry,
        };
        Ok(m)
    }
}

/// Seconds since the Unix epoch as a float, for timestamp gauges.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
