//! The two in-memory caches every replica keeps, and the stream of reconcile requests derived
//! from their watch events.
//!
//! The caches live as long as the process, independent of leadership, because the webhook
//! reads bindings from them on every replica. The watch events that fill them are also turned
//! into "binding X may have changed" notices on a broadcast channel: a binding event names the
//! binding itself, a pod event names the binding in the pod's `credvend.io/binding` label (its
//! pod count changed). A controller that starts subscribes to those notices.

use std::collections::VecDeque;

use futures::{Stream, StreamExt as _, future};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::crd::AWSRoleBinding;
use crate::inject::LABEL_BINDING;

/// Notices buffered per subscriber. A subscriber that falls further behind (a relist of many
/// pods while it is busy) misses some and then reconciles every binding instead, which is
/// always correct, only slower.
const CHANGES_CAPACITY: usize = 1024;

/// The caches shared by the controller and the webhook. Cloning is cheap (shared handles).
#[derive(Clone)]
pub struct Stores {
    /// Every `AWSRoleBinding` of the cluster.
    pub bindings: Store<AWSRoleBinding>,
    /// Metadata of every pod labelled `credvend.io/binding` (metadata only: the controller
    /// needs the label, and full pods would cost far more memory).
    pub pods: Store<PartialObjectMeta<Pod>>,
    changes: broadcast::Sender<ObjectRef<AWSRoleBinding>>,
}

impl Stores {
    /// Empty caches fed by the returned writers instead of a watch, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (
        Self,
        reflector::store::Writer<AWSRoleBinding>,
        reflector::store::Writer<PartialObjectMeta<Pod>>,
    ) {
        let (bindings, bindings_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        (
            Stores {
                bindings,
                pods,
                changes,
            },
            bindings_writer,
            pods_writer,
        )
    }

    /// Which bindings to reconcile: all of them once both caches are filled, then each binding
    /// a watch event concerns, and all of them again whenever notices were missed.
    ///
    /// The subscription is taken before the initial listing, so nothing that happens in
    /// between is lost.
    pub(crate) fn reconcile_requests(
        &self,
    ) -> impl Stream<Item = ObjectRef<AWSRoleBinding>> + use<> {
        let receiver = self.changes.subscribe();
        let bindings = self.bindings.clone();
        let pods = self.pods.clone();
        let initial = {
            let bindings = bindings.clone();
            futures::stream::once(async move {
                // Counting pods before the pod cache is filled would write `pods: 0` everywhere.
                let ready =
                    future::join(bindings.wait_until_ready(), pods.wait_until_ready()).await;
                match ready {
                    (Ok(()), Ok(())) => all(&bindings),
                    _ => VecDeque::new(),
                }
            })
        };
        let updates = futures::stream::unfold(receiver, move |mut receiver| {
            let bindings = bindings.clone();
            async move {
                let batch = match receiver.recv().await {
                    Ok(binding) => VecDeque::from([binding]),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "missed binding notices; reconciling all bindings");
                        all(&bindings)
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((batch, receiver))
            }
        });
        initial.chain(updates).flat_map(futures::stream::iter)
    }
}

