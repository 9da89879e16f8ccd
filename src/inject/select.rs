//! Reading what the pod asks for (annotations), refusing pod shapes the agent cannot serve,
//! and choosing the binding.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::{
    AGENT_CONTAINER_NAME, ANNOTATION_BINDING, ANNOTATION_BINDING_GENERATION,
    ANNOTATION_CONTAINER_BINDINGS, ANNOTATION_INCLUDE_CONTAINERS, ANNOTATION_INJECT,
    ANNOTATION_PORT, ANNOTATION_SKIP_CONTAINERS, ANNOTATION_STATUS, AUTH_MOUNT_PATH, AUTH_VOLUME,
    Candidates, DenyReason, InjectSettings, LABEL_BINDING, RESERVED_VOLUMES, SkipReason,
};
use crate::crd::AWSRoleBinding;

/// What the annotations ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request<'a> {
    /// Nothing to do.
    Skip(SkipReason),
    /// Inject, with the binding named by `credvend.io/binding` if any.
    Inject { binding: Option<&'a str> },
}

/// Reads the annotations that decide whether to act at all.
///
/// An explicit `credvend.io/inject: "false"` wins over `credvend.io/binding`;
/// `credvend.io/binding` alone is a request. A pod that does not ask but carries credvend's
/// markers is refused: they would count it for a binding it does not use.
pub(super) fn request(pod: &Pod) -> Result<Request<'_>, DenyReason> {
    let binding = annotation(pod, ANNOTATION_BINDING)
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let skip = |reason| {
        let markers = markers(pod);
        if markers.is_empty() {
            Ok(Request::Skip(reason))
        } else {
            Err(DenyReason::MarkersWithoutInjection(markers))
        }
    };
    match annotation(pod, ANNOTATION_INJECT) {
        Some("false") => skip(SkipReason::OptedOut),
        Some("true") => Ok(Request::Inject { binding }),
        Some(other) => Err(DenyReason::InvalidInjectAnnotation(other.to_owned())),
        None if binding.is_some() => Ok(Request::Inject { binding }),
        None => skip(SkipReason::NotRequested),
    }
}

/// What credvend writes on the pods it injects, as found on `pod`.
fn markers(pod: &Pod) -> Vec<String> {
    let mut found = Vec::new();
    if pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_BINDING))
    {
        found.push(format!("the label {LABEL_BINDING}"));
    }
    for key in [ANNOTATION_STATUS, ANNOTATION_BINDING_GENERATION] {
        if annotation(pod, key).is_some() {
            found.push(format!("the annotation {key}"));
        }
    }
    found
}

/// The decision on a pod update: adding or changing the `credvend.io/binding` label is
/// refused, because only an injection may count a pod for a binding (removing it is allowed).
pub fn label_change(
    old: Option<&std::collections::BTreeMap<String, String>>,
    new: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), DenyReason> {
    let value = |labels: Option<&std::collections::BTreeMap<String, String>>| {
        labels.and_then(|l| l.get(LABEL_BINDING)).cloned()
    };
    match (value(old), value(new)) {
        (_, None) => Ok(()),
        (Some(before), Some(after)) if before == after => Ok(()),
        _ => Err(DenyReason::BindingLabelChanged),
    }
}

pub(super) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Per-pod choices from annotations, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Options {
    /// Loopback port of the credentials endpoint.
    pub port: u16,
    /// Containers that must not get credentials.
    pub skip: BTreeSet<String>,
    /// When set, the only containers that get credentials.
    pub include: Option<BTreeSet<String>>,
    /// Containers that use another binding than the pod's default one: container → binding.
    pub container_bindings: BTreeMap<String, String>,
}

pub(super) fn options(
    pod: &Pod,
    spec: &PodSpec,
    settings: &InjectSettings,
) -> Result<Options, DenyReason> {
    let skip = annotation(pod, ANNOTATION_SKIP_CONTAINERS);
    let include = annotation(pod, ANNOTATION_INCLUDE_CONTAINERS);
    if skip.is_some() && include.is_some() {
        return Err(DenyReason::SkipAndInclude);
    }
    let options = Options {
        port: port(annotation(pod, ANNOTATION_PORT), settings)?,
        skip: container_names(ANNOTATION_SKIP_CONTAINERS, skip, spec)?,
        include: include
            .map(|value| container_names(ANNOTATION_INCLUDE_CONTAINERS, Some(value), spec))
            .transpose()?,
        container_bindings: container_bindings(
            annotation(pod, ANNOTATION_CONTAINER_BINDINGS),
            spec,
        )?,
    };
    if let Some(container) = options
        .container_bindings
        .keys()
        .find(|c| !options.gets_credentials(c))
    {
        return Err(DenyReason::ContainerBindingForExcluded(container.clone()));
    }
    Ok(options)
}

impl Options {
    /// Whether the container called `name` gets credentials at all.
    fn gets_credentials(&self, name: &str) -> bool {
        !self.skip.contains(name) && self.include.as_ref().is_none_or(|i| i.contains(name))
    }

