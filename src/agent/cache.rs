//! The credentials currently served, swapped atomically on every successful refresh.
//!
//! Requests read the cache without locks or allocation beyond a reference count: the response
//! body was rendered when the credentials arrived. The cache never answers with credentials
//! past their expiry; it is the only place that decides whether something can be served.
//! [`Caches`] holds one cache per binding of the pod, the first being the default one.

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

/// The caches of every binding the agent serves, by name; the first is served at the plain
/// credentials path. Fixed at start-up, so lookups need no lock.
pub struct Caches {
    entries: Vec<(String, Arc<CredentialCache>)>,
}

impl Caches {
    /// `entries` in the order of the agent's bindings; `None` when there is none.
    pub fn new(entries: Vec<(String, Arc<CredentialCache>)>) -> Option<Self> {
        (!entries.is_empty()).then_some(Caches { entries })
    }

    /// One binding's cache as the only one.
    pub fn single(name: &str, cache: Arc<CredentialCache>) -> Self {
        Caches {
            entries: vec![(name.to_owned(), cache)],
        }
    }

    /// The default binding's cache.
    pub fn default_cache(&self) -> &CredentialCache {
        // `new` refuses an empty list.
        &self.entries[0].1
    }

    /// The cache of the binding called `name`.
    pub fn named(&self, name: &str) -> Option<&CredentialCache> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_ref())
    }

    /// The bindings whose cache holds nothing valid at `now` (empty: every binding can serve).
    pub fn unavailable_at(&self, now: SystemTime) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(_, c)| c.valid_at(now).is_none())
            .map(|(n, _)| n.as_str())
            .collect()
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
