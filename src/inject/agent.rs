//! The agent container and credvend's volumes. These are new objects, so they are built typed
//! and serialized whole; existing pod content is never rebuilt this way.
//!
//! The agent gets one `--binding` plan ([`crate::plan::BindingPlan`]) per binding it serves,
//! the default binding first. Each distinct token audience gets its own file in the projected
//! token volume: `token` for the default binding's, `token-<binding>` for the first binding
//! that asks for another.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::patch::Served;
use super::{
    AGENT_CONTAINER_NAME, API_TOKEN_MOUNT_PATH, AUTH_FILE_NAME, AUTH_MOUNT_PATH, AUTH_VOLUME,
    AgentResources, CACHE_FILE_NAME, CACHE_MOUNT_PATH, CACHE_VOLUME, InjectSettings,
    NO_API_TOKEN_VOLUME, TOKEN_FILE_NAME, TOKEN_MOUNT_PATH, TOKEN_VOLUME,
};
use crate::plan::{BindingPlan, HopPlan, Tag};
use crate::session_name::DEFAULT_TEMPLATE;

/// Name of the agent's metrics/health port. Port names are limited to 15 characters, so the
/// longer `credvend-metrics` is not possible.
pub const METRICS_PORT_NAME: &str = "credvend-metric";

/// The native sidecar that exchanges the projected token for credentials and serves them on
/// `127.0.0.1:<port>`.
pub(super) fn container(
    bindings: &[Served<'_>],
    port: u16,
    settings: &InjectSettings,
) -> Container {
    let metrics_port = i32::from(settings.metrics_port);
    Container {
        name: AGENT_CONTAINER_NAME.to_owned(),
        image: Some(settings.agent_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(args(bindings, port, settings)),
        env: Some(vec![
            downward_env("POD_NAME", "metadata.name"),
            downward_env("POD_NAMESPACE", "metadata.namespace"),
            downward_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.to_owned()),
            container_port: metrics_port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Sidecar semantics: started before, and kept running alongside, every other container.
        restart_policy: Some("Always".to_owned()),
        // Holds the next containers back until the first credentials are cached.
        startup_probe: Some(probe(
            "/healthz/ready",
            metrics_port,
            1,
            settings.startup_failure_threshold,
        )),
        readiness_probe: Some(probe("/healthz/ready", metrics_port, 5, 3)),
        liveness_probe: Some(probe("/healthz/live", metrics_port, 10, 3)),
        security_context: Some(security_context(settings)),
        resources: Some(resources(&settings.resources)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            // Writable: the agent creates the authorization token here.
            VolumeMount {
                name: AUTH_VOLUME.to_owned(),
                mount_path: AUTH_MOUNT_PATH.to_owned(),
                ..VolumeMount::default()
            },
            // Writable, and only here: the agent's copy of the credentials it serves.
            VolumeMount {
                name: CACHE_VOLUME.to_owned(),
                mount_path: CACHE_MOUNT_PATH.to_owned(),
                ..VolumeMount::default()
            },
            // Something at the API token path keeps the ServiceAccount admission plugin from
            // mounting the Kubernetes API token: the agent never talks to the API server.
            VolumeMount {
                name: NO_API_TOKEN_VOLUME.to_owned(),
                mount_path: API_TOKEN_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The agent's command line (the image's entrypoint is `credvend`): one plan per binding, then
/// the files and addresses, which the operator decides.
fn args(bindings: &[Served<'_>], port: u16, settings: &InjectSettings) -> Vec<String> {
    let mut args = vec!["agent".to_owned()];
    for (served, token_file) in bindings.iter().zip(token_files(bindings)) {
        let plan = binding_plan(
            served,
            &format!("{TOKEN_MOUNT_PATH}/{token_file}"),
            settings,
        );
        // A plan is plain strings and lists: serializing it cannot fail.
        args.extend([
            "--binding".to_owned(),
            serde_json::to_string(&plan).unwrap_or_default(),
        ]);
    }
    args.extend(
        [
            "--auth-token-file",
            &format!("{AUTH_MOUNT_PATH}/{AUTH_FILE_NAME}"),
            "--cache-file",
            &format!("{CACHE_MOUNT_PATH}/{CACHE_FILE_NAME}"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("0.0.0.0:{}", settings.metrics_port),
        ]
        .map(str::to_owned),
    );
    args
}

/// What the agent must do for `served`. Binding values win over the operator's defaults; the
/// policies are the compact forms validation produced.
pub(super) fn binding_plan(
    served: &Served<'_>,
    token_file: &str,
    settings: &InjectSettings,
) -> BindingPlan {
    let spec = &served.binding.spec;
    let session_name = spec
        .session_name
        .clone()
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
    let chain = spec
        .chain
        .iter()
        .zip(&served.validated.hop_policies)
        .map(|(hop, policy)| HopPlan {
            role_arn: hop.role_arn.clone(),
            session_name: hop
                .session_name
                .clone()
                .unwrap_or_else(|| session_name.clone()),
            external_id: hop.external_id.clone(),
            tags: hop
                .session_tags
                .iter()
                .map(|t| Tag {
                    key: t.key.clone(),
                    value: t.value.clone(),
                })
                .collect(),
            transitive_tag_keys: hop.transitive_tag_keys.clone(),
            source_identity: hop.source_identity.clone(),
            policy: policy.clone(),
            policy_arns: hop.session_policy_arns.clone(),
        })
        .collect();
    BindingPlan {
        name: served.name.to_owned(),
        role_arn: spec.role_arn.clone(),
        duration: spec.session_duration.clone(),
        session_name,
        token_file: token_file.into(),
        audience: spec.audience.clone(),
        region: spec
            .region
            .clone()
            .or_else(|| settings.default_region.clone()),
        sts_endpoint: spec
            .sts_endpoint
            .clone()
            .or_else(|| settings.default_sts_endpoint.clone()),
        policy: served.validated.session_policy.clone(),
        policy_arns: spec.session_policy_arns.clone(),
        chain,
    }
}

/// The token file of each binding (in the projected token volume): one per distinct audience,
/// [`TOKEN_FILE_NAME`] for the default binding's.
pub(super) fn token_files(bindings: &[Served<'_>]) -> Vec<String> {
    let mut by_audience: Vec<(&str, String)> = Vec::new();
    bindings
        .iter()
        .enumerate()
        .map(|(i, served)| {
            let audience = served.binding.spec.audience.as_str();
            if let Some((_, file)) = by_audience.iter().find(|(a, _)| *a == audience) {
                return file.clone();
            }
            let file = if i == 0 {
                TOKEN_FILE_NAME.to_owned()
            } else {
                format!("{TOKEN_FILE_NAME}-{}", served.name)
            };
            by_audience.push((audience, file.clone()));
            file
        })
        .collect()
}

fn downward_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn security_context(settings: &InjectSettings) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: settings.run_as_user,
        run_as_group: settings.run_as_user,
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn resources(r: &AgentResources) -> ResourceRequirements {
    let quantities = |cpu: &Option<String>, memory: &Option<String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v.clone()?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: quantities(&r.cpu_request, &r.memory_request),
        limits: quantities(&r.cpu_limit, &r.memory_limit),
        ..ResourceRequirements::default()
    }
}

/// `credvend-token` (one token per audience) and `credvend-cache` (mounted only into the
/// agent), `credvend-auth`, and the empty `credvend-no-api-token`.
pub(super) fn volumes(bindings: &[Served<'_>], settings: &InjectSettings) -> [Volume; 4] {
    let mut sources: Vec<VolumeProjection> = Vec::new();
    for (served, file) in bindings.iter().zip(token_files(bindings)) {
        if sources.iter().any(|s| {
            s.service_account_token
                .as_ref()
                .is_some_and(|t| t.path == file)
        }) {
            continue;
        }
        sources.push(VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                audience: Some(served.binding.spec.audience.clone()),
                expiration_seconds: Some(settings.token_expiration_seconds),
                path: file,
            }),
            ..VolumeProjection::default()
        });
    }
    let token = Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    };
    // In memory: the authorization token never touches the node's disk.
    let auth = Volume {
        name: AUTH_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity(settings.auth_volume_size_limit.clone())),
        }),
        ..Volume::default()
    };
    // In memory too: the credentials copy holds the secrets. The same small size limit as
    // the auth volume (a copy is a few kilobytes).
    let cache = Volume {
        name: CACHE_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity(settings.auth_volume_size_limit.clone())),
        }),
        ..Volume::default()
    };
    let no_api_token = Volume {
        name: NO_API_TOKEN_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity("1Ki".to_owned())),
        }),
        ..Volume::default()
    };
    [token, auth, cache, no_api_token]
}

