//! Files mode: serve the PEM files cert-manager (or anything else) writes, and pick up rotations.
//!
//! The files are compared by content on every poll rather than by modification time: a
//! Kubernetes Secret volume replaces them by swapping a `..data` symlink, which leaves the
//! visible files' own metadata unchanged. A rotation caught half-written (certificate new, key
//! still old) fails the key check and is simply retried on the next poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;
use tracing::{error, info};

use super::certs::{self, Validity};
use super::{CertResolver, TlsError, TlsMetrics, TlsSettings};

pub(super) async fn start(
    cert: PathBuf,
    key: PathBuf,
    settings: TlsSettings,
    metrics: TlsMetrics,
) -> Result<(Arc<CertResolver>, JoinHandle<()>), TlsError> {
    let contents = read(&cert, &key).await?;
    let (certified, validity) = load(&contents, &cert, &key)?;
    info!(cert = %cert.display(), not_after = %validity.not_after, "serving the webhook certificate from files");
    metrics.served(validity);
    let resolver = Arc::new(CertResolver::new(Arc::new(certified)));
    let task = tokio::spawn(watch(
        cert,
        key,
        contents,
        resolver.clone(),
        metrics,
        settings.file_poll_interval,
    ));
    Ok((resolver, task))
}

/// The two files' bytes: certificate chain, then key.
type Contents = (Vec<u8>, Vec<u8>);

async fn read(cert: &Path, key: &Path) -> Result<Contents, TlsError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::ReadFile { path, source })
        }
    };
    Ok((read(cert).await?, read(key).await?))
}

/// Parses the files' contents into what rustls serves; names the files in every error.
pub(super) fn load(
    contents: &Contents,
    cert: &Path,
    key: &Path,
) -> Result<(CertifiedKey, Validity), TlsError> {
    let cert_name = cert.display().to_string();
    let key_name = key.display().to_string();
    let text = |bytes: &[u8], name: &str| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| TlsError::InvalidCertificate {
                what: name.to_owned(),
                reason: "not a PEM file (not text)".to_owned(),
            })
    };
    let cert_pem = text(&contents.0, &cert_name)?;
    // Zeroised copies are not worth it here: the same key sits in the mounted file anyway.
    let key_pem = text(&contents.1, &key_name)?;
    let certified = certs::certified_key(&cert_pem, &key_pem, &cert_name, &key_name)?;
    let validity = certs::validity_of_pem(&cert_pem, &cert_name)?;
    Ok((certified, validity))
}

/// Polls the files and swaps the resolver to each new valid pair. Content that failed to load
/// is remembered so a bad rotation is logged once, not every poll.
async fn watch(
    cert: PathBuf,
    key: PathBuf,
    mut served: Contents,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    interval: Duration,
) {
    let mut rejected: Option<Contents> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let contents = match read(&cert, &key).await {
            Ok(contents) => contents,
            Err(e) => {
                // Files briefly missing during a rotation are normal; keep serving.
                tracing::debug!(error = %e, "cannot read the webhook certificate files; keeping the current certificate");
                continue;
            }
        };
        if contents == served || rejected.as_ref() == Some(&contents) {
            continue;
        }
        match load(&contents, &cert, &key) {
            Ok((certified, validity)) => {
                resolver.set(Arc::new(certified));
                metrics.served(validity);
                info!(cert = %cert.display(), not_after = %validity.not_after, "reloaded the webhook certificate from files");
                served = contents;
                rejected = None;
            }
            Err(e) => {
                metrics.failed("reload");
                error!(error = %e, "the webhook certificate files changed but cannot be used; still serving the previous certificate");
                rejected = Some(contents);
            }
        }
    }
}