    /// The bindings `credvend.io/container-bindings` names.
    pub(super) fn mapped_bindings(&self) -> BTreeSet<&str> {
        self.container_bindings
            .values()
            .map(String::as_str)
            .collect()
    }
}

/// `worker=queue-reader,uploader=s3-writer`: containers of this pod mapped to bindings.
fn container_bindings(
    value: Option<&str>,
    spec: &PodSpec,
) -> Result<BTreeMap<String, String>, DenyReason> {
    let mut map = BTreeMap::new();
    let invalid = |why: String| DenyReason::InvalidContainerBindings {
        value: value.unwrap_or_default().to_owned(),
        why,
    };
    for entry in value.unwrap_or_default().split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let (container, binding) = entry
            .split_once('=')
            .map(|(c, b)| (c.trim(), b.trim()))
            .filter(|(c, b)| !c.is_empty() && !b.is_empty())
            .ok_or_else(|| invalid(format!("{entry:?} is not <container>=<binding>")))?;
        if map
            .insert(container.to_owned(), binding.to_owned())
            .is_some()
        {
            return Err(invalid(format!("container {container:?} is listed twice")));
        }
    }
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    check_known(ANNOTATION_CONTAINER_BINDINGS, &names, spec)?;
    Ok(map)
}

fn port(value: Option<&str>, settings: &InjectSettings) -> Result<u16, DenyReason> {
    let Some(value) = value else {
        return Ok(settings.default_port);
    };
    let invalid = |why| DenyReason::InvalidPort {
        value: value.to_owned(),
        why,
        metrics_port: settings.metrics_port,
        default_port: settings.default_port,
    };
    let port: u16 = value.parse().map_err(|_| invalid("not a port number"))?;
    if port < 1024 {
        return Err(invalid(
            "ports below 1024 need a privilege the agent does not have",
        ));
    }
    if port == settings.metrics_port {
        return Err(invalid("that is the agent's metrics port"));
    }
    Ok(port)
}

/// The comma-separated container names of `annotation`, each of which the pod must have:
/// a typo would otherwise give credentials to a container meant to be left out, or leave out
/// one meant to have them.
fn container_names(
    annotation: &'static str,
    value: Option<&str>,
    spec: &PodSpec,
) -> Result<BTreeSet<String>, DenyReason> {
    let names: BTreeSet<String> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    let listed: Vec<&str> = names.iter().map(String::as_str).collect();
    check_known(annotation, &listed, spec)?;
    Ok(names)
}

fn check_known(annotation: &'static str, names: &[&str], spec: &PodSpec) -> Result<(), DenyReason> {
    let known: Vec<String> = all_containers(spec).map(|(_, c)| c.name.clone()).collect();
    let unknown: Vec<String> = names
        .iter()
        .filter(|name| !known.iter().any(|k| k == *name))
        .map(|name| (*name).to_owned())
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(DenyReason::UnknownContainers {
            annotation,
            unknown,
            known,
        })
    }
}

/// The init container named like our agent, if the pod has one (whether it really is our agent
/// is checked against the chosen binding later).
pub(super) fn existing_agent(spec: &PodSpec) -> Option<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == AGENT_CONTAINER_NAME)
}

/// Refuses pods the agent cannot serve safely or that collide with what credvend adds.
/// `has_agent`: the pod has an init container named like our agent, whose volumes are then
/// checked with it instead of being refused here.
pub(super) fn check_pod(
    spec: &PodSpec,
    options: &Options,
    settings: &InjectSettings,
    has_agent: bool,
) -> Result<(), DenyReason> {
    if spec.host_network == Some(true) {
        return Err(DenyReason::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(DenyReason::Windows);
    }
    if spec
        .containers
        .iter()
        .any(|c| c.name == AGENT_CONTAINER_NAME)
    {
        return Err(DenyReason::ForeignAgentContainer {
            list: ContainerList::Regular.field(),
            why: "credvend's agent is an init container",
        });
    }
    if !has_agent
        && let Some(volume) = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| RESERVED_VOLUMES.contains(&v.name.as_str()))
    {
        return Err(DenyReason::ForeignVolume(volume.name.clone()));
    }
    check_ports(spec, options.port, settings.metrics_port)?;
    for target in targets(spec, options) {
        // With our agent present, our own read-only mount is a container already configured.
        let taken = target.container.volume_mounts.iter().flatten().any(|m| {
            m.mount_path.trim_end_matches('/') == AUTH_MOUNT_PATH
                && !(has_agent && m.name == AUTH_VOLUME && m.mount_path == AUTH_MOUNT_PATH)
        });
        if taken {
            return Err(DenyReason::MountPathTaken {
                container: target.container.name.clone(),
                path: AUTH_MOUNT_PATH,
            });
        }
    }
    Ok(())
}

