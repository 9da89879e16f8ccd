//! The refresher: the only task that talks to STS.
//!
//! One task owns every exchange, so there is never more than one refresh in flight however many
//! requests arrive (requests never trigger STS; they read the cache). After a success it sleeps
//! until the renewal time from [`schedule`](super::schedule); after a failure it keeps the
//! cached credentials in place and retries with backoff. Each outcome is logged once, with the
//! STS error code and a hint, and counted in the metrics. New credentials also go to the
//! cache file ([`persist`](super::persist)) so that a restarted agent can serve at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::cache::{Cached, CredentialCache};
use super::credentials::format_expiration;
use super::metrics::{AgentMetrics, unix_seconds};
use super::persist::CredentialStore;
use super::schedule::{arrived_expired, backoff_delay, permanent_failure_delay, renewal_delay};
use super::sts::{ExchangeError, Exchanged, StsErrorCode};
use super::token::{TokenFreshness, freshness};

/// Something that can produce fresh credentials: STS in production, a script in tests.
pub trait Exchange: Send + Sync {
    fn exchange(&self) -> impl Future<Output = Result<Exchanged, ExchangeError>> + Send;
}

/// Where randomness for jitter comes from; tests pass a fixed value.
pub type JitterSource = fn() -> f64;

/// A uniform sample in `[0, 1)` from the OS; falls back to the midpoint if the OS has none,
/// which only removes jitter.
pub fn os_unit() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// Everything the refresher works with.
pub struct Refresher<E> {
    pub exchanger: E,
    /// The session length asked of STS (the lifetime renewals are planned for).
    pub requested: Duration,
    pub cache: Arc<CredentialCache>,
    pub metrics: AgentMetrics,
    /// Where a copy of every new set of credentials goes; `None` keeps them in memory only.
    pub store: Option<CredentialStore>,
    pub unit: JitterSource,
}

impl<E: Exchange> Refresher<E> {
    /// Runs until `shutdown` changes, refreshing the cache; the first exchange happens after
    /// `first_delay` (zero unless credentials were restored at start-up).
    ///
    /// An exchange in flight is abandoned when the shutdown comes: the answer would be thrown
    /// away anyway, and waiting for it (up to the STS client's timeout) would hold the pod's
    /// termination for nothing.
    pub async fn run(self, first_delay: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        let mut delay = first_delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            let outcome = tokio::select! {
                outcome = self.refresh_once() => outcome,
                _ = shutdown.changed() => {
                    tracing::info!("shutting down: the STS exchange in flight was cancelled");
                    return;
                }
            };
            delay = match outcome {
                Ok(remaining) => {
                    failures = 0;
                    let delay = renewal_delay(self.requested, remaining, (self.unit)() * 2.0 - 1.0);
                    tracing::info!(
                        next_refresh_in = %humantime::format_duration(round_secs(delay)),
                        "credentials refreshed"
                    );
                    delay
                }
                Err(err) => {
                    // Token read errors are local and cheap to retry (the kubelet may be
                    // rewriting the file); STS configuration errors are not.
                    let transient = err.sts_code().is_none_or(|c| c.is_transient());
                    let delay = if transient {
                        backoff_delay(failures, (self.unit)())
                    } else {
                        permanent_failure_delay((self.unit)())
                    };
                    failures = failures.saturating_add(1);
                    let serving = self.cache.valid_at(SystemTime::now()).is_some();
                    tracing::warn!(
                        error = %err,
                        attempt = failures,
                        retry_in = %humantime::format_duration(round_millis(delay)),
                        still_serving_cached = serving,
                        "credential refresh failed"
                    );
                    delay
                }
            };
        }
    }

    /// One exchange: on success the cache, its copy and the gauges are updated and the
    /// remaining lifetime of the new credentials returned.
    async fn refresh_once(&self) -> Result<Duration, ExchangeError> {
        let metrics = &self.metrics;
        let started = Instant::now();
        let result = self.exchanger.exchange().await;
        metrics
            .refresh_duration
            .observe(started.elapsed().as_secs_f64());
        let now = SystemTime::now();
        let result = result.and_then(|ex| reject_expired(ex, now));
        match result {
            Ok(ex) => {
                metrics.refresh_total.with_label_values(&["success"]).inc();
                metrics.last_refresh_success.set(unix_seconds(now));
                metrics
                    .credentials_expiration
                    .set(unix_seconds(ex.credentials.expiration));
                if let Some(p) = ex.packed_policy_size {
                    metrics.packed_policy_size.set(f64::from(p));
                }
                note_token_expiry(ex.token_expires_at, now, metrics);
                let remaining = ex.credentials.remaining(now);
                // Formats the credentials' Debug (redacted) on purpose: the tests run at debug
                // level and check that no part of a credential reaches the log this way.
                tracing::debug!(credentials = ?ex.credentials, "new credentials");
                self.cache.store(Cached::new(&ex.credentials));
                if let Some(store) = &self.store
                    && let Err(err) = store.save(&ex.credentials, now)
                {
                    metrics
                        .cache_file_errors
                        .with_label_values(&["write_failed"])
                        .inc();
                    tracing::warn!(error = %err, "a restarted agent will have to wait for STS");
                }
                Ok(remaining)
            }
            Err(err) => {
                metrics.refresh_total.with_label_values(&["failure"]).inc();
                match &err {
                    ExchangeError::Token(t) => {
                        metrics.token_errors.with_label_values(&[t.reason()]).inc();
                    }
                    ExchangeError::Sts { code, .. } => {
                        metrics.sts_errors.with_label_values(&[code.as_str()]).inc();
                    }
                }
                Err(err)
            }
        }
    }
}

