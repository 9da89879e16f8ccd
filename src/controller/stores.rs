//! The two watches every replica runs, the caches they fill, and the streams through which
//! their events reach the controller.
//!
//! One watch of bindings (all namespaces) fills a reflector store and, from it, the
//! [`BindingsByNamespace`] index the webhook reads on every admission; the same watch's events
//! drive the controller, so one watch feeds both.
//! One metadata-only watch of the pods labelled `credvend.io/binding` keeps the [`PodIndex`]:
//! the label is all the count needs. kube-runtime's `watcher` over `Api<PartialObjectMeta<Pod>>`
//! is its metadata watch (it sends `Accept: …;as=PartialObjectMetadataList`, and the older
//! `metadata_watcher` is deprecated in its favour); a test below holds it to that.
//!
//! Why not kube-runtime's shared store (`store_shared`, `Controller::for_shared_stream`): its
//! subscriber stream, handed the key of an object deleted before it reads it, returns
//! `Pending` without arranging to be woken, so inside the controller's `SelectAll` it is never
//! polled again; its buffer then fills and the watch, held back by backpressure, stops
//! updating the webhook's cache. Driving the controller from the watch's own events costs
//! nothing and cannot stall: each event becomes the bindings to reconcile (every binding of the
//! namespace, since one binding's service account can make another ambiguous, and every
//! binding after a relist).
//!
//! The watches are driven by the controller's task ([`super::run`]), which runs on every
//! replica for the process's whole life (followers only skip the writes), so the webhook's
//! cache stays current whoever leads. [`Stores::bindings_synced`] says when the bindings cache
//! holds its first full list; it is set from the watch's own `InitDone`, never by waiting on
//! the store, because a store's readiness future wakes only one waiter and the controller is
//! already waiting on it.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt as _, future};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use super::namespaces::BindingsByNamespace;
use super::pods::PodIndex;
use crate::crd::AWSRoleBinding;
use crate::inject::LABEL_BINDING;

/// What the webhook and the health endpoint read. Cloning is cheap (shared handles).
#[derive(Clone)]
pub struct Stores {
    /// Every `AWSRoleBinding` of the cluster.
    pub bindings: Store<AWSRoleBinding>,
    /// The same bindings by namespace, for the webhook's lookup on every admission.
    pub by_namespace: BindingsByNamespace,
    /// Pods per binding.
    pub pods: PodIndex,
    bindings_synced: watch::Receiver<bool>,
    pods_synced: watch::Receiver<bool>,
}

impl Stores {
    /// Whether the bindings cache holds its first full list, so the webhook does not decide
    /// from an empty store.
    pub fn bindings_synced(&self) -> bool {
        *self.bindings_synced.borrow()
    }

    /// Whether the pod index holds its first full list.
    pub fn pods_synced(&self) -> bool {
        *self.pods_synced.borrow()
    }

    /// Listed, empty caches: the bindings store fed by the returned writer instead of a watch,
    /// the pod index through [`PodIndex::apply`], for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, reflector::store::Writer<AWSRoleBinding>) {
        let (bindings, writer) = reflector::store();
        let pods = PodIndex::default();
        pods.apply(&watcher::Event::Init);
        pods.apply(&watcher::Event::InitDone);
        let (_, listed) = watch::channel(true);
        (
            Stores {
                bindings,
                by_namespace: BindingsByNamespace::default(),
                pods,
                bindings_synced: listed.clone(),
                pods_synced: listed,
            },
            writer,
        )
    }

    pub(super) fn synced_receivers(&self) -> (watch::Receiver<bool>, watch::Receiver<bool>) {
        (self.bindings_synced.clone(), self.pods_synced.clone())
    }
}

/// The watch streams, to be driven by the controller; see the module documentation.
pub struct Watches {
    /// The bindings watch; yields every binding of a namespace whose bindings changed
    /// (created, edited, deleted), and every binding after a (re)list.
    pub(super) bindings: BoxStream<'static, ObjectRef<AWSRoleBinding>>,
    /// The pod watch; yields the bindings whose pod count changed.
    pub(super) pods: BoxStream<'static, ObjectRef<AWSRoleBinding>>,
}

