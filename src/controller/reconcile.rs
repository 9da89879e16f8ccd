//! One reconcile of one binding: count its pods from the cache, compute the status, publish an
//! Event if its state changed, apply the status if it differs — and nothing else, so the
//! reconciler never reads from the API server and a periodic requeue is cheap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, TimestampRound, Unit};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource as _, ResourceExt as _};

use super::status::{self, EVENT_ACTION};
use super::{Error, FIELD_MANAGER, record_binding_metrics};
use crate::crd::{AWSRoleBinding, AWSRoleBindingStatus};
use crate::inject::LABEL_BINDING;
use crate::operator::metrics::OperatorMetrics;

/// How often a binding is reconciled without any change: a safety net for missed watch events,
/// cheap because nothing is written when nothing changed.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(5 * 60);
/// First retry after a failed reconcile; doubled on every further failure of the same binding.
const RETRY_BASE: Duration = Duration::from_secs(5);

/// What every reconcile needs: the API client, the Event recorder, metrics, and the caches.
pub struct Context {
    /// Writes statuses.
    pub client: Client,
    /// Publishes Events on bindings.
    pub recorder: Recorder,
    /// `credvend_reconciles_total`, `credvend_reconcile_errors_total`, `credvend_bindings`.
    pub metrics: OperatorMetrics,
    /// Metadata of pods labelled `credvend.io/binding`.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// All bindings (for the `credvend_bindings` gauge).
    pub bindings: Store<AWSRoleBinding>,
    /// Consecutive failures per binding (`namespace/name`), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with no failures recorded yet.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: OperatorMetrics,
        pods: Store<PartialObjectMeta<Pod>>,
        bindings: Store<AWSRoleBinding>,
    ) -> Self {
        Context {
            client,
            recorder,
            metrics,
            pods,
            bindings,
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
    let qualified = binding.qualified_name();
    let namespace = binding
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(binding.name_any()))?;
    let name = binding.name_any();

    let pods = count_pods(&ctx.pods, &namespace, &name);
    let previous = binding.status.as_ref();
    let desired = status::desired_status(&binding, pods, previous, now());

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
    record_binding_metrics(&ctx.bindings, &ctx.metrics);
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

/// Pods of the binding's namespace labelled with its name, not counting pods being deleted
/// (they are on their way out and no longer start with credentials).
fn count_pods(pods: &Store<PartialObjectMeta<Pod>>, namespace: &str, name: &str) -> i32 {
    let count = pods
        .state()
        .iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.metadata.deletion_timestamp.is_none()
                && pod.labels().get(LABEL_BINDING).map(String::as_str) == Some(name)
        })
        .count();
    i32::try_from(count).unwrap_or(i32::MAX)
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
