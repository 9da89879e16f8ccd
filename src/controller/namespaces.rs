//! The bindings of each namespace, kept beside the bindings store for the webhook.
//!
//! The webhook needs "every binding of namespace N" on each pod creation. kube-runtime's
//! `Store` answers "every object" (`state`, which clones an `Arc` per object) or "one object by
//! key", so a lookup through it scans the cluster's bindings on every admission, and its cost
//! grows with the cluster instead of with the namespace. This index is brought up to date by
//! the bindings watch itself ([`super::stores`]), right after the store has applied each
//! event: a change rebuilds its namespace's entry, a (re)list rebuilds them all. A binding the
//! index does not have yet is no worse than one the store does not have yet: the webhook
//! looks the namespace up on the API server before it denies a pod for want of a binding.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::reflector::Store;

use crate::crd::AWSRoleBinding;

/// Bindings by namespace; clones share the index.
#[derive(Clone, Default)]
pub struct BindingsByNamespace {
    map: Arc<RwLock<HashMap<String, Vec<Arc<AWSRoleBinding>>>>>,
}

impl BindingsByNamespace {
    /// The bindings of `namespace`, in no particular order (the decision sorts what it shows).
    pub fn get(&self, namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
        // A writer that panicked left a map that is still whole (each write is one insert or
        // one swap), so a poisoned lock is read as it is.
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(namespace).cloned().unwrap_or_default()
    }

    /// Replaces the whole index with the store's contents (after a list or relist).
    pub fn rebuild(&self, store: &Store<AWSRoleBinding>) {
        let mut fresh: HashMap<String, Vec<Arc<AWSRoleBinding>>> = HashMap::new();
        for binding in store.state() {
            if let Some(namespace) = binding.metadata.namespace.clone() {
                fresh.entry(namespace).or_default().push(binding);
            }
        }
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Sets `namespace`'s entry to `bindings` (the store's bindings of that namespace after a
    /// change); an empty list removes the entry.
    pub fn set(&self, namespace: &str, bindings: Vec<Arc<AWSRoleBinding>>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if bindings.is_empty() {
            map.remove(namespace);
        } else {
            map.insert(namespace.to_owned(), bindings);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use kube::api::ObjectMeta;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;

    /// A binding of service account `app`, as the API server would return it (with a uid).
    pub(in crate::controller) fn binding(ns: &str, name: &str) -> AWSRoleBinding {
        AWSRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("{ns}/{name}")),
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

    fn names(bindings: &[Arc<AWSRoleBinding>]) -> Vec<String> {
        let mut names: Vec<String> = bindings
            .iter()
            .map(|b| b.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_rebuild_groups_the_store_by_namespace() {
        let (store, mut writer) = reflector::store();
        for (ns, name) in [("team-a", "s3"), ("team-b", "sqs"), ("team-a", "dynamo")] {
            writer.apply_watcher_event(&Event::Apply(binding(ns, name)));
        }
        let index = BindingsByNamespace::default();
        assert!(
            index.get("team-a").is_empty(),
            "empty before the first list"
        );
        index.rebuild(&store);
        assert_eq!(names(&index.get("team-a")), ["dynamo", "s3"]);
        assert_eq!(names(&index.get("team-b")), ["sqs"]);
        assert!(index.get("team-c").is_empty());
    }

    #[test]
    fn setting_a_namespace_leaves_the_others_and_an_empty_list_removes_it() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Apply(binding("team-a", "s3")));
        writer.apply_watcher_event(&Event::Apply(binding("team-b", "sqs")));
        let index = BindingsByNamespace::default();
        index.rebuild(&store);
        index.set("team-a", vec![Arc::new(binding("team-a", "dynamo"))]);
        assert_eq!(names(&index.get("team-a")), ["dynamo"]);
        assert_eq!(names(&index.get("team-b")), ["sqs"]);
        index.set("team-b", Vec::new());
        assert!(index.get("team-b").is_empty());
        assert_eq!(
            index.map.read().unwrap().len(),
            1,
            "the emptied entry is gone"
        );
    }

    #[test]
    fn a_rebuild_forgets_what_the_store_no_longer_has() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Apply(binding("team-a", "s3")));
        let index = BindingsByNamespace::default();
        index.rebuild(&store);
        writer.apply_watcher_event(&Event::Delete(binding("team-a", "s3")));
        index.rebuild(&store);
        assert!(index.get("team-a").is_empty());
    }
}
