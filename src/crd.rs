//! The `AWSRoleBinding` custom resource: "pods of service account S in this namespace may use
//! IAM role R", and the checks that keep a bad binding from ever reaching STS.
//!
//! A binding is validated twice. The CRD schema carries bounds and CEL rules so that
//! `kubectl apply` fails at once with a message that names the fix; [`validate`] repeats the
//! same checks (plus the ones CEL cannot express, such as IAM's path-length limit and the
//! session-length warning) so the controller can explain a binding that an older CRD let
//! through, in its `Ready` condition. Formats are checked with CEL rules carrying a message
//! rather than with `pattern`, because the API server's message for a failed pattern only
//! repeats the regular expression.
//!
//! The spec only grows by optional fields, so objects stored before a field existed stay
//! valid; [`Validated`] carries their parsed form. The optional fields follow STS's own
//! request rules ([`crate::sts_fields`], [`crate::session_name`]); role chaining's one-hour
//! ceiling ([`crate::plan`]) is applied, and reported as a warning, rather than refused.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::aws::{StsEndpointAllowlist, check_role_arn, check_sts_endpoint, is_region};
pub use crate::duration::{MAX_SESSION_DURATION, MIN_SESSION_DURATION};
use crate::duration::{SessionDurationError, cel_format_rule, cel_range_rule};
use crate::session_name::{CEL_TEMPLATE, TemplateError, check_template};
use crate::sts_fields::{
    CEL_EXTERNAL_ID, CEL_POLICY, CEL_POLICY_ARN, CEL_SOURCE_IDENTITY, CEL_TAG_KEY, FieldError,
    check_external_id, check_policy_arns, check_source_identity, check_tags, compact_policy,
};

/// API group of every credvend resource.
pub const GROUP: &str = "credvend.io";
/// The `sessionDuration` used when a binding does not set one (STS's own default).
pub const DEFAULT_SESSION_DURATION: &str = "1h";
/// The projected token audience used when a binding does not set one (what STS expects for
/// an IAM OIDC provider configured the usual way).
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// The condition type the controller maintains on every binding.
pub const CONDITION_READY: &str = "Ready";

/// Below this the agent cannot keep the lifetime it serves comfortably above the SDKs'
/// 15-minute refresh window (see `ENDPOINT.md` §6 and the agent's renewal schedule): it renews
/// with at least [`AGENT_RENEWAL_MARGIN`] left, so a 40-minute session is the shortest that
/// still leaves 20 minutes between renewals.
pub const RECOMMENDED_MIN_SESSION_DURATION: Duration = Duration::from_secs(40 * 60);
/// The lifetime the agent keeps at renewal (mirrors `agent::schedule::MIN_REMAINING_AT_RENEWAL`).
pub const AGENT_RENEWAL_MARGIN: Duration = crate::agent::schedule::MIN_REMAINING_AT_RENEWAL;
/// botocore and the AWS CLI re-fetch on every call when less than this remains.
pub const SDK_REFRESH_WINDOW: Duration = Duration::from_secs(15 * 60);

// CEL rules. The regular expressions avoid backslashes so they read the same in Rust, CEL
// and YAML; `[!-.0-~]` is printable ASCII without '/', which is what IAM allows in a path.
/// Pods are labelled with the binding's name, and label values are at most 63 characters.
pub const MAX_BINDING_NAME_LEN: usize = 63;
const CEL_NAME_LENGTH: &str = "self.metadata.name.size() <= 63";
const CEL_SERVICE_ACCOUNT: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const CEL_ROLE_ARN: &str =
    "self.matches('^arn:aws(-[a-z]+)*:iam::[0-9]{12}:role/([!-.0-~]+/)*[A-Za-z0-9_+=,.@-]{1,64}$')";
// The sessionDuration rules come from `crate::duration`, with the grammar and bounds the
// controller and the agent use.
const CEL_REGION: &str = "self.matches('^[a-z]{2,4}(-[a-z]+){1,3}-[0-9]{1,2}$')";
// The 127.0.0.0/8 test runs on `self`, whose length is bounded: a regular expression on the
// unbounded result of `getHostname()` makes the API server's cost estimate refuse the CRD.
/// The most AssumeRole hops after the exchange. STS sets no limit of its own; every hop is a
/// call per refresh, and more than a few is a design to rethink.
pub const MAX_CHAIN_HOPS: usize = 5;
/// Transitive tag keys must be keys of the same hop's tags (public for the fuzz oracle).
pub const CEL_TRANSITIVE_KEYS: &str = "!has(self.transitiveTagKeys) || self.transitiveTagKeys.all(k, has(self.sessionTags) && self.sessionTags.exists(t, t.key == k))";
/// No tag key twice, ignoring ASCII case (public for the fuzz oracle).
pub const CEL_UNIQUE_TAG_KEYS: &str =
    "self.all(t, self.exists_one(u, u.key.lowerAscii() == t.key.lowerAscii()))";

/// `rule`, written for one string as `self`, applied to every item of a list.
fn each(rule: &str) -> String {
    format!("self.all(x, {})", rule.replacen("self", "x", 1))
}

const CEL_STS_ENDPOINT: &str = "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && (url(self).getHostname() == '::1' || self.matches('^http://127[.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}([:/]|$)'))))";

