//! Reading what the pod asks for (annotations), refusing pod shapes the agent cannot serve,
//! and choosing the binding.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::{
    AGENT_CONTAINER_NAME, ANNOTATION_BINDING, ANNOTATION_INJECT, ANNOTATION_PORT,
    ANNOTATION_SKIP_CONTAINERS, ANNOTATION_STATUS, AUTH_MOUNT_PATH, AUTH_VOLUME, CACHE_VOLUME,
    Candidates, DenyReason, InjectSettings, STATUS_INJECTED, SkipReason, TOKEN_VOLUME,
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
/// `credvend.io/status: injected` wins over everything (idempotency); an explicit
/// `credvend.io/inject: "false"` wins over `credvend.io/binding`; `credvend.io/binding` alone
/// is a request.
pub(super) fn request(pod: &Pod) -> Result<Request<'_>, DenyReason> {
    if annotation(pod, ANNOTATION_STATUS) == Some(STATUS_INJECTED) {
        return Ok(Request::Skip(SkipReason::AlreadyInjected));
    }
    let binding = annotation(pod, ANNOTATION_BINDING)
        .map(str::trim)
        .filter(|name| !name.is_empty());
    match annotation(pod, ANNOTATION_INJECT) {
        Some("false") => Ok(Request::Skip(SkipReason::OptedOut)),
        Some("true") => Ok(Request::Inject { binding }),
        Some(other) => Err(DenyReason::InvalidInjectAnnotation(other.to_owned())),
        None if binding.is_some() => Ok(Request::Inject { binding }),
        None => Ok(Request::Skip(SkipReason::NotRequested)),
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
}

pub(super) fn options(
    pod: &Pod,
    spec: &PodSpec,
    settings: &InjectSettings,
) -> Result<Options, DenyReason> {
    Ok(Options {
        port: port(annotation(pod, ANNOTATION_PORT), settings)?,
        skip: skip_containers(annotation(pod, ANNOTATION_SKIP_CONTAINERS), spec)?,
    })
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

fn skip_containers(value: Option<&str>, spec: &PodSpec) -> Result<BTreeSet<String>, DenyReason> {
    let names: BTreeSet<String> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    let known: Vec<String> = all_containers(spec).map(|(_, c)| c.name.clone()).collect();
    let unknown: Vec<String> = names
        .iter()
        .filter(|name| !known.contains(name))
        .cloned()
        .collect();
    if unknown.is_empty() {
        Ok(names)
    } else {
        Err(DenyReason::UnknownSkipContainers { unknown, known })
    }
}

/// Refuses pods the agent cannot serve safely or that collide with what credvend adds.
pub(super) fn check_pod(
    spec: &PodSpec,
    options: &Options,
    settings: &InjectSettings,
) -> Result<(), DenyReason> {
    if spec.host_network == Some(true) {
        return Err(DenyReason::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(DenyReason::Windows);
    }
    for (list, container) in all_containers(spec) {
        if container.name == AGENT_CONTAINER_NAME {
            return Err(DenyReason::ForeignAgentContainer { list: list.field() });
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if [TOKEN_VOLUME, AUTH_VOLUME, CACHE_VOLUME].contains(&volume.name.as_str()) {
            return Err(DenyReason::ForeignVolume(volume.name.clone()));
        }
    }
    check_ports(spec, options.port, settings.metrics_port)?;
    for target in targets(spec, options) {
        let taken = target
            .container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == AUTH_MOUNT_PATH);
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
fn check_ports(spec: &PodSpec, port: u16, metrics_port: u16) -> Result<(), DenyReason> {
    for (_, container) in all_containers(spec) {
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
/// account), else the only one in the namespace that names the pod's service account.
pub(super) fn binding<'b>(
    requested: Option<&str>,
    service_account: &str,
    candidates: &Candidates<'b>,
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
    let matching: Vec<&AWSRoleBinding> = in_namespace
        .filter(|b| b.spec.service_account_name == service_account)
        .collect();
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
}

/// Every container except the skipped ones, init containers included: the agent is inserted
/// before all of them and its startup probe holds them back until credentials are ready.
pub(super) fn targets<'a>(spec: &'a PodSpec, options: &Options) -> Vec<Target<'a>> {
    let init = spec.init_containers.iter().flatten().enumerate();
    let init = init.map(|(index, container)| Target {
        list: ContainerList::Init,
        index,
        container,
    });
    let regular = spec.containers.iter().enumerate();
    let regular = regular.map(|(index, container)| Target {
        list: ContainerList::Regular,
        index,
        container,
    });
    init.chain(regular)
        .filter(|t| !options.skip.contains(&t.container.name))
        .collect()
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (ContainerList, &Container)> {
    let init = spec.init_containers.iter().flatten();
    init.map(|c| (ContainerList::Init, c))
        .chain(spec.containers.iter().map(|c| (ContainerList::Regular, c)))
}
