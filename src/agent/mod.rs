//! `credvend agent`: the per-pod sidecar that turns the pod's identity into AWS credentials.
//!
//! Start-up validates the flags, prepares the authorization token file, restores the
//! credentials a previous run of the sidecar left in the cache file, and binds both listeners
//! before anything else, so mistakes fail fast with a clear message. Then three tasks run until
//! SIGTERM: the refresher (the only STS caller), the loopback credentials endpoint, and the
//! metrics/health server. Readiness is true only while valid credentials are cached, which is
//! what holds back the pod's app containers (the sidecar's startupProbe).
//!
//! This file is only that wiring. Modules: `args` (the flags), `config` (`AgentConfig`, the
//! validated settings), `token` (projected token), `auth` (endpoint token), `sts` (the
//! exchange and its production adapter), `schedule` (when to renew, pure), `refresh` (the
//! loop), `cache` (what is served), `persist` (its copy for restarts), `credentials` (the
//! served document), `endpoint` (request → response, pure), `handlers` (the two listeners),
//! `metrics`. Serving itself is the crate's shared [`server`](crate::server).

pub mod args;
pub mod auth;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod endpoint;
pub mod handlers;
pub mod metrics;
pub mod persist;
pub mod refresh;
pub mod schedule;
pub mod sts;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use self::cache::{Cached, CredentialCache};
use self::config::{AgentConfig, ConfigError};
use self::metrics::{AgentMetrics, unix_seconds};
use self::persist::CredentialStore;
use self::refresh::Refresher;

pub use self::args::AgentArgs as Args;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    AuthToken(#[from] auth::AuthTokenError),
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot install the signal handler")]
    Signal(#[source] std::io::Error),
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), AgentError> {
    let cfg = AgentConfig::from_args(&args, |k| std::env::var(k).ok())?;
    let (auth, reused) = auth::load_or_create(&cfg.auth_token_file)?;
    let metrics = AgentMetrics::new()?;
    let cache = Arc::new(CredentialCache::default());
    let creds_listener = crate::server::bind(cfg.listen, "credentials endpoint").await?;
    let metrics_listener = crate::server::bind(cfg.metrics_listen, "metrics").await?;
    tracing::info!(
        role_arn = %cfg.exchange.role_arn,
        session_name = %cfg.exchange.session_name,
        duration = %crate::duration::format(cfg.exchange.duration),
        region = %cfg.region,
        sts_endpoint = cfg.sts_endpoint.as_deref().unwrap_or("regional default"),
        listen = %cfg.listen,
        metrics_listen = %cfg.metrics_listen,
        auth_token_file = %cfg.auth_token_file.display(),
        auth_token_reused = reused,
        cache_file = %cfg.cache_file.display(),
        "credvend agent starting"
    );
    // Formats the endpoint token's Debug (redacted) on purpose: the tests run at debug level
    // and check that the token never reaches the log this way.
    tracing::debug!(auth_token = ?auth, "endpoint authorization token ready");

    let store = CredentialStore::open(
        &cfg.cache_file,
        &cfg.exchange.role_arn,
        &cfg.exchange.session_name,
    );
    let restored = restore(store.as_ref(), &cfg, &cache, &metrics);
    let first_refresh = schedule::first_refresh_delay(
        cfg.exchange.duration,
        restored,
        refresh::os_unit() * 2.0 - 1.0,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let client = sts::client(cfg.region.clone(), cfg.sts_endpoint.clone()).await;
    let refresher = Refresher {
        exchanger: sts::StsExchanger {
            client,
            request: cfg.exchange.clone(),
        },
        requested: cfg.exchange.duration,
        cache: cache.clone(),
        metrics: metrics.clone(),
        store,
        unit: refresh::os_unit,
    };
    let refresher = tokio::spawn(refresher.run(first_refresh, stop_rx.clone()));
    let server_metrics = crate::server::ServerMetrics::register(&metrics.registry)?;
    let creds_server = tokio::spawn(handlers::serve_sync(
        creds_listener,
        crate::server::Port {
            name: "credentials",
            limits: crate::server::Limits::agent_credentials(),
            tls: None,
            metrics: server_metrics.clone(),
        },
        handlers::credentials(auth, cache.clone(), metrics.clone()),
        crate::server::stopped(stop_rx.clone()),
    ));
    let health_server = tokio::spawn(handlers::serve_sync(
        metrics_listener,
        crate::server::Port {
            name: "health",
            limits: crate::server::Limits::health(handlers::HEALTH_CONNECTIONS),
            tls: None,
            metrics: server_metrics,
        },
        handlers::health(cache, metrics),
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

/// Puts the credentials of the cache file, when usable, in the cache; returns their remaining
/// lifetime. Anything unusable is logged (never its contents), counted and left for the next
/// successful refresh to overwrite.
fn restore(
    store: Option<&CredentialStore>,
    cfg: &AgentConfig,
    cache: &CredentialCache,
    metrics: &AgentMetrics,
) -> Option<Duration> {
    let Some(store) = store else {
        tracing::warn!(
            cache_file = %cfg.cache_file.display(),
            "the cache file's directory does not exist: credentials are kept in memory only, and a restarted agent waits for STS"
        );
        return None;
    };
    let now = SystemTime::now();
    match store.load(now) {
        Ok(Some(restored)) => {
            let remaining = restored.credentials.remaining(now);
            metrics
                .credentials_expiration
                .set(unix_seconds(restored.credentials.expiration));
            metrics
                .last_refresh_success
                .set(unix_seconds(restored.obtained_at));
            cache.store(Cached::new(&restored.credentials));
            tracing::info!(
                expires_in = %humantime::format_duration(Duration::from_secs(remaining.as_secs())),
                "serving the credentials a previous run of the agent obtained"
            );
            Some(remaining)
        }
        Ok(None) => None,
        Err(err) => {
            metrics
                .cache_file_errors
                .with_label_values(&[err.reason()])
                .inc();
            tracing::warn!(error = %err, "ignoring the credentials cache file");
            None
        }
    }
}
