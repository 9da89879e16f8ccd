//! Serving a certificate that can change while the listener keeps running.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate on every handshake, so putting an
//! [`ArcSwap`] behind it turns a renewal into one pointer swap: connections already open keep
//! the certificate they started with, the next handshake gets the new one, and the webhook
//! never restarts (which would make the API server's calls fail during the gap).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use super::certs::provider;

/// The webhook's current serving certificate, replaceable at any time.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(key),
        }
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

// Hand-written so that a `{:?}` of the resolver (or of a ServerConfig holding it) prints
// nothing about the key.
impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One certificate for every name: the API server reaches us by Service DNS name or,
        // with a `url:` client config, by whatever the URL says; the SANs cover both.
        Some(self.current.load_full())
    }
}

/// The webhook server's rustls configuration: aws-lc-rs, TLS 1.2 and 1.3, no client
/// certificates (the API server authenticates us, not the other way round; admission requests
/// carry no secrets), HTTP/1.1 only because that is what the API server speaks to webhooks.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