/// Lets the pods of one service account obtain credentials for one IAM role.
///
/// The role's trust policy must trust the cluster's OIDC issuer for
/// `system:serviceaccount:<namespace>:<serviceAccountName>` and the binding's audience.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "credvend.io",
    version = "v1alpha1",
    kind = "AWSRoleBinding",
    plural = "awsrolebindings",
    shortname = "awsrb",
    namespaced,
    status = "AWSRoleBindingStatus",
    derive = "PartialEq",
    doc = "Lets the pods of one service account obtain short-lived credentials for one IAM role through the credvend agent.",
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.roleArn"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.pods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new(CEL_NAME_LENGTH).message(
        "AWSRoleBinding names are at most 63 characters, because pods are labelled credvend.io/binding=<name>"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AWSRoleBindingSpec {
    /// The service account (in the binding's namespace) whose pods may use the role.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(CEL_SERVICE_ACCOUNT).message(
        "serviceAccountName must be a service account name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    ))]
    pub service_account_name: String,

    /// The IAM role to assume, e.g. `arn:aws:iam::111122223333:role/s3-reader`.
    #[schemars(length(min = 20, max = 2048))]
    #[x_kube(validation = Rule::new(CEL_ROLE_ARN).message(
        "roleArn must be an IAM role ARN such as arn:aws:iam::111122223333:role/s3-reader (or .../role/some/path/s3-reader)"
    ))]
    pub role_arn: String,

    /// How long each STS session lasts, from 15m to 12h (`1h`, `90m`, `1h30m`). Sessions
    /// shorter than 40m work but force frequent renewals; sessions longer than 1h need the
    /// role's MaxSessionDuration raised.
    #[serde(default = "default_session_duration")]
    #[schemars(length(min = 2, max = 20))]
    #[x_kube(
        validation = Rule::new(cel_format_rule()).message(
            "sessionDuration must be a duration in hours, minutes and seconds, such as 1h, 90m or 1h30m"
        ),
        validation = Rule::new(cel_range_rule()).message(
            "sessionDuration must be between 15m and 12h, the limits of STS"
        )
    )]
    pub session_duration: String,

    /// The AWS region: the agent uses its regional STS endpoint, and application containers get
    /// `AWS_REGION`/`AWS_DEFAULT_REGION` unless they set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 6, max = 32))]
    #[x_kube(validation = Rule::new(CEL_REGION).message(
        "region must be an AWS region code such as eu-west-1 or us-gov-west-1"
    ))]
    pub region: Option<String>,

    /// Overrides the STS endpoint (FIPS, VPC endpoints). Must be https; plain http is accepted
    /// only for a loopback IP literal (127.0.0.0/8 or [::1]), for a local STS double in tests,
    /// because the web identity token must never cross a network in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(CEL_STS_ENDPOINT).message(
        "stsEndpoint must be an https URL such as https://sts.eu-west-1.amazonaws.com (http only for 127.0.0.1 or [::1])"
    ))]
    pub sts_endpoint: Option<String>,

    /// The audience of the projected service-account token; it must match the audience the IAM
    /// OIDC provider accepts.
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1, max = 253))]
    pub audience: String,

    /// The STS `RoleSessionName`, which CloudTrail shows: a template over `{namespace}`,
    /// `{pod}`, `{serviceAccount}` and `{binding}` (default `{namespace}.{pod}`). It is the
    /// same across refreshes and restarts of a pod; a name over 64 characters keeps its first
    /// 55 and a hash of the whole, so distinct pods stay distinct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(CEL_TEMPLATE).message(
        "sessionName must be letters, digits, _+=,.@- and the placeholders {namespace}, {pod}, {serviceAccount} and {binding}, such as {namespace}.{pod}"
    ))]
    pub session_name: Option<String>,

    /// An inline session policy (JSON, at most 2048 characters) that narrows what the served
    /// credentials may do: the session gets the intersection of the role's policies and this.
    /// With a `chain`, it applies to the last hop, whose credentials are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2048))]
    #[x_kube(validation = Rule::new(CEL_POLICY).message(
        "sessionPolicy must be an IAM policy document in JSON, such as {\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"*\"}]}"
    ))]
    pub session_policy: Option<String>,

    /// Up to 10 managed policies that narrow the served session like `sessionPolicy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 20, max = 2048)))]
    #[x_kube(validation = Rule::new(each(CEL_POLICY_ARN)).message(
        "sessionPolicyArns must be managed policy ARNs such as arn:aws:iam::aws:policy/ReadOnlyAccess or arn:aws:iam::111122223333:policy/s3-read"
    ))]
    pub session_policy_arns: Vec<String>,

    /// AssumeRole hops after the web-identity exchange (cross-account roles, external ids,
    /// session tags, source identity), each signed with the previous session's credentials.
    /// The last hop's credentials are served. Chained sessions last at most 1h, so a longer
    /// `sessionDuration` is clamped (the `Ready` condition says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub chain: Vec<ChainHop>,
}

