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
        app_container(target, plan, &mut ops)?;
    }
    Ok(Patch(ops))
}

fn metadata(pod: &Pod, plan: &Plan<'_>, ops: &mut Ops) -> Result<(), serde_json::Error> {
    let labels = [(LABEL_BINDING, plan.binding_name.to_owned())];
    add_entries(
        ops,
        pointer(&["metadata", "labels"]),
        pod.metadata.labels.is_some(),
        &labels,
    )?;
    let mut annotations = vec![(ANNOTATION_STATUS, STATUS_INJECTED.to_owned())];
    if let Some(generation) = plan.binding.metadata.generation {
        annotations.push((ANNOTATION_BINDING_GENERATION, generation.to_string()));
    }
    add_entries(
        ops,
        pointer(&["metadata", "annotations"]),
        pod.metadata.annotations.is_some(),
        &annotations,
    )
}

fn app_container(
    target: &Target<'_>,
    plan: &Plan<'_>,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    // The agent was inserted at initContainers/0 by an earlier operation of this patch, so
    // every original init container has moved one place down.
    let index = match target.list {
        ContainerList::Init => target.index + 1,
        ContainerList::Regular => target.index,
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
