//! The pod mutation: given a pod being created, the `AWSRoleBinding`s of its namespace and the
//! operator's settings, decide whether to add the credvend agent and, if so, exactly how.
//!
//! This is a pure function so that every rule of admission can be tested on plain data, and so
//! that the webhook stays a thin wrapper that reads bindings from memory and translates a
//! [`Decision`] into an `AdmissionResponse`. The rules: a pod is either injected completely or
//! denied with a message that names the fix, never half-injected; the patch only *adds* (it
//! never rewrites a container or the pod, so fields this code does not know survive).
//!
//! Whether a pod is already injected is decided from the pod itself, never from the markers
//! credvend writes (`credvend.io/status`, the `credvend.io/binding` label), which a pod's author
//! can write as well as we can: a pod is injected when it carries our agent exactly as we would
//! inject it for the binding chosen now (image, arguments, mounts, security context; fields the
//! API server defaults may be added). Every check runs on every pod, injected or not. A pod that
//! carries our agent is *completed* instead of injected again: containers that a later webhook
//! added (a mesh proxy, on reinvocation) get the environment and mount they lack, and the agent
//! is never added twice. A pod that carries the markers without asking for credentials is
//! refused, so a forged label cannot count toward a binding's status.
//!
//! The agent becomes the first init container, a native sidecar with a startup probe, so every
//! other container of the pod, init containers included, starts once credentials are ready.
//! That is why init containers get the credentials environment too. The agent mounts an empty
//! in-memory directory at the Kubernetes API token path, which makes the ServiceAccount
//! admission plugin (re-run after our patch) leave it without an API token it never needs.

mod agent;
mod apps;
mod document;
mod injector;
mod patch;
mod select;
mod settings;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{self, AWSRoleBinding};

pub use agent::METRICS_PORT_NAME;
pub use document::PatchDocument;
pub use injector::Injector;
pub use select::label_change;
pub use settings::{
    AgentResources, DEFAULT_AGENT_IMAGE, DEFAULT_METRICS_PORT, DEFAULT_PORT, InjectSettings,
};

/// Pod annotation: `"true"` asks for the binding that names the pod's service account,
/// `"false"` opts out.
pub const ANNOTATION_INJECT: &str = "credvend.io/inject";
/// Pod annotation naming the binding to use (pod label written by the webhook, too).
pub const ANNOTATION_BINDING: &str = "credvend.io/binding";
/// Pod annotation: comma-separated containers that must not get credentials.
pub const ANNOTATION_SKIP_CONTAINERS: &str = "credvend.io/skip-containers";
/// Pod annotation: comma-separated containers that are the only ones to get credentials
/// (instead of [`ANNOTATION_SKIP_CONTAINERS`], never with it).
pub const ANNOTATION_INCLUDE_CONTAINERS: &str = "credvend.io/include-containers";
/// Pod annotation: `container=binding,…`, containers that use another binding of the pod's
/// service account than the default one; the one agent serves every binding of the pod.
pub const ANNOTATION_CONTAINER_BINDINGS: &str = "credvend.io/container-bindings";
/// Pod annotation: loopback port of the credentials endpoint.
pub const ANNOTATION_PORT: &str = "credvend.io/port";
/// Annotation written by the webhook on the pods it injects (for people and tools; admission
/// decides from the pod's containers, not from it).
pub const ANNOTATION_STATUS: &str = "credvend.io/status";
/// Value of [`ANNOTATION_STATUS`] on injected pods.
pub const STATUS_INJECTED: &str = "injected";
/// Annotation written by the webhook: the binding generation the pod was built from.
pub const ANNOTATION_BINDING_GENERATION: &str = "credvend.io/binding-generation";
/// Label written by the webhook so the controller can list and count a binding's pods.
pub const LABEL_BINDING: &str = "credvend.io/binding";

/// Name of the injected init container (reserved: a pod may not bring its own).
pub const AGENT_CONTAINER_NAME: &str = "credvend-agent";
/// Projected service-account token volume, mounted only into the agent.
pub const TOKEN_VOLUME: &str = "credvend-token";
/// In-memory volume holding the authorization token the apps send.
pub const AUTH_VOLUME: &str = "credvend-auth";
/// Empty in-memory volume the agent mounts at [`API_TOKEN_MOUNT_PATH`], so the ServiceAccount
/// admission plugin, which skips containers that already mount something there, gives the
/// agent no Kubernetes API token.
pub const NO_API_TOKEN_VOLUME: &str = "credvend-no-api-token";
/// Where the ServiceAccount admission plugin mounts the Kubernetes API token.
pub const API_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Volume names credvend adds; a pod without our agent may not bring them.
pub const RESERVED_VOLUMES: [&str; 4] =
    [TOKEN_VOLUME, AUTH_VOLUME, CACHE_VOLUME, NO_API_TOKEN_VOLUME];
