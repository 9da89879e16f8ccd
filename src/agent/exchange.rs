//! One refresh of one binding: the projected token through `AssumeRoleWithWebIdentity`, then
//! each `AssumeRole` hop of the chain signed with the previous session's credentials. The last
//! session's credentials are what the binding serves.
//!
//! Every refresh runs the whole chain from the token. Intermediate sessions are asked for STS's
//! minimum (they sign one call, seconds later), so nothing but the served credentials needs
//! keeping, and a restarted agent never holds half a chain.
//!
//! The calls run in a short-lived child process ([`exchange_process`](super::exchange_process)),
//! so that the long-running agent never loads the SDK; the token is read by the agent itself
//! ([`read_token`]), which keeps its errors local and its expiry in the agent's metrics.
//!
//! Errors name the call and the role, and an `AccessDenied` names what that role's trust
//! policy must allow (the token's subject and audience for the exchange, the previous role,
//! tags, source identity and external id for a hop): the misconfiguration users hit most.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_sts::config::Credentials as SigningCredentials;
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::credentials::Credentials;
use super::sts::{StsErrorCode, classify_sdk_error, convert};
use super::token::{self, TokenError, WebIdentityToken};

/// The fields every STS call of an exchange has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRequest {
    pub role_arn: String,
    /// Rendered already: the same for every refresh of the pod.
    pub session_name: String,
    pub duration: Duration,
    /// Inline session policy, compact JSON.
    pub policy: Option<String>,
    pub policy_arns: Vec<String>,
}

/// An AssumeRole hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HopRequest {
    pub step: StepRequest,
    pub external_id: Option<String>,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
    pub source_identity: Option<String>,
}

/// What the token's claims must match in the first role's trust policy, for error messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    /// `system:serviceaccount:<namespace>:<service account>`.
    pub subject: String,
    pub audience: String,
}

/// What one refresh of a binding asks STS for; fixed for the agent's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeRequest {
    /// The web-identity exchange.
    pub first: StepRequest,
    pub token_file: PathBuf,
    pub hops: Vec<HopRequest>,
    pub trust: Trust,
}

impl ExchangeRequest {
    /// The call whose credentials are served.
    pub fn served(&self) -> &StepRequest {
        self.hops.last().map_or(&self.first, |h| &h.step)
    }
}

/// A successful refresh.
#[derive(Debug)]
pub struct Exchanged {
    /// The last session's credentials.
    pub credentials: Credentials,
    /// STS's PackedPolicySize (percent) of each call that reported one: `(step, percent)`,
    /// step 0 being the exchange.
    pub packed_policy_sizes: Vec<(usize, i32)>,
    /// Expiry of the web identity token that was used.
    pub token_expires_at: Option<std::time::SystemTime>,
}

/// Which STS call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// 0: the exchange; 1…: the hops.
    pub step: usize,
    pub role_arn: String,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            0 => write!(f, "AssumeRoleWithWebIdentity of {}", self.role_arn),
            n => write!(f, "AssumeRole of {} (chain hop {n})", self.role_arn),
        }
    }
}

/// Why a refresh failed. No variant carries a token or a credential.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("STS {call} failed ({}): {message}; {hint}", code.as_str())]
    Sts {
        call: Call,
        code: StsErrorCode,
        message: String,
        /// What to check, for the log line.
        hint: String,
    },
}

impl ExchangeError {
    /// An STS failure with the code's general hint.
    pub fn sts(call: Call, code: StsErrorCode, message: String) -> Self {
        ExchangeError::Sts {
            call,
            code,
            message,
            hint: code.hint().to_owned(),
        }
    }

    /// The STS code, when the failure came from STS (or the way to it).
    pub fn sts_code(&self) -> Option<StsErrorCode> {
        match self {
            ExchangeError::Sts { code, .. } => Some(*code),
            ExchangeError::Token(_) => None,
        }
    }
}

/// Reads the binding's token file: every time, because the kubelet rotates it.
pub async fn read_token(req: &ExchangeRequest) -> Result<WebIdentityToken, ExchangeError> {
    let path = req.token_file.clone();
    let token: WebIdentityToken = tokio::task::spawn_blocking(move || token::read(&path))
        .await
        .map_err(|e| {
            ExchangeError::sts(
                first_call(req),
                StsErrorCode::Other,
                format!("token reader task failed: {e}"),
            )
        })??;
    // Formats the token's Debug (redacted) on purpose: the tests run at debug level and check
    // that no secret reaches the log through this path.
    tracing::debug!(token = ?token, "read the web identity token");
    Ok(token)
}

/// The call that fails when no STS call could be made at all.
pub fn first_call(req: &ExchangeRequest) -> Call {
    Call {
        step: 0,
        role_arn: req.first.role_arn.clone(),
    }
}

