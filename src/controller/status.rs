//! What a binding's status should say, and whether a change deserves an Event: plain functions
//! over plain data, so every rule is a row in a table test and the reconciler only does I/O.
//!
//! The `Ready` condition answers one question for the user: "can pods use this binding, and if
//! not, what exactly must I fix?" Decisions:
//!
//! - A valid binding is `True` with reason `Valid`, and the message names the service account
//!   and the role, so `kubectl describe` confirms what was granted.
//! - A valid binding that deserves attention (today only a session too short for the SDKs'
//!   refresh windows) stays `True` — pods work — but the reason becomes the warning's
//!   (`SessionDurationTooShort`) and the message carries the warning. A reason other than
//!   `Valid` on a `True` condition is the signal tooling can key on without parsing messages.
//! - A valid binding whose service account another binding of the namespace names too stays
//!   `True` — pods that name it with `credvend.io/binding` work — but with reason
//!   `AmbiguousServiceAccount` and a message naming the other bindings and the fix, because
//!   every pod that asks with `credvend.io/inject: "true"` is refused as ambiguous.
//! - An invalid binding is `False` with the error's reason, or `InvalidSpec` when several
//!   different things are wrong, and a message listing every problem so one round of fixes is
//!   enough. A `stsEndpoint` outside the operator's allowed list is such a problem
//!   (`StsEndpointNotAllowed`): the webhook refuses its pods.
//! - `lastTransitionTime` moves only when the status or the reason changes; a reworded message
//!   (say, a different invalid ARN) keeps it.

use std::borrow::Borrow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

use crate::aws::StsEndpointAllowlist;
use crate::crd::{AWSRoleBinding, AWSRoleBindingStatus, CONDITION_READY, SpecError, validate_for};

/// Reason of a `Ready=True` condition without warnings.
pub const REASON_VALID: &str = "Valid";
/// Reason of a `Ready=False` condition when problems of different kinds were found.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason of a `Ready=True` condition with warnings of different kinds.
pub const REASON_VALID_WITH_WARNINGS: &str = "ValidWithWarnings";
/// Reason of a `Ready=True` condition when other bindings name the same service account.
pub const REASON_AMBIGUOUS: &str = "AmbiguousServiceAccount";
/// Reason of the Normal Event published when a binding becomes usable.
pub const EVENT_REASON_READY: &str = "Ready";
/// The Event `action` (what the controller was doing when it noticed).
pub const EVENT_ACTION: &str = "Validate";

/// The API server's limit on a condition message (`metav1.Condition`).
const MAX_CONDITION_MESSAGE_BYTES: usize = 32 * 1024;
/// The API server's limit on an `events.k8s.io/v1` Event's note.
const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// An Event the reconciler should publish on the binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// Normal when the binding became usable without warnings, Warning otherwise.
    pub type_: EventType,
    /// CamelCase: [`EVENT_REASON_READY`] or the condition's reason.
    pub reason: String,
    /// The condition's message, cut to what the API server accepts.
    pub note: String,
}

/// Bindings by the status of their `Ready` condition, for the `credvend_bindings` gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// `Ready=True` for the current generation.
    pub ready: i64,
    /// `Ready=False` for the current generation.
    pub not_ready: i64,
    /// No status yet, no `Ready` condition, status `Unknown`, or a status that describes an
    /// older generation than the stored spec (the controller has not caught up yet).
    pub unknown: i64,
}

/// What the controller knows about a binding beyond its own spec.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Pods labelled for the binding.
    pub pods: i32,
    /// The other bindings of its namespace that name the same service account, sorted.
    pub same_service_account: &'a [String],
    /// The operator's STS endpoint policy.
    pub allowed: &'a StsEndpointAllowlist,
}

/// The status the controller wants `binding` to have.
///
/// `previous` is the status currently stored (it supplies `lastTransitionTime` when the
/// condition did not really change); `now` stamps a transition.
pub fn desired_status(
    binding: &AWSRoleBinding,
    observed: &Observed<'_>,
    previous: Option<&AWSRoleBindingStatus>,
    now: Time,
) -> AWSRoleBindingStatus {
    let generation = binding.metadata.generation;
    let pods = observed.pods;
    let (status, reason, message) = ready_condition(binding, observed);
    let last_transition_time = previous
        .and_then(ready)
        .filter(|c| c.status == status && c.reason == reason)
        .map_or(now, |c| c.last_transition_time.clone());
    AWSRoleBindingStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: CONDITION_READY.to_owned(),
            status: status.to_owned(),
            reason,
            message: truncate(message, MAX_CONDITION_MESSAGE_BYTES),
            observed_generation: generation,
            last_transition_time,
        }],
        pods: pods.max(0),
        subject: Some(subject(binding)),
        audience: Some(binding.spec.audience.clone()),
    }
}