/// One AssumeRole hop of a binding's `chain`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(CEL_TRANSITIVE_KEYS).message(
    "transitiveTagKeys may only name keys of the same hop's sessionTags"
))]
pub struct ChainHop {
    /// The role to assume with the previous session's credentials; its trust policy must allow
    /// the previous role (`credvend trust-policy` prints it).
    #[schemars(length(min = 20, max = 2048))]
    #[x_kube(validation = Rule::new(CEL_ROLE_ARN).message(
        "chain[].roleArn must be an IAM role ARN such as arn:aws:iam::444455556666:role/cross-account"
    ))]
    pub role_arn: String,

    /// This hop's `RoleSessionName` template (default: the binding's `sessionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(CEL_TEMPLATE).message(
        "chain[].sessionName must be letters, digits, _+=,.@- and the placeholders {namespace}, {pod}, {serviceAccount} and {binding}"
    ))]
    pub session_name: Option<String>,

    /// The external id the role's trust policy requires (`sts:ExternalId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224))]
    #[x_kube(validation = Rule::new(CEL_EXTERNAL_ID).message(
        "chain[].externalId must be 2 to 1224 letters, digits and _+=,.@:/-"
    ))]
    pub external_id: Option<String>,

    /// Session tags (up to 50) for attribute-based access control; the role's trust policy
    /// must allow `sts:TagSession`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(validation = Rule::new(CEL_UNIQUE_TAG_KEYS).message(
        "chain[].sessionTags must not repeat a key (keys are case-insensitive)"
    ))]
    pub session_tags: Vec<SessionTag>,

    /// Keys of `sessionTags` that later hops inherit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 128)))]
    pub transitive_tag_keys: Vec<String>,

    /// The source identity (say, the team or the workload) CloudTrail keeps through every
    /// later hop; once set it cannot change. The role's trust policy must allow
    /// `sts:SetSourceIdentity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64))]
    #[x_kube(validation = Rule::new(CEL_SOURCE_IDENTITY).message(
        "chain[].sourceIdentity must be 2 to 64 letters, digits and _+=,.@-"
    ))]
    pub source_identity: Option<String>,

    /// An inline session policy for this hop's session (not allowed on the last hop when the
    /// binding sets `sessionPolicy`, which is the last hop's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2048))]
    #[x_kube(validation = Rule::new(CEL_POLICY).message(
        "chain[].sessionPolicy must be an IAM policy document in JSON"
    ))]
    pub session_policy: Option<String>,

    /// Managed session policies (up to 10) for this hop's session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 20, max = 2048)))]
    #[x_kube(validation = Rule::new(each(CEL_POLICY_ARN)).message(
        "chain[].sessionPolicyArns must be managed policy ARNs such as arn:aws:iam::aws:policy/ReadOnlyAccess"
    ))]
    pub session_policy_arns: Vec<String>,
}

/// A session tag of a chain hop.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionTag {
    /// 1 to 128 characters; not starting with `aws:`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(CEL_TAG_KEY).message(
        "session tag keys must not start with aws:, which STS reserves"
    ))]
    pub key: String,
    /// Up to 256 characters.
    #[schemars(length(max = 256))]
    pub value: String,
}

fn default_session_duration() -> String {
    DEFAULT_SESSION_DURATION.to_owned()
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_owned()
}

/// What the controller observed: written only by the controller, through the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AWSRoleBindingStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` says whether the binding is valid and, if not, exactly what to fix; warnings
    /// (such as a short session) appear in its message while it stays `True`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How many pods currently carry the agent for this binding.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub pods: i32,

    /// The `sub` claim of the pods' tokens: what the first role's trust policy must name
    /// (`system:serviceaccount:<namespace>:<serviceAccountName>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,

    /// The `aud` claim of the pods' tokens, which the trust policy must name too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl AWSRoleBinding {
    /// The binding's `namespace/name`, as users see it in messages.
    pub fn qualified_name(&self) -> String {
        let ns = self.metadata.namespace.as_deref().unwrap_or("");
        let name = self.metadata.name.as_deref().unwrap_or("");
        format!("{ns}/{name}")
    }
}

/// Failure to render the CRD as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the AWSRoleBinding CRD as YAML: {0}")]
pub struct CrdYamlError(#[from] serde_saphyr::SerializeError);

/// The CustomResourceDefinition as YAML, exactly what `credvend crd` prints and what
/// `crds/awsrolebinding.yaml` holds.
pub fn crd_yaml() -> Result<String, CrdYamlError> {
    Ok(serde_saphyr::to_string(&AWSRoleBinding::crd())?)
}

/// A binding that passed [`validate`], in parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// `spec.sessionDuration`, parsed.
    pub session_duration: Duration,
    /// How long the served credentials last: `session_duration`, clamped to an hour when the
    /// binding chains roles.
    pub served_duration: Duration,
    /// `spec.sessionPolicy`, compact (what the agent sends).
    pub session_policy: Option<String>,
    /// Each hop's `sessionPolicy`, compact.
    pub hop_policies: Vec<Option<String>>,
    /// Things that work but deserve the user's attention.
    pub warnings: Vec<SpecWarning>,
}