/// Credentials that are expired by the node's clock when they arrive are a failure: serving
/// them is impossible, and renewing "when half the remaining lifetime is left" would mean
/// renewing at once, in a loop. The credentials already cached stay in place.
fn reject_expired(ex: Exchanged, now: SystemTime) -> Result<Exchanged, ExchangeError> {
    if !arrived_expired(ex.credentials.remaining(now)) {
        return Ok(ex);
    }
    let behind = now
        .duration_since(ex.credentials.expiration)
        .unwrap_or_default();
    Err(ExchangeError::Sts {
        code: StsErrorCode::ExpiredOnArrival,
        message: format!(
            "the credentials expire at {}, {} before the node's clock says it is now ({})",
            format_expiration(ex.credentials.expiration),
            humantime::format_duration(round_secs(behind)),
            format_expiration(now)
        ),
    })
}

/// Exports the token's expiry and warns when the kubelet seems to have stopped rotating it.
fn note_token_expiry(expires_at: Option<SystemTime>, now: SystemTime, metrics: &AgentMetrics) {
    if let Some(exp) = expires_at {
        metrics.token_expiration.set(unix_seconds(exp));
    }
    match freshness(expires_at, now) {
        TokenFreshness::Expired => {
            tracing::warn!(
                "the projected service-account token has expired; the kubelet should rotate it"
            )
        }
        TokenFreshness::ExpiresSoon(left) => tracing::warn!(
            expires_in = %humantime::format_duration(round_secs(left)),
            "the projected service-account token expires soon and was not rotated yet"
        ),
        TokenFreshness::Fresh | TokenFreshness::Unknown => {}
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Retry delays are often under a second; whole seconds would log them as `0s`.
fn round_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::agent::credentials::tests::sample;

    /// Plays back scripted outcomes and records the (paused) tokio time of each call.
    struct Script {
        outcomes: Mutex<VecDeque<Result<Duration, StsErrorCode>>>,
        calls: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Script {
        fn new(outcomes: Vec<Result<Duration, StsErrorCode>>) -> Arc<Self> {
            Arc::new(Script {
                outcomes: Mutex::new(outcomes.into()),
                calls: Mutex::new(Vec::new()),
            })
        }
        fn gaps(&self) -> Vec<u64> {
            let calls = self.calls.lock().unwrap();
            calls
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64().round() as u64)
                .collect()
        }
    }

    impl Exchange for Arc<Script> {
        async fn exchange(&self) -> Result<Exchanged, ExchangeError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let next = self.outcomes.lock().unwrap().pop_front();
            match next.unwrap_or(Err(StsErrorCode::Other)) {
                Ok(lifetime) => Ok(Exchanged {
                    credentials: sample(SystemTime::now() + lifetime),
                    packed_policy_size: Some(7),
                    token_expires_at: None,
                }),
                Err(code) => Err(ExchangeError::Sts {
                    code,
                    message: "scripted".into(),
                }),
            }
        }
    }

    fn refresher(script: &Arc<Script>) -> Refresher<Arc<Script>> {
        Refresher {
            exchanger: script.clone(),
            requested: Duration::from_secs(3600),
            cache: Arc::new(CredentialCache::default()),
            metrics: AgentMetrics::new().unwrap(),
            store: None,
            unit: || 0.5,
        }
    }

    async fn run_script(
        script: &Arc<Script>,
        for_: Duration,
    ) -> (Arc<CredentialCache>, AgentMetrics) {
        let r = refresher(script);
        let (cache, metrics) = (r.cache.clone(), r.metrics.clone());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(Duration::ZERO, rx));
        tokio::time::sleep(for_).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        (cache, metrics)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn renews_one_hour_credentials_every_thirty_minutes() {
        let script = Script::new(vec![Ok(HOUR), Ok(HOUR), Ok(HOUR), Ok(HOUR)]);
        let (cache, metrics) = run_script(&script, Duration::from_secs(100 * 60)).await;
        // Jitter source fixed at the midpoint: exactly half the lifetime.
        assert_eq!(script.gaps(), vec![1800, 1800, 1800]);
        assert_eq!(script.calls.lock().unwrap().len(), 4);
        assert!(cache.valid_at(SystemTime::now()).is_some());
        assert_eq!(
            metrics.refresh_total.with_label_values(&["success"]).get(),
            4
        );
        assert_eq!(metrics.packed_policy_size.get(), 7.0);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_serving_and_backs_off_while_sts_fails() {
        use StsErrorCode::*;
        let script = Script::new(vec![
            Ok(HOUR),
            Err(Throttling),
            Err(Unreachable),
            Err(ServerError),
            Err(Throttling),
            Ok(HOUR),
        ]);
        let (cache, metrics) = run_script(&script, Duration::from_secs(31 * 60)).await;
        // 30 min to the first renewal, then 0.75 s, 1.5 s, 3 s, 6 s (equal jitter at 0.5),
        // rounded to whole seconds.
        assert_eq!(script.gaps(), vec![1800, 1, 2, 3, 6]);
        assert!(
            cache.valid_at(SystemTime::now()).is_some(),
            "cached credentials dropped"
        );
        assert_eq!(
            metrics.refresh_total.with_label_values(&["failure"]).get(),
            4
        );
        assert_eq!(
            metrics.sts_errors.with_label_values(&["Throttling"]).get(),
            2
        );
        assert_eq!(
            metrics.sts_errors.with_label_values(&["Unreachable"]).get(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn configuration_errors_wait_the_longest_backoff() {
        let script = Script::new(vec![
            Err(StsErrorCode::AccessDenied),
            Err(StsErrorCode::InvalidIdentityToken),
            Ok(HOUR),
        ]);
        let (cache, _) = run_script(&script, Duration::from_secs(150)).await;
        // The 60 s cap with equal jitter (fixed at the midpoint here): 45 s.
        assert_eq!(script.gaps(), vec![45, 45]);
        assert!(cache.valid_at(SystemTime::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unparseable_reply_is_retried_like_an_outage() {
        let script = Script::new(vec![
            Err(StsErrorCode::InvalidResponse),
            Err(StsErrorCode::InvalidResponse),
            Ok(HOUR),
        ]);
        let (cache, metrics) = run_script(&script, Duration::from_secs(10)).await;
        // 0.75 s then 1.5 s (was a fixed 60 s each, as if permanent).
        let calls = script.calls.lock().unwrap().clone();
        let gaps: Vec<u128> = calls
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps, vec![750, 1500]);
        assert!(cache.valid_at(SystemTime::now()).is_some());
        assert_eq!(
            metrics
                .sts_errors
                .with_label_values(&["InvalidResponse"])
                .get(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_that_arrive_expired_back_off_instead_of_looping() {
        // Every answer is already expired (a node clock an hour fast, or a broken endpoint).
        let script = Script::new(vec![Ok(Duration::ZERO); 1000]);
        let (cache, metrics) = run_script(&script, Duration::from_secs(10)).await;
        // Backoff 0.75, 1.5, 3, 6 s: calls at 0, 0.75, 2.25, 5.25 (and the next at 11.25).
        assert_eq!(script.calls.lock().unwrap().len(), 4);
        assert!(cache.valid_at(SystemTime::now()).is_none());
        assert_eq!(
            metrics
                .sts_errors
                .with_label_values(&["CredentialsExpiredOnArrival"])
                .get(),
            4
        );
        assert_eq!(
            metrics.refresh_total.with_label_values(&["failure"]).get(),
            4
        );
        assert_eq!(metrics.credentials_expiration.get(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_answers_leave_the_cached_credentials_in_place() {
        let script = Script::new(vec![Ok(HOUR), Ok(Duration::ZERO), Ok(Duration::ZERO)]);
        // Calls at 0, 1800 and 1800.75 s; the next would be at 1802.25 s.
        let (cache, _) = run_script(&script, Duration::from_secs(1802)).await;
        assert!(cache.valid_at(SystemTime::now()).is_some());
        assert_eq!(script.gaps(), vec![1800, 1]);
    }

    /// An exchange that never answers, to stand for STS taking its full timeout.
    struct Hanging(Arc<Mutex<u32>>);

    impl Exchange for Hanging {
        async fn exchange(&self) -> Result<Exchanged, ExchangeError> {
            *self.0.lock().unwrap() += 1;
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_an_exchange_in_flight() {
        let started = Arc::new(Mutex::new(0));
        let r = Refresher {
            exchanger: Hanging(started.clone()),
            requested: HOUR,
            cache: Arc::new(CredentialCache::default()),
            metrics: AgentMetrics::new().unwrap(),
            store: None,
            unit: || 0.5,
        };
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(Duration::ZERO, rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*started.lock().unwrap(), 1, "the exchange is in flight");
        let asked = tokio::time::Instant::now();
        tx.send(true).unwrap();
        task.await.unwrap();
        // With the clock paused, any wait on a timer would show as elapsed time.
        assert_eq!(tokio::time::Instant::now(), asked);
    }

    #[tokio::test(start_paused = true)]
    async fn new_credentials_are_copied_to_the_cache_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        let store = CredentialStore::open(&path, "arn:aws:iam::111122223333:role/r", "s");
        let script = Script::new(vec![Ok(HOUR)]);
        let mut r = refresher(&script);
        r.store = store.clone();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(Duration::ZERO, rx));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        let restored = store.unwrap().load(SystemTime::now()).unwrap().unwrap();
        assert!(restored.credentials.remaining(SystemTime::now()) > Duration::from_secs(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn serves_nothing_before_the_first_success() {
        let script = Script::new(vec![Err(StsErrorCode::Unreachable)]);
        let (cache, metrics) = run_script(&script, Duration::from_millis(100)).await;
        assert!(cache.valid_at(SystemTime::now()).is_none());
        assert_eq!(metrics.credentials_expiration.get(), 0.0);
    }
}
