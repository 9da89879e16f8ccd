//! `credvend trust-policy`: reads the binding and the cluster's issuer from the API server and
//! prints each role's trust policy (the I/O around [`super::trust_policies`]).
//!
//! The issuer comes from the API server's OIDC discovery document
//! (`/.well-known/openid-configuration`), the same document IAM reads when the OIDC provider is
//! registered, so the printed provider ARN is the one IAM knows. `--issuer` overrides it for
//! clusters whose discovery endpoint the caller cannot read.

use std::io::Write;

use clap::Args;
use kube::{Api, Client};

use super::{RoleTrust, TrustPolicyError, trust_policies};
use crate::crd::AWSRoleBinding;

/// Flags of `credvend trust-policy`.
#[derive(Args, Clone, Debug)]
pub struct TrustPolicyArgs {
    /// The binding's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The AWSRoleBinding.
    pub binding: String,
    /// The service-account issuer (https URL), instead of reading the API server's OIDC
    /// discovery document.
    #[arg(long)]
    pub issuer: Option<String>,
}

/// Why the policies could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum TrustPolicyCommandError {
    #[error("cannot reach the Kubernetes API server (kubeconfig or in-cluster configuration)")]
    Client(#[source] kube::Error),
    #[error("cannot read AWSRoleBinding {namespace}/{name}")]
    Binding {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot read the API server's OIDC discovery document (/.well-known/openid-configuration); pass the cluster's issuer with --issuer"
    )]
    Discovery(#[source] kube::Error),
    #[error("the API server's OIDC discovery document has no issuer; pass it with --issuer")]
    NoIssuer,
    #[error(transparent)]
    Policy(#[from] TrustPolicyError),
    #[error("cannot write the policies")]
    Write(#[source] std::io::Error),
}

/// Prints the trust policy of every role of the binding.
pub async fn run(args: TrustPolicyArgs) -> Result<(), TrustPolicyCommandError> {
    let client = Client::try_default()
        .await
        .map_err(TrustPolicyCommandError::Client)?;
    let api: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &args.namespace);
    let binding =
        api.get(&args.binding)
            .await
            .map_err(|source| TrustPolicyCommandError::Binding {
                namespace: args.namespace.clone(),
                name: args.binding.clone(),
                source,
            })?;
    let issuer = match args.issuer {
        Some(issuer) => issuer,
        None => discovered_issuer(&client).await?,
    };
    let policies = trust_policies(&binding.spec, &args.namespace, &issuer)?;
    let mut out = std::io::stdout().lock();
    out.write_all(render(&policies).as_bytes())
        .map_err(TrustPolicyCommandError::Write)
}

async fn discovered_issuer(client: &Client) -> Result<String, TrustPolicyCommandError> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| TrustPolicyCommandError::Discovery(kube::Error::HttpError(e)))?;
    let document: serde_json::Value = client
        .request(request)
        .await
        .map_err(TrustPolicyCommandError::Discovery)?;
    document
        .get("issuer")
        .and_then(|i| i.as_str())
        .map(str::to_owned)
        .ok_or(TrustPolicyCommandError::NoIssuer)
}

/// One block per role: a `#` line naming the role and what assumes it, then the policy as
/// pretty JSON, ready for `aws iam update-assume-role-policy --policy-document`.
pub fn render(policies: &[RoleTrust]) -> String {
    let mut text = String::new();
    for (i, trust) in policies.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let what = match trust.step {
            0 => "assumed with the pods' service-account token (AssumeRoleWithWebIdentity)"
                .to_owned(),
            n => format!("chain hop {n}, assumed with the previous role's session (AssumeRole)"),
        };
        text.push_str(&format!("# {}: {what}\n", trust.role_arn));
        text.push_str(&serde_json::to_string_pretty(&trust.policy).unwrap_or_default());
        text.push('\n');
    }
    text
}