/// The `sub` claim of the binding's pods' tokens, which the first role's trust policy names.
pub fn subject(binding: &AWSRoleBinding) -> String {
    let namespace = binding.metadata.namespace.as_deref().unwrap_or_default();
    format!(
        "system:serviceaccount:{namespace}:{}",
        binding.spec.service_account_name
    )
}

/// Whether the stored status differs from the desired one in a field the controller owns.
///
/// Conditions of other types (written by other field managers) are ignored: server-side apply
/// leaves them alone, so they must not force a patch on every reconcile.
pub fn needs_update(
    previous: Option<&AWSRoleBindingStatus>,
    desired: &AWSRoleBindingStatus,
) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    previous.observed_generation != desired.observed_generation
        || previous.pods != desired.pods
        || previous.subject != desired.subject
        || previous.audience != desired.audience
        || ready(previous) != ready(desired)
}

/// The Event to publish when the `Ready` condition changes from `previous` to `desired`: on the
/// first verdict, and whenever status, reason or message change. A changed pod count or
/// generation alone is not a change of state and publishes nothing.
pub fn transition(
    previous: Option<&AWSRoleBindingStatus>,
    desired: &AWSRoleBindingStatus,
) -> Option<EventSpec> {
    let new = ready(desired)?;
    if let Some(old) = previous.and_then(ready)
        && (
            old.status.as_str(),
            old.reason.as_str(),
            old.message.as_str(),
        ) == (
            new.status.as_str(),
            new.reason.as_str(),
            new.message.as_str(),
        )
    {
        return None;
    }
    let (type_, reason) = if new.status == "True" && new.reason == REASON_VALID {
        (EventType::Normal, EVENT_REASON_READY.to_owned())
    } else {
        (EventType::Warning, new.reason.clone())
    };
    Some(EventSpec {
        type_,
        reason,
        note: truncate(new.message.clone(), MAX_EVENT_NOTE_BYTES),
    })
}

/// Counts bindings by readiness (see [`Readiness`] for what counts as unknown).
pub fn count_by_readiness<B: Borrow<AWSRoleBinding>>(
    bindings: impl IntoIterator<Item = B>,
) -> Readiness {
    let mut counts = Readiness::default();
    for binding in bindings {
        let binding = binding.borrow();
        let condition = binding
            .status
            .as_ref()
            .filter(|s| s.observed_generation == binding.metadata.generation)
            .and_then(ready);
        match condition.map(|c| c.status.as_str()) {
            Some("True") => counts.ready += 1,
            Some("False") => counts.not_ready += 1,
            _ => counts.unknown += 1,
        }
    }
    counts
}

/// The `Ready` condition of a status, if any.
pub fn ready(status: &AWSRoleBindingStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
}

/// `(status, reason, message)` of the `Ready` condition.
fn ready_condition(
    binding: &AWSRoleBinding,
    observed: &Observed<'_>,
) -> (&'static str, String, String) {
    let spec = &binding.spec;
    match validate_for(spec, observed.allowed) {
        Ok(validated) => {
            let chain: String = spec
                .chain
                .iter()
                .map(|hop| format!(", then {}", hop.role_arn))
                .collect();
            let grant = format!(
                "pods of service account {:?} may use role {}{chain} (sessions of {})",
                spec.service_account_name,
                spec.role_arn,
                crate::duration::format(validated.served_duration)
            );
            let mut warnings: Vec<(&'static str, String)> = validated
                .warnings
                .iter()
                .map(|w| (w.reason(), w.to_string()))
                .collect();
            if let Some(warning) =
                ambiguity(&spec.service_account_name, observed.same_service_account)
            {
                warnings.push((REASON_AMBIGUOUS, warning));
            }
            let reason = match warnings.as_slice() {
                [] => REASON_VALID,
                [(first, _), rest @ ..] if rest.iter().all(|(r, _)| r == first) => first,
                _ => REASON_VALID_WITH_WARNINGS,
            };
            let message = std::iter::once(grant)
                .chain(warnings.iter().map(|(_, w)| format!("warning: {w}")))
                .collect::<Vec<_>>()
                .join("; ");
            ("True", reason.to_owned(), message)
        }
        Err(errors) => (
            "False",
            error_reason(&errors).to_owned(),
            error_message(&errors),
        ),
    }
}

/// The warning when `others` name the same service account, if any do.
fn ambiguity(service_account: &str, others: &[String]) -> Option<String> {
    let (verb, list) = match others {
        [] => return None,
        [one] => ("also names", format!("AWSRoleBinding {one}")),
        many => ("also name", format!("AWSRoleBindings {}", many.join(", "))),
    };
    Some(format!(
        "{list} {verb} service account {service_account:?}, so pods that ask with credvend.io/inject: \"true\" are refused as ambiguous; give them the annotation credvend.io/binding: <name> (or map the other bindings to containers with credvend.io/container-bindings), or keep one binding per service account"
    ))
}

fn error_reason(errors: &[SpecError]) -> &'static str {
    match errors {
        [first, rest @ ..] if rest.iter().all(|e| e.reason() == first.reason()) => first.reason(),
        _ => REASON_INVALID_SPEC,
    }
}

