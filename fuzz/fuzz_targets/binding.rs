//! AWSRoleBinding JSON (what any namespace editor can write) → `crd::validate`.
//!
//! Properties: validation never panics; a spec it accepts also passes every bound, pattern and
//! rule of the generated CRD schema (see `credvend_fuzz::schema` for what is evaluated), so
//! the controller never calls Ready a binding the API server would refuse; its parsed duration
//! is within STS's limits, a chained session is clamped to an hour with a warning, and the
//! short-session warning comes exactly when the served session is below 40 minutes; a
//! spec it refuses gets at least one error, each with a message and a stable reason.
#![no_main]

use std::sync::LazyLock;

use credvend::crd::{self, AWSRoleBinding};
use credvend_fuzz::schema::{self, SpecSchema};
use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<SpecSchema> = LazyLock::new(|| {
    let s = SpecSchema::generated();
    schema::self_check(&s);
    s
});

fuzz_target!(|data: &[u8]| {
    let Ok(binding) = serde_json::from_slice::<AWSRoleBinding>(data) else {
        return;
    };
    match crd::validate(&binding.spec) {
        Ok(validated) => {
            let stored = serde_json::to_value(&binding.spec).expect("a spec serializes");
            let violations = SCHEMA.violations(&stored);
            assert!(
                violations.is_empty(),
                "validate() accepts a spec the CRD schema rejects: {violations:?}\n{stored}"
            );
            assert!(
                (crd::MIN_SESSION_DURATION..=crd::MAX_SESSION_DURATION)
                    .contains(&validated.session_duration)
            );
            let reasons: Vec<&str> = validated.warnings.iter().map(|w| w.reason()).collect();
            let short = validated.served_duration < crd::RECOMMENDED_MIN_SESSION_DURATION;
            assert_eq!(short, reasons.contains(&"SessionDurationTooShort"));
            let clamped = validated.served_duration < validated.session_duration;
            assert_eq!(clamped, reasons.contains(&"ChainedSessionClamped"));
            if clamped {
                assert!(!binding.spec.chain.is_empty());
                assert_eq!(
                    validated.served_duration,
                    credvend::plan::MAX_CHAINED_SESSION
                );
            }
            for w in &validated.warnings {
                assert!(!w.to_string().is_empty() && !w.reason().is_empty());
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused spec names what is wrong");
            for e in &errors {
                assert!(!e.to_string().is_empty());
                assert!(e.reason().starts_with("Invalid"), "{}", e.reason());
            }
        }
    }
});
