//! The AWSRoleBinding controller: it validates every binding, writes what it found into the
//! binding's status (`Ready` condition, `observedGeneration`, and how many pods use it), and
//! publishes an Event when a binding's state changes.
//!
//! Start here: [`start_reflectors`] keeps two in-memory caches current — all bindings, and the
//! metadata of pods the webhook labelled `credvend.io/binding` — on every replica, because the
//! webhook decides from the bindings cache. [`run`] reconciles from those caches; only one
//! replica should run it, which [`run_when_leader`] ensures with a Lease. What the status says
//! is decided by the pure functions of [`status`]; [`reconcile`] only reads caches, patches
//! and publishes.
//!
//! The controller is built on kube-runtime's `applier` rather than `Controller` because its
//! caches are shared with the webhook and must outlive leadership changes; the reflector task
//! broadcasts which binding each watch event concerns, and a controller that starts (again)
//! subscribes, reconciles everything once and then follows the broadcast.

mod leader;
mod reconcile;
pub mod status;
mod stores;

pub use leader::{LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS, run_when_leader};
pub use reconcile::{Context, REQUEUE_AFTER, error_policy, reconcile};
pub use stores::{Stores, start_reflectors};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::Client;
use kube::runtime::controller::{self, applier};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::crd::AWSRoleBinding;
use crate::operator::metrics::OperatorMetrics;

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

/// Runs the controller until `shutdown` completes (or forever, with
/// `std::future::pending()`); cancelling the returned future stops it as well, which is how
/// [`run_when_leader`] stops it on losing the Lease. Reconciles start once both caches of
/// `stores` have their first full list.
pub async fn run(
    client: Client,
    metrics: OperatorMetrics,
    stores: Stores,
    shutdown: impl Future<Output = ()>,
) {
    let queue = stores
        .reconcile_requests()
        .map(Ok::<_, std::convert::Infallible>);
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, Reporter::from(FIELD_MANAGER)),
        metrics,
        stores.pods.clone(),
        stores.bindings.clone(),
    ));
    let config = controller::Config::default()
        .debounce(DEBOUNCE)
        .concurrency(CONCURRENCY);
    let results = applier(
        |binding, ctx| Box::pin(reconcile(binding, ctx)),
        error_policy,
        context,
        stores.bindings.clone(),
        queue,
        config,
    )
    .take_until(shutdown);
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

/// Sets `credvend_bindings{ready}` from the bindings cache.
///
/// The reconciler calls it after every reconcile; call it from the metrics handler before
/// encoding as well, so every replica (leaders and followers, whose caches see the statuses the
/// leader writes) reports current numbers on every scrape. Cheap: one pass over the cache.
pub fn record_binding_metrics(bindings: &Store<AWSRoleBinding>, metrics: &OperatorMetrics) {
    let counts = status::count_by_readiness(bindings.state());
    for (label, value) in [
        ("true", counts.ready),
        ("false", counts.not_ready),
        ("unknown", counts.unknown),
    ] {
        metrics.bindings.with_label_values(&[label]).set(value);
    }
}