/// Sets up the watches of bindings and of labelled pods (metadata only), both cluster-wide.
/// Nothing is requested until the returned [`Watches`] are driven by [`super::run`]; watch
/// errors are logged and retried with kube-runtime's default backoff.
pub fn watches(client: Client) -> (Stores, Watches) {
    let (bindings, writer) = reflector::store();
    let (bindings_synced_tx, bindings_synced) = watch::channel(false);
    let (pods_synced_tx, pods_synced) = watch::channel(false);

    let store = bindings.clone();
    let by_namespace = BindingsByNamespace::default();
    let index = by_namespace.clone();
    let bindings_stream = watcher(
        Api::<AWSRoleBinding>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .filter_map(move |event| {
        // The store has applied the event already: it holds what the event left.
        let peers = match event {
            Ok(watcher::Event::InitDone) => {
                // Indexed before the cache is declared listed, so no admission that waits
                // for the list reads an empty index.
                index.rebuild(&store);
                bindings_synced_tx.send_replace(true);
                all(&store)
            }
            // The relisted objects reach the store at `InitDone`.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Vec::new(),
            Ok(event) => touched(&event)
                .and_then(|binding| binding.namespace())
                .map(|namespace| {
                    let peers = in_namespace(&store, &namespace);
                    let refs = peers
                        .iter()
                        .map(|b| ObjectRef::from_obj(b.as_ref()))
                        .collect();
                    index.set(&namespace, peers);
                    refs
                })
                .unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "watching AWSRoleBindings");
                Vec::new()
            }
        };
        future::ready(Some(futures::stream::iter(peers)))
    })
    .flatten()
    .boxed();

    let pod_counts = PodIndex::default();
    let pod_index = pod_counts.clone();
    let pods_stream = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client),
        watcher::Config::default().labels(LABEL_BINDING),
    )
    .default_backoff()
    .map(move |event| {
        let changed = match event {
            Ok(event) => {
                let changed = pod_index.apply(&event);
                if matches!(event, watcher::Event::InitDone) {
                    pods_synced_tx.send_replace(true);
                }
                changed
            }
            Err(error) => {
                tracing::warn!(%error, "watching pods labelled {LABEL_BINDING}");
                Vec::new()
            }
        };
        futures::stream::iter(changed)
    })
    .flatten()
    .boxed();

    (
        Stores {
            bindings,
            by_namespace,
            pods: pod_counts,
            bindings_synced,
            pods_synced,
        },
        Watches {
            bindings: bindings_stream,
            pods: pods_stream,
        },
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

/// Every cached binding.
fn all(store: &Store<AWSRoleBinding>) -> Vec<ObjectRef<AWSRoleBinding>> {
    store
        .state()
        .iter()
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Every cached binding of `namespace` (a scan of the store: once per binding event, never
/// per admission).
fn in_namespace(store: &Store<AWSRoleBinding>, namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
    store
        .state()
        .into_iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::namespaces::tests::binding;
    use super::*;

    #[test]
    fn watch_events_name_the_objects_they_touch() {
        let b = binding("team-a", "s3");
        assert!(touched(&watcher::Event::Apply(b.clone())).is_some());
        assert!(touched(&watcher::Event::Delete(b.clone())).is_some());
        assert!(touched(&watcher::Event::InitApply(b)).is_some());
        assert!(touched::<AWSRoleBinding>(&watcher::Event::Init).is_none());
        assert!(touched::<AWSRoleBinding>(&watcher::Event::InitDone).is_none());
    }

    /// The pod watch's first request, on a mocked API server: a list of labelled pods' metadata.
    #[tokio::test]
    async fn the_pod_watch_asks_the_api_server_for_metadata_only() {
        use futures::StreamExt as _;
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let (_stores, mut watches) = watches(Client::new(service, "default"));
        let poll = tokio::spawn(async move { watches.pods.next().await });
        let (request, _send) =
            tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request())
                .await
                .unwrap()
                .unwrap();
        poll.abort();
        assert_eq!(request.uri().path(), "/api/v1/pods");
        assert!(
            request
                .uri()
                .query()
                .unwrap()
                .contains("labelSelector=credvend.io%2Fbinding"),
            "{}",
            request.uri()
        );
        assert_eq!(
            request.headers()[http::header::ACCEPT],
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        );
    }

    fn response(body: serde_json::Value) -> http::Response<kube::client::Body> {
        let bytes = match body {
            // A watch answers with one event per line.
            serde_json::Value::Array(events) => events
                .iter()
                .map(|e| format!("{e}\n"))
                .collect::<String>()
                .into_bytes(),
            other => serde_json::to_vec(&other).unwrap(),
        };
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(bytes))
            .unwrap()
    }

    fn sorted_names(bindings: &[Arc<AWSRoleBinding>]) -> Vec<String> {
        let mut names: Vec<String> = bindings.iter().map(|b| b.name_any()).collect();
        names.sort();
        names
    }

    /// The index the webhook reads follows the bindings watch: filled by the list, then by
    /// each event, on a mocked API server.
    #[tokio::test]
    async fn the_bindings_watch_keeps_the_namespace_index() {
        use futures::StreamExt as _;
        let deadline = std::time::Duration::from_secs(10);
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let (stores, mut watches) = watches(Client::new(service, "default"));
        let api = tokio::spawn(async move {
            let (list, send) = handle.next_request().await.unwrap();
            assert_eq!(
                list.uri().path(),
                "/apis/credvend.io/v1alpha1/awsrolebindings"
            );
            send.send_response(response(serde_json::json!({
                "apiVersion": "credvend.io/v1alpha1",
                "kind": "AWSRoleBindingList",
                "metadata": {"resourceVersion": "10"},
                "items": [binding("a", "x"), binding("a", "y"), binding("b", "z")],
            })));
            let (watch, send) = handle.next_request().await.unwrap();
            assert!(watch.uri().query().unwrap().contains("watch=true"));
            let mut added = serde_json::to_value(binding("b", "w")).unwrap();
            added["metadata"]["resourceVersion"] = "11".into();
            send.send_response(response(serde_json::json!([
                {"type": "ADDED", "object": added},
            ])));
            handle
        });
        // After the list: every binding, then the namespace the added one is in.
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let next = tokio::time::timeout(deadline, watches.bindings.next()).await;
            seen.push(next.unwrap().unwrap().name);
            if seen.len() == 3 {
                assert_eq!(sorted_names(&stores.by_namespace.get("a")), ["x", "y"]);
                assert_eq!(sorted_names(&stores.by_namespace.get("b")), ["z"]);
            }
        }
        assert_eq!(sorted_names(&stores.by_namespace.get("b")), ["w", "z"]);
        assert_eq!(sorted_names(&stores.by_namespace.get("a")), ["x", "y"]);
        assert!(stores.bindings_synced());
        drop(api);
    }

    #[test]
    fn a_change_concerns_every_binding_of_its_namespace() {
        let (store, mut writer) = reflector::store();
        for b in [binding("a", "x"), binding("a", "y"), binding("b", "z")] {
            writer.apply_watcher_event(&watcher::Event::Apply(b));
        }
        let mut names: Vec<String> = in_namespace(&store, "a")
            .iter()
            .map(|b| b.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["x", "y"]);
        assert!(in_namespace(&store, "c").is_empty());
    }
}