/// A reason a binding cannot be used, in the user's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `serviceAccountName` is not a DNS-1123 subdomain.
    #[error(
        "serviceAccountName {0:?} is not a valid service account name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    )]
    ServiceAccountName(String),
    /// `roleArn` is not an IAM role ARN.
    #[error(
        "roleArn {arn:?} is not an IAM role ARN ({why}); expected arn:aws:iam::<12-digit account id>:role/[path/]<name>, e.g. arn:aws:iam::111122223333:role/s3-reader"
    )]
    RoleArn {
        /// The value as written.
        arn: String,
        /// Which part is wrong.
        why: &'static str,
    },
    /// `sessionDuration` does not parse or is outside what STS accepts.
    #[error("sessionDuration {0}")]
    SessionDuration(SessionDurationError),
    /// `region` is not a region code.
    #[error("region {0:?} is not an AWS region code such as eu-west-1 or us-gov-west-1")]
    Region(String),
    /// `stsEndpoint` is not an acceptable URL.
    #[error(
        "stsEndpoint {url:?} {why}; use an https URL such as https://sts.eu-west-1.amazonaws.com (plain http only for 127.0.0.1 or [::1])"
    )]
    StsEndpoint {
        /// The value as written.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `audience` is blank or longer than the CRD allows.
    #[error(
        "audience must be 1 to 253 characters and not blank; leave it out to use sts.amazonaws.com"
    )]
    Audience,
    /// `sessionName` or a hop's is not a usable template.
    #[error("{field} {error}")]
    SessionName {
        /// `sessionName` or `chain[i].sessionName`.
        field: String,
        /// What is wrong.
        error: TemplateError,
    },
    /// A session policy or its managed ARNs are not what STS takes.
    #[error("{field} {error}")]
    SessionPolicy {
        /// `sessionPolicy`, `sessionPolicyArns` or a hop's.
        field: String,
        /// What is wrong.
        error: FieldError,
    },
    /// A hop's external id, tags or source identity are not what STS takes.
    #[error("{field} {error}")]
    Chain {
        /// `chain[i].<field>`.
        field: String,
        /// What is wrong.
        error: FieldError,
    },
    /// A hop's `roleArn` is not an IAM role ARN.
    #[error(
        "{field} {arn:?} is not an IAM role ARN ({why}); expected arn:aws:iam::<12-digit account id>:role/[path/]<name>"
    )]
    ChainRoleArn {
        /// `chain[i].roleArn`.
        field: String,
        /// The value as written.
        arn: String,
        /// Which part is wrong.
        why: &'static str,
    },
    /// The binding's `sessionPolicy` and its last hop's both apply to the served session.
    #[error(
        "sessionPolicy applies to the served session, which is the last hop's with a chain, and chain[{0}].sessionPolicy is set too; keep one of them"
    )]
    PolicyOnLastHop(usize),
    /// Two hops set different source identities.
    #[error(
        "chain[{later}].sourceIdentity {later_value:?} differs from chain[{first}].sourceIdentity {first_value:?}; a source identity cannot change once set, so set the same one or only set it once"
    )]
    SourceIdentityChanges {
        /// The first hop that sets one.
        first: usize,
        /// Its value.
        first_value: String,
        /// A later hop with another.
        later: usize,
        /// Its value.
        later_value: String,
    },
    /// More hops than credvend runs.
    #[error("chain has {0} hops; credvend runs at most 5 AssumeRole hops after the exchange")]
    TooManyHops(usize),
    /// `stsEndpoint` is well-formed but not one the operator may send tokens to.
    #[error(
        "stsEndpoint {0:?} is neither one of AWS's STS endpoints nor allowed by the operator, so credvend will not send the pods' service-account tokens there; use an AWS STS endpoint (https://sts.<region>.amazonaws.com, its FIPS or VPC endpoint) or leave stsEndpoint out, or ask the cluster administrator to allow it (chart value agent.allowedStsEndpoints)"
    )]
    StsEndpointNotAllowed(String),
}

impl SpecError {
    /// A CamelCase reason for the `Ready` condition and for events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ServiceAccountName(_) => "InvalidServiceAccountName",
            Self::RoleArn { .. } => "InvalidRoleArn",
            Self::SessionDuration(_) => "InvalidSessionDuration",
            Self::Region(_) => "InvalidRegion",
            Self::StsEndpoint { .. } => "InvalidStsEndpoint",
            Self::Audience => "InvalidAudience",
            Self::StsEndpointNotAllowed(_) => "StsEndpointNotAllowed",
            Self::SessionName { .. } => "InvalidSessionName",
            Self::SessionPolicy {
                error: FieldError::PolicyArn(_) | FieldError::TooManyPolicyArns(_),
                ..
            } => "InvalidSessionPolicyArns",
            Self::SessionPolicy { .. } => "InvalidSessionPolicy",
            Self::Chain { .. }
            | Self::ChainRoleArn { .. }
            | Self::PolicyOnLastHop(_)
            | Self::SourceIdentityChanges { .. }
            | Self::TooManyHops(_) => "InvalidChain",
        }
    }
}

/// Something that works but that the user should change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecWarning {
    /// The session is so short that the agent renews very often, or cannot keep served
    /// credentials outside the SDKs' 15-minute refresh window at all.
    #[error(
        "sessionDuration {written} is under 40m: {consequence}; use 1h (the default) or longer"
    )]
    SessionTooShort {
        /// The value as written.
        written: String,
        /// What happens, in words.
        consequence: String,
    },
    /// A chained session lasts at most an hour; the binding asks for more.
    #[error(
        "sessionDuration {0} is longer than the 1h STS allows a chained session (one obtained with another role's credentials): the served credentials last 1h"
    )]
    ChainedSessionClamped(String),
}

impl SpecWarning {
    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SessionTooShort { .. } => "SessionDurationTooShort",
            Self::ChainedSessionClamped(_) => "ChainedSessionClamped",
        }
    }
}

/// Checks a binding's spec; every problem is reported, not just the first, so that one
/// round of fixes is enough.
pub fn validate(spec: &AWSRoleBindingSpec) -> Result<Validated, Vec<SpecError>> {
    let mut errors = Vec::new();
    if !is_dns1123_subdomain(&spec.service_account_name) {
        errors.push(SpecError::ServiceAccountName(
            spec.service_account_name.clone(),
        ));
    }
    if let Err(why) = check_role_arn(&spec.role_arn) {
        errors.push(SpecError::RoleArn {
            arn: spec.role_arn.clone(),
            why,
        });
    }
    let duration = parse_session_duration(&spec.session_duration);
    if let Err(e) = &duration {
        errors.push(e.clone());
    }
    if let Some(region) = &spec.region
        && !is_region(region)
    {
        errors.push(SpecError::Region(region.clone()));
    }
    if let Some(url) = &spec.sts_endpoint
        && let Err(why) = check_sts_endpoint(url)
    {
        errors.push(SpecError::StsEndpoint {
            url: url.clone(),
            why,
        });
    }
    /// The CRD's `maxLength` for `audience`, which counts characters.
    const MAX_AUDIENCE_CHARS: usize = 253;
    if spec.audience.trim().is_empty() || spec.audience.chars().count() > MAX_AUDIENCE_CHARS {
        errors.push(SpecError::Audience);
    }
    let policies = validate_session_options(spec, &mut errors);
    match (duration, policies) {
        (Ok(session_duration), Some((session_policy, hop_policies))) if errors.is_empty() => {
            let served_duration = crate::plan::served_duration(session_duration, spec.chain.len());
            let mut warnings = session_warnings(&spec.session_duration, served_duration);
            if served_duration < session_duration {
                warnings.push(SpecWarning::ChainedSessionClamped(
                    spec.session_duration.clone(),
                ));
            }
            Ok(Validated {
                session_duration,
                served_duration,
                session_policy,
                hop_policies,
                warnings,
            })
        }
        _ => Err(errors),
    }
}

