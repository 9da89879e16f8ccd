//! How many pods use each binding: an index kept from the watch of pod metadata, so a
//! reconcile reads one number instead of scanning every cached pod.
//!
//! The webhook labels every pod it injects `credvend.io/binding=<binding>`; the watch asks the
//! API server for the metadata of labelled pods only. A pod being deleted no longer counts:
//! it is on its way out and no longer starts with credentials. The index applies watch events
//! as kube-runtime's store does, including relists (`Init`, `InitApply`…, `InitDone`), and
//! reports which bindings' counts may have changed, which is what the controller reconciles.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::AWSRoleBinding;
use crate::inject::LABEL_BINDING;

/// `namespace/name` of a pod.
type PodKey = (String, String);

/// Pods per binding. Cheap to clone (a shared handle).
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<Index>>,
}

#[derive(Default)]
struct Index {
    /// Each labelled pod and the binding it counts for (`None`: being deleted).
    pods: HashMap<PodKey, Option<ObjectRef<AWSRoleBinding>>>,
    /// How many of `pods` count for each binding (no entry: none).
    counts: HashMap<ObjectRef<AWSRoleBinding>, usize>,
    /// The pods of an ongoing relist.
    relist: Option<HashMap<PodKey, Option<ObjectRef<AWSRoleBinding>>>>,
    /// Whether a first full list has been applied.
    listed: bool,
}

impl PodIndex {
    /// Pods counting for `binding`.
    pub fn count(&self, binding: &ObjectRef<AWSRoleBinding>) -> i32 {
        let index = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let count = index.counts.get(binding).copied().unwrap_or_default();
        i32::try_from(count).unwrap_or(i32::MAX)
    }

    /// Whether the index holds a full list (before that, every count would be 0).
    pub fn is_listed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .listed
    }

    /// Applies one watch event; returns the bindings whose count may have changed.
    pub fn apply(
        &self,
        event: &watcher::Event<PartialObjectMeta<Pod>>,
    ) -> Vec<ObjectRef<AWSRoleBinding>> {
        // A panic while holding the lock leaves at most one pod stale, which the next relist
        // repairs; the index stays usable.
        let mut index = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(pod) => {
                let Some(key) = key(pod) else {
                    return Vec::new();
                };
                let counted = counts_for(pod);
                let before = index.pods.insert(key, counted.clone()).flatten();
                if before == counted {
                    return Vec::new();
                }
                index.uncount(before.as_ref());
                index.count(counted.as_ref());
                changed([before, counted])
            }
            watcher::Event::Delete(pod) => {
                let Some(key) = key(pod) else {
                    return Vec::new();
                };
                let before = index.pods.remove(&key).flatten();
                index.uncount(before.as_ref());
                changed([before])
            }
            watcher::Event::Init => {
                index.relist = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(key), Some(relist)) = (key(pod), index.relist.as_mut()) {
                    relist.insert(key, counts_for(pod));
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let relisted = index.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut index.pods, relisted);
                index.counts.clear();
                let counted: Vec<_> = index.pods.values().flatten().cloned().collect();
                for binding in &counted {
                    index.count(Some(binding));
                }
                index.listed = true;
                // Every binding named before or after: cheap, and always correct.
                let bindings: HashSet<ObjectRef<AWSRoleBinding>> = old
                    .into_values()
                    .chain(index.pods.values().cloned())
                    .flatten()
                    .collect();
                bindings.into_iter().collect()
            }
        }
    }
}

impl Index {
    fn count(&mut self, binding: Option<&ObjectRef<AWSRoleBinding>>) {
        if let Some(binding) = binding {
            *self.counts.entry(binding.clone()).or_default() += 1;
        }
    }

    fn uncount(&mut self, binding: Option<&ObjectRef<AWSRoleBinding>>) {
        let Some(binding) = binding else { return };
        if let Some(count) = self.counts.get_mut(binding) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.counts.remove(binding);
            }
        }
    }
}

fn key(pod: &PartialObjectMeta<Pod>) -> Option<PodKey> {
    Some((pod.namespace()?, pod.metadata.name.clone()?))
}

/// The binding a labelled pod counts for: the label's value, in the pod's namespace, unless
/// the pod is being deleted.
fn counts_for(pod: &PartialObjectMeta<Pod>) -> Option<ObjectRef<AWSRoleBinding>> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    binding_of(pod)
}

