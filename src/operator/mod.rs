//! `credvend operator`: the AWSRoleBinding controller and the mutating webhook in one process.
//!
//! Every replica watches bindings into an in-memory store and serves the webhook from it;
//! only the replica holding the Lease writes statuses and emits events (without leader
//! election, the one replica does). A replica is ready once its bindings cache is listed,
//! whichever mode it runs in; a failed leader election is retried, never left failed. The webhook's
//! TLS certificate is made and rotated in-process (or read from cert-manager's files). Flags
//! name everything the chart configures; each also reads `CREDVEND_<FLAG>`.

pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::metrics::OperatorMetrics;
use crate::aws::StsEndpointAllowlist;
use crate::controller;
use crate::inject::{AgentResources, InjectSettings, Injector};
use crate::telemetry::LogFormat;
use crate::webhook::admission::{Admission, StoreAndApi};
use crate::webhook::tls::{self, TlsMode, TlsSettings};

/// How the webhook gets its serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsModeArg {
    /// Make a CA and certificate, keep them in a Secret, patch the webhook's caBundle.
    SelfSigned,
    /// Serve the PEM files given by --tls-cert-file/--tls-key-file (cert-manager), reloading on change.
    Files,
}

/// Flags of `credvend operator`.
#[derive(Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Namespace the operator runs in (its TLS Secret and Lease live there). Default: POD_NAMESPACE.
    #[arg(long, env = "CREDVEND_NAMESPACE")]
    pub namespace: Option<String>,

    /// Identity in the leader election. Default: POD_NAME, else the host name.
    #[arg(long, env = "CREDVEND_POD_NAME")]
    pub pod_name: Option<String>,

    /// HTTPS address of the webhook (POST /mutate).
    #[arg(long, env = "CREDVEND_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub webhook_listen: SocketAddr,

    /// Address of /metrics, /healthz/live and /healthz/ready.
    #[arg(long, env = "CREDVEND_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// MutatingWebhookConfiguration whose caBundle the self-signed TLS mode keeps current.
    #[arg(long, env = "CREDVEND_WEBHOOK_CONFIG_NAME", default_value = "credvend")]
    pub webhook_config_name: String,

    /// Service in front of the webhook; its DNS names go into the certificate.
    #[arg(
        long,
        env = "CREDVEND_WEBHOOK_SERVICE",
        default_value = "credvend-webhook"
    )]
    pub webhook_service: String,

    /// More certificate names or IP literals, comma-separated (e.g. 127.0.0.1 when the API
    /// server reaches the webhook through a `url:` client config).
    #[arg(long, env = "CREDVEND_WEBHOOK_EXTRA_SAN", value_delimiter = ',')]
    pub webhook_extra_san: Vec<String>,

    /// Where the serving certificate comes from.
    #[arg(long, env = "CREDVEND_TLS_MODE", value_enum, default_value_t = TlsModeArg::SelfSigned)]
    pub tls_mode: TlsModeArg,

    /// Secret holding the self-signed CA and certificate.
    #[arg(
        long,
        env = "CREDVEND_TLS_SECRET_NAME",
        default_value = "credvend-webhook-tls"
    )]
    pub tls_secret_name: String,

    /// Certificate file for --tls-mode files.
    #[arg(
        long,
        env = "CREDVEND_TLS_CERT_FILE",
        default_value = "/var/run/credvend/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,

    /// Private key file for --tls-mode files.
    #[arg(
        long,
        env = "CREDVEND_TLS_KEY_FILE",
        default_value = "/var/run/credvend/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,

    /// Reconcile only while holding the Lease (run several replicas safely).
    #[arg(long, env = "CREDVEND_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "CREDVEND_LEASE_NAME",
        default_value = "credvend-operator-leader"
    )]
    pub lease_name: String,

    /// Image of the injected agent (the credvend image).
    #[arg(long, env = "CREDVEND_AGENT_IMAGE", default_value = crate::inject::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,

    /// imagePullPolicy of the injected agent.
    #[arg(
        long,
        env = "CREDVEND_AGENT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub agent_image_pull_policy: String,

    /// CPU request of the injected agent.
    #[arg(long, env = "CREDVEND_AGENT_CPU_REQUEST", default_value = "10m")]
    pub agent_cpu_request: String,

    /// Memory request of the injected agent.
    #[arg(long, env = "CREDVEND_AGENT_MEMORY_REQUEST", default_value = "32Mi")]
    pub agent_memory_request: String,

    /// Memory limit of the injected agent.
    #[arg(long, env = "CREDVEND_AGENT_MEMORY_LIMIT", default_value = "64Mi")]
    pub agent_memory_limit: String,

    /// CPU limit of the injected agent; unset by default, because throttling would slow
    /// answers that SDKs expect within one second.
    #[arg(long, env = "CREDVEND_AGENT_CPU_LIMIT")]
    pub agent_cpu_limit: Option<String>,

    /// Lifetime of the projected service-account token (Kubernetes' minimum is 600).
    #[arg(long, env = "CREDVEND_TOKEN_EXPIRATION_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(i64).range(600..=86400))]
    pub token_expiration_seconds: i64,

    /// Region for agents whose binding names none.
    #[arg(long, env = "CREDVEND_DEFAULT_REGION")]
    pub default_region: Option<String>,

    /// STS endpoint for agents whose binding names none.
    #[arg(long, env = "CREDVEND_DEFAULT_STS_ENDPOINT")]
    pub default_sts_endpoint: Option<String>,

    /// On SIGTERM, how long to keep answering with readiness failing before the listeners
    /// close, so that the Service's endpoints and the API server's pooled connections move
    /// to other replicas first; in-flight requests then get up to 10 s to finish. The
    /// chart's terminationGracePeriodSeconds covers both.
    #[arg(long, env = "CREDVEND_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// STS endpoints a binding's stsEndpoint may name besides AWS's own (global, regional,
    /// FIPS, dual-stack and VPC endpoints of every partition), comma-separated:
    /// `https://host[:port]`, a `*` in a host label standing for letters, digits and '-'
    /// (`https://sts.*.example.internal`), or `http://<loopback IP>:<port>`.
    #[arg(long, env = "CREDVEND_ALLOWED_STS_ENDPOINTS", value_delimiter = ',')]
    pub allowed_sts_endpoints: Vec<String>,

    /// Log format.
    #[arg(long, env = "CREDVEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl OperatorArgs {
    /// The STS endpoints bindings may name: AWS's and `--allowed-sts-endpoints`.
    pub fn sts_endpoint_allowlist(&self) -> Result<StsEndpointAllowlist, OperatorError> {
        StsEndpointAllowlist::aws_and(&self.allowed_sts_endpoints)
            .map_err(OperatorError::AllowedStsEndpoints)
    }

    /// What every injected agent gets, from the flags.
    pub fn inject_settings(&self) -> InjectSettings {
        let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
        InjectSettings {
            agent_image: self.agent_image.clone(),
            image_pull_policy: Some(self.agent_image_pull_policy.clone()).filter(|p| !p.is_empty()),
            resources: AgentResources {
                cpu_request: Some(self.agent_cpu_request.clone()).filter(|v| !v.is_empty()),
                memory_request: Some(self.agent_memory_request.clone()).filter(|v| !v.is_empty()),
                cpu_limit: nonempty(&self.agent_cpu_limit),
                memory_limit: Some(self.agent_memory_limit.clone()).filter(|v| !v.is_empty()),
            },
            token_expiration_seconds: self.token_expiration_seconds,
            default_region: nonempty(&self.default_region),
            default_sts_endpoint: nonempty(&self.default_sts_endpoint),
            allowed_sts_endpoints: self
                .sts_endpoint_allowlist()
                .unwrap_or_else(|_| StsEndpointAllowlist::aws()),
            ..InjectSettings::default()
        }
    }
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "no namespace: set --namespace or POD_NAMESPACE (the chart sets it from the downward API)"
    )]
    NoNamespace,
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("--allowed-sts-endpoints: {0}")]
    AllowedStsEndpoints(String),
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let namespace = args
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|n| !n.is_empty())
        .ok_or(OperatorError::NoNamespace)?;
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "credvend-operator".to_owned());
    // Checked before anything starts, so a typo in the chart value fails the rollout.
    let allowed_sts_endpoints = args.sts_endpoint_allowlist()?;
    let metrics = OperatorMetrics::new()?;
    let server_metrics = crate::server::ServerMetrics::register(&metrics.registry)?;
    let client = kube::Client::try_default().await?;
    let webhook_listener = crate::server::bind(args.webhook_listen, "webhook").await?;
    let metrics_listener = crate::server::bind(args.metrics_listen, "metrics").await?;

    let (stores, watches) = controller::watches(client.clone());
    let mode = match args.tls_mode {
        TlsModeArg::SelfSigned => TlsMode::SelfSigned,
        TlsModeArg::Files => TlsMode::Files {
            cert: args.tls_cert_file.clone(),
            key: args.tls_key_file.clone(),
        },
    };
    let tls_settings = TlsSettings {
        namespace: namespace.clone(),
        service_name: args.webhook_service.clone(),
        secret_name: args.tls_secret_name.clone(),
        webhook_config_name: args.webhook_config_name.clone(),
        extra_sans: args.webhook_extra_san.clone(),
        check_interval: tls::DEFAULT_CHECK_INTERVAL,
        file_poll_interval: tls::DEFAULT_FILE_POLL_INTERVAL,
    };
    let (resolver, tls_task) =
        tls::start(client.clone(), mode, tls_settings, metrics.tls.clone()).await?;
    let server_config = Arc::new(tls::server_config(resolver)?);
    tracing::info!(
        namespace,
        identity,
        webhook = %args.webhook_listen,
        metrics = %args.metrics_listen,
        leader_election = args.leader_election,
        "credvend operator starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let leaving = crate::server::Leaving::new();
    let admission = Arc::new(Admission {
        bindings: StoreAndApi {
            by_namespace: stores.by_namespace.clone(),
            client: client.clone(),
        },
        injector: Injector::new(InjectSettings {
            allowed_sts_endpoints: allowed_sts_endpoints.clone(),
            ..args.inject_settings()
        }),
        metrics: metrics.admission.clone(),
    });
    let webhook = tokio::spawn(crate::webhook::serve(
        webhook_listener,
        server_config,
        admission,
        server_metrics.clone(),
        leaving.clone(),
        crate::server::stopped(stop_rx.clone()),
    ));
    let health = tokio::spawn(serve_health(
        metrics_listener,
        stores.clone(),
        metrics.clone(),
        server_metrics,
        leaving.clone(),
        crate::server::stopped(stop_rx.clone()),
    ));
    // The controller runs on every replica: it drives the watches the webhook's cache is filled
    // from. Leadership only decides whether it writes.
    let (leading_tx, leading) = watch::channel(!args.leader_election);
    let controller_task = tokio::spawn(controller::run(
        client.clone(),
        metrics.controller.clone(),
        stores.clone(),
        watches,
        leading,
        allowed_sts_endpoints,
    ));
    let reconciler = if args.leader_election {
        tokio::spawn(controller::campaign(
            client.clone(),
            namespace.clone(),
            args.lease_name.clone(),
            identity,
            leading_tx,
            metrics.controller.clone(),
            crate::server::stopped(stop_rx.clone()),
        ))
    } else {
        metrics.controller.leader.set(1);
        // Keeps `leading` true for the process's life.
        tokio::spawn(async move {
            crate::server::stopped(stop_rx.clone()).await;
            drop(leading_tx);
        })
    };

    crate::server::termination_signal()
        .await
        .map_err(OperatorError::Signal)?;
    // Leave as a replica behind a Service must: unready first, still answering while the
    // endpoints and pooled connections move away, then stop accepting and drain.
    leaving.start();
    tracing::info!(
        delay = %humantime::format_duration(args.shutdown_delay),
        "shutting down: not ready, answering until the delay ends, then draining"
    );
    tokio::select! {
        () = tokio::time::sleep(args.shutdown_delay) => {}
        // A second signal (Ctrl-C twice) skips the wait.
        _ = crate::server::termination_signal() => {}
    }
    tracing::info!("closing the listeners; draining in-flight requests");
    let _ = stop_tx.send(true);
    for task in [webhook, health, reconciler] {
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "a task ended abnormally during shutdown");
        }
    }
    tls_task.abort();
    controller_task.abort();
    Ok(())
}

