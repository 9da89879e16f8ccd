//! The agent's command line: the flags of `credvend agent` and nothing else.
//!
//! Every flag can also come from an environment variable `CREDVEND_<FLAG>`. A binding is
//! given either by the single-binding flags (`--role-arn` and the flags after it), which is
//! how a person runs the agent by hand, or by one `--binding` JSON plan per binding, which is
//! what the webhook writes (it carries chains and session policies). Only syntax is checked
//! here (clap parses addresses, paths and the session duration); [`config`](super::config)
//! turns the flags into an [`AgentConfig`](super::config::AgentConfig) it can trust.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::telemetry::LogFormat;

/// Flags of `credvend agent`.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// IAM role to assume, e.g. arn:aws:iam::111122223333:role/s3-reader (one binding given by
    /// flags; see --binding for several).
    #[arg(long, env = "CREDVEND_ROLE_ARN", required_unless_present = "bindings")]
    pub role_arn: Option<String>,

    /// Name of the binding the flags describe: the `binding` label of the metrics.
    #[arg(long, env = "CREDVEND_BINDING_NAME", default_value = "default")]
    pub binding_name: String,

    /// One binding as a JSON plan (name, roleArn, duration, sessionName, tokenFile, audience,
    /// and optionally region, stsEndpoint, policy, policyArns, chain). Repeat it for each
    /// binding of the pod: the first is served at /v1/credentials, each at
    /// /v1/credentials/<name>. Written by the webhook; replaces --role-arn and its flags.
    #[arg(
        long = "binding",
        value_name = "JSON",
        conflicts_with_all = ["role_arn", "session_name", "region", "sts_endpoint"]
    )]
    pub bindings: Vec<String>,

    /// Projected service-account token; re-read on every exchange because the kubelet rotates it.
    #[arg(
        long,
        env = "CREDVEND_TOKEN_FILE",
        default_value = "/var/run/secrets/credvend.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// RoleSessionName shown in CloudTrail: a template over {namespace}, {pod},
    /// {serviceAccount} and {binding} (from POD_NAMESPACE, POD_NAME, POD_SERVICE_ACCOUNT and
    /// --binding-name). Default: {namespace}.{pod}.
    #[arg(long, env = "CREDVEND_SESSION_NAME")]
    pub session_name: Option<String>,

    /// Session length requested from STS, 15m to 12h, written like a binding's sessionDuration
    /// (1h, 90m, 1h30m). Keep it at 40m or more so that served credentials always outlive the
    /// SDKs' 15-minute refresh window.
    #[arg(long, env = "CREDVEND_DURATION", default_value = "1h", value_parser = crate::duration::parse_session_duration)]
    pub duration: Duration,

    /// AWS region, for the regional STS endpoint. Default: AWS_REGION or AWS_DEFAULT_REGION,
    /// else us-east-1.
    #[arg(long, env = "CREDVEND_REGION")]
    pub region: Option<String>,

    /// STS endpoint override (FIPS, VPC endpoints, tests). Default: the regional endpoint.
    #[arg(long, env = "CREDVEND_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,

    /// Address of the credentials endpoint. Must be a loopback address: anything else would
    /// hand the pod's credentials to whoever can reach the pod.
    #[arg(long, env = "CREDVEND_LISTEN", default_value = "127.0.0.1:9911")]
    pub listen: SocketAddr,

    /// Address of /metrics, /healthz/live and /healthz/ready (never credentials).
    #[arg(long, env = "CREDVEND_METRICS_LISTEN", default_value = "0.0.0.0:9912")]
    pub metrics_listen: SocketAddr,

    /// File holding the token apps must send in the Authorization header. Written by the agent
    /// (reused if valid, so a restarted sidecar keeps serving apps that read it only once).
    #[arg(
        long,
        env = "CREDVEND_AUTH_TOKEN_FILE",
        default_value = "/var/run/credvend/auth/token"
    )]
    pub auth_token_file: PathBuf,

    /// Where the agent keeps a copy of the credentials it serves, so that a restarted sidecar
    /// serves them at once instead of waiting for STS. Belongs in an in-memory volume that only
    /// the agent mounts (the webhook adds one); when its directory does not exist, the copy is
    /// kept in process memory only.
    #[arg(
        long,
        env = "CREDVEND_CACHE_FILE",
        default_value = "/var/run/credvend/cache/credentials.json"
    )]
    pub cache_file: PathBuf,

    /// Log format.
    #[arg(long, env = "CREDVEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
