//! Turning a plan into JSON-patch `add` operations.
//!
//! Only additions, at the narrowest path that works: a list or map is created when the pod has
//! none, otherwise items are appended (`/-`) or keys added one by one. Map keys such as
//! `credvend.io/binding` go through JSON-pointer token escaping (`/` becomes `~1`).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde::Serialize;

use super::select::{ContainerList, Target};
use super::{
    ANNOTATION_BINDING_GENERATION, ANNOTATION_STATUS, InjectSettings, LABEL_BINDING,
    STATUS_INJECTED, agent, apps,
};
use crate::crd::AWSRoleBinding;

/// Everything decided about a pod that is going to be injected.
#[derive(Debug, Clone)]
pub(super) struct Plan<'a> {
    pub binding: &'a AWSRoleBinding,
    pub binding_name: &'a str,
    /// Loopback port of the credentials endpoint.
    pub port: u16,
    /// The containers that get the credentials environment.
    pub targets: Vec<Target<'a>>,
}

type Ops = Vec<PatchOperation>;

/// The patch, in a fixed order: metadata, volumes, the agent, then each application container.
pub(super) fn build(
    pod: &Pod,
    spec: &PodSpec,
    plan: &Plan<'_>,
    settings: &InjectSettings,
) -> Result<Patch, serde_json::Error> {
    let mut ops = Ops::new();
    metadata(pod, plan, &mut ops)?;
    add_items(
        &mut ops,
        pointer(&["spec", "volumes"]),
        spec.volumes.is_some(),
        &agent::volumes(plan.binding, settings),
    )?;
    let agent = agent::container(plan.binding, plan.port, settings);
    if spec.init_containers.is_some() {
        ops.push(add(pointer(&["spec", "initContainers", "0"]), &agent)?);
    } else {
        ops.push(add(pointer(&["spec", "initContainers"]), [&agent])?);
    }
    for target in &plan.targets {
        app_container(target, plan, true, &mut ops)?;
    }
    Ok(Patch(ops))
}

/// The patch for a pod that already carries our agent: the markers it lacks (or carries with
/// another value) and, for each of `plan.targets`, the environment and mount it lacks. Empty
/// when there is nothing to do.
pub(super) fn complete(pod: &Pod, plan: &Plan<'_>) -> Result<Patch, serde_json::Error> {
    let mut ops = Ops::new();
    let current = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).cloned()
    };
    let labels: Vec<(&str, String)> = desired_labels(plan)
        .into_iter()
        .filter(|(k, v)| current(&pod.metadata.labels, k).as_ref() != Some(v))
        .collect();
    add_entries(
        &mut ops,
        pointer(&["metadata", "labels"]),
        pod.metadata.labels.is_some(),
        &labels,
    )?;
    let annotations: Vec<(&str, String)> = desired_annotations(plan)
        .into_iter()
        .filter(|(k, _)| current(&pod.metadata.annotations, k).is_none())
        .collect();
    add_entries(
        &mut ops,
        pointer(&["metadata", "annotations"]),
        pod.metadata.annotations.is_some(),
        &annotations,
    )?;
    for target in &plan.targets {
        app_container(target, plan, false, &mut ops)?;
    }
    Ok(Patch(ops))
}

fn desired_labels(plan: &Plan<'_>) -> Vec<(&'static str, String)> {
    vec![(LABEL_BINDING, plan.binding_name.to_owned())]
}

fn desired_annotations(plan: &Plan<'_>) -> Vec<(&'static str, String)> {
    let mut annotations = vec![(ANNOTATION_STATUS, STATUS_INJECTED.to_owned())];
    if let Some(generation) = plan.binding.metadata.generation {
        annotations.push((ANNOTATION_BINDING_GENERATION, generation.to_string()));
    }
    annotations
}

/// Labels and annotations, added or (for a key the pod already has, say a forged
/// `credvend.io/binding`) replaced by `add`, which JSON Patch defines as replacing an existing
/// member.
fn metadata(pod: &Pod, plan: &Plan<'_>, ops: &mut Ops) -> Result<(), serde_json::Error> {
    add_entries(
        ops,
        pointer(&["metadata", "labels"]),
        pod.metadata.labels.is_some(),
        &desired_labels(plan),
    )?;
    add_entries(
        ops,
        pointer(&["metadata", "annotations"]),
        pod.metadata.annotations.is_some(),
        &desired_annotations(plan),
    )
}

/// `agent_inserted`: an earlier operation of this patch inserted the agent at
/// `initContainers/0`, so every original init container has moved one place down.
fn app_container(
    target: &Target<'_>,
    plan: &Plan<'_>,
    agent_inserted: bool,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    let index = match target.list {
        ContainerList::Init if agent_inserted => target.index + 1,
        ContainerList::Init | ContainerList::Regular => target.index,
    };
    let index = index.to_string();
    let base = ["spec", target.list.field(), index.as_str()];
    let container = target.container;
    add_items(
        ops,
        pointer(&[&base[..], &["env"]].concat()),
        container.env.is_some(),
        &apps::env_to_add(plan, container),
    )?;
    if apps::has_auth_mount(container) {
        return Ok(());
    }
    add_items(
        ops,
        pointer(&[&base[..], &["volumeMounts"]].concat()),
        container.volume_mounts.is_some(),
        &[apps::auth_mount()],
    )
}

/// Adds `items` to the array at `path`: the whole array when the pod has none, else one
/// append per item.
fn add_items<T: Serialize>(
    ops: &mut Ops,
    path: PointerBuf,
    exists: bool,
    items: &[T],
) -> Result<(), serde_json::Error> {
    if items.is_empty() {
        return Ok(());
    }
    if !exists {
        ops.push(add(path, items)?);
        return Ok(());
    }
    for item in items {
        ops.push(add(path.with_trailing_token("-"), item)?);
    }
    Ok(())
}

/// Adds `entries` to the string map at `path`: the whole map when the pod has none, else one
/// key at a time (escaped), leaving the other keys alone.
fn add_entries(
    ops: &mut Ops,
    path: PointerBuf,
    exists: bool,
    entries: &[(&str, String)],
) -> Result<(), serde_json::Error> {
    if !exists {
        let map: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(v.as_str())))
            .collect();
        ops.push(add(path, map)?);
        return Ok(());
    }
    for (key, value) in entries {
        ops.push(add(path.with_trailing_token(*key), value)?);
    }
    Ok(())
}

/// A pointer from unescaped tokens; escaping happens here, once.
pub(super) fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: impl Serialize) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Add(AddOperation {
        path,
        value: serde_json::to_value(value)?,
    }))
}