/// Connections of the operator's health port: the kubelet's probes and a scraper.
const HEALTH_CONNECTIONS: usize = 64;

/// `/metrics`, `/healthz/live`, and `/healthz/ready` (ready once the bindings cache has its
/// first full list, so the webhook does not decide from an empty store, and no longer once
/// the process is leaving; leadership plays no part, because every replica serves the webhook).
async fn serve_health(
    listener: TcpListener,
    stores: controller::Stores,
    metrics: OperatorMetrics,
    server_metrics: crate::server::ServerMetrics,
    leaving: crate::server::Leaving,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let readiness = leaving.clone();
    let service = move |req: http::Request<bytes::Bytes>| {
        let resp = match req.uri().path() {
            "/healthz/ready" if readiness.is_set() => {
                crate::server::plain(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
            }
            "/metrics" => {
                controller::record_binding_metrics(&stores.bindings, &metrics.controller);
                crate::server::metrics_page(&metrics.registry)
            }
            "/healthz/live" => crate::server::plain(StatusCode::OK, "ok"),
            "/healthz/ready" if stores.bindings_synced() => {
                crate::server::plain(StatusCode::OK, "ready")
            }
            "/healthz/ready" => crate::server::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: bindings cache not synced yet",
            ),
            _ => crate::server::plain(StatusCode::NOT_FOUND, "not found"),
        };
        std::future::ready(resp)
    };
    let port = crate::server::Port {
        name: "health",
        limits: crate::server::Limits::health(HEALTH_CONNECTIONS),
        tls: None,
        metrics: server_metrics,
    };
    crate::server::serve(listener, port, leaving, service, shutdown).await;
}
