//! Turning a plan into JSON-patch `add` operations, written as text as they are decided
//! ([`document`](super::document)).
//!
//! Only additions, at the narrowest path that works: a list or map is created when the pod has
//! none, otherwise items are appended (`/-`) or keys added one by one. Map keys such as
//! `credvend.io/binding` go through JSON-pointer token escaping (`/` becomes `~1`).

use std::collections::BTreeMap;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde::Serialize;

use super::document::{PatchDocument, PatchWriter};
use super::injector::{AgentJson, Injector};

use super::select::{ContainerList, Target};
use super::{
    ANNOTATION_BINDING_GENERATION, ANNOTATION_STATUS, InjectSettings, LABEL_BINDING,
    STATUS_INJECTED, apps,
};
use crate::crd::{AWSRoleBinding, Validated};

/// A binding the pod's agent serves, with its validated form.
#[derive(Debug, Clone)]
pub(super) struct Served<'a> {
    pub binding: &'a AWSRoleBinding,
    pub name: &'a str,
    /// Shared with the [`super::Injector`]'s memo when the webhook decides.
    pub validated: Arc<Validated>,
}

/// Everything decided about a pod that is going to be injected.
#[derive(Debug, Clone)]
pub(super) struct Plan<'a> {
    /// The pod's default binding first (served at `/v1/credentials`), then the others that
    /// `credvend.io/container-bindings` names, sorted by name.
    pub bindings: Vec<Served<'a>>,
    /// Loopback port of the credentials endpoint.
    pub port: u16,
    /// The containers that get the credentials environment.
    pub targets: Vec<Target<'a>>,
}

impl<'a> Plan<'a> {
    /// The pod's default binding.
    pub fn default_binding(&self) -> &Served<'a> {
        // `decide` always puts the default binding first.
        &self.bindings[0]
    }

    /// The binding `target` uses, and whether it is the default one.
    pub fn binding_of(&self, target: &Target<'_>) -> (&Served<'a>, bool) {
        match target
            .binding
            .and_then(|name| self.bindings.iter().skip(1).find(|b| b.name == name))
        {
            Some(other) => (other, false),
            None => (self.default_binding(), true),
        }
    }
}

type Ops = PatchWriter;

/// The patch, in a fixed order: metadata, volumes, the agent, then each application container.
/// The agent and its volumes come from `injector`'s renders when there is one.
pub(super) fn build(
    pod: &Pod,
    spec: &PodSpec,
    plan: &Plan<'_>,
    settings: &InjectSettings,
    injector: Option<&Injector>,
) -> Result<PatchDocument, serde_json::Error> {
    let mut ops = Ops::new();
    metadata(pod, plan, &mut ops)?;
    let agent = match injector {
        Some(injector) => injector.agent_json(&plan.bindings, plan.port)?,
        None => Arc::new(AgentJson::render(&plan.bindings, plan.port, settings)?),
    };
    let volumes = pointer(&["spec", "volumes"]);
    if spec.volumes.is_some() {
        let append = volumes.with_trailing_token("-");
        for volume in &agent.volumes {
            ops.add_json(&append, volume)?;
        }
    } else {
        ops.add_json_array(&volumes, &agent.volumes)?;
    }
    if spec.init_containers.is_some() {
        ops.add_json(&pointer(&["spec", "initContainers", "0"]), &agent.container)?;
    } else {
        ops.add_json_array(
            &pointer(&["spec", "initContainers"]),
            std::slice::from_ref(&agent.container),
        )?;
    }
    for target in &plan.targets {
        app_container(target, plan, true, &mut ops)?;
    }
    Ok(ops.finish())
}

/// The patch for a pod that already carries our agent: the markers it lacks (or carries with
/// another value) and, for each of `plan.targets`, the environment and mount it lacks. Empty
/// when there is nothing to do.
pub(super) fn complete(pod: &Pod, plan: &Plan<'_>) -> Result<PatchDocument, serde_json::Error> {
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
    Ok(ops.finish())
}

fn desired_labels(plan: &Plan<'_>) -> Vec<(&'static str, String)> {
    vec![(LABEL_BINDING, plan.default_binding().name.to_owned())]
}

fn desired_annotations(plan: &Plan<'_>) -> Vec<(&'static str, String)> {
    let mut annotations = vec![(ANNOTATION_STATUS, STATUS_INJECTED.to_owned())];
    if let Some(generation) = plan.default_binding().binding.metadata.generation {
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
        &apps::env_to_add(plan, target),
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
        return ops.add(&path, &items);
    }
    let append = path.with_trailing_token("-");
    for item in items {
        ops.add(&append, item)?;
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
        let map: BTreeMap<&str, &str> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        return ops.add(&path, &map);
    }
    for (key, value) in entries {
        ops.add(&path.with_trailing_token(*key), value)?;
    }
    Ok(())
}

/// A pointer from unescaped tokens; escaping happens here, once.
pub(super) fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}