/// Where the agent reads the projected token.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/credvend.io/serviceaccount";
/// File name of the projected token inside [`TOKEN_MOUNT_PATH`].
pub const TOKEN_FILE_NAME: &str = "token";
/// Where the authorization token volume is mounted, in the agent and in apps.
pub const AUTH_MOUNT_PATH: &str = "/var/run/credvend/auth";
/// File name of the authorization token inside [`AUTH_MOUNT_PATH`].
pub const AUTH_FILE_NAME: &str = "token";
/// In-memory volume where the agent keeps a copy of the credentials it serves, so that a
/// restarted sidecar serves at once; mounted only into the agent, never into apps.
pub const CACHE_VOLUME: &str = "credvend-cache";
/// Where the credentials cache volume is mounted in the agent.
pub const CACHE_MOUNT_PATH: &str = "/var/run/credvend/cache";
/// File name of the credentials copy inside [`CACHE_MOUNT_PATH`].
pub const CACHE_FILE_NAME: &str = "credentials.json";

/// The bindings the webhook found for the pod's namespace (from its store, or from a live
/// lookup after a miss). Bindings of other namespaces are ignored, whatever is passed.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    /// The namespace of the pod under admission (from the admission request: the pod object
    /// itself may not carry it yet).
    pub namespace: &'a str,
    /// The bindings to choose from.
    pub bindings: &'a [&'a AWSRoleBinding],
}

/// What the webhook should do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit with this JSON patch.
    Inject {
        /// Only `add` operations.
        patch: PatchDocument,
        /// Admission warnings (shown by kubectl): things that work but probably not as meant.
        warnings: Vec<String>,
        /// Name of the binding used.
        binding: String,
        /// A fresh injection, or the completion of a pod that already carries our agent.
        kind: Injection,
    },
    /// Admit unchanged.
    Skip {
        /// Why nothing is done.
        reason: SkipReason,
    },
    /// Refuse the pod; `reason.to_string()` is the message for the user.
    Deny {
        /// What is wrong and how to fix it.
        reason: DenyReason,
    },
}

/// What an [`Decision::Inject`] patch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Adds the agent, its volumes, the markers and every container's environment.
    Fresh,
    /// The pod already carries our agent (reinvocation after another webhook, or a copied pod):
    /// adds only what containers and markers lack.
    Completed,
}

impl Injection {
    /// The `result` label of `credvend_admissions_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Fresh => "injected",
            Self::Completed => "completed",
        }
    }
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// No annotation asks for credentials.
    #[error(
        "the pod does not ask for credentials (no credvend.io/inject: \"true\" or credvend.io/binding annotation)"
    )]
    NotRequested,
    /// `credvend.io/inject: "false"`.
    #[error("the pod opts out with credvend.io/inject: \"false\"")]
    OptedOut,
    /// The pod carries our agent and every container is configured (reinvocation).
    #[error(
        "the pod already carries the credvend agent and every container is configured to use it"
    )]
    AlreadyInjected,
}

impl SkipReason {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotRequested => "not_requested",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
        }
    }
}

