//! The IAM trust policies a binding's roles need: the step of every web-identity setup that
//! users get wrong most, printed by `credvend trust-policy` ([`command`]).
//!
//! The first role trusts the cluster's OIDC provider for exactly the binding's subject
//! (`system:serviceaccount:<namespace>:<serviceAccountName>`) and audience. Each chained role
//! trusts the role before it, with `sts:TagSession` when the hop sends session tags,
//! `sts:SetSourceIdentity` when it sets a source identity, and the external id as a condition
//! when it uses one. Everything here is pure: the issuer comes from the caller.

pub mod command;

use serde_json::{Value, json};

use crate::crd::AWSRoleBindingSpec;

/// One role and the trust policy it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleTrust {
    pub role_arn: String,
    /// What trusts it: the exchange, or the hop number.
    pub step: usize,
    pub policy: Value,
}

/// Why no policy can be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustPolicyError {
    #[error("the issuer {0:?} is not an https URL; IAM OIDC providers need one")]
    Issuer(String),
    #[error("roleArn {0:?} is not an IAM role ARN")]
    RoleArn(String),
}

/// The trust policy of every role of `spec` (binding in `namespace`), given the cluster's
/// service-account issuer (the `issuer` of its OIDC discovery document).
pub fn trust_policies(
    spec: &AWSRoleBindingSpec,
    namespace: &str,
    issuer: &str,
) -> Result<Vec<RoleTrust>, TrustPolicyError> {
    let provider = issuer
        .strip_prefix("https://")
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| TrustPolicyError::Issuer(issuer.to_owned()))?;
    let (partition, account) = partition_and_account(&spec.role_arn)?;
    let subject = format!(
        "system:serviceaccount:{namespace}:{}",
        spec.service_account_name
    );
    let first = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {
                "Federated": format!("arn:{partition}:iam::{account}:oidc-provider/{provider}")
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    format!("{provider}:sub"): subject,
                    format!("{provider}:aud"): spec.audience,
                }
            }
        }]
    });
    let mut policies = vec![RoleTrust {
        role_arn: spec.role_arn.clone(),
        step: 0,
        policy: first,
    }];
    let mut previous = spec.role_arn.as_str();
    for (i, hop) in spec.chain.iter().enumerate() {
        partition_and_account(&hop.role_arn)?;
        let mut actions = vec!["sts:AssumeRole"];
        if !hop.session_tags.is_empty() {
            actions.push("sts:TagSession");
        }
        if hop.source_identity.is_some() {
            actions.push("sts:SetSourceIdentity");
        }
        let mut statement = json!({
            "Effect": "Allow",
            "Principal": { "AWS": previous },
            "Action": actions,
        });
        if let Some(id) = &hop.external_id {
            statement["Condition"] = json!({ "StringEquals": { "sts:ExternalId": id } });
        }
        policies.push(RoleTrust {
            role_arn: hop.role_arn.clone(),
            step: i + 1,
            policy: json!({ "Version": "2012-10-17", "Statement": [statement] }),
        });
        previous = &hop.role_arn;
    }
    Ok(policies)
}

/// `aws`/`aws-cn`/… and the account id of a role ARN.
fn partition_and_account(arn: &str) -> Result<(&str, &str), TrustPolicyError> {
    let bad = || TrustPolicyError::RoleArn(arn.to_owned());
    crate::aws::check_role_arn(arn).map_err(|_| bad())?;
    let mut parts = arn.split(':');
    let partition = parts.nth(1).ok_or_else(bad)?;
    let account = parts.nth(2).ok_or_else(bad)?;
    Ok((partition, account))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(chain: Value) -> AWSRoleBindingSpec {
        serde_json::from_value(json!({
            "serviceAccountName": "app",
            "roleArn": "arn:aws:iam::111122223333:role/first",
            "audience": "sts.amazonaws.com",
            "chain": chain,
        }))
        .unwrap()
    }

    #[test]
    fn the_first_role_trusts_the_issuer_for_the_subject_and_audience() {
        let policies = trust_policies(
            &spec(json!([])),
            "team-a",
            "https://oidc.example.com/id/ABC/",
        )
        .unwrap();
        assert_eq!(policies.len(), 1);
        let statement = &policies[0].policy["Statement"][0];
        assert_eq!(
            statement["Principal"]["Federated"],
            "arn:aws:iam::111122223333:oidc-provider/oidc.example.com/id/ABC"
        );
        assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
        let equals = &statement["Condition"]["StringEquals"];
        assert_eq!(
            equals["oidc.example.com/id/ABC:sub"],
            "system:serviceaccount:team-a:app"
        );
        assert_eq!(equals["oidc.example.com/id/ABC:aud"], "sts.amazonaws.com");
    }

    #[test]
    fn chained_roles_trust_the_previous_role_with_what_the_hop_uses() {
        let chain = json!([
            {"roleArn": "arn:aws:iam::444455556666:role/second", "externalId": "partner-42"},
            {"roleArn": "arn:aws-cn:iam::777788889999:role/third",
             "sessionTags": [{"key": "team", "value": "a"}], "sourceIdentity": "team-a"}
        ]);
        let policies = trust_policies(&spec(chain), "ns", "https://issuer").unwrap();
        let statement = |i: usize| policies[i].policy["Statement"][0].clone();
        assert_eq!(
            statement(1)["Principal"]["AWS"],
            "arn:aws:iam::111122223333:role/first"
        );
        assert_eq!(statement(1)["Action"], json!(["sts:AssumeRole"]));
        assert_eq!(
            statement(1)["Condition"]["StringEquals"]["sts:ExternalId"],
            "partner-42"
        );
        assert_eq!(
            statement(2)["Principal"]["AWS"],
            "arn:aws:iam::444455556666:role/second"
        );
        assert_eq!(
            statement(2)["Action"],
            json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"])
        );
        assert!(statement(2).get("Condition").is_none());
        assert_eq!(policies[2].step, 2);
    }

    #[test]
    fn refuses_an_issuer_iam_cannot_trust() {
        for issuer in ["http://issuer", "issuer", "https://"] {
            assert!(
                trust_policies(&spec(json!([])), "ns", issuer).is_err(),
                "{issuer}"
            );
        }
    }
}
