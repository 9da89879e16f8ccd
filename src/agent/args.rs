//! The agent's command line: the flags of `credvend agent` and nothing else.
//!
//! Every flag can also come from an environment variable `CREDVEND_<FLAG>`, which is how the
//! webhook could configure the sidecar without long argument lists. Only syntax is checked
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
    /// IAM role to assume, e.g. arn:aws:iam::111122223333:role/s3-reader.
    #[arg(long, env = "CREDVEND_ROLE_ARN")]
    pub role_arn: String,

    /// Projected service-account token; re-read on every exchange because the kubelet rotates it.
    #[arg(
        long,
        env = "CREDVEND_TOKEN_FILE",
        default_value = "/var/run/secrets/credvend.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// RoleSessionName shown in CloudTrail. Default: derived from POD_NAMESPACE and POD_NAME.
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