/// Why a pod is refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// `credvend.io/inject` is neither "true" nor "false".
    #[error(
        "annotation credvend.io/inject is {0:?}; set it to \"true\" to get AWS credentials from credvend, or \"false\" to opt out"
    )]
    InvalidInjectAnnotation(String),
    /// `credvend.io/binding` names a binding that does not exist.
    #[error(
        "annotation credvend.io/binding names AWSRoleBinding {name:?}, which does not exist in namespace {namespace:?}; create it first or fix the annotation (kubectl get awsrolebindings -n {namespace})"
    )]
    UnknownBinding {
        /// The pod's namespace.
        namespace: String,
        /// The name in the annotation.
        name: String,
    },
    /// The chosen binding is for another service account.
    #[error(
        "AWSRoleBinding {namespace}/{binding} does not allow service account {pod_service_account:?} (it names {binding_service_account:?}); run the pod as serviceAccountName: {binding_service_account}, or use a binding for {pod_service_account:?}"
    )]
    WrongServiceAccount {
        /// The pod's namespace.
        namespace: String,
        /// The binding's name.
        binding: String,
        /// `spec.serviceAccountName` of the binding.
        binding_service_account: String,
        /// The pod's service account.
        pod_service_account: String,
    },
    /// Several bindings name the pod's service account.
    #[error("AWSRoleBindings {} in namespace {namespace:?} all name service account {service_account:?}; choose one with the annotation credvend.io/binding: <name>", names.join(", "))]
    AmbiguousBindings {
        /// The pod's namespace.
        namespace: String,
        /// The pod's service account.
        service_account: String,
        /// The matching bindings, sorted.
        names: Vec<String>,
    },
    /// No binding names the pod's service account.
    #[error(
        "no AWSRoleBinding in namespace {namespace:?} names service account {service_account:?}; create one with spec.serviceAccountName: {service_account}, or name one with the annotation credvend.io/binding"
    )]
    NoBinding {
        /// The pod's namespace.
        namespace: String,
        /// The pod's service account.
        service_account: String,
    },
    /// The chosen binding fails validation.
    #[error(
        "AWSRoleBinding {namespace}/{name} is invalid: {problems}; fix the binding (kubectl describe awsrolebinding {name} -n {namespace})"
    )]
    InvalidBinding {
        /// The pod's namespace.
        namespace: String,
        /// The binding's name.
        name: String,
        /// Every problem, joined.
        problems: String,
    },
    /// `hostNetwork: true`: loopback would be the node's.
    #[error(
        "credvend cannot serve pods with hostNetwork: true: its endpoint on 127.0.0.1 would be on the node's loopback, open to every host-network pod of the node; remove hostNetwork, or the credvend.io annotations"
    )]
    HostNetwork,
    /// `spec.os.name: windows`.
    #[error(
        "the credvend agent runs on Linux only and this pod sets spec.os.name: windows; remove the credvend.io annotations from Windows pods"
    )]
    Windows,
    /// The pod brings its own container named like the agent.
    #[error(
        "the pod already has a container named credvend-agent in spec.{list}, which is not the agent credvend injects for this pod ({why}); remove it (with any credvend.io/status annotation and credvend.io/binding label) and let credvend add the agent, or rename it: credvend reserves that name"
    )]
    ForeignAgentContainer {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// How it differs.
        why: &'static str,
    },
    /// The pod brings its own volume named like one of credvend's.
    #[error(
        "the pod already has a volume named {0:?}, which credvend reserves and did not add; rename that volume"
    )]
    ForeignVolume(String),
    /// The pod carries what only credvend writes, without asking for credentials.
    #[error(
        "the pod carries {}, which only credvend writes when it injects a pod, but does not ask for credentials; remove what credvend writes, or ask for credentials with the annotation credvend.io/inject: \"true\"",
        .0.join(" and ")
    )]
    MarkersWithoutInjection(Vec<String>),
    /// An update adds or changes the `credvend.io/binding` label.
    #[error(
        "the label credvend.io/binding is written by credvend when it injects a pod and counts the pod for that AWSRoleBinding; it cannot be added or changed later (it may be removed); create the pod with credvend.io/inject: \"true\" or credvend.io/binding instead"
    )]
    BindingLabelChanged,
    /// A container already mounts something where the authorization token goes.
    #[error(
        "container {container:?} already mounts a volume at {path}, where credvend puts the authorization token; move that mount, or list the container in credvend.io/skip-containers"
    )]
    MountPathTaken {
        /// The container.
        container: String,
        /// [`AUTH_MOUNT_PATH`].
        path: &'static str,
    },
    /// `credvend.io/port` is not usable.
    #[error(
        "annotation credvend.io/port is {value:?}: {why}; use a port from 1024 to 65535 other than {metrics_port} (the agent's metrics port), or remove the annotation to use {default_port}"
    )]
    InvalidPort {
        /// The annotation as written.
        value: String,
        /// What is wrong.
        why: &'static str,
        /// The metrics port it must differ from.
        metrics_port: u16,
        /// The port used without the annotation.
        default_port: u16,
    },
    /// A container declares the port the credentials endpoint would use.
    #[error(
        "container {container:?} declares port {port}, which the credvend agent would use for credentials; set the annotation credvend.io/port to a free port"
    )]
    CredentialsPortInUse {
        /// The container.
        container: String,
        /// The port.
        port: u16,
    },
    /// A container declares the agent's metrics port.
    #[error(
        "container {container:?} declares port {port}, which is the credvend agent's metrics port (an operator setting); move the container to another port"
    )]
    MetricsPortInUse {
        /// The container.
        container: String,
        /// The port.
        port: u16,
    },
    /// A container annotation names containers the pod does not have. Refused rather than
    /// ignored: a typo would otherwise give credentials to a container meant to be skipped.
    #[error(
        "annotation {annotation} names {}, not a container of this pod (it has {}); fix the names",
        quoted(unknown),
        quoted(known)
    )]
    UnknownContainers {
        /// The annotation.
        annotation: &'static str,
        /// The names that match no container.
        unknown: Vec<String>,
        /// The pod's containers (init containers included).
        known: Vec<String>,
    },
    /// Both `credvend.io/skip-containers` and `credvend.io/include-containers`.
    #[error(
        "the pod sets both credvend.io/skip-containers and credvend.io/include-containers; use one: list the containers to leave out, or the only ones to give credentials"
    )]
    SkipAndInclude,
    /// `credvend.io/container-bindings` cannot be read.
    #[error(
        "annotation credvend.io/container-bindings is {value:?}: {why}; write it as <container>=<binding>,… such as worker=queue-reader,uploader=s3-writer"
    )]
    InvalidContainerBindings {
        /// The annotation as written.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A container is given a binding but gets no credentials.
    #[error(
        "annotation credvend.io/container-bindings gives container {0:?} a binding, but credvend.io/skip-containers or credvend.io/include-containers leaves it without credentials; remove one of the two"
    )]
    ContainerBindingForExcluded(String),
    /// The admission request carried no pod spec.
    #[error("the pod has no spec")]
    NoSpec,
    /// Building the patch failed; a bug, not a user mistake.
    #[error(
        "credvend could not build the patch for this pod ({0}); this is a bug in credvend, please report it"
    )]
    Internal(String),
}

