//! When to renew credentials and how long to wait after a failure: pure arithmetic.
//!
//! SDKs re-fetch on every call when the credentials they hold have less lifetime left than
//! their refresh window (botocore and older Java SDKs: 15 minutes). So the agent renews while
//! plenty of lifetime remains: when about half of it, and at least 20 minutes, is left. The
//! renewal time is jittered by ±10% so that many pods started together do not call STS
//! together. After a failure the agent retries with exponential backoff (1 s doubling, 60 s
//! cap) with jitter, and keeps serving the credentials it has meanwhile. Credentials that
//! arrive already expired (a wrong node clock, a misbehaving endpoint) are a failure too:
//! without that rule, "renew when half the remaining lifetime is left" means "renew now",
//! forever.

use std::time::Duration;

/// The least lifetime a credential should have left when the agent renews it.
pub const MIN_REMAINING_AT_RENEWAL: Duration = Duration::from_secs(20 * 60);
/// Fraction of the delay by which renewal is moved earlier or later at random.
pub const JITTER_FRACTION: f64 = 0.10;
/// The first retry delay after a failed exchange.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Never renew sooner than this after a success, whatever the lifetime, so that a very short
/// session (or a clock jump) cannot turn the agent into a busy loop against STS.
pub const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(30);

/// Credentials that arrive with less than this left are treated as already expired.
pub const MIN_USEFUL_LIFETIME: Duration = Duration::from_secs(1);

/// Whether credentials with `remaining` lifetime on arrival are a failure, not a success.
pub fn arrived_expired(remaining: Duration) -> bool {
    remaining < MIN_USEFUL_LIFETIME
}

/// How much lifetime should remain when credentials of `lifetime` are renewed.
///
/// Half the lifetime, but at least [`MIN_REMAINING_AT_RENEWAL`]; when the whole lifetime is
/// shorter than that (a 15-minute session), half of it is the best the agent can do.
pub fn renewal_margin(lifetime: Duration) -> Duration {
    let half = lifetime / 2;
    let margin = half.max(MIN_REMAINING_AT_RENEWAL);
    if margin >= lifetime { half } else { margin }
}

/// How long to wait, after receiving credentials, before renewing them.
///
/// `lifetime` is the full validity the credentials were issued with, `remaining` what is left
/// now, and `jitter` a sample in `[-1.0, 1.0]` (outside values are clamped) that moves the
/// renewal by up to ±[`JITTER_FRACTION`] of the delay.
pub fn renewal_delay(lifetime: Duration, remaining: Duration, jitter: f64) -> Duration {
    let margin = renewal_margin(lifetime);
    let base = remaining.saturating_sub(margin);
    let factor = 1.0 + JITTER_FRACTION * jitter.clamp(-1.0, 1.0);
    let jittered = base.mul_f64(factor);
    // Renew before expiry even with jitter, but never in a tight loop.
    jittered
        .min(remaining.saturating_sub(Duration::from_secs(1)))
        .max(MIN_RENEWAL_DELAY.min(remaining / 2))
}

/// When to make the first exchange after start-up: at once, unless credentials restored from
/// the cache file (with `restored` lifetime left) can be served until their normal renewal.
pub fn first_refresh_delay(
    lifetime: Duration,
    restored: Option<Duration>,
    jitter: f64,
) -> Duration {
    match restored {
        Some(left) if left > renewal_margin(lifetime) => renewal_delay(lifetime, left, jitter),
        _ => Duration::ZERO,
    }
}

/// The wait after a failure that retrying soon cannot fix (trust policy, audience, policy
/// documents): the longest backoff, jittered like every other, so that many pods of one
/// misconfigured binding do not retry in step.
pub fn permanent_failure_delay(unit: f64) -> Duration {
    backoff_delay(u32::MAX, unit)
}

