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

use tokio::sync::{Notify, watch};

use super::cache::{Cached, CredentialCache};
use super::credentials::format_expiration;
use super::exchange::{Call, ExchangeError, Exchanged};
use super::metrics::{BindingMetrics, unix_seconds};
use super::persist::CredentialStore;
use super::schedule::{arrived_expired, backoff_delay, permanent_failure_delay, renewal_delay};
use super::sts::StsErrorCode;
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

/// Above this PackedPolicySize (percent) the agent warns: a few more tags or policy
/// characters and STS refuses the call with PackedPolicyTooLarge.
pub const PACKED_POLICY_WARNING_PERCENT: i32 = 90;

/// Everything the refresher of one binding works with.
pub struct Refresher<E> {
    /// The binding, for log lines.
    pub binding: String,
    pub exchanger: E,
    /// The session length asked of STS (the lifetime renewals are planned for).
    pub requested: Duration,
    pub cache: Arc<CredentialCache>,
    pub metrics: BindingMetrics,
    /// Where a copy of every new set of credentials goes; `None` keeps them in memory only.
    pub store: Option<CredentialStore>,
    pub unit: JitterSource,
    /// The call whose credentials are served, named when they arrive expired.
    pub served_call: Call,
    /// Woken after each successful refresh: the agent then gives back the pages of start-up
    /// ([`resident`](super::resident)).
    pub refreshed: Arc<Notify>,
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
                        binding = %self.binding,
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
                        binding = %self.binding,
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
        let result = result.and_then(|ex| reject_expired(ex, now, &self.served_call));
        match result {
            Ok(ex) => {
                metrics.refresh("success");
                metrics.last_refresh_success.set(unix_seconds(now));
                metrics
                    .credentials_expiration
                    .set(unix_seconds(ex.credentials.expiration));
                for &(hop, percent) in &ex.packed_policy_sizes {
                    metrics.packed_policy_size(hop, percent);
                    if percent > PACKED_POLICY_WARNING_PERCENT {
                        tracing::warn!(
                            binding = %self.binding,
                            hop,
                            packed_policy_size_percent = percent,
                            "the session policies and tags of this step use over 90% of what STS can pack; shorten them or STS will refuse the call with PackedPolicyTooLarge (hop 0 is the web-identity exchange)"
                        );
                    }
                }
                note_token_expiry(ex.token_expires_at, now, metrics);
                let remaining = ex.credentials.remaining(now);
                // Formats the credentials' Debug (redacted) on purpose: the tests run at debug
                // level and check that no part of a credential reaches the log this way.
                tracing::debug!(credentials = ?ex.credentials, "new credentials");
                self.cache.store(Cached::new(&ex.credentials));
                self.refreshed.notify_one();
                if let Some(store) = &self.store
                    && let Err(err) = store.save(&ex.credentials, now)
                {
                    metrics.cache_file_error("write_failed");
                    tracing::warn!(error = %err, "a restarted agent will have to wait for STS");
                }
                Ok(remaining)
            }
            Err(err) => {
                metrics.refresh("failure");
                match &err {
                    ExchangeError::Token(t) => metrics.token_error(t.reason()),
                    ExchangeError::Sts { code, .. } => metrics.sts_error(code.as_str()),
                }
                Err(err)
            }
        }
    }
}

/// Credentials that are expired by the node's clock when they arrive are a failure: serving
/// them is impossible, and renewing "when half the remaining lifetime is left" would mean
/// renewing at once, in a loop. The credentials already cached stay in place.
fn reject_expired(ex: Exchanged, now: SystemTime, call: &Call) -> Result<Exchanged, ExchangeError> {
    if !arrived_expired(ex.credentials.remaining(now)) {
        return Ok(ex);
    }
    let behind = now
        .duration_since(ex.credentials.expiration)
        .unwrap_or_default();
    Err(ExchangeError::sts(
        call.clone(),
        StsErrorCode::ExpiredOnArrival,
        format!(
            "the credentials expire at {}, {} before the node's clock says it is now ({})",
            format_expiration(ex.credentials.expiration),
            humantime::format_duration(round_secs(behind)),
            format_expiration(now)
        ),
    ))
}