/// Compact policies of the binding and of each hop, when every optional session field is
/// usable; the problems go to `errors`.
type Policies = (Option<String>, Vec<Option<String>>);

fn validate_session_options(
    spec: &AWSRoleBindingSpec,
    errors: &mut Vec<SpecError>,
) -> Option<Policies> {
    let before = errors.len();
    let template = |field: String, template: Option<&String>, errors: &mut Vec<SpecError>| {
        if let Some(Err(error)) = template.map(|t| check_template(t)) {
            errors.push(SpecError::SessionName { field, error });
        }
    };
    let policy = |field: String, policy: Option<&String>, errors: &mut Vec<SpecError>| {
        policy.and_then(|p| match compact_policy(p) {
            Ok(compact) => Some(compact),
            Err(error) => {
                errors.push(SpecError::SessionPolicy { field, error });
                None
            }
        })
    };
    let arns = |field: String, arns: &[String], errors: &mut Vec<SpecError>| {
        if let Err(error) = check_policy_arns(arns) {
            errors.push(SpecError::SessionPolicy { field, error });
        }
    };
    template("sessionName".into(), spec.session_name.as_ref(), errors);
    let session_policy = policy("sessionPolicy".into(), spec.session_policy.as_ref(), errors);
    arns(
        "sessionPolicyArns".into(),
        &spec.session_policy_arns,
        errors,
    );
    if spec.chain.len() > MAX_CHAIN_HOPS {
        errors.push(SpecError::TooManyHops(spec.chain.len()));
    }
    let mut hop_policies = Vec::new();
    let mut source_identity: Option<(usize, &str)> = None;
    for (i, hop) in spec.chain.iter().enumerate() {
        let field = |name: &str| format!("chain[{i}].{name}");
        if let Err(why) = check_role_arn(&hop.role_arn) {
            errors.push(SpecError::ChainRoleArn {
                field: field("roleArn"),
                arn: hop.role_arn.clone(),
                why,
            });
        }
        template(field("sessionName"), hop.session_name.as_ref(), errors);
        hop_policies.push(policy(
            field("sessionPolicy"),
            hop.session_policy.as_ref(),
            errors,
        ));
        arns(field("sessionPolicyArns"), &hop.session_policy_arns, errors);
        let mut chain_error = |name: &str, result: Result<(), FieldError>| {
            if let Err(error) = result {
                errors.push(SpecError::Chain {
                    field: field(name),
                    error,
                });
            }
        };
        if let Some(id) = &hop.external_id {
            chain_error("externalId", check_external_id(id));
        }
        let tags = hop
            .session_tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()));
        chain_error("sessionTags", check_tags(tags, &hop.transitive_tag_keys));
        if let Some(id) = &hop.source_identity {
            chain_error("sourceIdentity", check_source_identity(id));
            match source_identity {
                None => source_identity = Some((i, id)),
                Some((first, first_value)) if first_value != id => {
                    errors.push(SpecError::SourceIdentityChanges {
                        first,
                        first_value: first_value.to_owned(),
                        later: i,
                        later_value: id.clone(),
                    });
                }
                Some(_) => {}
            }
        }
    }
    if spec.session_policy.is_some()
        && let Some(last) = spec.chain.len().checked_sub(1)
        && spec.chain[last].session_policy.is_some()
    {
        errors.push(SpecError::PolicyOnLastHop(last));
    }
    (errors.len() == before).then_some((session_policy, hop_policies))
}

/// [`validate`], plus the operator's policy: an explicit `stsEndpoint` must be on `allowed`.
/// The controller's `Ready` condition and the webhook both judge a binding with this, so a
/// binding the controller calls Ready is one whose pods are admitted.
pub fn validate_for(
    spec: &AWSRoleBindingSpec,
    allowed: &StsEndpointAllowlist,
) -> Result<Validated, Vec<SpecError>> {
    let not_allowed = spec
        .sts_endpoint
        .as_ref()
        .filter(|url| check_sts_endpoint(url).is_ok() && !allowed.allows(url))
        .map(|url| SpecError::StsEndpointNotAllowed(url.clone()));
    match (validate(spec), not_allowed) {
        (result, None) => result,
        (Ok(_), Some(error)) => Err(vec![error]),
        (Err(mut errors), Some(error)) => {
            errors.push(error);
            Err(errors)
        }
    }
}

/// Parses `sessionDuration` with the grammar and bounds of [`crate::duration`], which the
/// CRD's CEL rules and the agent's `--duration` flag share.
pub fn parse_session_duration(written: &str) -> Result<Duration, SpecError> {
    crate::duration::parse_session_duration(written).map_err(SpecError::SessionDuration)
}

