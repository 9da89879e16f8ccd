//! The AWSRoleBinding controller: it validates every binding, writes what it found into the
//! binding's status (`Ready` condition, `observedGeneration`, and how many pods use it), and
//! publishes an Event when a binding's state changes.
//!
//! Start here: [`watches`] sets up the two watches every replica needs — all bindings, which
//! the webhook decides from, and the metadata of the pods the webhook labelled
//! `credvend.io/binding` — and [`run`] drives them as a kube-runtime `Controller` over the
//! bindings store, so one watch feeds the webhook's cache and the controller (the module doc
//! of `stores` says why not through kube-runtime's shared-store subscription).
//! What the status says is decided by the pure functions of [`status`]; [`reconcile`] only
//! reads caches, patches and publishes.
//!
//! The controller runs on every replica for the process's whole life, because it is what keeps
//! the caches current; only the replica that leads (see [`campaign`]) writes. A follower's
//! reconciles return at once, and gaining leadership reconciles every binding. Stopping the
//! controller on losing the Lease would stop the webhook's cache with it.

mod leader;
mod metrics;
mod namespaces;
mod pods;
mod reconcile;
pub mod status;
mod stores;

pub use leader::{LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS, campaign, run_when_leader};
pub use metrics::ControllerMetrics;
pub use namespaces::BindingsByNamespace;
pub use pods::PodIndex;
pub use reconcile::{Context, REQUEUE_AFTER, error_policy, reconcile};
pub use stores::{Stores, Watches, watches};

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::{self, Config};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use crate::aws::StsEndpointAllowlist;
use crate::crd::AWSRoleBinding;

/// Field manager of the status the controller applies, and the `reportingController` of its
/// Events.
pub const FIELD_MANAGER: &str = "credvend-operator";

/// Reconciles of one binding that arrive within this window are merged, so a burst of pod
/// creations for one binding costs one status patch.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles are cheap (no API reads), but each may patch; bound the parallel patches.
const CONCURRENCY: u16 = 4;

/// What went wrong in the controller, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binding has no namespace (it is namespaced, so only a broken cache could do this).
    #[error("AWSRoleBinding {0:?} has no namespace")]
    MissingNamespace(String),
    /// Writing the status failed.
    #[error("cannot write the status of AWSRoleBinding {binding}: {source}")]
    PatchStatus {
        /// `namespace/name`.
        binding: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Publishing an Event failed (Events are best effort: the status is written anyway).
    #[error("cannot publish an Event on AWSRoleBinding {binding}: {source}")]
    PublishEvent {
        /// `namespace/name`.
        binding: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Creating, renewing or releasing the leader-election Lease failed.
    #[error("leader election with Lease {lease} failed: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What the lease manager reported.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The lease manager's task ended while the controller still relied on it.
    #[error("leader election with Lease {0} stopped unexpectedly")]
    LeaseLost(String),
    /// The leader's work ended (or panicked) by itself while this replica held the Lease.
    #[error("the controller stopped on its own while this replica held Lease {0}")]
    LeaderTaskEnded(String),
}

impl Error {
    /// The `reason` label of `credvend_reconcile_errors_total`: stable, low-cardinality.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingNamespace(_) => "missing_namespace",
            Self::PatchStatus { .. } => "patch_status",
            Self::PublishEvent { .. } => "publish_event",
            Self::Lease { .. } => "lease",
            Self::LeaseLost(_) => "lease_lost",
            Self::LeaderTaskEnded(_) => "leader_task_ended",
        }
    }
}

