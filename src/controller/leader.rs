//! Leader election: of all operator replicas, only the holder of a Lease writes statuses and
//! publishes Events, so two replicas never write the same status or publish the same Event.
//! Every replica keeps its caches and serves the webhook regardless.
//!
//! kube-lease-manager holds the Lease with server-side apply and renews it `grace` seconds
//! before it expires. Losing it (another replica took over after we missed renewals) stops the
//! leader's work at once; shutting down releases the Lease so a follower takes over without
//! waiting for it to expire. The lease manager retries failed renewals without reporting them,
//! so a leader also reads the Lease every few seconds and steps down when another replica holds
//! it, or when it cannot tell for longer than a Lease lasts. [`campaign`] never gives up: when
//! the Lease cannot be created or held (the API server is unreachable, its RBAC is missing), it
//! counts the failure, logs it and campaigns again with backoff, so a replica never stays up
//! without a controller, nor believes it leads when it does not.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Error;
use super::metrics::ControllerMetrics;

/// How long a Lease is valid after its last renewal; a follower takes over at most this long
/// after a leader vanishes without releasing it.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// The leader renews this long before expiry; also the clock skew tolerated between nodes.
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// How long shutdown waits for the Lease to be released before giving up (it then expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before campaigning again after a failure; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between campaigns: a fixed RBAC or API server is noticed within this.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Campaigns for the Lease `namespace/lease_name` as `identity` until `shutdown` completes,
/// with `leading` true exactly while this replica holds it (and `credvend_leader` 1). A failed
/// campaign is logged, counted in `credvend_leader_election_errors_total` and retried after 1 s,
/// 2 s, 4 s … up to 30 s; a campaign that led for a while starts the backoff afresh.
pub async fn campaign(
    client: Client,
    namespace: String,
    lease_name: String,
    identity: String,
    leading: watch::Sender<bool>,
    metrics: ControllerMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let leading = Arc::new(leading);
    let mut retry = FIRST_RETRY;
    tokio::pin!(shutdown);
    loop {
        let lead = {
            let (leading, metrics) = (leading.clone(), metrics.clone());
            move || {
                let guard = Leading::start(leading.clone(), metrics.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                }
            }
        };
        let started = tokio::time::Instant::now();
        let result = run_when_leader(
            client.clone(),
            namespace.clone(),
            lease_name.clone(),
            identity.clone(),
            &mut shutdown,
            lead,
        )
        .await;
        let Err(error) = result else {
            return;
        };
        metrics.leader_election_errors.inc();
        if started.elapsed() > MAX_RETRY {
            retry = FIRST_RETRY;
        }
        tracing::error!(%error, retry_in = ?retry, "leader election failed; this replica does not reconcile until it campaigns again");
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = retry.saturating_mul(2).min(MAX_RETRY);
    }
}

/// Held while this replica leads: `leading` is true and `credvend_leader` is 1 from its start
/// until it is dropped (the leader's task aborted on losing the Lease or on shutdown).
struct Leading {
    leading: Arc<watch::Sender<bool>>,
    metrics: ControllerMetrics,
}

impl Leading {
    fn start(leading: Arc<watch::Sender<bool>>, metrics: ControllerMetrics) -> Self {
        leading.send_replace(true);
        metrics.leader.set(1);
        Leading { leading, metrics }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.leading.send_replace(false);
        self.metrics.leader.set(0);
    }
}

