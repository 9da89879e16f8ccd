//! The mutating webhook's TLS: a serving certificate the API server trusts, kept valid forever
//! without a restart.
//!
//! The API server only calls webhooks over HTTPS and only trusts the `caBundle` written into
//! the MutatingWebhookConfiguration, so a credvend install needs a certificate before the first
//! pod can be admitted. By default ([`TlsMode::SelfSigned`]) the operator provides it itself,
//! with nothing else installed: it makes a CA and a serving certificate in memory (rcgen),
//! keeps them in a `kubernetes.io/tls` Secret so every replica serves the same CA, patches the
//! CA into its own MutatingWebhookConfiguration (and again whenever something, such as a
//! `helm upgrade`, resets it), renews before expiry and swaps the certificate into the running
//! listener. Clusters that standardise on cert-manager use [`TlsMode::Files`] instead: the
//! operator serves the mounted files, reloads them when cert-manager rotates them, and leaves
//! the caBundle to cert-manager's CA injector. In both modes a broken renewal keeps the
//! previous certificate and is logged and counted — the webhook never serves nothing.
//!
//! Pure parts (issuing, validity, the renewal decision) are in [`certs`]; the rustls side in
//! [`resolver`]; Kubernetes I/O in `self_signed`; file reloading in `files`.

pub mod certs;
mod files;
pub mod resolver;
mod self_signed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, IntCounterVec, Opts, Registry};
use tokio::task::JoinHandle;

pub use certs::{CA_LIFETIME, LEAF_LIFETIME, needs_renewal};
pub use resolver::{CertResolver, server_config};

/// How often the self-signed mode re-reads its Secret (renewal, other replicas' renewals) and
/// re-checks the caBundle. A GET of one Secret per replica every few minutes costs nothing;
/// the caBundle is additionally watched, so a reset is repaired within seconds.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// How often the files mode looks at the certificate files. Kubernetes updates mounted
/// Secrets within about a minute, so 10 s adds little to that.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// The operator makes and renews its own CA and certificate (no other component needed).
    SelfSigned,
    /// Serve PEM files someone else (cert-manager) writes and rotates; reload on change.
    Files { cert: PathBuf, key: PathBuf },
}

/// Names and intervals; the defaults of the names live with the CLI and the chart.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The operator's namespace: holds the Secret and the webhook's Service.
    pub namespace: String,
    /// The webhook's Service, whose DNS names the certificate carries.
    pub service_name: String,
    /// The `kubernetes.io/tls` Secret the self-signed mode keeps its CA and certificate in.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle`s the self-signed mode patches.
    pub webhook_config_name: String,
    /// More names or IP literals for the certificate (for a `url:` client config).
    pub extra_sans: Vec<String>,
    pub check_interval: Duration,
    pub file_poll_interval: Duration,
}

impl TlsSettings {
    /// Every name the serving certificate must be valid for.
    pub fn sans(&self) -> Vec<String> {
        certs::service_sans(&self.service_name, &self.namespace, &self.extra_sans)
    }
}

/// The certificate metrics; registered in (and owned by) the operator's registry.
#[derive(Clone)]
pub struct TlsMetrics {
    /// Expiry (Unix time) of the certificate being served, for "expires in < 14 days" alerts.
    pub expiration: Gauge,
    /// Failures by `operation` — `renew` (self-signed: Secret or caBundle update) or `reload`
    /// (files mode); each one kept the previous certificate in service.
    pub errors: IntCounterVec,
}

impl TlsMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let expiration = Gauge::new(
            "credvend_webhook_certificate_expiration_timestamp_seconds",
            "Expiry (Unix time) of the webhook's serving certificate.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "credvend_webhook_certificate_errors_total",
                "Failed webhook certificate renewals, reloads and caBundle updates; the previous certificate stays in service.",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(expiration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(TlsMetrics { expiration, errors })
    }

    fn served(&self, validity: certs::Validity) {
        // f64 holds Unix seconds exactly for the next few million years.
        self.expiration
            .set(validity.not_after.unix_timestamp() as f64);
    }

    fn failed(&self, operation: &str) {
        self.errors.with_label_values(&[operation]).inc();
    }
}

/// What went wrong, in the terms of the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{what}: {reason}")]
    InvalidCertificate { what: String, reason: String },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action}: {detail}")]
    Kube {
        action: String,
        detail: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{name} kept changing while this replica tried to update it ({attempts} attempts); another writer is fighting over it"
    )]
    Contention {
        namespace: String,
        name: String,
        attempts: u32,
    },
    #[error("cannot build the webhook's TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Puts a serving certificate in place and keeps it valid.
///
/// Returns once the returned resolver holds a certificate (and, in self-signed mode, the
/// Secret holds it and the caBundle trusts its CA), so the caller can start listening right
/// away with [`server_config`]. The task renews or reloads in the background until aborted;
/// its failures are logged and counted in [`TlsMetrics::errors`] and never take the current
/// certificate away.
pub async fn start(
    client: kube::Client,
    mode: TlsMode,
    settings: TlsSettings,
    metrics: TlsMetrics,
) -> Result<(Arc<CertResolver>, JoinHandle<()>), TlsError> {
    match mode {
        TlsMode::SelfSigned => self_signed::start(client, settings, metrics).await,
        TlsMode::Files { cert, key } => files::start(cert, key, settings, metrics).await,
    }
}

#[cfg(test)]
mod tests;
