//! What the operator decides for every injected pod, as opposed to what each pod or binding
//! decides. The operator fills [`InjectSettings`] from its flags; [`Default`] holds the values
//! the chart ships with.

use crate::aws::StsEndpointAllowlist;

/// The agent image used when the operator is not told otherwise: the image of this very build.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("credvend:", env!("CARGO_PKG_VERSION"));
/// The loopback port of the credentials endpoint unless a pod sets `credvend.io/port`.
pub const DEFAULT_PORT: u16 = 9911;
/// The port of the agent's `/metrics` and `/healthz/*`.
pub const DEFAULT_METRICS_PORT: u16 = 9912;

/// Operator-wide settings for the injected agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// Image of the agent container (the `credvend` image; the agent is its `agent` subcommand).
    pub agent_image: String,
    /// `imagePullPolicy` of the agent; `None` leaves the Kubernetes default.
    pub image_pull_policy: Option<String>,
    /// Requests and limits of the agent container.
    pub resources: AgentResources,
    /// Lifetime requested for the projected service-account token. The kubelet refreshes it at
    /// 80% of that, and the agent re-reads it on every exchange. Kubernetes' minimum is 600.
    pub token_expiration_seconds: i64,
    /// Port of the agent's metrics and health endpoints (all interfaces, for the kubelet's probes
    /// and Prometheus). Pods cannot change it.
    pub metrics_port: u16,
    /// Loopback port of the credentials endpoint unless the pod sets `credvend.io/port`.
    pub default_port: u16,
    /// Region for the agent's STS client when the binding has none.
    pub default_region: Option<String>,
    /// STS endpoint for the agent when the binding has none.
    pub default_sts_endpoint: Option<String>,
    /// `sizeLimit` of the in-memory volume that holds the authorization token (a few bytes).
    pub auth_volume_size_limit: String,
    /// UID of the agent. `None` lets the runtime or a policy pick one (OpenShift assigns UIDs
    /// per namespace and refuses fixed ones); `runAsNonRoot` stays set either way.
    pub run_as_user: Option<i64>,
    /// STS endpoints a binding's `stsEndpoint` may name (AWS's own, plus what the operator's
    /// administrator allows); a binding naming another is refused, because the agent would send
    /// the pod's service-account token there.
    pub allowed_sts_endpoints: StsEndpointAllowlist,
    /// How many one-second startup probes the agent gets to obtain its first credentials
    /// before the kubelet restarts it. App containers start only after it succeeds.
    pub startup_failure_threshold: i32,
}

/// Kubernetes quantities for the agent container; `None` leaves a value unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentResources {
    /// `requests.cpu`.
    pub cpu_request: Option<String>,
    /// `requests.memory`.
    pub memory_request: Option<String>,
    /// `limits.cpu`. Unset by default: throttling would slow answers that SDKs expect within 1 s.
    pub cpu_limit: Option<String>,
    /// `limits.memory`.
    pub memory_limit: Option<String>,
}

impl Default for AgentResources {
    fn default() -> Self {
        Self {
            cpu_request: Some("10m".to_owned()),
            memory_request: Some("32Mi".to_owned()),
            cpu_limit: None,
            memory_limit: Some("64Mi".to_owned()),
        }
    }
}

impl Default for InjectSettings {
    fn default() -> Self {
        Self {
            agent_image: DEFAULT_AGENT_IMAGE.to_owned(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            resources: AgentResources::default(),
            token_expiration_seconds: 3600,
            metrics_port: DEFAULT_METRICS_PORT,
            default_port: DEFAULT_PORT,
            default_region: None,
            default_sts_endpoint: None,
            auth_volume_size_limit: "1Mi".to_owned(),
            run_as_user: Some(65532),
            startup_failure_threshold: 120,
            allowed_sts_endpoints: StsEndpointAllowlist::aws(),
        }
    }
}