/// Runs `lead()` while this replica (`identity`, unique per replica, e.g. the pod name) holds
/// the Lease `namespace/lease_name`, until `shutdown` completes.
///
/// `lead` is called each time leadership is gained; its future is spawned and aborted when
/// leadership is lost or on shutdown (reconciles are idempotent, so stopping mid-way is safe).
/// On shutdown the Lease is released. Returns an error if the Lease cannot be created, if the
/// lease manager stops, or if the leader's future ends by itself; [`campaign`] then campaigns
/// again rather than keep the replica running without a controller.
pub async fn run_when_leader<F, Fut>(
    client: Client,
    namespace: impl Into<String>,
    lease_name: impl Into<String>,
    identity: impl Into<String>,
    shutdown: impl Future<Output = ()>,
    mut lead: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (namespace, lease_name, identity) = (namespace.into(), lease_name.into(), identity.into());
    let lease = format!("{namespace}/{lease_name}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let confirm = Confirmation::new(leases, lease_name.clone(), identity.clone());
    let manager = LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await
        .map_err(|source| Error::Lease {
            lease: lease.clone(),
            source,
        })?;
    let (mut is_leader, manager_task) = manager.watch().await;
    tracing::info!(%lease, %identity, "waiting for leadership");

    let mut leader: Option<JoinHandle<()>> = None;
    let mut confirm = confirm;
    tokio::pin!(shutdown);
    let result = loop {
        let leading = *is_leader.borrow_and_update();
        match (leading, leader.is_some()) {
            (true, false) => {
                tracing::info!(%lease, %identity, "became leader; starting the controller");
                confirm.last_confirmed = tokio::time::Instant::now();
                leader = Some(tokio::spawn(lead()));
            }
            (false, true) => {
                tracing::warn!(%lease, %identity, "lost leadership; stopping the controller");
                stop(leader.take()).await;
            }
            _ => {}
        }
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            changed = is_leader.changed() => {
                if changed.is_err() {
                    break Err(Error::LeaseLost(lease.clone()));
                }
            }
            () = finished(&mut leader) => break Err(Error::LeaderTaskEnded(lease.clone())),
            // The lease manager retries failed renewals without ever reporting them, so while
            // leading, this replica checks the Lease itself and steps down when it is not
            // the holder any more, or cannot tell for longer than a Lease lasts.
            held = confirm.next(), if leader.is_some() => {
                if !held {
                    tracing::warn!(%lease, %identity, "cannot confirm holding the Lease; stepping down");
                    break Err(Error::LeaseLost(lease.clone()));
                }
            }
        }
    };

    stop(leader.take()).await;
    // Dropping the last receiver makes the lease manager's task release the Lease and end.
    drop(is_leader);
    match tokio::time::timeout(RELEASE_TIMEOUT, manager_task).await {
        Ok(Ok(Ok(_))) => tracing::info!(%lease, "released the Lease"),
        Ok(Ok(Err(source))) => {
            let error = Error::Lease {
                lease: lease.clone(),
                source,
            };
            tracing::warn!(%error, "releasing the Lease");
            if result.is_ok() {
                return Err(error);
            }
        }
        Ok(Err(join)) => tracing::warn!(%lease, error = %join, "lease manager task failed"),
        Err(_) => tracing::warn!(%lease, "the Lease was not released in time; it will expire"),
    }
    result
}

/// How often a leader reads the Lease to confirm it still holds it.
const CONFIRM_EVERY: Duration = Duration::from_secs(LEASE_GRACE_SECONDS);

/// A leader's own check of the Lease.
struct Confirmation {
    leases: Api<Lease>,
    name: String,
    identity: String,
    last_confirmed: tokio::time::Instant,
}

impl Confirmation {
    fn new(leases: Api<Lease>, name: String, identity: String) -> Self {
        Confirmation {
            leases,
            name,
            identity,
            last_confirmed: tokio::time::Instant::now(),
        }
    }

    /// Waits [`CONFIRM_EVERY`], reads the Lease, and says whether this replica may go on
    /// leading: it is the holder, or a failed read is not yet older than a Lease's duration.
    async fn next(&mut self) -> bool {
        tokio::time::sleep(CONFIRM_EVERY).await;
        match self.leases.get(&self.name).await {
            Ok(lease) => {
                let holder = lease.spec.and_then(|s| s.holder_identity);
                if holder.as_deref() == Some(self.identity.as_str()) {
                    self.last_confirmed = tokio::time::Instant::now();
                    true
                } else {
                    false
                }
            }
            Err(error) => {
                tracing::warn!(%error, lease = %self.name, "reading the Lease");
                self.last_confirmed.elapsed() < Duration::from_secs(LEASE_DURATION_SECONDS)
            }
        }
    }
}

/// Aborts the leader's task and waits until it is gone, so no reconcile of ours overlaps with
/// the next leader's.
async fn stop(task: Option<JoinHandle<()>>) {
    if let Some(task) = task {
        task.abort();
        let _ = task.await;
    }
}

/// Completes when the leader's task ends by itself; pending while there is none.
async fn finished(task: &mut Option<JoinHandle<()>>) {
    let Some(handle) = task else {
        return std::future::pending().await;
    };
    let ended = handle.await;
    // Polling a finished JoinHandle again would panic; `stop` must not see it.
    *task = None;
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "the controller panicked");
    }
}