/// Drives `watches` and reconciles bindings while `leading` is true, until the future is
/// dropped. Run it on every replica (see the module documentation): the webhook's cache is
/// filled by it. `allowed` is the operator's STS endpoint policy, which the `Ready` condition
/// reports against.
pub async fn run(
    client: Client,
    metrics: ControllerMetrics,
    stores: Stores,
    watches: Watches,
    leading: watch::Receiver<bool>,
    allowed: StsEndpointAllowlist,
) {
    let (bindings_synced, pods_synced) = stores.synced_receivers();
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, Reporter::from(FIELD_MANAGER)),
        metrics,
        stores.clone(),
        leading.clone(),
        allowed,
    ));
    let config = Config::default()
        .debounce(DEBOUNCE)
        .concurrency(CONCURRENCY);
    // Every trigger arrives through `reconcile_on`: the watches' events name the bindings.
    let results = Controller::for_stream(
        futures::stream::pending::<Result<AWSRoleBinding, kube::runtime::watcher::Error>>(),
        stores.bindings.clone(),
    )
    .with_config(config)
    .reconcile_on(watches.bindings)
    .reconcile_on(watches.pods)
    .reconcile_all_on(became_active([bindings_synced, pods_synced, leading]))
    .run(reconcile, error_policy, context);
    tracing::info!("AWSRoleBinding controller started");
    results
        .for_each(|result| async move {
            match result {
                Ok((binding, _)) => tracing::debug!(%binding, "reconciled"),
                // A binding deleted between its watch event and its turn: nothing to do.
                Err(controller::Error::ObjectNotFound(binding)) => {
                    tracing::debug!(%binding, "binding is gone")
                }
                // Already logged and counted by `error_policy`.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => tracing::warn!(%error, "controller"),
            }
        })
        .await;
    tracing::info!("AWSRoleBinding controller stopped");
}

/// Yields once each time all of `flags` become true together (caches listed and this replica
/// leading): the moment to reconcile every binding. A flag whose sender is gone keeps its last
/// value.
fn became_active<const N: usize>(
    flags: [watch::Receiver<bool>; N],
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((flags, false), |(mut flags, mut was_active)| async move {
        loop {
            let active = flags.iter_mut().all(|f| *f.borrow_and_update());
            if active && !was_active {
                return Some(((), (flags, true)));
            }
            was_active = active;
            let open: Vec<_> = flags
                .iter_mut()
                .filter(|f| f.has_changed().is_ok())
                .map(|f| Box::pin(f.changed()))
                .collect();
            if open.is_empty() {
                return None;
            }
            let _ = futures::future::select_all(open).await;
        }
    })
}

/// Sets `credvend_bindings{ready}` from the bindings cache.
///
/// The reconciler calls it after every reconcile; call it from the metrics handler before
/// encoding as well, so every replica (leaders and followers, whose caches see the statuses the
/// leader writes) reports current numbers on every scrape. Cheap: one pass over the cache.
pub fn record_binding_metrics(bindings: &Store<AWSRoleBinding>, metrics: &ControllerMetrics) {
    let counts = status::count_by_readiness(bindings.state());
    for (label, value) in [
        ("true", counts.ready),
        ("false", counts.not_ready),
        ("unknown", counts.unknown),
    ] {
        metrics.bindings.with_label_values(&[label]).set(value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn every_binding_is_reconciled_each_time_the_replica_becomes_active() {
        let (synced_tx, synced) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let mut events = Box::pin(became_active([synced, leading]));
        let wait = Duration::from_millis(200);
        leading_tx.send_replace(true);
        let next = tokio::time::timeout(wait, events.next()).await;
        assert!(next.is_err(), "not before the caches are listed");
        synced_tx.send_replace(true);
        assert_eq!(
            tokio::time::timeout(wait, events.next()).await.unwrap(),
            Some(())
        );
        leading_tx.send_replace(false);
        let next = tokio::time::timeout(wait, events.next()).await;
        assert!(next.is_err(), "losing leadership triggers nothing");
        leading_tx.send_replace(true);
        let next = tokio::time::timeout(wait, events.next()).await;
        assert_eq!(next.unwrap(), Some(()), "leading again");
        drop((synced_tx, leading_tx));
        assert_eq!(
            tokio::time::timeout(wait, events.next()).await.unwrap(),
            None
        );
    }
}