/// Exports the token's expiry and warns when the kubelet seems to have stopped rotating it.
fn note_token_expiry(expires_at: Option<SystemTime>, now: SystemTime, metrics: &BindingMetrics) {
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
    use crate::agent::metrics::AgentMetrics;

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
                    packed_policy_sizes: vec![(0, 7), (1, 93)],
                    token_expires_at: None,
                }),
                Err(code) => Err(ExchangeError::sts(call(), code, "scripted".into())),
            }
        }
    }

    fn call() -> Call {
        Call {
            step: 0,
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
        }
    }

    fn refresher(script: &Arc<Script>) -> Refresher<Arc<Script>> {
        Refresher {
            binding: "s3".into(),
            exchanger: script.clone(),
            requested: Duration::from_secs(3600),
            cache: Arc::new(CredentialCache::default()),
            metrics: AgentMetrics::new().unwrap().for_binding("s3"),
            store: None,
            unit: || 0.5,
            served_call: call(),
            refreshed: Arc::default(),
        }
    }

    async fn run_script(
        script: &Arc<Script>,
        for_: Duration,
    ) -> (Arc<CredentialCache>, AgentMetrics) {
        let r = refresher(script);
        let (cache, metrics) = (r.cache.clone(), r.metrics.all.clone());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(Duration::ZERO, rx));
        tokio::time::sleep(for_).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        (cache, metrics)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn count(counters: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
        counters.with_label_values(labels).get()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_one_hour_credentials_every_thirty_minutes() {
        let script = Script::new(vec![Ok(HOUR), Ok(HOUR), Ok(HOUR), Ok(HOUR)]);
        let (cache, metrics) = run_script(&script, Duration::from_secs(100 * 60)).await;
        // Jitter source fixed at the midpoint: exactly half the lifetime.
        assert_eq!(script.gaps(), vec![1800, 1800, 1800]);
        assert_eq!(script.calls.lock().unwrap().len(), 4);
        assert!(cache.valid_at(SystemTime::now()).is_some());
        assert_eq!(count(&metrics.refresh_total, &["s3", "success"]), 4);
        let packed = |hop: &str| {
            metrics
                .packed_policy_size
                .with_label_values(&["s3", hop])
                .get()
        };
        assert_eq!((packed("0"), packed("1")), (7.0, 93.0));
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
        assert_eq!(count(&metrics.refresh_total, &["s3", "failure"]), 4);
        assert_eq!(count(&metrics.sts_errors, &["s3", "Throttling"]), 2);
        assert_eq!(count(&metrics.sts_errors, &["s3", "Unreachable"]), 1);
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
        assert_eq!(count(&metrics.sts_errors, &["s3", "InvalidResponse"]), 2);
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
            count(&metrics.sts_errors, &["s3", "CredentialsExpiredOnArrival"]),
            4
        );
        assert_eq!(count(&metrics.refresh_total, &["s3", "failure"]), 4);
        assert_eq!(
            metrics
                .credentials_expiration
                .with_label_values(&["s3"])
                .get(),
            0.0
        );
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
            binding: "s3".into(),
            exchanger: Hanging(started.clone()),
            requested: HOUR,
            cache: Arc::new(CredentialCache::default()),
            metrics: AgentMetrics::new().unwrap().for_binding("s3"),
            store: None,
            unit: || 0.5,
            served_call: call(),
            refreshed: Arc::default(),
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
    async fn a_success_wakes_whoever_waits_for_refreshes_and_a_failure_does_not() {
        let script = Script::new(vec![Err(StsErrorCode::Throttling), Ok(HOUR)]);
        let r = refresher(&script);
        let refreshed = r.refreshed.clone();
        let cache = r.cache.clone();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(Duration::ZERO, rx));
        refreshed.notified().await;
        assert_eq!(
            script.calls.lock().unwrap().len(),
            2,
            "woken by the second call only"
        );
        assert!(
            cache.valid_at(SystemTime::now()).is_some(),
            "after the cache was filled"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
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
        assert_eq!(
            metrics
                .credentials_expiration
                .with_label_values(&["s3"])
                .get(),
            0.0
        );
    }
}