/// Containers share the pod's network namespace, so a declared port is a certain collision.
/// The agent's own metrics port is not a collision; whether it is our agent is checked later.
fn check_ports(spec: &PodSpec, port: u16, metrics_port: u16) -> Result<(), DenyReason> {
    for (_, container) in all_containers(spec)
        .filter(|(list, c)| !(*list == ContainerList::Init && c.name == AGENT_CONTAINER_NAME))
    {
        for declared in container.ports.iter().flatten() {
            if declared.container_port == i32::from(port) {
                return Err(DenyReason::CredentialsPortInUse {
                    container: container.name.clone(),
                    port,
                });
            }
            if declared.container_port == i32::from(metrics_port) {
                return Err(DenyReason::MetricsPortInUse {
                    container: container.name.clone(),
                    port: metrics_port,
                });
            }
        }
    }
    Ok(())
}

/// The pod's service account, as the API server will default it.
pub(super) fn service_account(spec: &PodSpec) -> &str {
    // `serviceAccount` is the deprecated alias some manifests still use.
    [&spec.service_account_name, &spec.service_account]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|name| !name.is_empty())
        .unwrap_or("default")
}

/// Chooses the binding: the one named by the annotation (which must name the pod's service
/// account), else the only one in the namespace that names the pod's service account, leaving
/// out those that `mapped` (`credvend.io/container-bindings`) gives to some containers when
/// others remain: with a queue reader mapped to one container, "the rest" is the other.
pub(super) fn binding<'b>(
    requested: Option<&str>,
    service_account: &str,
    candidates: &Candidates<'b>,
    mapped: &BTreeSet<&str>,
) -> Result<&'b AWSRoleBinding, DenyReason> {
    let namespace = candidates.namespace;
    let mut in_namespace = candidates
        .bindings
        .iter()
        .copied()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace));
    if let Some(name) = requested {
        let binding = in_namespace
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| DenyReason::UnknownBinding {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        if binding.spec.service_account_name != service_account {
            return Err(DenyReason::WrongServiceAccount {
                namespace: namespace.to_owned(),
                binding: name.to_owned(),
                binding_service_account: binding.spec.service_account_name.clone(),
                pod_service_account: service_account.to_owned(),
            });
        }
        return Ok(binding);
    }
    let mut matching: Vec<&AWSRoleBinding> = in_namespace
        .filter(|b| b.spec.service_account_name == service_account)
        .collect();
    let unmapped = |b: &&AWSRoleBinding| !mapped.contains(b.metadata.name.as_deref().unwrap_or(""));
    if matching.iter().any(unmapped) {
        matching.retain(unmapped);
    }
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(DenyReason::NoBinding {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }),
        many => {
            let mut names: Vec<String> = many
                .iter()
                .map(|b| b.metadata.name.clone().unwrap_or_default())
                .collect();
            names.sort();
            Err(DenyReason::AmbiguousBindings {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                names,
            })
        }
    }
}

/// Which list of the pod spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContainerList {
    /// `spec.initContainers`.
    Init,
    /// `spec.containers`.
    Regular,
}

impl ContainerList {
    /// The field name in the pod spec.
    pub(super) fn field(self) -> &'static str {
        match self {
            Self::Init => "initContainers",
            Self::Regular => "containers",
        }
    }
}

/// A container that gets the credentials environment, at its index in the original pod.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub list: ContainerList,
    pub index: usize,
    pub container: &'a Container,
    /// The binding it uses, when not the pod's default one (`credvend.io/container-bindings`).
    pub binding: Option<&'a str>,
}

/// Every container that gets credentials (not skipped, included if there is a list) except
/// the agent, init containers included: the agent is inserted before all of them and its
/// startup probe holds them back until credentials are ready.
pub(super) fn targets<'a>(spec: &'a PodSpec, options: &'a Options) -> Vec<Target<'a>> {
    let target = |list, (index, container): (usize, &'a Container)| Target {
        list,
        index,
        container,
        binding: options
            .container_bindings
            .get(&container.name)
            .map(String::as_str),
    };
    let init = spec.init_containers.iter().flatten().enumerate();
    let init = init.map(|c| target(ContainerList::Init, c));
    let regular = spec.containers.iter().enumerate();
    let regular = regular.map(|c| target(ContainerList::Regular, c));
    init.chain(regular)
        .filter(|t| options.gets_credentials(&t.container.name))
        .filter(|t| !(t.list == ContainerList::Init && t.container.name == AGENT_CONTAINER_NAME))
        .collect()
}

/// The bindings `credvend.io/container-bindings` names besides `default`, sorted by name, each
/// of the namespace and for the pod's service account.
pub(super) fn extra_bindings<'b>(
    options: &Options,
    default: &str,
    service_account: &str,
    candidates: &Candidates<'b>,
) -> Result<Vec<&'b AWSRoleBinding>, DenyReason> {
    let names: BTreeSet<&str> = options
        .container_bindings
        .values()
        .map(String::as_str)
        .filter(|name| *name != default)
        .collect();
    names
        .into_iter()
        .map(|name| binding(Some(name), service_account, candidates, &BTreeSet::new()))
        .collect()
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (ContainerList, &Container)> {
    let init = spec.init_containers.iter().flatten();
    init.map(|c| (ContainerList::Init, c))
        .chain(spec.containers.iter().map(|c| (ContainerList::Regular, c)))
}
