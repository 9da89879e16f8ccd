//! `credvend agent`: the per-pod sidecar that turns the pod's identity into AWS credentials.
//!
//! Start-up validates the flags, prepares the authorization token file and binds both
//! listeners before anything else, so mistakes fail fast with a clear message. Then three tasks
//! run until SIGTERM: the refresher (the only STS caller), the loopback credentials endpoint,
//! and the metrics/health server. Readiness is true only while valid credentials are cached,
//! which is what holds back the pod's app containers (the sidecar's startupProbe).
//!
//! Modules: `config` (flags and checks), `token` (projected token), `auth` (endpoint token),
//! `sts` (the exchange), `schedule` (when to renew, pure), `refresh` (the loop), `cache`,
//! `credentials` (the served document), `endpoint` (request → response, pure), `metrics`.
//! Serving itself is the crate's shared [`server`](crate::server).

pub mod auth;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod endpoint;
pub mod metrics;
pub mod refresh;
pub mod schedule;
pub mod sts;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::{Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::auth::AuthToken;
use self::cache::CredentialCache;
use self::config::{AgentArgs, ConfigError};
use self::metrics::AgentMetrics;
use self::sts::{ExchangeError, ExchangeRequest, Exchanged};

pub use self::config::AgentArgs as Args;

/// Region used when neither the flag nor the environment names one: the global endpoint's.
const FALLBACK_REGION: &str = "us-east-1";

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    AuthToken(#[from] auth::AuthTokenError),
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// The agent's settings after validation.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub exchange: ExchangeRequest,
    pub region: String,
    pub sts_endpoint: Option<String>,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub auth_token_file: std::path::PathBuf,
}

impl AgentConfig {
    /// Validates `args`, reading the pod's name, namespace and region from the environment
    /// values passed in (so this stays testable without touching the process environment).
    pub fn from_args(
        args: &AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        config::validate_role_arn(&args.role_arn)?;
        config::validate_duration(args.duration)?;
        config::validate_listen(args.listen)?;
        let session_name = config::session_name(
            args.session_name.as_deref(),
            env("POD_NAMESPACE").as_deref(),
            env("POD_NAME").as_deref(),
        )?;
        let region = args
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| FALLBACK_REGION.to_owned());
        config::validate_region(&region)?;
        if let Some(url) = &args.sts_endpoint {
            config::validate_sts_endpoint(url)?;
        }
        Ok(AgentConfig {
            exchange: ExchangeRequest {
                role_arn: args.role_arn.clone(),
                session_name,
                duration: args.duration,
                token_file: args.token_file.clone(),
            },
            region,
            sts_endpoint: args.sts_endpoint.clone(),
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            auth_token_file: args.auth_token_file.clone(),
        })
    }
}

/// The production exchanger: STS through the AWS SDK.
struct StsExchanger {
    client: aws_sdk_sts::Client,
    request: ExchangeRequest,
}

impl refresh::Exchange for StsExchanger {
    async fn exchange(&self) -> Result<Exchanged, ExchangeError> {
        sts::exchange(&self.client, &self.request).await
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let cfg = AgentConfig::from_args(&args, |k| std::env::var(k).ok())?;
    let (auth, reused) = auth::load_or_create(&cfg.auth_token_file)?;
    let metrics = AgentMetrics::new()?;
    let cache = Arc::new(CredentialCache::default());
    let creds_listener = crate::server::bind(cfg.listen, "credentials endpoint").await?;
    let metrics_listener = crate::server::bind(cfg.metrics_listen, "metrics").await?;
    tracing::info!(
        role_arn = %cfg.exchange.role_arn,
        session_name = %cfg.exchange.session_name,
        duration = %humantime::format_duration(cfg.exchange.duration),
        region = %cfg.region,
        sts_endpoint = cfg.sts_endpoint.as_deref().unwrap_or("regional default"),
        listen = %cfg.listen,
        metrics_listen = %cfg.metrics_listen,
        auth_token_file = %cfg.auth_token_file.display(),
        auth_token_reused = reused,
        "credvend agent starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let client = sts::client(cfg.region.clone(), cfg.sts_endpoint.clone()).await;
    let refresher = tokio::spawn(refresh::run(
        StsExchanger {
            client,
            request: cfg.exchange.clone(),
        },
        cfg.exchange.duration,
        cache.clone(),
        metrics.clone(),
        refresh::os_unit,
        stop_rx.clone(),
    ));
    let creds_server = tokio::spawn(serve_sync(
        creds_listener,
        credentials_handler(auth, cache.clone(), metrics.clone()),
        crate::server::stopped(stop_rx.clone()),
    ));
    let health_server = tokio::spawn(serve_sync(
        metrics_listener,
        health_handler(cache, metrics),
        crate::server::stopped(stop_rx),
    ));

    crate::server::termination_signal()
        .await
        .map_err(AgentError::Signal)?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for task in [refresher, creds_server, health_server] {
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "a task ended abnormally during shutdown");
        }
    }
    Ok(())
}

