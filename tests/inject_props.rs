//! Property tests of the pod mutation (`inject::decide`) on generated pods: whatever the pod,
//! an injection is a patch of `add`s that applies, keeps every field the user wrote, never
//! overrides a user's env var, and is idempotent (the patched pod is not injected again); a
//! denial always says why. `inject_apiserver` submits the same pods' results to a real API
//! server.

mod generated_pods;

use credvend::inject::Decision;
use generated_pods::{check_injection, decide_json, pod};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn injection_only_adds_keeps_user_fields_and_env_and_is_idempotent(pod in pod()) {
        match decide_json(&pod) {
            Decision::Inject { patch, .. } => {
                check_injection(&pod, &patch);
            }
            Decision::Deny { reason } => prop_assert!(!reason.to_string().is_empty()),
            Decision::Skip { .. } => {}
        }
    }
}

/// The generator reaches injections, denials and skips alike, so the property above is not
/// vacuously true of a generator that only ever makes pods the webhook skips.
#[test]
fn generated_pods_reach_every_kind_of_decision() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut injected, mut denied, mut skipped) = (0, 0, 0);
    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..500 {
        let pod = pod().new_tree(&mut runner).expect("a pod").current();
        match decide_json(&pod) {
            Decision::Inject { .. } => injected += 1,
            Decision::Deny { reason } => {
                denied += 1;
                *reasons.entry(reason.metric_label()).or_insert(0) += 1;
            }
            Decision::Skip { .. } => skipped += 1,
        }
    }
    eprintln!("{injected} injected, {denied} denied {reasons:?}, {skipped} skipped");
    assert!(
        injected >= 150 && denied >= 25 && skipped >= 25,
        "{injected} injected, {denied} denied, {skipped} skipped"
    );
}