fn error_message(errors: &[SpecError]) -> String {
    match errors {
        [only] => only.to_string(),
        _ => format!(
            "{} problems: {}",
            errors.len(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut, because the API
/// server rejects the whole object when one message is too long.
fn truncate(mut text: String, max: usize) -> String {
    const MARK: &str = " …";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::crd::AWSRoleBindingSpec;

    fn pods(pods: i32) -> Observed<'static> {
        static AWS: std::sync::LazyLock<StsEndpointAllowlist> =
            std::sync::LazyLock::new(StsEndpointAllowlist::aws);
        Observed {
            pods,
            same_service_account: &[],
            allowed: &AWS,
        }
    }

    const ROLE: &str = "arn:aws:iam::111122223333:role/s3-reader";

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn spec() -> AWSRoleBindingSpec {
        serde_json::from_value(serde_json::json!({
            "serviceAccountName": "app",
            "roleArn": ROLE,
        }))
        .unwrap()
    }

    fn binding(spec: AWSRoleBindingSpec, generation: i64) -> AWSRoleBinding {
        AWSRoleBinding {
            metadata: ObjectMeta {
                name: Some("s3".into()),
                namespace: Some("team-a".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    fn with(f: impl FnOnce(&mut AWSRoleBindingSpec)) -> AWSRoleBindingSpec {
        let mut s = spec();
        f(&mut s);
        s
    }

    #[test]
    fn ready_condition_says_what_is_granted_or_what_is_wrong() {
        // (spec, status, reason, texts the message must contain)
        let cases: Vec<(AWSRoleBindingSpec, &str, &str, Vec<&str>)> = vec![
            (
                spec(),
                "True",
                "Valid",
                vec!["service account \"app\"", ROLE, "sessions of 1h"],
            ),
            (
                with(|s| s.session_duration = "20m".into()),
                "True",
                "SessionDurationTooShort",
                vec![ROLE, "warning: sessionDuration 20m is under 40m", "use 1h"],
            ),
            (
                with(|s| s.role_arn = "arn:aws:iam::1234:role/x".into()),
                "False",
                "InvalidRoleArn",
                vec!["12 digits", "arn:aws:iam::111122223333:role/s3-reader"],
            ),
            (
                with(|s| s.session_duration = "13h".into()),
                "False",
                "InvalidSessionDuration",
                vec!["15m..12h"],
            ),
            (
                with(|s| s.session_duration = "an hour".into()),
                "False",
                "InvalidSessionDuration",
                vec!["is not a duration"],
            ),
            (
                with(|s| {
                    s.role_arn = "arn:aws:s3:::bucket".into();
                    s.region = Some("Ireland".into());
                }),
                "False",
                "InvalidSpec",
                vec!["2 problems", "roleArn", "region \"Ireland\""],
            ),
        ];
        for (spec, status, reason, texts) in cases {
            let got = desired_status(&binding(spec.clone(), 3), &pods(2), None, at(100));
            let ready = ready(&got).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                (status, reason),
                "{spec:?}"
            );
            for text in texts {
                assert!(
                    ready.message.contains(text),
                    "{text:?} in {:?}",
                    ready.message
                );
            }
            assert_eq!(ready.observed_generation, Some(3));
            assert_eq!(got.observed_generation, Some(3));
            assert_eq!(got.pods, 2);
            assert_eq!(got.conditions.len(), 1);
        }
    }

    #[test]
    fn a_service_account_named_by_several_bindings_is_reported_with_the_fix() {
        let aws = StsEndpointAllowlist::aws();
        let observed = |others: &'static [String]| Observed {
            pods: 0,
            same_service_account: others,
            allowed: &aws,
        };
        static ONE: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["dynamo".to_owned()]);
        static TWO: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["dynamo".to_owned(), "sqs".to_owned()]);
        let got = desired_status(&binding(spec(), 1), &observed(&ONE), None, at(1));
        let condition = ready(&got).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", REASON_AMBIGUOUS)
        );
        for words in [
            "AWSRoleBinding dynamo also names service account \"app\"",
            "refused as ambiguous",
            "credvend.io/binding: <name>",
        ] {
            assert!(
                condition.message.contains(words),
                "{words:?} in {}",
                condition.message
            );
        }
        let event = transition(None, &got).unwrap();
        assert_eq!(
            (event.type_, event.reason.as_str()),
            (EventType::Warning, REASON_AMBIGUOUS)
        );
        let two = desired_status(&binding(spec(), 1), &observed(&TWO), None, at(1));
        assert!(ready_message(&two).contains("AWSRoleBindings dynamo, sqs also name"));
        // With a short session as well, both warnings are there under one reason.
        let short = binding(with(|s| s.session_duration = "20m".into()), 1);
        let both = desired_status(&short, &observed(&ONE), None, at(1));
        assert_eq!(ready(&both).unwrap().reason, REASON_VALID_WITH_WARNINGS);
        assert!(ready_message(&both).contains("sessionDuration 20m"));
        // The other binding gone, the binding is plainly valid again.
        let alone = desired_status(&binding(spec(), 1), &observed(&[]), Some(&got), at(2));
        assert_eq!(ready(&alone).unwrap().reason, REASON_VALID);
    }

    #[test]
    fn an_sts_endpoint_the_operator_does_not_allow_makes_the_binding_not_ready() {
        let evil = binding(
            with(|s| s.sts_endpoint = Some("https://tokens.example.com".into())),
            1,
        );
        let got = desired_status(&evil, &pods(0), None, at(1));
        let condition = ready(&got).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "StsEndpointNotAllowed")
        );
        assert!(
            condition.message.contains("agent.allowedStsEndpoints"),
            "{}",
            condition.message
        );
        let allowed =
            StsEndpointAllowlist::aws_and(&["https://tokens.example.com".into()]).unwrap();
        let observed = Observed {
            pods: 0,
            same_service_account: &[],
            allowed: &allowed,
        };
        assert!(
            ready_message(&desired_status(&evil, &observed, None, at(1))).contains("may use role")
        );
    }

    fn ready_message(status: &AWSRoleBindingStatus) -> String {
        ready(status).unwrap().message.clone()
    }

    #[test]
    fn last_transition_time_moves_only_when_status_or_reason_changes() {
        let valid = spec();
        let short = with(|s| s.session_duration = "20m".into());
        let bad_arn = with(|s| s.role_arn = "arn:aws:iam::1234:role/x".into());
        let other_bad_arn = with(|s| s.role_arn = "arn:aws:iam::12345:role/y".into());
        // (before, after, whether the time is kept)
        let cases = [
            (&valid, &valid, true),
            (&bad_arn, &other_bad_arn, true),
            (&valid, &bad_arn, false),
            (&bad_arn, &valid, false),
            (&valid, &short, false),
        ];
        for (before, after, kept) in cases {
            let previous = desired_status(&binding(before.clone(), 1), &pods(0), None, at(100));
            let next = desired_status(
                &binding(after.clone(), 2),
                &pods(5),
                Some(&previous),
                at(200),
            );
            let time = &ready(&next).unwrap().last_transition_time;
            assert_eq!(time == &at(100), kept, "{before:?} -> {after:?}");
            assert_eq!(time == &at(200), !kept, "{before:?} -> {after:?}");
        }
    }

    #[test]
    fn events_are_published_on_changes_of_state_only() {
        let valid = binding(spec(), 1);
        let short = binding(with(|s| s.session_duration = "15m".into()), 2);
        let bad = binding(with(|s| s.role_arn = "arn:aws:iam::1234:role/x".into()), 3);
        let other_bad = binding(with(|s| s.role_arn = "arn:aws:iam::12:role/x".into()), 4);
        let status = |b: &AWSRoleBinding, n| desired_status(b, &pods(n), None, at(1));
        // (previous, desired, expected event type and reason)
        let cases = [
            (None, status(&valid, 0), Some((EventType::Normal, "Ready"))),
            (Some(status(&valid, 0)), status(&valid, 7), None),
            (
                Some(status(&valid, 0)),
                status(&bad, 0),
                Some((EventType::Warning, "InvalidRoleArn")),
            ),
            (
                Some(status(&bad, 0)),
                status(&other_bad, 0),
                Some((EventType::Warning, "InvalidRoleArn")),
            ),
            (Some(status(&bad, 0)), status(&bad, 3), None),
            (
                Some(status(&bad, 0)),
                status(&valid, 0),
                Some((EventType::Normal, "Ready")),
            ),
            (
                None,
                status(&short, 0),
                Some((EventType::Warning, "SessionDurationTooShort")),
            ),
            (
                Some(AWSRoleBindingStatus::default()),
                status(&bad, 0),
                Some((EventType::Warning, "InvalidRoleArn")),
            ),
        ];
        for (previous, desired, want) in cases {
            let got = transition(previous.as_ref(), &desired);
            assert_eq!(
                got.as_ref().map(|e| (e.type_, e.reason.as_str())),
                want,
                "{previous:?} -> {desired:?}"
            );
            if let Some(event) = got {
                assert_eq!(event.note, ready(&desired).unwrap().message);
            }
        }
    }

    #[test]
    fn an_unchanged_status_needs_no_update() {
        let b = binding(spec(), 1);
        let current = desired_status(&b, &pods(2), None, at(1));
        let again = desired_status(&b, &pods(2), Some(&current), at(50));
        assert!(!needs_update(Some(&current), &again));
        assert!(needs_update(None, &again));
        // Another manager's condition does not count.
        let mut with_foreign = current.clone();
        with_foreign.conditions.push(Condition {
            type_: "example.com/Audited".into(),
            status: "True".into(),
            reason: "Audited".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(3),
        });
        assert!(!needs_update(Some(&with_foreign), &again));
        // Pod count, generation and condition changes do.
        assert!(needs_update(
            Some(&current),
            &desired_status(&b, &pods(3), Some(&current), at(50))
        ));
        let b2 = binding(spec(), 2);
        assert!(needs_update(
            Some(&current),
            &desired_status(&b2, &pods(2), Some(&current), at(50))
        ));
        let bad = binding(with(|s| s.audience = " ".into()), 1);
        assert!(needs_update(
            Some(&current),
            &desired_status(&bad, &pods(2), Some(&current), at(50))
        ));
    }

    #[test]
    fn messages_are_cut_to_the_api_servers_limits() {
        // A role path just over IAM's limit makes the longest message a user can cause.
        let long_arn = format!("arn:aws:iam::111122223333:role/{}/x", "é".repeat(1000));
        let b = binding(with(|s| s.role_arn = long_arn), 1);
        let status = desired_status(&b, &pods(0), None, at(1));
        let event = transition(None, &status).unwrap();
        assert!(
            event.note.len() <= MAX_EVENT_NOTE_BYTES,
            "{}",
            event.note.len()
        );
        assert!(event.note.ends_with(" …"));
        assert!(ready(&status).unwrap().message.len() <= MAX_CONDITION_MESSAGE_BYTES);
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("ééééé".into(), 8), "éé …");
    }

    #[test]
    fn bindings_are_counted_by_readiness_of_their_current_generation() {
        let fresh = binding(spec(), 1);
        let mut ready_one = binding(spec(), 1);
        ready_one.status = Some(desired_status(&ready_one, &pods(0), None, at(1)));
        let mut invalid = binding(with(|s| s.audience = String::new()), 1);
        invalid.status = Some(desired_status(&invalid, &pods(0), None, at(1)));
        let mut stale = ready_one.clone();
        stale.metadata.generation = Some(2);
        let mut no_condition = binding(spec(), 1);
        no_condition.status = Some(AWSRoleBindingStatus {
            observed_generation: Some(1),
            ..AWSRoleBindingStatus::default()
        });
        let all = [
            fresh,
            ready_one.clone(),
            ready_one,
            invalid,
            stale,
            no_condition,
        ];
        assert_eq!(
            count_by_readiness(&all),
            Readiness {
                ready: 2,
                not_ready: 1,
                unknown: 3
            }
        );
        assert_eq!(
            count_by_readiness(Vec::<AWSRoleBinding>::new()),
            Readiness::default()
        );
    }
}