impl DenyReason {
    /// True when the denial comes from a binding the webhook did not find: its store may be
    /// behind (a binding applied a moment before its pods), so it should look the bindings up
    /// on the API server once and decide again.
    pub fn binding_missing(&self) -> bool {
        matches!(self, Self::UnknownBinding { .. } | Self::NoBinding { .. })
    }

    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidInjectAnnotation(_) => "invalid_inject_annotation",
            Self::UnknownBinding { .. } => "unknown_binding",
            Self::WrongServiceAccount { .. } => "wrong_service_account",
            Self::AmbiguousBindings { .. } => "ambiguous_bindings",
            Self::NoBinding { .. } => "no_binding",
            Self::InvalidBinding { .. } => "invalid_binding",
            Self::HostNetwork => "host_network",
            Self::Windows => "windows",
            Self::ForeignAgentContainer { .. } => "foreign_agent_container",
            Self::ForeignVolume(_) => "foreign_volume",
            Self::MarkersWithoutInjection(_) => "markers_without_injection",
            Self::BindingLabelChanged => "binding_label_changed",
            Self::MountPathTaken { .. } => "mount_path_taken",
            Self::InvalidPort { .. } => "invalid_port",
            Self::CredentialsPortInUse { .. } => "credentials_port_in_use",
            Self::MetricsPortInUse { .. } => "metrics_port_in_use",
            Self::UnknownContainers { .. } => "unknown_containers",
            Self::SkipAndInclude => "skip_and_include",
            Self::InvalidContainerBindings { .. } => "invalid_container_bindings",
            Self::ContainerBindingForExcluded(_) => "container_binding_for_excluded",
            Self::NoSpec => "no_spec",
            Self::Internal(_) => "internal",
        }
    }
}

fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    quoted.join(", ")
}

/// Decides what to do with `pod`; see the module documentation for the rules. The webhook
/// decides through an [`Injector`], which gives the same decisions for less work.
pub fn decide(pod: &Pod, candidates: &Candidates<'_>, settings: &InjectSettings) -> Decision {
    decide_with(pod, candidates, settings, None)
}

fn decide_with(
    pod: &Pod,
    candidates: &Candidates<'_>,
    settings: &InjectSettings,
    injector: Option<&Injector>,
) -> Decision {
    let requested = match select::request(pod) {
        Ok(select::Request::Skip(reason)) => return Decision::Skip { reason },
        Ok(select::Request::Inject { binding }) => binding,
        Err(reason) => return Decision::Deny { reason },
    };
    match plan_and_build(pod, requested, candidates, settings, injector) {
        Ok(decision) => decision,
        Err(reason) => Decision::Deny { reason },
    }
}