fn all(bindings: &Store<AWSRoleBinding>) -> VecDeque<ObjectRef<AWSRoleBinding>> {
    bindings
        .state()
        .iter()
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Starts the watches of bindings (all namespaces) and of pods labelled `credvend.io/binding`
/// (all namespaces, metadata only), returns their caches, and the task that drives both.
///
/// The task runs until aborted; watch errors are logged and retried with kube-runtime's default
/// backoff. `Store::wait_until_ready` tells when a cache holds its first full list.
pub fn start_reflectors(client: Client) -> (Stores, JoinHandle<()>) {
    let (bindings, bindings_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (changes, _) = broadcast::channel(CHANGES_CAPACITY);

    let binding_changes = changes.clone();
    let bindings_watch = watcher(
        Api::<AWSRoleBinding>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(bindings_writer)
    .for_each(move |event| {
        match event {
            Ok(event) => {
                if let Some(binding) = touched(&event) {
                    // No receiver (no controller running here) is normal: followers only cache.
                    let _ = binding_changes.send(ObjectRef::from_obj(binding));
                }
            }
            Err(error) => tracing::warn!(%error, "watching AWSRoleBindings"),
        }
        future::ready(())
    });

    let pod_changes = changes.clone();
    let pods_watch = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client),
        watcher::Config::default().labels(LABEL_BINDING),
    )
    .default_backoff()
    .reflect(pods_writer)
    .for_each(move |event| {
        match event {
            Ok(event) => {
                if let Some(binding) = touched(&event).and_then(binding_of) {
                    let _ = pod_changes.send(binding);
                }
            }
            Err(error) => tracing::warn!(%error, "watching pods labelled {LABEL_BINDING}"),
        }
        future::ready(())
    });

    let task = tokio::spawn(async move {
        future::join(bindings_watch, pods_watch).await;
    });
    (
        Stores {
            bindings,
            pods,
            changes,
        },
        task,
    )
}

/// The objects a watch event reports as created, changed or deleted. The markers of a relist
/// (`Init`, `InitDone`) carry none: the relisted objects arrive one by one.
fn touched<K>(event: &watcher::Event<K>) -> Option<&K> {
    match event {
        watcher::Event::Apply(obj)
        | watcher::Event::Delete(obj)
        | watcher::Event::InitApply(obj) => Some(obj),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// The binding a labelled pod counts for: the label's value, in the pod's namespace.
pub(crate) fn binding_of(pod: &PartialObjectMeta<Pod>) -> Option<ObjectRef<AWSRoleBinding>> {
    let name = pod.labels().get(LABEL_BINDING)?;
    let namespace = pod.namespace()?;
    Some(ObjectRef::new(name).within(&namespace))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use futures::StreamExt as _;
    use kube::api::ObjectMeta;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn binding(ns: &str, name: &str) -> AWSRoleBinding {
        AWSRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: serde_json::from_value(serde_json::json!({
                "serviceAccountName": "app",
                "roleArn": "arn:aws:iam::111122223333:role/r",
            }))
            .unwrap(),
            status: None,
        }
    }

    fn pod(ns: Option<&str>, label: Option<&str>) -> PartialObjectMeta<Pod> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: ns.map(Into::into),
                labels: label.map(|l| [(LABEL_BINDING.to_owned(), l.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    fn key(ns: &str, name: &str) -> ObjectRef<AWSRoleBinding> {
        ObjectRef::new(name).within(ns)
    }

    /// A full list, as the watcher delivers it at start: the store becomes ready.
    fn list<K: kube::Resource + Clone>(writer: &mut reflector::store::Writer<K>, objects: &[K])
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    async fn next_batch(
        requests: &mut (impl Stream<Item = ObjectRef<AWSRoleBinding>> + Unpin),
        n: usize,
    ) -> Vec<String> {
        let mut batch = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(DEADLINE, requests.next()).await;
            batch.push(next.unwrap().unwrap().to_string());
        }
        batch.sort();
        batch
    }

    #[test]
    fn a_pod_counts_for_the_binding_named_by_its_label_in_its_namespace() {
        let cases = [
            (pod(Some("team-a"), Some("s3")), Some(key("team-a", "s3"))),
            (pod(Some("team-a"), None), None),
            (pod(None, Some("s3")), None),
        ];
        for (pod, want) in cases {
            assert_eq!(binding_of(&pod), want, "{pod:?}");
        }
    }

    #[test]
    fn watch_events_name_the_objects_they_touch() {
        let b = binding("team-a", "s3");
        assert!(touched(&watcher::Event::Apply(b.clone())).is_some());
        assert!(touched(&watcher::Event::Delete(b.clone())).is_some());
        assert!(touched(&watcher::Event::InitApply(b)).is_some());
        assert!(touched::<AWSRoleBinding>(&watcher::Event::Init).is_none());
        assert!(touched::<AWSRoleBinding>(&watcher::Event::InitDone).is_none());
    }

    #[tokio::test]
    async fn requests_start_with_every_binding_once_both_caches_are_listed() {
        let (stores, mut bindings, mut pods) = Stores::for_tests();
        let mut requests = Box::pin(stores.reconcile_requests());
        list(&mut bindings, &[binding("a", "x"), binding("b", "y")]);
        // A notice sent before the pod cache is ready is kept, not lost.
        stores.changes.send(key("a", "x")).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), requests.next()).await;
        assert!(early.is_err(), "nothing before the pod cache is ready");
        list(&mut pods, &[]);
        assert_eq!(
            next_batch(&mut requests, 2).await,
            [
                "AWSRoleBinding.v1alpha1.credvend.io/x.a",
                "AWSRoleBinding.v1alpha1.credvend.io/y.b"
            ]
        );
        assert_eq!(
            next_batch(&mut requests, 1).await,
            ["AWSRoleBinding.v1alpha1.credvend.io/x.a"]
        );
    }

    #[tokio::test]
    async fn missed_notices_turn_into_a_request_for_every_binding() {
        let (stores, mut bindings, mut pods) = Stores::for_tests();
        list(&mut bindings, &[binding("a", "x"), binding("b", "y")]);
        list(&mut pods, &[]);
        let mut requests = Box::pin(stores.reconcile_requests());
        assert_eq!(next_batch(&mut requests, 2).await.len(), 2);
        for _ in 0..CHANGES_CAPACITY + 10 {
            stores.changes.send(key("a", "x")).unwrap();
        }
        stores.changes.send(key("b", "y")).unwrap();
        // The oldest notices were dropped: every binding once, then what was kept.
        let all = next_batch(&mut requests, 2).await;
        assert_eq!(
            all,
            [
                "AWSRoleBinding.v1alpha1.credvend.io/x.a",
                "AWSRoleBinding.v1alpha1.credvend.io/y.b"
            ]
        );
    }
}
