//! `credvend agent`: the per-pod sidecar that turns the pod's identity into AWS credentials.
//!
//! Start-up validates the flags, prepares the authorization token file, restores the
//! credentials a previous run of the sidecar left in the cache file, and binds both listeners
//! before anything else, so mistakes fail fast with a clear message. Then three tasks run until
//! SIGTERM: one refresher per binding of the pod (the only STS callers), the loopback
//! credentials endpoint, and the metrics/health server. Readiness is true only while every
//! binding has valid credentials cached, which is what holds back the pod's app containers
//! (the sidecar's startupProbe).
//!
//! This file is only that wiring. Modules: `args` (the flags), `config` (`AgentConfig`, the
//! validated settings), `token` (projected token), `auth` (endpoint token), `sts` (the STS
//! client and its error codes), `exchange` (the exchange and the chain of AssumeRole hops),
//! `exchange_process` (each refresh's calls in a child process), `exchange_job` (what goes
//! through its pipes), `exchange_child` (the child, `credvend agent-exchange`),
//! `schedule` (when to renew, pure), `refresh` (the
//! loop), `cache` (what is served), `persist` (its copy for restarts), `credentials` (the
//! served document), `endpoint` (request → response, pure), `handlers` (the two listeners),
//! `metrics`, `resident` (giving back the pages of start-up). Serving itself is the crate's
//! shared [`server`](crate::server).

pub mod args;
pub mod auth;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod endpoint;
pub mod exchange;
pub mod exchange_child;
pub mod exchange_job;
pub mod exchange_process;
pub mod handlers;
pub mod metrics;
pub mod persist;
pub mod refresh;
pub mod resident;
pub mod schedule;
pub mod sts;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use self::cache::{Cached, Caches, CredentialCache};
use self::config::{AgentConfig, BindingConfig, ConfigError};
use self::metrics::{AgentMetrics, BindingMetrics, unix_seconds};
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
    #[error("cannot find the agent's own executable, which runs its STS exchanges")]
    Executable(#[source] std::io::Error),
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), AgentError> {
    let cfg = AgentConfig::from_args(&args, |k| std::env::var(k).ok())?;
    let (auth, reused) = auth::load_or_create(&cfg.auth_token_file)?;
    let metrics = AgentMetrics::new()?;
    let creds_listener = crate::server::bind(cfg.listen, "credentials endpoint").await?;
    let metrics_listener = crate::server::bind(cfg.metrics_listen, "metrics").await?;
    tracing::info!(
        bindings = cfg.bindings.len(),
        listen = %cfg.listen,
        metrics_listen = %cfg.metrics_listen,
        auth_token_file = %cfg.auth_token_file.display(),
        auth_token_reused = reused,
        "credvend agent starting"
    );
    // Formats the endpoint token's Debug (redacted) on purpose: the tests run at debug level
    // and check that the token never reaches the log this way.
    tracing::debug!(auth_token = ?auth, "endpoint authorization token ready");

    let (stop_tx, stop_rx) = watch::channel(false);
    let refreshed = Arc::new(Notify::new());
    let mut entries = Vec::with_capacity(cfg.bindings.len());
    let mut tasks = Vec::with_capacity(cfg.bindings.len() + 2);
    for binding in cfg.bindings {
        log_binding(&binding);
        let program = exchange_process::Program::this_binary(
            args.log_format,
            binding.exchange.hops.len() + 1,
        )
        .map_err(AgentError::Executable)?;
        let cache = Arc::new(CredentialCache::default());
        let binding_metrics = metrics.for_binding(&binding.name);
        let served = binding.exchange.served();
        let served_call = exchange::Call {
            step: binding.exchange.hops.len(),
            role_arn: served.role_arn.clone(),
        };
        let store =
            CredentialStore::open(&binding.cache_file, &served.role_arn, &served.session_name);
        let restored = restore(store.as_ref(), &binding, &cache, &binding_metrics);
        let first_refresh = schedule::first_refresh_delay(
            binding.requested,
            restored,
            refresh::os_unit() * 2.0 - 1.0,
        );
        let refresher = Refresher {
            binding: binding.name.clone(),
            exchanger: exchange_process::ProcessExchanger {
                program,
                region: binding.region,
                sts_endpoint: binding.sts_endpoint,
                request: binding.exchange,
            },
            requested: binding.requested,
            cache: cache.clone(),
            metrics: binding_metrics,
            store,
            unit: refresh::os_unit,
            served_call,
            refreshed: refreshed.clone(),
        };
        tasks.push(tokio::spawn(refresher.run(first_refresh, stop_rx.clone())));
        entries.push((binding.name, cache));
    }
    let caches = Arc::new(Caches::new(entries).ok_or(ConfigError::NoBinding)?);
    tasks.push(tokio::spawn(give_back_start_up_pages(
        refreshed,
        caches.clone(),
        stop_rx.clone(),
    )));
    let server_metrics = crate::server::ServerMetrics::register(&metrics.registry)?;
    tasks.push(tokio::spawn(handlers::serve_sync(
        creds_listener,
        crate::server::Port {
            name: "credentials",
            limits: crate::server::Limits::agent_credentials(),
            tls: None,
            metrics: server_metrics.clone(),
        },
        handlers::credentials(auth, caches.clone(), metrics.clone()),
        crate::server::stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(handlers::serve_sync(
        metrics_listener,
        crate::server::Port {
            name: "health",
            limits: crate::server::Limits::health(handlers::HEALTH_CONNECTIONS),
            tls: None,
            metrics: server_metrics,
        },
        handlers::health(caches, metrics),
        crate::server::stopped(stop_rx),
    )));

    crate::server::termination_signal()
        .await
        .map_err(AgentError::Signal)?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for task in tasks {
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "a task ended abnormally during shutdown");
        }
    }
    Ok(())
}