fn plan_and_build(
    pod: &Pod,
    requested: Option<&str>,
    candidates: &Candidates<'_>,
    settings: &InjectSettings,
    injector: Option<&Injector>,
) -> Result<Decision, DenyReason> {
    let spec = pod.spec.as_ref().ok_or(DenyReason::NoSpec)?;
    let options = select::options(pod, spec, settings)?;
    let existing_agent = select::existing_agent(spec);
    select::check_pod(spec, &options, settings, existing_agent.is_some())?;
    let service_account = select::service_account(spec);
    let default = select::binding(
        requested,
        service_account,
        candidates,
        &options.mapped_bindings(),
    )?;
    let default_name = binding_name(default);
    let mut bindings = vec![patch::Served {
        binding: default,
        name: default_name,
        validated: check_binding(default, candidates.namespace, settings, injector)?,
    }];
    for binding in select::extra_bindings(&options, default_name, service_account, candidates)? {
        bindings.push(patch::Served {
            binding,
            name: binding_name(binding),
            validated: check_binding(binding, candidates.namespace, settings, injector)?,
        });
    }
    let targets = select::targets(spec, &options);
    let Some(agent_container) = existing_agent else {
        let plan = patch::Plan {
            bindings,
            port: options.port,
            targets,
        };
        let patch = patch::build(pod, spec, &plan, settings, injector)
            .map_err(|e| DenyReason::Internal(e.to_string()))?;
        let mut warnings: Vec<String> = plan
            .bindings
            .iter()
            .flat_map(|b| b.validated.warnings.iter().map(ToString::to_string))
            .collect();
        if plan.targets.is_empty() {
            warnings.push(apps::EVERY_CONTAINER_SKIPPED.to_owned());
        }
        warnings.extend(apps::warnings(&plan));
        return Ok(Decision::Inject {
            patch,
            warnings,
            binding: default_name.to_owned(),
            kind: Injection::Fresh,
        });
    };
    agent::check_ours(agent_container, spec, &bindings, options.port, settings).map_err(|why| {
        DenyReason::ForeignAgentContainer {
            list: "initContainers",
            why,
        }
    })?;
    // Completion: only what is missing, so the agent and its volumes are never added twice.
    let mut plan = patch::Plan {
        bindings,
        port: options.port,
        targets: Vec::new(),
    };
    let pending = targets
        .into_iter()
        .filter(|t| apps::needs_configuration(&plan, t))
        .collect();
    plan.targets = pending;
    let patch = patch::complete(pod, &plan).map_err(|e| DenyReason::Internal(e.to_string()))?;
    if patch.is_empty() {
        return Ok(Decision::Skip {
            reason: SkipReason::AlreadyInjected,
        });
    }
    Ok(Decision::Inject {
        patch,
        warnings: apps::warnings(&plan),
        binding: default_name.to_owned(),
        kind: Injection::Completed,
    })
}

/// The binding must pass the controller's validation and the operator's policy: an invalid
/// one would give the pod an agent that can never obtain credentials, and one whose STS
/// endpoint is not allowed would send the pod's token to whoever runs that endpoint.
///
/// With an `injector`, a version of a binding that passed is not checked again.
fn check_binding(
    binding: &AWSRoleBinding,
    namespace: &str,
    settings: &InjectSettings,
    injector: Option<&Injector>,
) -> Result<Arc<crd::Validated>, DenyReason> {
    let check = || validate_binding(binding, namespace, settings);
    match injector {
        Some(injector) => injector.validated(binding, check),
        None => check().map(Arc::new),
    }
}

fn validate_binding(
    binding: &AWSRoleBinding,
    namespace: &str,
    settings: &InjectSettings,
) -> Result<crd::Validated, DenyReason> {
    let name = binding_name(binding);
    let mut problems: Vec<String> =
        match crd::validate_for(&binding.spec, &settings.allowed_sts_endpoints) {
            Ok(validated) if name.len() <= crd::MAX_BINDING_NAME_LEN => return Ok(validated),
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
    if name.len() > crd::MAX_BINDING_NAME_LEN {
        problems.push(
            "its name is longer than 63 characters and cannot label pods (credvend.io/binding)"
                .to_owned(),
        );
    }
    Err(DenyReason::InvalidBinding {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        problems: problems.join("; "),
    })
}

fn binding_name(binding: &AWSRoleBinding) -> &str {
    binding.metadata.name.as_deref().unwrap_or_default()
}
