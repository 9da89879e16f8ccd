//! What application containers get: the environment that points every AWS SDK at the agent,
//! and the read-only authorization token mount. A value the user set is never overwritten;
//! when it means the SDK will not reach the agent, the user gets an admission warning.

use k8s_openapi::api::core::v1::{Container, EnvVar, VolumeMount};

use super::patch::Plan;
use super::select::Target;
use super::{AUTH_FILE_NAME, AUTH_MOUNT_PATH, AUTH_VOLUME};
use crate::agent::endpoint::{CREDENTIALS_PATH, binding_path};

/// Points the SDKs' container credential provider at the agent.
pub(super) const ENV_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
/// The file holding the token SDKs send as `Authorization` (never the env variant, which Java
/// would prefer over a rotated file).
pub(super) const ENV_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
const ENV_REGION: &str = "AWS_REGION";
const ENV_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";

/// Variables that make an SDK's default chain stop before the container provider.
const CREDENTIAL_ENV: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_PROFILE",
];
/// Variables that an `envFrom` source could set and that credvend's own `env` entries do not
/// override: each keeps some SDK from using credvend's credentials (`RELATIVE_URI` wins over
/// `FULL_URI`; JS v2 and Java v1 send `AWS_CONTAINER_AUTHORIZATION_TOKEN` rather than read the
/// token file).
const ENV_FROM_SHADOWS: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];
/// The warning when no container is left to configure.
pub(super) const EVERY_CONTAINER_SKIPPED: &str = "credvend.io/skip-containers lists every container: the credvend agent runs, but no container is configured to use it";
/// Prefixes of variables that configure the container provider itself.
const CREDENTIAL_ENV_PREFIXES: [&str; 2] = [
    "AWS_CONTAINER_CREDENTIALS_",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// The environment credvend wants in an application container: the URI of its binding (the
/// default binding's at `/v1/credentials`, another's at `/v1/credentials/<binding>`) and that
/// binding's region.
fn desired_env(plan: &Plan<'_>, target: &Target<'_>) -> Vec<(&'static str, String)> {
    let (served, default) = plan.binding_of(target);
    let path = if default {
        CREDENTIALS_PATH.to_owned()
    } else {
        binding_path(served.name)
    };
    let mut env = vec![
        (
            ENV_FULL_URI,
            format!("http://127.0.0.1:{}{path}", plan.port),
        ),
        (
            ENV_TOKEN_FILE,
            format!("{AUTH_MOUNT_PATH}/{AUTH_FILE_NAME}"),
        ),
    ];
    if let Some(region) = &served.binding.spec.region {
        env.push((ENV_REGION, region.clone()));
        env.push((ENV_DEFAULT_REGION, region.clone()));
    }
    env
}

fn user_value<'c>(container: &'c Container, name: &str) -> Option<&'c EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

/// The variables to add to `container`: the desired ones it does not set itself. Variables
/// that only make sense together are added together or not at all: a container that configures
/// the container provider itself keeps it (credvend's token must not be sent to another
/// endpoint), and one that sets either region variable keeps its own region setup.
pub(super) fn env_to_add(plan: &Plan<'_>, target: &Target<'_>) -> Vec<EnvVar> {
    let container = target.container;
    let sets_region = [ENV_REGION, ENV_DEFAULT_REGION]
        .iter()
        .any(|name| user_value(container, name).is_some());
    let sets_provider = container.env.iter().flatten().any(|e| {
        CREDENTIAL_ENV_PREFIXES
            .iter()
            .any(|prefix| e.name.starts_with(prefix))
    });
    desired_env(plan, target)
        .into_iter()
        .filter(|(name, _)| user_value(container, name).is_none())
        .filter(|(name, _)| !(sets_region && [ENV_REGION, ENV_DEFAULT_REGION].contains(name)))
        .filter(|(name, _)| !(sets_provider && [ENV_FULL_URI, ENV_TOKEN_FILE].contains(name)))
        .map(|(name, value)| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        })
        .collect()
}

/// Whether `container` still lacks something credvend gives application containers (a
/// container a later webhook added, seen on reinvocation).
pub(super) fn needs_configuration(plan: &Plan<'_>, target: &Target<'_>) -> bool {
    !has_auth_mount(target.container) || !env_to_add(plan, target).is_empty()
}

/// Whether the container already mounts the authorization token as credvend does.
pub(super) fn has_auth_mount(container: &Container) -> bool {
    container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == AUTH_VOLUME && m.mount_path == AUTH_MOUNT_PATH)
}

/// The read-only view of the authorization token.
pub(super) fn auth_mount() -> VolumeMount {
    VolumeMount {
        name: AUTH_VOLUME.to_owned(),
        mount_path: AUTH_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Admission warnings about the containers that get credentials. Kept short: kubectl prints
/// each on its own line and the API server truncates long ones.
///
/// What an `envFrom` ConfigMap or Secret holds is not read: that would need read access to every
/// Secret of the cluster, and the source can change after admission anyway. So a container with
/// `envFrom` is warned, naming the variables that would shadow credvend's.
pub(super) fn warnings(plan: &Plan<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    for target in &plan.targets {
        let container = target.container;
        let conflicting = conflicting_env(container, &desired_env(plan, target));
        if !conflicting.is_empty() {
            warnings.push(format!(
                "container {:?} sets {}, so AWS SDKs there will not use credvend's credentials; remove it, or list the container in credvend.io/skip-containers",
                container.name,
                conflicting.join(", ")
            ));
        }
        if container.env_from.as_ref().is_none_or(|e| e.is_empty()) {
            continue;
        }
        let (last, rest) = ENV_FROM_SHADOWS.split_last().unwrap_or((&"", &[]));
        warnings.push(format!(
            "container {:?} uses envFrom: {} or {last} from there keep AWS SDKs from using credvend",
            container.name,
            rest.join(", ")
        ));
        let adds_region = env_to_add(plan, target)
            .iter()
            .any(|e| e.name == ENV_REGION);
        if adds_region {
            warnings.push(format!(
                "container {:?} uses envFrom; if that sets AWS_REGION or AWS_DEFAULT_REGION, credvend's region from the binding takes precedence",
                container.name
            ));
        }
    }
    warnings
}

/// Credential variables the user set that would keep the SDK from asking the agent; a variable
/// already holding exactly credvend's value (a copied pod spec) is no conflict.
fn conflicting_env(container: &Container, desired: &[(&'static str, String)]) -> Vec<String> {
    container
        .env
        .iter()
        .flatten()
        .filter(|e| {
            CREDENTIAL_ENV.contains(&e.name.as_str())
                || CREDENTIAL_ENV_PREFIXES
                    .iter()
                    .any(|prefix| e.name.starts_with(prefix))
        })
        .filter(|e| {
            !desired
                .iter()
                .any(|(name, value)| e.name == *name && e.value.as_deref() == Some(value.as_str()))
        })
        .map(|e| e.name.clone())
        .collect()
}
