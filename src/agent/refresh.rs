//! The refresher: the only task that talks to STS.
//!
//! One task owns every exchange, so there is never more than one refresh in flight however many
//! requests arrive (requests never trigger STS; they read the cache). After a success it sleeps
//! until the renewal time from [`schedule`](super::schedule); after a failure it keeps the
//! cached credentials in place and retries with backoff. Each outcome is logged once, with the
//! STS error code and a hint, and counted in the metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::cache::{Cached, CredentialCache};
use super::metrics::{AgentMetrics, unix_seconds};
use super::schedule::{BACKOFF_CAP, backoff_delay, renewal_delay};
use super::sts::{ExchangeError, Exchanged};
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

/// Runs until `shutdown` changes, refreshing `cache`.
pub async fn run<E: Exchange>(
    exchanger: E,
    requested: Duration,
    cache: Arc<CredentialCache>,
    metrics: AgentMetrics,
    unit: JitterSource,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let delay = match refresh_once(&exchanger, &cache, &metrics).await {
            Ok(remaining) => {
                failures = 0;
                let delay = renewal_delay(requested, remaining, unit() * 2.0 - 1.0);
                tracing::info!(
                    next_refresh_in = %humantime::format_duration(round_secs(delay)),
                    "credentials refreshed"
                );
                delay
            }
            Err(err) => {
                // Token read errors are local and cheap to retry (the kubelet may be rewriting
                // the file); STS configuration errors are not.
                let transient = err.sts_code().is_none_or(|c| c.is_transient());
                let delay = if transient {
                    backoff_delay(failures, unit())
                } else {
                    BACKOFF_CAP
                };
                failures = failures.saturating_add(1);
                let serving = cache.valid_at(SystemTime::now()).is_some();
                tracing::warn!(
                    error = %err,
                    attempt = failures,
                    retry_in = %humantime::format_duration(round_secs(delay)),
                    still_serving_cached = serving,
                    "credential refresh failed"
                );
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One exchange: on success the cache and gauges are updated and the remaining lifetime of the
/// new credentials returned.
async fn refresh_once<E: Exchange>(
    exchanger: &E,
    cache: &CredentialCache,
    metrics: &AgentMetrics,
) -> Result<Duration, ExchangeError> {
    let started = Instant::now();
    let result = exchanger.exchange().await;
    metrics
        .refresh_duration
        .observe(started.elapsed().as_secs_f64());
    let now = SystemTime::now();
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
            tracing::debug!(credentials = ?ex.credentials, "new credentials");
            cache.store(Cached::new(&ex.credentials));
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::agent::credentials::tests::sample;
    use crate::agent::sts::StsErrorCode;

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

    async fn run_script(
        script: &Arc<Script>,
        for_: Duration,
    ) -> (Arc<CredentialCache>, AgentMetrics) {
        let cache = Arc::new(CredentialCache::default());
        let metrics = AgentMetrics::new().unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(
            script.clone(),
            Duration::from_secs(3600),
            cache.clone(),
            metrics.clone(),
            || 0.5,
            rx,
        ));
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
        assert_eq!(script.gaps(), vec![60, 60]);
        assert!(cache.valid_at(SystemTime::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn serves_nothing_before_the_first_success() {
        let script = Script::new(vec![Err(StsErrorCode::Unreachable)]);
        let (cache, metrics) = run_script(&script, Duration::from_millis(100)).await;
        assert!(cache.valid_at(SystemTime::now()).is_none());
        assert_eq!(metrics.credentials_expiration.get(), 0.0);
    }
}
