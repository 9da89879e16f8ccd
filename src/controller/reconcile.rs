//! One reconcile of one binding: count its pods from the index, find the other bindings of its
//! service account, compute the status, publish an Event if its state changed, apply the
//! status if it differs — and nothing else, so the reconciler never reads from the API server
//! and a periodic requeue is cheap. A replica that does not lead returns at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, TimestampRound, Unit};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource as _, ResourceExt as _};
use tokio::sync::watch;

use super::metrics::ControllerMetrics;
use super::status::{self, EVENT_ACTION, Observed};
use super::stores::Stores;
use super::{Error, FIELD_MANAGER, record_binding_metrics};
use crate::aws::StsEndpointAllowlist;
use crate::crd::{AWSRoleBinding, AWSRoleBindingStatus};

/// How often a binding is reconciled without any change: a safety net for missed watch events,
/// cheap because nothing is written when nothing changed.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(5 * 60);
/// First retry after a failed reconcile; doubled on every further failure of the same binding.
const RETRY_BASE: Duration = Duration::from_secs(5);

/// What every reconcile needs: the API client, the Event recorder, metrics, the caches, whether
/// this replica leads, and the operator's STS endpoint policy.
pub struct Context {
    /// Writes statuses.
    pub client: Client,
    /// Publishes Events on bindings.
    pub recorder: Recorder,
    /// `credvend_reconciles_total`, `credvend_reconcile_errors_total`, `credvend_bindings`.
    pub metrics: ControllerMetrics,
    /// The bindings cache and the pod index.
    pub stores: Stores,
    /// True while this replica leads (always, without leader election).
    pub leading: watch::Receiver<bool>,
    /// STS endpoints bindings may name.
    pub allowed: StsEndpointAllowlist,
    /// Consecutive failures per binding (`namespace/name`), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with no failures recorded yet.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: ControllerMetrics,
        stores: Stores,
        leading: watch::Receiver<bool>,
        allowed: StsEndpointAllowlist,
    ) -> Self {
        Context {
            client,
            recorder,
            metrics,
            stores,
            leading,
            allowed,
            failures: Mutex::default(),
        }
    }

    /// Records one more failure of `binding` and returns how many there have been in a row.
    fn failed(&self, binding: &str) -> u32 {
        // A panic while holding this lock cannot leave the map inconsistent (one insert).
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(binding.to_owned()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded(&self, binding: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(binding);
    }
}

/// Brings one binding's status up to date.
///
/// Event before status: if the patch then fails, the retry sees the same transition and
/// publishes again (the recorder folds repeats into a series) instead of losing it. An Event
/// that cannot be published is logged and counted but does not fail the reconcile, because a
/// missing Event permission must not keep the status from being written.
pub async fn reconcile(binding: Arc<AWSRoleBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Followers only cache; counting before the pod index is listed would write `pods: 0`.
    // Both conditions turning true reconcile every binding (see `super::run`).
    if !*ctx.leading.borrow() || !ctx.stores.pods.is_listed() {
        return Ok(Action::await_change());
    }
    let qualified = binding.qualified_name();
    let namespace = binding
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(binding.name_any()))?;
    let name = binding.name_any();

    let pods = ctx
        .stores
        .pods
        .count(&ObjectRef::new(&name).within(&namespace));
    let same_service_account = same_service_account(&ctx.stores, &binding, &namespace);
    let previous = binding.status.as_ref();
    let observed = Observed {
        pods,
        same_service_account: &same_service_account,
        allowed: &ctx.allowed,
    };
    let desired = status::desired_status(&binding, &observed, previous, now());

    if let Some(event) = status::transition(previous, &desired) {
        let published = ctx
            .recorder
            .publish(
                &Event {
                    type_: event.type_,
                    reason: event.reason,
                    note: Some(event.note),
                    action: EVENT_ACTION.to_owned(),
                    secondary: None,
                },
                &binding.object_ref(&()),
            )
            .await;
        if let Err(source) = published {
            let error = Error::PublishEvent {
                binding: qualified.clone(),
                source,
            };
            tracing::warn!(%error, "continuing without the Event");
            ctx.metrics
                .reconcile_errors
                .with_label_values(&[error.metric_label()])
                .inc();
        }
    }

    if status::needs_update(previous, &desired) {
        patch_status(&ctx.client, &namespace, &name, &desired)
            .await
            .map_err(|source| Error::PatchStatus {
                binding: qualified.clone(),
                source,
            })?;
        tracing::info!(binding = %qualified, pods, "status updated");
    }

    ctx.succeeded(&qualified);
    ctx.metrics.reconciles.with_label_values(&["success"]).inc();
    record_binding_metrics(&ctx.stores.bindings, &ctx.metrics);
    Ok(Action::requeue(REQUEUE_AFTER))
}

/// Counts the failure and retries after 5 s, 10 s, 20 s … up to [`REQUEUE_AFTER`].
pub fn error_policy(binding: Arc<AWSRoleBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failed(&binding.qualified_name());
    tracing::warn!(binding = %binding.qualified_name(), %error, failures, "reconcile failed");
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(retry_delay(failures))
}

fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(1 << doublings).min(REQUEUE_AFTER)
}

/// The other cached bindings of `namespace` that name the same service account, sorted.
fn same_service_account(stores: &Stores, binding: &AWSRoleBinding, namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = stores
        .bindings
        .state()
        .iter()
        .filter(|other| {
            other.metadata.namespace.as_deref() == Some(namespace)
                && other.metadata.name != binding.metadata.name
                && other.spec.service_account_name == binding.spec.service_account_name
        })
        .map(|other| other.name_any())
        .collect();
    names.sort();
    names
}

/// Applies the status with server-side apply, owning exactly the fields it sets; `force`
/// because the controller is the only legitimate writer of these fields.
async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &AWSRoleBindingStatus,
) -> Result<AWSRoleBinding, kube::Error> {
    let patch = serde_json::json!({
        "apiVersion": AWSRoleBinding::api_version(&()),
        "kind": AWSRoleBinding::kind(&()),
        "status": status,
    });
    Api::<AWSRoleBinding>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
}

/// Now, to the second: the API server stores condition times to the second, so a finer time
/// would only make the status we computed differ from the one we read back.
fn now() -> Time {
    let now = Timestamp::now();
    let second = TimestampRound::new()
        .smallest(Unit::Second)
        .mode(k8s_openapi::jiff::RoundMode::Trunc);
    Time(now.round(second).unwrap_or(now))
}

#[cfg(test)]
mod tests;