/// Whenever every binding has credentials (at start, when restored from the cache files, and
/// after each successful refresh), gives back the pages of start-up: see [`resident`].
async fn give_back_start_up_pages(
    refreshed: Arc<Notify>,
    caches: Arc<Caches>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if caches.unavailable_at(SystemTime::now()).is_empty() {
            let shed = resident::shed();
            tracing::debug!(
                mappings = shed.mappings,
                resident_kib = shed.resident_kib,
                refused = shed.refused,
                "gave back the pages of start-up"
            );
        }
        tokio::select! {
            () = refreshed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// One line per binding: what it asks STS for, without anything secret.
fn log_binding(binding: &BindingConfig) {
    let chain: Vec<&str> = binding
        .exchange
        .hops
        .iter()
        .map(|h| h.step.role_arn.as_str())
        .collect();
    let served = binding.exchange.served();
    tracing::info!(
        binding = %binding.name,
        role_arn = %binding.exchange.first.role_arn,
        chain = ?chain,
        session_name = %served.session_name,
        duration = %crate::duration::format(binding.requested),
        region = %binding.region,
        sts_endpoint = binding.sts_endpoint.as_deref().unwrap_or("regional default"),
        session_policy = served.policy.is_some(),
        session_policy_arns = served.policy_arns.len(),
        cache_file = %binding.cache_file.display(),
        "serving binding"
    );
}

/// Puts the credentials of the cache file, when usable, in the cache; returns their remaining
/// lifetime. Anything unusable is logged (never its contents), counted and left for the next
/// successful refresh to overwrite.
fn restore(
    store: Option<&CredentialStore>,
    binding: &BindingConfig,
    cache: &CredentialCache,
    metrics: &BindingMetrics,
) -> Option<Duration> {
    let Some(store) = store else {
        tracing::warn!(
            binding = %binding.name,
            cache_file = %binding.cache_file.display(),
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
                binding = %binding.name,
                expires_in = %humantime::format_duration(Duration::from_secs(remaining.as_secs())),
                "serving the credentials a previous run of the agent obtained"
            );
            Some(remaining)
        }
        Ok(None) => None,
        Err(err) => {
            metrics.cache_file_error(err.reason());
            tracing::warn!(binding = %binding.name, error = %err, "ignoring the credentials cache file");
            None
        }
    }
}
