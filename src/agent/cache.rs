//! The credentials currently served, swapped atomically on every successful refresh.
//!
//! Requests read the cache without locks or allocation beyond a reference count: the response
//! body was rendered when the credentials arrived. The cache never answers with credentials
//! past their expiry; it is the only place that decides whether something can be served.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::credentials::{Credentials, SecretBody};

/// What the endpoint serves for one set of credentials.
#[derive(Debug)]
pub struct Cached {
    pub body: SecretBody,
    pub expiration: SystemTime,
}

impl Cached {
    /// Renders `creds` once, for every request until the next refresh.
    pub fn new(creds: &Credentials) -> Self {
        Cached {
            body: creds.render(),
            expiration: creds.expiration,
        }
    }
}

/// Shared between the refresher (writer) and the servers (readers).
#[derive(Default)]
pub struct CredentialCache {
    current: ArcSwapOption<Cached>,
}

impl CredentialCache {
    /// Replaces what is served.
    pub fn store(&self, cached: Cached) {
        self.current.store(Some(Arc::new(cached)));
    }

    /// The credentials to serve at `now`, if any are still valid.
    pub fn valid_at(&self, now: SystemTime) -> Option<Arc<Cached>> {
        self.current.load_full().filter(|c| c.expiration > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::agent::credentials::tests::sample;

    #[test]
    fn serves_only_unexpired_credentials() {
        let cache = CredentialCache::default();
        let exp = UNIX_EPOCH + Duration::from_secs(1000);
        assert!(cache.valid_at(UNIX_EPOCH).is_none());
        cache.store(Cached::new(&sample(exp)));
        assert!(cache.valid_at(exp - Duration::from_secs(1)).is_some());
        assert!(cache.valid_at(exp).is_none());
    }
}