/// Whether `found` (the pod's init container named like the agent) and the pod's volumes are
/// the agent exactly as [`container`] and [`volumes`] would make them for this binding and
/// port: every field we set has our value. Fields we leave unset may carry values (the API
/// server defaults probe thresholds, `terminationMessagePath`, env `apiVersion`s after our
/// patch), except `command`, which would replace what the agent runs. Quantities (resources,
/// `sizeLimit`) are left out of the comparison: the API server rewrites them in canonical
/// form (`0.5Gi` becomes `512Mi`), and they do not change what the agent does.
pub(super) fn check_ours(
    found: &Container,
    spec: &PodSpec,
    bindings: &[Served<'_>],
    port: u16,
    settings: &InjectSettings,
) -> Result<(), &'static str> {
    if found.command.is_some() {
        return Err("it sets a command");
    }
    let mut want = json(&container(bindings, port, settings));
    if let Some(fields) = want.as_object_mut() {
        fields.remove("resources");
    }
    if !covers(&want, &json(found)) {
        return Err(
            "its image, arguments, mounts or security settings differ from what credvend injects for the binding",
        );
    }
    for volume in volumes(bindings, settings) {
        let mut want = json(&volume);
        if let Some(empty_dir) = want.get_mut("emptyDir").and_then(|e| e.as_object_mut()) {
            empty_dir.remove("sizeLimit");
        }
        let ours = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume.name)
            .is_some_and(|v| covers(&want, &json(v)));
        if !ours {
            return Err("the volumes credvend adds with it are missing or differ");
        }
    }
    Ok(())
}

/// Fields the API server fills in when we leave them unset (container, probe, env, port and
/// volume defaults), and the quantities we leave out of the comparison. Any other field the
/// pod sets on our agent or its volumes (a `lifecycle` hook, `envFrom`, `privileged`, …) makes
/// it not ours.
const DEFAULTED: [&str; 11] = [
    "sizeLimit",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "resources",
    "successThreshold",
    "scheme",
    "apiVersion",
    "defaultMode",
    "protocol",
    "initialDelaySeconds",
];

/// `want` is contained in `got`: objects may have more keys only among [`DEFAULTED`], arrays
/// must match item by item.
fn covers(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => {
            want.iter()
                .all(|(key, w)| got.get(key).is_some_and(|g| covers(w, g)))
                && got
                    .keys()
                    .all(|key| want.contains_key(key) || DEFAULTED.contains(&key.as_str()))
        }
        (Value::Array(want), Value::Array(got)) => {
            want.len() == got.len() && want.iter().zip(got).all(|(w, g)| covers(w, g))
        }
        _ => want == got,
    }
}

/// Kubernetes types always serialize (plain structs, maps with string keys); the impossible
/// failure gives `null`, which covers nothing we build and so counts as "not ours".
fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}
