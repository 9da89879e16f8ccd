//! Session durations: one grammar and one set of bounds for `AWSRoleBinding.spec.sessionDuration`
//! and the agent's `--duration` flag.
//!
//! The webhook copies the binding's value into the agent's command line verbatim, so the two
//! must accept exactly the same strings: a value the controller calls Ready must never make the
//! sidecar refuse to start, and the agent must not accept spellings (`1 hour`, `2days`) that
//! the API server would refuse in a binding. The grammar is a subset of Go's durations, so the
//! CRD's CEL rules can check the range with CEL's own `duration()`: whole numbers of hours,
//! minutes and seconds, in that order, each unit at most once (`1h`, `90m`, `1h30m`, `900s`).
//! The CEL rules are generated here from the same pattern and bounds.

use std::time::Duration;

/// STS refuses sessions shorter than 15 minutes.
pub const MIN_SESSION_DURATION: Duration = Duration::from_secs(15 * 60);
/// STS refuses sessions longer than 12 hours (and the role's own maximum may be lower).
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(12 * 60 * 60);
/// The most digits one unit may have (keeps every value far from overflow and the CEL cost
/// estimate small).
const MAX_DIGITS: usize = 5;

/// The grammar as a regular expression, for the CRD's CEL rule; [`parse`] implements the same
/// language without a regex engine (a unit test keeps the two in step on a table of cases).
pub const SESSION_DURATION_PATTERN: &str =
    "^([0-9]{1,5}h([0-9]{1,5}m)?([0-9]{1,5}s)?|[0-9]{1,5}m([0-9]{1,5}s)?|[0-9]{1,5}s)$";

/// Why a session duration is refused. The messages name no field: callers add the flag or
/// the field they read it from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionDurationError {
    #[error(
        "{0:?} is not a duration: write whole hours, minutes and seconds such as 1h, 90m or 1h30m"
    )]
    Format(String),
    #[error("{0:?} is outside 15m..12h, the limits of STS; 1h is the default")]
    Range(String),
}

/// Parses a session duration and checks STS's bounds.
pub fn parse_session_duration(written: &str) -> Result<Duration, SessionDurationError> {
    let parsed = parse(written).ok_or_else(|| SessionDurationError::Format(written.to_owned()))?;
    if (MIN_SESSION_DURATION..=MAX_SESSION_DURATION).contains(&parsed) {
        Ok(parsed)
    } else {
        Err(SessionDurationError::Range(written.to_owned()))
    }
}

/// The grammar alone (no bounds): `[N h][N m][N s]`, at least one part, 1–5 digits each.
fn parse(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total: u64 = 0;
    let mut parts = 0;
    for (unit, seconds) in [('h', 3600), ('m', 60), ('s', 1)] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(unit) {
            if digits > MAX_DIGITS {
                return None;
            }
            let n: u64 = rest[..digits].parse().ok()?;
            total += n * seconds;
            rest = &rest[digits + 1..];
            parts += 1;
        }
    }
    (parts > 0 && rest.is_empty()).then(|| Duration::from_secs(total))
}

/// Writes `d` (whole seconds) in the same grammar: `1h`, `1h30m`, `15m`, `45s`.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// The CRD's CEL rule for the grammar.
pub fn cel_format_rule() -> String {
    format!("self.matches('{SESSION_DURATION_PATTERN}')")
}

/// The CRD's CEL rule for the bounds, guarded by the grammar so that a malformed value
/// reports one error rather than an evaluation error.
pub fn cel_range_rule() -> String {
    format!(
        "!self.matches('{SESSION_DURATION_PATTERN}') || (duration(self) >= duration('{}') && duration(self) <= duration('{}'))",
        format(MIN_SESSION_DURATION),
        format(MAX_SESSION_DURATION)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hours_minutes_seconds_within_sts_bounds() {
        let cases: [(&str, Result<u64, &str>); 20] = [
            ("1h", Ok(3600)),
            ("90m", Ok(5400)),
            ("1h30m", Ok(5400)),
            ("15m", Ok(900)),
            ("900s", Ok(900)),
            ("12h", Ok(43200)),
            ("11h59m59s", Ok(43199)),
            ("1h0m", Ok(3600)),
            ("14m59s", Err("range")),
            ("12h1s", Err("range")),
            ("0h", Err("range")),
            ("99999h", Err("range")),
            ("1 hour", Err("format")),
            ("2days", Err("format")),
            ("1.5h", Err("format")),
            ("30m1h", Err("format")),
            ("3600", Err("format")),
            ("999999m", Err("format")),
            ("1h 30m", Err("format")),
            ("", Err("format")),
        ];
        for (written, want) in cases {
            let got = parse_session_duration(written)
                .map(|d| d.as_secs())
                .map_err(|e| match e {
                    SessionDurationError::Format(_) => "format",
                    SessionDurationError::Range(_) => "range",
                });
            assert_eq!(got, want, "{written:?}");
        }
    }

    #[test]
    fn format_writes_what_parse_reads() {
        for secs in [900, 3600, 5400, 43199, 43200, 1000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Some(d), "{secs}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(MIN_SESSION_DURATION), "15m");
        assert_eq!(format(MAX_SESSION_DURATION), "12h");
    }

    #[test]
    fn cel_rules_carry_the_pattern_and_the_bounds() {
        assert_eq!(
            cel_range_rule(),
            format!(
                "!self.matches('{SESSION_DURATION_PATTERN}') || (duration(self) >= duration('15m') && duration(self) <= duration('12h'))"
            )
        );
        assert!(cel_format_rule().contains(SESSION_DURATION_PATTERN));
    }

    /// The pattern, read as the alternatives it spells out, accepts exactly what `parse` does:
    /// `Nh[Nm][Ns]`, `Nm[Ns]` or `Ns`. Checked by enumerating every combination of present
    /// units and digit counts around the limit.
    #[test]
    fn parser_and_pattern_agree_on_unit_order_and_digit_counts() {
        assert_eq!(
            SESSION_DURATION_PATTERN,
            "^([0-9]{1,5}h([0-9]{1,5}m)?([0-9]{1,5}s)?|[0-9]{1,5}m([0-9]{1,5}s)?|[0-9]{1,5}s)$",
            "the pattern changed: update parse() and this test together"
        );
        for digits in 0..=6usize {
            for units in ["h", "m", "s", "hm", "hs", "ms", "hms", "mh", "sm", "hh"] {
                let written: String = units
                    .chars()
                    .map(|u| format!("{}{u}", "1".repeat(digits)))
                    .collect();
                let ordered = ["h", "m", "s", "hm", "hs", "ms", "hms"].contains(&units);
                let want = (1..=MAX_DIGITS).contains(&digits) && ordered;
                assert_eq!(parse(&written).is_some(), want, "{written:?}");
            }
        }
    }
}