/// How long to wait before retry number `attempt` (0 for the first retry) after a failure.
///
/// Exponential from [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with "equal jitter": half the
/// delay is fixed and the other half scaled by `unit` (a sample in `[0.0, 1.0]`), which spreads
/// retries without ever retrying immediately.
pub fn backoff_delay(attempt: u32, unit: f64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let capped = exp.min(BACKOFF_CAP);
    let half = capped / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn margin_is_half_the_lifetime_but_at_least_twenty_minutes() {
        let cases = [
            (HOUR, 30 * MIN),
            (12 * HOUR, 6 * HOUR),
            (30 * MIN, 20 * MIN),
            (40 * MIN, 20 * MIN),
            (2 * HOUR, HOUR),
            // Shorter than the minimum margin: half is the best possible.
            (15 * MIN, 450),
            (20 * MIN, 10 * MIN),
        ];
        for (lifetime, want) in cases {
            assert_eq!(
                renewal_margin(secs(lifetime)),
                secs(want),
                "lifetime {lifetime}s"
            );
        }
    }

    #[test]
    fn fresh_one_hour_credentials_renew_after_thirty_minutes_plus_or_minus_ten_percent() {
        assert_eq!(renewal_delay(secs(HOUR), secs(HOUR), 0.0), secs(30 * MIN));
        assert_eq!(renewal_delay(secs(HOUR), secs(HOUR), -1.0), secs(27 * MIN));
        assert_eq!(renewal_delay(secs(HOUR), secs(HOUR), 1.0), secs(33 * MIN));
        // Out-of-range samples are clamped, not trusted.
        assert_eq!(renewal_delay(secs(HOUR), secs(HOUR), 7.0), secs(33 * MIN));
    }

    #[test]
    fn served_credentials_keep_more_than_the_botocore_window_for_default_sessions() {
        // Whatever the jitter, what is left at renewal exceeds 15 minutes for sessions of 40
        // minutes and more (the webhook warns about shorter ones).
        for lifetime in [40 * MIN, HOUR, 2 * HOUR, 12 * HOUR] {
            for jitter in [-1.0, -0.5, 0.0, 0.5, 1.0] {
                let delay = renewal_delay(secs(lifetime), secs(lifetime), jitter);
                let left = secs(lifetime) - delay;
                assert!(
                    left > secs(15 * MIN),
                    "lifetime {lifetime}s jitter {jitter}: {left:?}"
                );
            }
        }
    }

    #[test]
    fn credentials_received_late_renew_sooner() {
        // Issued for an hour but only 40 minutes remain (clock skew, slow start): renew
        // 10 minutes from now so that 30 minutes remain.
        assert_eq!(
            renewal_delay(secs(HOUR), secs(40 * MIN), 0.0),
            secs(10 * MIN)
        );
    }

    #[test]
    fn renewal_is_never_a_busy_loop_nor_after_expiry() {
        // Already inside the margin: wait the minimum, not zero.
        assert_eq!(
            renewal_delay(secs(HOUR), secs(10 * MIN), 0.0),
            MIN_RENEWAL_DELAY
        );
        // Almost expired: wait less than what remains.
        let d = renewal_delay(secs(HOUR), secs(20), 0.0);
        assert!(d < secs(20) && d > Duration::ZERO, "{d:?}");
    }

    #[test]
    fn credentials_without_lifetime_are_not_a_success() {
        assert!(arrived_expired(Duration::ZERO));
        assert!(arrived_expired(Duration::from_millis(999)));
        assert!(!arrived_expired(secs(1)));
    }

    #[test]
    fn restored_credentials_wait_for_their_renewal_time() {
        assert_eq!(first_refresh_delay(secs(HOUR), None, 0.0), Duration::ZERO);
        // 50 minutes left of a one-hour session: renew when 30 remain.
        assert_eq!(
            first_refresh_delay(secs(HOUR), Some(secs(50 * MIN)), 0.0),
            secs(20 * MIN)
        );
        // Already inside the renewal margin: at once.
        assert_eq!(
            first_refresh_delay(secs(HOUR), Some(secs(25 * MIN)), 0.0),
            Duration::ZERO
        );
    }

    #[test]
    fn permanent_failures_wait_the_cap_with_jitter() {
        assert_eq!(permanent_failure_delay(1.0), BACKOFF_CAP);
        assert_eq!(permanent_failure_delay(0.0), BACKOFF_CAP / 2);
        assert_ne!(permanent_failure_delay(0.2), permanent_failure_delay(0.7));
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_sixty() {
        let full: Vec<u64> = (0..9).map(|a| backoff_delay(a, 1.0).as_secs()).collect();
        assert_eq!(full, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let half: Vec<u128> = (0..4).map(|a| backoff_delay(a, 0.0).as_millis()).collect();
        assert_eq!(half, vec![500, 1000, 2000, 4000]);
        assert_eq!(backoff_delay(u32::MAX, 1.0), BACKOFF_CAP);
    }
}
