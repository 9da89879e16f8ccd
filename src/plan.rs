//! What the agent must do for one binding: the exchange and the AssumeRole hops after it.
//!
//! This is the contract between the webhook, which writes one plan per binding of a pod into
//! the agent's `--binding` arguments (compact JSON), and the agent, which executes it. It lives
//! apart from both so neither depends on the other. The plan holds templates, not rendered
//! session names: the pod's name is not known at admission when it uses `generateName`.
//!
//! The duration rule of role chaining is here too, because the controller reports it in the
//! binding's status and the agent applies it: a session obtained with role-session credentials
//! lasts at most one hour.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// STS's ceiling for a session obtained by role chaining.
pub const MAX_CHAINED_SESSION: Duration = Duration::from_secs(3600);
/// What the sessions before the last hop are asked for: they only sign the next call, seconds
/// later, so STS's minimum is enough.
pub const INTERMEDIATE_SESSION: Duration = crate::duration::MIN_SESSION_DURATION;

/// One binding, as the agent executes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingPlan {
    /// The binding's name: `/v1/credentials/<name>` and the `binding` label of the metrics.
    pub name: String,
    /// The role of the web-identity exchange.
    pub role_arn: String,
    /// The session length the binding asks for (`1h`, `90m`), before the chaining rule.
    pub duration: String,
    /// `RoleSessionName` template of the exchange (see [`crate::session_name`]).
    pub session_name: String,
    /// The projected service-account token with this binding's audience.
    pub token_file: PathBuf,
    /// That audience, for error messages (the trust policy must name it).
    pub audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// Inline session policy (compact JSON) of the served session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Managed session policies of the served session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_arns: Vec<String>,
    /// AssumeRole hops after the exchange, in order; the last one's credentials are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<HopPlan>,
}

/// One AssumeRole hop, signed with the previous session's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HopPlan {
    pub role_arn: String,
    /// `RoleSessionName` template of this hop.
    pub session_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitive_tag_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// Inline session policy (compact JSON) of this hop's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_arns: Vec<String>,
}

/// A session tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// The session length asked of STS at each step: `[exchange, hop 1, …]`. Without a chain the
/// exchange gets what the binding asks for; with one, every step but the last gets
/// [`INTERMEDIATE_SESSION`] and the last at most [`MAX_CHAINED_SESSION`].
pub fn step_durations(requested: Duration, hops: usize) -> Vec<Duration> {
    if hops == 0 {
        return vec![requested];
    }
    let mut steps = vec![INTERMEDIATE_SESSION; hops];
    steps.push(served_duration(requested, hops));
    steps
}

/// The lifetime of the served session: what the binding asks for, clamped by chaining.
pub fn served_duration(requested: Duration, hops: usize) -> Duration {
    if hops == 0 {
        requested
    } else {
        requested.min(MAX_CHAINED_SESSION)
    }
}

impl BindingPlan {
    /// The role whose credentials are served: the last hop's, or the exchange's.
    pub fn served_role(&self) -> &str {
        self.chain.last().map_or(&self.role_arn, |h| &h.role_arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn chained_sessions_are_clamped_to_an_hour_and_intermediates_kept_short() {
        assert_eq!(step_durations(90 * MIN, 0), [90 * MIN]);
        assert_eq!(step_durations(90 * MIN, 1), [15 * MIN, 60 * MIN]);
        assert_eq!(step_durations(40 * MIN, 2), [15 * MIN, 15 * MIN, 40 * MIN]);
        assert_eq!(served_duration(12 * 60 * MIN, 3), 60 * MIN);
    }

    #[test]
    fn plans_round_trip_as_compact_json_and_refuse_unknown_fields() {
        let plan = BindingPlan {
            name: "s3".into(),
            role_arn: "arn:aws:iam::111122223333:role/a".into(),
            duration: "1h".into(),
            session_name: "{namespace}.{pod}".into(),
            token_file: "/t".into(),
            audience: "sts.amazonaws.com".into(),
            region: None,
            sts_endpoint: None,
            policy: None,
            policy_arns: Vec::new(),
            chain: vec![HopPlan {
                role_arn: "arn:aws:iam::444455556666:role/b".into(),
                session_name: "x".into(),
                external_id: Some("ext".into()),
                tags: vec![Tag {
                    key: "team".into(),
                    value: "a".into(),
                }],
                transitive_tag_keys: vec!["team".into()],
                source_identity: None,
                policy: None,
                policy_arns: Vec::new(),
            }],
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("policyArns"), "{json}");
        assert_eq!(serde_json::from_str::<BindingPlan>(&json).unwrap(), plan);
        assert_eq!(plan.served_role(), "arn:aws:iam::444455556666:role/b");
        let unknown = json.replacen("\"name\"", "\"nmae\":1,\"name\"", 1);
        assert!(serde_json::from_str::<BindingPlan>(&unknown).is_err());
    }
}