/// The exchange and the chain once the token is read: what the exchange process runs.
pub async fn exchange_token(
    client: &aws_sdk_sts::Client,
    req: &ExchangeRequest,
    token: &WebIdentityToken,
) -> Result<Exchanged, ExchangeError> {
    let first = &req.first;
    let call = first_call(req);
    let out = client
        .assume_role_with_web_identity()
        .role_arn(&first.role_arn)
        .role_session_name(&first.session_name)
        .web_identity_token(token.expose())
        .duration_seconds(seconds(first.duration))
        .set_policy(first.policy.clone())
        .set_policy_arns(policy_arns(&first.policy_arns))
        .send()
        .await
        .map_err(|e| with_hint(classify_sdk_error(call.clone(), e), req, 0))?;
    #[allow(deprecated)]
    let legacy = out.packed_policy_size();
    let mut sizes = packed(0, out.session_token_utilization().or(legacy));
    let mut credentials = served(
        &call,
        out.credentials(),
        out.assumed_role_user().map(|u| u.arn()),
    )?;
    for (i, hop) in req.hops.iter().enumerate() {
        let step = i + 1;
        let call = Call {
            step,
            role_arn: hop.step.role_arn.clone(),
        };
        let signed = signed_client(client, &credentials);
        let out = signed
            .assume_role()
            .role_arn(&hop.step.role_arn)
            .role_session_name(&hop.step.session_name)
            .duration_seconds(seconds(hop.step.duration))
            .set_policy(hop.step.policy.clone())
            .set_policy_arns(policy_arns(&hop.step.policy_arns))
            .set_external_id(hop.external_id.clone())
            .set_tags(tags(&hop.tags))
            .set_transitive_tag_keys(
                (!hop.transitive_tag_keys.is_empty()).then(|| hop.transitive_tag_keys.clone()),
            )
            .set_source_identity(hop.source_identity.clone())
            .send()
            .await
            .map_err(|e| with_hint(classify_sdk_error(call.clone(), e), req, step))?;
        #[allow(deprecated)]
        let legacy = out.packed_policy_size();
        sizes.extend(packed(step, out.session_token_utilization().or(legacy)));
        credentials = served(
            &call,
            out.credentials(),
            out.assumed_role_user().map(|u| u.arn()),
        )?;
    }
    Ok(Exchanged {
        credentials,
        packed_policy_sizes: sizes,
        token_expires_at: token.expires_at,
    })
}

fn packed(step: usize, size: Option<i32>) -> Vec<(usize, i32)> {
    size.map(|s| (step, s)).into_iter().collect()
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn policy_arns(arns: &[String]) -> Option<Vec<PolicyDescriptorType>> {
    (!arns.is_empty()).then(|| {
        arns.iter()
            .map(|arn| PolicyDescriptorType::builder().arn(arn).build())
            .collect()
    })
}

/// Tags were checked when the binding was validated; one the SDK still refuses to build is
/// left out rather than failing every refresh (STS would name the problem anyway).
fn tags(tags: &[(String, String)]) -> Option<Vec<Tag>> {
    (!tags.is_empty()).then(|| {
        tags.iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect()
    })
}

/// A client like `base` (region, endpoint, timeouts, no retries) that signs with `creds`.
fn signed_client(base: &aws_sdk_sts::Client, creds: &Credentials) -> aws_sdk_sts::Client {
    let expiry = UNIX_EPOCH
        + creds
            .expiration
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    let signing = SigningCredentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose_secret().to_owned(),
        Some(creds.session_token.expose_secret().to_owned()),
        Some(expiry),
        "credvend-chain",
    );
    let config = base
        .config()
        .to_builder()
        .credentials_provider(signing)
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

/// The credentials of one answer, refused when a field is missing or empty: served, such
/// credentials would fail in the app's SDK, far from the cause.
fn served(
    call: &Call,
    credentials: Option<&aws_sdk_sts::types::Credentials>,
    arn: Option<&str>,
) -> Result<Credentials, ExchangeError> {
    let invalid = |message: &str| {
        ExchangeError::sts(call.clone(), StsErrorCode::InvalidResponse, message.into())
    };
    let c = credentials.ok_or_else(|| invalid("the response has no Credentials"))?;
    if c.access_key_id().is_empty()
        || c.secret_access_key().is_empty()
        || c.session_token().is_empty()
    {
        return Err(invalid(
            "the response's Credentials lack an access key id, secret or session token",
        ));
    }
    Ok(convert(c, arn))
}

/// Replaces the general hint of an `AccessDenied` or `InvalidIdentityToken` by what exactly
/// the role's trust policy must allow at `step`.
fn with_hint(err: ExchangeError, req: &ExchangeRequest, step: usize) -> ExchangeError {
    let ExchangeError::Sts {
        call,
        code,
        message,
        hint,
    } = err
    else {
        return err;
    };
    let hint = match (code, step) {
        (StsErrorCode::AccessDenied, 0) => format!(
            "the trust policy of {} must allow sts:AssumeRoleWithWebIdentity for the cluster's OIDC provider with the conditions sub = {} and aud = {}; check both (credvend trust-policy prints the policy)",
            req.first.role_arn, req.trust.subject, req.trust.audience
        ),
        (StsErrorCode::InvalidIdentityToken, 0) => format!(
            "STS does not accept the token: is the cluster's OIDC issuer registered in IAM, with the client id (audience) {}?",
            req.trust.audience
        ),
        (StsErrorCode::AccessDenied, n) => hop_hint(req, n),
        _ => hint,
    };
    ExchangeError::Sts {
        call,
        code,
        message,
        hint,
    }
}

fn hop_hint(req: &ExchangeRequest, step: usize) -> String {
    let previous = match step {
        1 => &req.first.role_arn,
        n => &req.hops[n - 2].step.role_arn,
    };
    let hop = &req.hops[step - 1];
    let mut actions = vec!["sts:AssumeRole"];
    if !hop.tags.is_empty() {
        actions.push("sts:TagSession");
    }
    if hop.source_identity.is_some() {
        actions.push("sts:SetSourceIdentity");
    }
    let external = if hop.external_id.is_some() {
        " with the condition sts:ExternalId equal to the hop's externalId"
    } else {
        ""
    };
    format!(
        "the trust policy of {} must allow {} to {}{external}, and {}'s own policies must allow sts:AssumeRole on it (credvend trust-policy prints the policy)",
        hop.step.role_arn,
        previous,
        actions.join(", "),
        previous
    )
}

#[cfg(test)]
mod tests;