/// The binding named by a pod's `credvend.io/binding` label, in the pod's namespace.
pub(crate) fn binding_of(pod: &PartialObjectMeta<Pod>) -> Option<ObjectRef<AWSRoleBinding>> {
    let name = pod.labels().get(LABEL_BINDING)?;
    let namespace = pod.namespace()?;
    Some(ObjectRef::new(name).within(&namespace))
}

fn changed<const N: usize>(
    bindings: [Option<ObjectRef<AWSRoleBinding>>; N],
) -> Vec<ObjectRef<AWSRoleBinding>> {
    let mut out: Vec<_> = bindings.into_iter().flatten().collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(ns: &str, name: &str, binding: Option<&str>, deleting: bool) -> PartialObjectMeta<Pod> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: binding.map(|b| [(LABEL_BINDING.to_owned(), b.to_owned())].into()),
                deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    fn b(ns: &str, name: &str) -> ObjectRef<AWSRoleBinding> {
        ObjectRef::new(name).within(ns)
    }

    fn names(mut refs: Vec<ObjectRef<AWSRoleBinding>>) -> Vec<String> {
        refs.sort_by_key(ToString::to_string);
        refs.iter()
            .map(|r| format!("{}/{}", r.namespace.clone().unwrap(), r.name))
            .collect()
    }

    #[test]
    fn counts_pods_per_binding_in_their_namespace_and_reports_what_changed() {
        let index = PodIndex::default();
        assert!(!index.is_listed());
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod(
            "a",
            "p1",
            Some("s3"),
            false,
        )));
        index.apply(&watcher::Event::InitApply(pod(
            "b",
            "p1",
            Some("s3"),
            false,
        )));
        assert_eq!(index.count(&b("a", "s3")), 0, "not applied before InitDone");
        let listed = index.apply(&watcher::Event::InitDone);
        assert!(index.is_listed());
        assert_eq!(names(listed), ["a/s3", "b/s3"]);
        assert_eq!(index.count(&b("a", "s3")), 1);

        // A new pod, the same pod again, a pod being deleted, a pod gone.
        assert_eq!(
            names(index.apply(&watcher::Event::Apply(pod("a", "p2", Some("s3"), false)))),
            ["a/s3"]
        );
        assert_eq!(index.count(&b("a", "s3")), 2);
        index.apply(&watcher::Event::Apply(pod("a", "p2", Some("s3"), false)));
        assert_eq!(index.count(&b("a", "s3")), 2);
        assert_eq!(
            names(index.apply(&watcher::Event::Apply(pod("a", "p2", Some("s3"), true)))),
            ["a/s3"]
        );
        assert_eq!(index.count(&b("a", "s3")), 1);
        assert_eq!(
            names(index.apply(&watcher::Event::Delete(pod("a", "p1", Some("s3"), false)))),
            ["a/s3"]
        );
        assert_eq!(index.count(&b("a", "s3")), 0);

        // A pod whose label changed counts for the new binding only; both are reported.
        index.apply(&watcher::Event::Apply(pod("b", "p1", Some("s3"), false)));
        assert_eq!(
            names(index.apply(&watcher::Event::Apply(pod(
                "b",
                "p1",
                Some("dynamo"),
                false
            )))),
            ["b/dynamo", "b/s3"]
        );
        assert_eq!(
            (index.count(&b("b", "s3")), index.count(&b("b", "dynamo"))),
            (0, 1)
        );
        // A pod without the label (or a namespace) counts for nothing.
        assert!(
            index
                .apply(&watcher::Event::Apply(pod("b", "p9", None, false)))
                .is_empty()
        );
    }

    #[test]
    fn a_relist_replaces_the_index_and_names_every_binding_before_and_after() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod(
            "a",
            "p1",
            Some("old"),
            false,
        )));
        index.apply(&watcher::Event::InitDone);
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod(
            "a",
            "p2",
            Some("new"),
            false,
        )));
        assert_eq!(
            index.count(&b("a", "old")),
            1,
            "the old list serves until InitDone"
        );
        assert_eq!(
            names(index.apply(&watcher::Event::InitDone)),
            ["a/new", "a/old"]
        );
        assert_eq!(
            (index.count(&b("a", "old")), index.count(&b("a", "new"))),
            (0, 1)
        );
    }
}