/// Answers one request from its head: both agent listeners answer from memory, synchronously,
/// and never read a request body.
type Handler = Arc<dyn Fn(&::http::request::Parts) -> Response<Full<Bytes>> + Send + Sync>;

async fn serve_sync(listener: TcpListener, handler: Handler, shutdown: impl Future<Output = ()>) {
    let service = move |req: ::http::Request<hyper::body::Incoming>| {
        let (parts, _body) = req.into_parts();
        let resp = handler(&parts);
        std::future::ready(resp)
    };
    crate::server::serve(listener, None, service, shutdown).await;
}

fn credentials_handler(
    auth: AuthToken,
    cache: Arc<CredentialCache>,
    metrics: AgentMetrics,
) -> Handler {
    Arc::new(move |parts| {
        let req = endpoint::EndpointRequest::from_parts(parts);
        let resp = endpoint::respond(req, &auth, &cache, SystemTime::now());
        metrics
            .endpoint_requests
            .with_label_values(&[resp.status().as_str()])
            .inc();
        resp
    })
}

fn health_handler(cache: Arc<CredentialCache>, metrics: AgentMetrics) -> Handler {
    Arc::new(move |parts| match parts.uri.path() {
        "/metrics" => crate::server::metrics_page(&metrics.registry),
        "/healthz/live" => crate::server::plain(StatusCode::OK, "ok"),
        "/healthz/ready" => match cache.valid_at(SystemTime::now()) {
            Some(_) => crate::server::plain(StatusCode::OK, "ready"),
            None => crate::server::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no valid credentials cached",
            ),
        },
        _ => crate::server::plain(StatusCode::NOT_FOUND, "not found"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(argv: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_follow_the_pod_environment() {
        let args = parse(&["--role-arn", "arn:aws:iam::111122223333:role/r"]);
        let cfg = AgentConfig::from_args(
            &args,
            env(&[
                ("POD_NAMESPACE", "team-a"),
                ("POD_NAME", "web-0"),
                ("AWS_REGION", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.exchange.session_name, "team-a.web-0");
        assert_eq!(cfg.region, "eu-west-1");
        assert_eq!(cfg.exchange.duration.as_secs(), 3600);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9911");
        assert_eq!(cfg.metrics_listen.to_string(), "0.0.0.0:9912");
        assert_eq!(
            cfg.auth_token_file.to_str(),
            Some("/var/run/credvend/auth/token")
        );
        assert_eq!(
            cfg.exchange.token_file.to_str(),
            Some("/var/run/secrets/credvend.io/serviceaccount/token")
        );
    }

    #[test]
    fn refuses_a_non_loopback_listen_address() {
        let args = parse(&[
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--session-name",
            "s",
            "--listen",
            "0.0.0.0:9911",
        ]);
        let err = AgentConfig::from_args(&args, env(&[])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::ListenNotLoopback("0.0.0.0:9911".parse().unwrap())
        );
    }

    #[test]
    fn falls_back_to_the_global_region_and_checks_flags() {
        let args = parse(&[
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--session-name",
            "s",
        ]);
        assert_eq!(
            AgentConfig::from_args(&args, env(&[])).unwrap().region,
            "us-east-1"
        );
        let bad = parse(&["--role-arn", "nope", "--session-name", "s"]);
        assert!(matches!(
            AgentConfig::from_args(&bad, env(&[])),
            Err(ConfigError::RoleArn { .. })
        ));
        let short = parse(&[
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--session-name",
            "s",
            "--duration",
            "5m",
        ]);
        assert!(matches!(
            AgentConfig::from_args(&short, env(&[])),
            Err(ConfigError::Duration(_))
        ));
    }
}