fn session_warnings(written: &str, duration: Duration) -> Vec<SpecWarning> {
    if duration >= RECOMMENDED_MIN_SESSION_DURATION {
        return Vec::new();
    }
    // What the agent will keep in hand when it renews (its own schedule, not a copy).
    let margin = crate::agent::schedule::renewal_margin(duration);
    let consequence = if margin <= SDK_REFRESH_WINDOW {
        "credentials would be served with under 15m left, when SDKs such as botocore re-fetch on every call".to_owned()
    } else {
        format!(
            "the agent must renew every {} with only {} to spare before SDKs such as botocore re-fetch on every call",
            crate::duration::format(duration - margin),
            crate::duration::format(margin - SDK_REFRESH_WINDOW)
        )
    };
    vec![SpecWarning::SessionTooShort {
        written: written.to_owned(),
        consequence,
    }]
}

/// Kubernetes' DNS-1123 subdomain: what a ServiceAccount name must be.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label_chars)
}

fn is_dns1123_label_chars(label: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AWSRoleBindingSpec {
        AWSRoleBindingSpec {
            service_account_name: "app".into(),
            role_arn: "arn:aws:iam::111122223333:role/s3-reader".into(),
            session_duration: DEFAULT_SESSION_DURATION.into(),
            region: None,
            sts_endpoint: None,
            audience: DEFAULT_AUDIENCE.into(),
            session_name: None,
            session_policy: None,
            session_policy_arns: Vec::new(),
            chain: Vec::new(),
        }
    }

    fn reasons(spec: &AWSRoleBindingSpec) -> Vec<&'static str> {
        match validate(spec) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(SpecError::reason).collect(),
        }
    }

    #[test]
    fn accepts_the_minimal_binding_with_defaults() {
        let validated = validate(&spec()).unwrap();
        assert_eq!(validated.session_duration, Duration::from_secs(3600));
        assert!(validated.warnings.is_empty());
    }

    #[test]
    fn role_arns() {
        let cases = [
            ("arn:aws:iam::111122223333:role/s3-reader", true),
            ("arn:aws:iam::111122223333:role/team/a/s3-reader", true),
            ("arn:aws-cn:iam::111122223333:role/r", true),
            ("arn:aws-us-gov:iam::111122223333:role/r", true),
            ("arn:aws-iso-b:iam::111122223333:role/r", true),
            ("arn:aws:iam::111122223333:role/Name_+=,.@-x", true),
            ("arn:aws:iam::111122223333:role/p!#$/r", true),
            ("arn:aws:iam::11112222333:role/r", false),
            ("arn:aws:iam::1111222233334:role/r", false),
            ("arn:aws:iam::11112222333a:role/r", false),
            ("arn:aws:iam:eu-west-1:111122223333:role/r", false),
            ("arn:aws:sts::111122223333:role/r", false),
            ("arn:aws:iam::111122223333:user/r", false),
            ("arn:aws:iam::111122223333:role/", false),
            ("arn:aws:iam::111122223333:role//r", false),
            ("arn:aws:iam::111122223333:role/a b", false),
            ("arn:aws:iam::111122223333:role/r*", false),
            ("arn:AWS:iam::111122223333:role/r", false),
            ("arn:aws-:iam::111122223333:role/r", false),
            ("arn:aws:iam::111122223333", false),
            ("s3-reader", false),
            ("", false),
        ];
        for (arn, ok) in cases {
            assert_eq!(check_role_arn(arn).is_ok(), ok, "{arn}");
        }
        let name64 = "n".repeat(64);
        assert!(check_role_arn(&format!("arn:aws:iam::111122223333:role/{name64}")).is_ok());
        assert!(check_role_arn(&format!("arn:aws:iam::111122223333:role/{name64}x")).is_err());
        let path = "p".repeat(510);
        assert!(check_role_arn(&format!("arn:aws:iam::111122223333:role/{path}/r")).is_ok());
        assert!(check_role_arn(&format!("arn:aws:iam::111122223333:role/{path}p/r")).is_err());
    }

    /// The grammar and bounds are `crate::duration`'s (tested there); a binding reports any
    /// refusal of them as one reason.
    #[test]
    fn session_durations_follow_the_shared_rule() {
        let cases: [(&str, Result<u64, &str>); 4] = [
            ("1h30m", Ok(5400)),
            ("14m59s", Err("InvalidSessionDuration")),
            ("2days", Err("InvalidSessionDuration")),
            ("", Err("InvalidSessionDuration")),
        ];
        for (written, want) in cases {
            let got = parse_session_duration(written)
                .map(|d| d.as_secs())
                .map_err(|e| e.reason());
            assert_eq!(got, want, "{written:?}");
        }
    }

    #[test]
    fn short_sessions_are_valid_but_warned_about() {
        let cases = [
            ("15m", true, "under 15m left"),
            ("20m", true, "under 15m left"),
            ("30m", true, "renew every 10m with only 5m to spare"),
            ("39m", true, "to spare"),
            ("40m", false, ""),
            ("1h", false, ""),
        ];
        for (written, warned, text) in cases {
            let validated = validate(&AWSRoleBindingSpec {
                session_duration: written.into(),
                ..spec()
            })
            .unwrap();
            assert_eq!(!validated.warnings.is_empty(), warned, "{written}");
            if let Some(w) = validated.warnings.first() {
                assert_eq!(w.reason(), "SessionDurationTooShort");
                let message = w.to_string();
                assert!(message.contains(text), "{written}: {message}");
                assert!(message.contains("use 1h"), "{message}");
            }
        }
    }

    #[test]
    fn regions() {
        let cases = [
            ("eu-west-1", true),
            ("us-east-1", true),
            ("ap-southeast-2", true),
            ("us-gov-west-1", true),
            ("cn-north-1", true),
            ("us-isob-east-1", true),
            ("eusc-de-east-1", true),
            ("EU-WEST-1", false),
            ("eu-west", false),
            ("euwest1", false),
            ("eu-west-100", false),
            ("e-west-1", false),
            ("eu--1", false),
            ("", false),
        ];
        for (region, ok) in cases {
            assert_eq!(is_region(region), ok, "{region}");
        }
        // The CRD's maxLength, which the pattern alone does not bound.
        assert!(is_region(&format!("eu-{}-1", "a".repeat(27))));
        assert!(!is_region(&format!("eu-{}-1", "a".repeat(28))));
    }

    #[test]
    fn sts_endpoints() {
        let long_url = format!("https://sts.example.com/{}", "p".repeat(2025));
        let cases = [
            ("https://sts.eu-west-1.amazonaws.com", Ok(())),
            ("https://sts-fips.us-east-1.amazonaws.com/", Ok(())),
            (
                "https://vpce-0abc.sts.eu-west-1.vpce.amazonaws.com:443",
                Ok(()),
            ),
            ("http://127.0.0.1:5000", Ok(())),
            ("http://127.1.2.3:5000/", Ok(())),
            ("http://[::1]:5000", Ok(())),
            ("http://localhost:5000", Err("InvalidStsEndpoint")),
            (
                "http://sts.eu-west-1.amazonaws.com",
                Err("InvalidStsEndpoint"),
            ),
            ("http://127.0.0.1.nip.io", Err("InvalidStsEndpoint")),
            ("ftp://sts.example.com", Err("InvalidStsEndpoint")),
            ("sts.eu-west-1.amazonaws.com", Err("InvalidStsEndpoint")),
            ("https://user:pw@sts.example.com", Err("InvalidStsEndpoint")),
            ("https://sts.example.com/?a=b", Err("InvalidStsEndpoint")),
            ("", Err("InvalidStsEndpoint")),
            (&long_url, Err("InvalidStsEndpoint")),
            ("HTTP://127.0.0.1:5000", Err("InvalidStsEndpoint")),
            ("http://[0:0:0:0:0:0:0:1]:5000", Err("InvalidStsEndpoint")),
        ];
        for (url, want) in cases {
            let got = validate(&AWSRoleBindingSpec {
                sts_endpoint: Some(url.into()),
                ..spec()
            })
            .map(|_| ())
            .map_err(|e| e[0].reason());
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn an_sts_endpoint_outside_the_operators_list_is_refused_with_the_fix() {
        let aws = StsEndpointAllowlist::aws();
        let with_endpoint = |url: &str| AWSRoleBindingSpec {
            sts_endpoint: Some(url.into()),
            ..spec()
        };
        assert!(
            validate_for(&spec(), &aws).is_ok(),
            "no endpoint: the region's"
        );
        assert!(validate_for(&with_endpoint("https://sts.eu-west-1.amazonaws.com"), &aws).is_ok());
        let errors = validate_for(&with_endpoint("https://tokens.example.com"), &aws).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reason(), "StsEndpointNotAllowed");
        let message = errors[0].to_string();
        for words in [
            "https://tokens.example.com",
            "agent.allowedStsEndpoints",
            "sts.<region>.amazonaws.com",
        ] {
            assert!(message.contains(words), "{words:?} in {message}");
        }
        // A malformed endpoint is reported once, as malformed.
        let errors = validate_for(&with_endpoint("ftp://x"), &aws).unwrap_err();
        assert_eq!(
            errors.iter().map(SpecError::reason).collect::<Vec<_>>(),
            ["InvalidStsEndpoint"]
        );
        // Other problems and the policy are reported together.
        let mut both = with_endpoint("http://127.0.0.1:5000");
        both.audience = String::new();
        let reasons: Vec<_> = validate_for(&both, &aws)
            .unwrap_err()
            .iter()
            .map(SpecError::reason)
            .collect();
        assert_eq!(reasons, ["InvalidAudience", "StsEndpointNotAllowed"]);
        let tests = StsEndpointAllowlist::aws_and(&["http://127.0.0.1:5000".into()]).unwrap();
        assert!(validate_for(&with_endpoint("http://127.0.0.1:5000"), &tests).is_ok());
    }

    #[test]
    fn service_account_names() {
        let cases = [
            ("app", true),
            ("my-app.v2", true),
            ("a", true),
            ("0x", true),
            ("App", false),
            ("-app", false),
            ("app-", false),
            ("app..x", false),
            ("app_x", false),
            ("", false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_dns1123_subdomain(name), ok, "{name}");
        }
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn reports_every_problem_at_once_in_the_users_terms() {
        let bad = AWSRoleBindingSpec {
            service_account_name: "App".into(),
            role_arn: "arn:aws:iam::1234:role/x".into(),
            session_duration: "13h".into(),
            region: Some("Ireland".into()),
            sts_endpoint: Some("http://sts.amazonaws.com".into()),
            audience: " ".into(),
            ..spec()
        };
        assert_eq!(
            reasons(&bad),
            [
                "InvalidServiceAccountName",
                "InvalidRoleArn",
                "InvalidSessionDuration",
                "InvalidRegion",
                "InvalidStsEndpoint",
                "InvalidAudience"
            ]
        );
        let errors = validate(&bad).unwrap_err();
        let arn = errors[1].to_string();
        assert!(arn.contains("12 digits"), "{arn}");
        assert!(
            arn.contains("arn:aws:iam::111122223333:role/s3-reader"),
            "{arn}"
        );
        assert!(errors[2].to_string().contains("15m..12h"));
    }

    #[test]
    fn audiences_are_bounded_like_the_crd() {
        let with = |audience: String| AWSRoleBindingSpec { audience, ..spec() };
        assert!(validate(&with("é".repeat(253))).is_ok());
        assert_eq!(reasons(&with("a".repeat(254))), ["InvalidAudience"]);
    }

    #[test]
    fn defaults_fill_in_when_fields_are_omitted() {
        let parsed: AWSRoleBindingSpec = serde_json::from_value(serde_json::json!({
            "serviceAccountName": "app",
            "roleArn": "arn:aws:iam::111122223333:role/s3-reader",
        }))
        .unwrap();
        assert_eq!(parsed, spec());
        let written = serde_json::to_value(&parsed).unwrap();
        assert!(written.get("region").is_none());
    }

    #[test]
    fn crd_has_the_agreed_names_columns_and_rules() {
        let crd = AWSRoleBinding::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.plural, "awsrolebindings");
        assert_eq!(crd.spec.names.short_names, Some(vec!["awsrb".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Role", "Ready", "Pods", "Age"]);
        let yaml = crd_yaml().unwrap();
        for rule in [
            CEL_ROLE_ARN,
            cel_range_rule().as_str(),
            CEL_REGION,
            CEL_STS_ENDPOINT,
        ] {
            assert!(yaml.contains("x-kubernetes-validations"), "{yaml}");
            let json = serde_json::to_string(&crd).unwrap();
            assert!(
                json.contains(&serde_json::to_string(rule).unwrap()[1..]),
                "{rule}"
            );
        }
        assert!(yaml.contains("x-kubernetes-list-type: map"), "{yaml}");
    }

    /// The committed CRD must be what the code generates; regenerate it with
    /// `cargo run -- crd > crds/awsrolebinding.yaml`.
    #[test]
    fn committed_crd_matches_the_generated_one() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/awsrolebinding.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml().unwrap(),
            "crds/awsrolebinding.yaml is out of date with src/crd.rs; run `cargo run -- crd > crds/awsrolebinding.yaml`"
        );
    }

    fn hop(role: &str) -> ChainHop {
        serde_json::from_value(serde_json::json!({ "roleArn": role })).unwrap()
    }

    #[test]
    fn session_options_are_checked_with_the_field_named() {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
        let mut good = spec();
        good.session_name = Some("{namespace}.{pod}".into());
        good.session_policy = Some(policy.into());
        good.session_policy_arns = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()];
        assert!(validate(&good).is_ok());

        let mut bad = spec();
        bad.session_name = Some("{podname}".into());
        bad.session_policy = Some("{not json".into());
        bad.session_policy_arns = vec!["ReadOnlyAccess".into()];
        let mut second = hop("arn:aws:iam::444455556666:role/x");
        second.external_id = Some("x".into());
        second.source_identity = Some("team-a".into());
        let mut third = hop("arn:aws:iam::4444:role/y");
        third.source_identity = Some("team-b".into());
        third.transitive_tag_keys = vec!["team".into()];
        bad.chain = vec![second, third];
        let errors = validate(&bad).unwrap_err();
        let got: Vec<(&str, String)> = errors.iter().map(|e| (e.reason(), e.to_string())).collect();
        let want = [
            ("InvalidSessionName", "sessionName uses {podname}"),
            ("InvalidSessionPolicy", "sessionPolicy is not JSON"),
            (
                "InvalidSessionPolicyArns",
                "sessionPolicyArns \"ReadOnlyAccess\"",
            ),
            ("InvalidChain", "chain[0].externalId must be 2 to 1224"),
            (
                "InvalidChain",
                "chain[1].roleArn \"arn:aws:iam::4444:role/y\"",
            ),
            ("InvalidChain", "chain[1].sessionTags names \"team\""),
            (
                "InvalidChain",
                "chain[1].sourceIdentity \"team-b\" differs from chain[0]",
            ),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for ((reason, message), (want_reason, words)) in got.iter().zip(want) {
            assert_eq!(*reason, want_reason, "{message}");
            assert!(message.contains(words), "{words:?} in {message}");
        }
    }

    #[test]
    fn chained_sessions_are_clamped_to_an_hour_with_a_warning() {
        let mut chained = spec();
        chained.session_duration = "3h".into();
        chained.chain = vec![hop("arn:aws:iam::444455556666:role/x")];
        let validated = validate(&chained).unwrap();
        assert_eq!(validated.served_duration, Duration::from_secs(3600));
        assert_eq!(validated.session_duration, Duration::from_secs(3 * 3600));
        assert_eq!(
            validated
                .warnings
                .iter()
                .map(SpecWarning::reason)
                .collect::<Vec<_>>(),
            ["ChainedSessionClamped"]
        );
        chained.session_duration = "1h".into();
        assert!(validate(&chained).unwrap().warnings.is_empty());
        // The binding's policy is the last hop's; the last hop cannot have its own as well.
        chained.session_policy =
            Some(r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#.into());
        chained.chain[0].session_policy = chained.session_policy.clone();
        let errors = validate(&chained).unwrap_err();
        assert_eq!(errors[0].reason(), "InvalidChain");
        assert!(errors[0].to_string().contains("keep one of them"));
        let six: Vec<ChainHop> = (0..6)
            .map(|_| hop("arn:aws:iam::444455556666:role/x"))
            .collect();
        let errors = validate(&AWSRoleBindingSpec {
            chain: six,
            ..spec()
        })
        .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "chain has 6 hops; credvend runs at most 5 AssumeRole hops after the exchange"
        );
    }
}
