//! Table-driven and golden tests of the pod mutation.
//!
//! Golden files: `tests/golden/inject/<case>.json` hold the exact patch for each injected pod
//! shape. After an intended change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test --lib inject` and review the diff.

use std::path::PathBuf;

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::*;
use crate::crd::AWSRoleBindingSpec;

const NS: &str = "team-a";

fn settings() -> InjectSettings {
    InjectSettings {
        agent_image: "credvend:test".to_owned(),
        ..InjectSettings::default()
    }
}

fn binding(name: &str, service_account: &str) -> AWSRoleBinding {
    let mut b = AWSRoleBinding::new(
        name,
        AWSRoleBindingSpec {
            service_account_name: service_account.to_owned(),
            role_arn: format!("arn:aws:iam::111122223333:role/{name}"),
            session_duration: "1h".to_owned(),
            region: None,
            sts_endpoint: None,
            audience: "sts.amazonaws.com".to_owned(),
            session_name: None,
            session_policy: None,
            session_policy_arns: Vec::new(),
            chain: Vec::new(),
        },
    );
    b.metadata.namespace = Some(NS.to_owned());
    b.metadata.generation = Some(3);
    b
}

fn with(mut b: AWSRoleBinding, f: impl FnOnce(&mut AWSRoleBindingSpec)) -> AWSRoleBinding {
    f(&mut b.spec);
    b
}

fn in_namespace(mut b: AWSRoleBinding, namespace: &str) -> AWSRoleBinding {
    b.metadata.namespace = Some(namespace.to_owned());
    b
}

/// A pod of service account `app` asking for injection, with one container `app`.
fn base_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": NS,
            "annotations": {"credvend.io/inject": "true"}
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "app:1"}]
        }
    })
}

/// `base_pod` with JSON merged in (objects merge, everything else replaces).
fn pod_with(overrides: Value) -> Value {
    let mut pod = base_pod();
    json_patch::merge(&mut pod, &overrides);
    pod
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).unwrap()
}

fn decide_on(pod: &Value, bindings: &[AWSRoleBinding]) -> Decision {
    let refs: Vec<&AWSRoleBinding> = bindings.iter().collect();
    let candidates = Candidates {
        namespace: NS,
        bindings: &refs,
    };
    decide(&typed(pod), &candidates, &settings())
}

// ----- golden cases -------------------------------------------------------------------------

struct Golden {
    name: &'static str,
    pod: Value,
    bindings: Vec<AWSRoleBinding>,
    /// Substrings expected in the warnings, one per warning, in order.
    warnings: Vec<&'static str>,
}

fn golden_cases() -> Vec<Golden> {
    let app = || vec![binding("s3-reader", "app")];
    vec![
        Golden {
            name: "minimal",
            pod: base_pod(),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "binding_annotation_only",
            // Injection asked for by credvend.io/binding alone; no labels map yet.
            pod: pod_with(json!({"metadata": {"annotations": {
                "credvend.io/inject": null,
                "credvend.io/binding": "s3-reader"
            }}})),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "existing_init_containers_and_volumes",
            pod: pod_with(json!({"spec": {
                "initContainers": [{"name": "migrate", "image": "migrate:1"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "app", "image": "app:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }]
            }})),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "existing_native_sidecar",
            pod: pod_with(json!({"spec": {
                "initContainers": [
                    {"name": "setup", "image": "setup:1", "env": [{"name": "X", "value": "1"}]},
                    {"name": "log-shipper", "image": "ship:1", "restartPolicy": "Always"}
                ]
            }})),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "several_containers",
            pod: pod_with(json!({"spec": {"containers": [
                {"name": "app", "image": "app:1", "env": [{"name": "LOG", "value": "debug"}]},
                {"name": "worker", "image": "worker:1", "args": ["--queue", "jobs"]},
                {"name": "proxy", "image": "proxy:1", "ports": [{"containerPort": 8080}]}
            ]}})),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "region_set_by_user_is_kept",
            pod: pod_with(json!({"spec": {"containers": [
                {"name": "app", "image": "app:1", "env": [{"name": "AWS_REGION", "value": "us-east-1"}]},
                {"name": "worker", "image": "worker:1", "env": [
                    {"name": "AWS_DEFAULT_REGION", "valueFrom": {"configMapKeyRef": {"name": "aws", "key": "region"}}}
                ]},
                {"name": "batch", "image": "batch:1"}
            ]}})),
            bindings: vec![with(binding("s3-reader", "app"), |s| {
                s.region = Some("eu-west-1".to_owned());
            })],
            warnings: vec![],
        },
        Golden {
            name: "skip_containers",
            pod: pod_with(json!({
                "metadata": {"annotations": {"credvend.io/skip-containers": " istio-proxy , setup"}},
                "spec": {
                    "initContainers": [{"name": "setup", "image": "setup:1"}],
                    "containers": [
                        {"name": "app", "image": "app:1"},
                        {"name": "istio-proxy", "image": "proxy:1"}
                    ]
                }
            })),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "explicit_binding_among_several",
            pod: pod_with(
                json!({"metadata": {"annotations": {"credvend.io/binding": "dynamo-writer"}}}),
            ),
            bindings: vec![binding("s3-reader", "app"), binding("dynamo-writer", "app")],
            warnings: vec![],
        },
        Golden {
            name: "keys_needing_escapes",
            pod: pod_with(json!({"metadata": {
                "labels": {"app.kubernetes.io/name": "web", "example.com/team": "a"},
                "annotations": {"example.com/owner": "team-a"}
            }})),
            bindings: app(),
            warnings: vec![],
        },
        Golden {
            name: "credentials_env_warns",
            pod: pod_with(json!({"spec": {"containers": [{
                "name": "app", "image": "app:1",
                "env": [
                    {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "id"}}},
                    {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"}
                ]
            }]}})),
            bindings: app(),
            warnings: vec!["\"app\" sets AWS_ACCESS_KEY_ID, AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        },
        Golden {
            name: "custom_port_region_endpoint_envfrom",
            pod: pod_with(json!({
                "metadata": {"annotations": {"credvend.io/port": "10000"}},
                "spec": {"containers": [{
                    "name": "app", "image": "app:1",
                    "envFrom": [{"configMapRef": {"name": "settings"}}]
                }]}
            })),
            bindings: vec![with(binding("s3-reader", "app"), |s| {
                s.region = Some("eu-west-1".to_owned());
                s.sts_endpoint = Some("https://sts-fips.eu-west-1.amazonaws.com".to_owned());
                s.audience = "sts.example.internal".to_owned();
                s.session_duration = "90m".to_owned();
            })],
            warnings: vec![
                "\"app\" uses envFrom: AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_AUTHORIZATION_TOKEN from there",
                "\"app\" uses envFrom; if that sets AWS_REGION",
            ],
        },
        Golden {
            name: "short_session_and_default_service_account",
            pod: pod_with(json!({"spec": {"serviceAccountName": null}})),
            bindings: vec![with(binding("s3-reader", "default"), |s| {
                s.session_duration = "30m".to_owned();
            })],
            warnings: vec!["sessionDuration 30m is under 40m"],
        },
        Golden {
            name: "every_container_skipped",
            pod: pod_with(
                json!({"metadata": {"annotations": {"credvend.io/skip-containers": "app"}}}),
            ),
            bindings: app(),
            warnings: vec!["lists every container"],
        },
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/inject")
        .join(format!("{name}.json"))
}

fn injected(case: &Golden) -> (json_patch::Patch, Vec<String>, String) {
    match decide_on(&case.pod, &case.bindings) {
        Decision::Inject {
            patch,
            warnings,
            binding,
            kind: Injection::Fresh,
        } => (patch.operations().unwrap(), warnings, binding),
        other => panic!("{}: expected an injection, got {other:?}", case.name),
    }
}

#[test]
fn patches_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for case in golden_cases() {
        let (patch, _, _) = injected(&case);
        let rendered = serde_json::to_string_pretty(&patch).unwrap() + "\n";
        let path = golden_path(case.name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            expected == rendered,
            "{}: the patch differs from {}; if the change is intended, run `UPDATE_GOLDEN=1 cargo test --lib inject` and review the diff\n--- got:\n{rendered}",
            case.name,
            path.display()
        );
    }
}

#[test]
fn golden_cases_warn_exactly_as_expected() {
    for case in golden_cases() {
        let (_, warnings, _) = injected(&case);
        assert_eq!(
            warnings.len(),
            case.warnings.len(),
            "{}: {warnings:?}",
            case.name
        );
        for (warning, expected) in warnings.iter().zip(&case.warnings) {
            assert!(warning.contains(expected), "{}: {warning}", case.name);
            assert!(warning.len() <= 256, "{}: too long: {warning}", case.name);
        }
    }
}

#[test]
fn patches_only_add() {
    for case in golden_cases() {
        let (patch, _, _) = injected(&case);
        for op in patch.iter() {
            assert!(
                matches!(op, PatchOperation::Add(_)),
                "{}: {op:?}",
                case.name
            );
        }
    }
}

/// Applies each golden patch and compares typed-before with typed-after: the agent comes
/// first, every original container is unchanged except for appended env and mounts, and
/// nothing the pod had is lost.
#[test]
fn applied_patches_keep_the_pod_and_add_the_agent() {
    for case in golden_cases() {
        let (patch, _, binding_name) = injected(&case);
        let mut after_json = case.pod.clone();
        json_patch::patch(&mut after_json, &patch)
            .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", case.name));
        let before = typed(&case.pod);
        let after = typed(&after_json);
        let (before_spec, after_spec) = (before.spec.unwrap(), after.spec.unwrap());

        let after_init = after_spec.init_containers.clone().unwrap();
        let agent = &after_init[0];
        assert_eq!(agent.name, AGENT_CONTAINER_NAME, "{}", case.name);
        assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
        let before_init = before_spec.init_containers.clone().unwrap_or_default();
        assert_eq!(after_init.len(), before_init.len() + 1, "{}", case.name);
        for (b, a) in before_init.iter().zip(&after_init[1..]) {
            assert_only_appended(case.name, b, a);
        }
        assert_eq!(
            before_spec.containers.len(),
            after_spec.containers.len(),
            "{}",
            case.name
        );
        for (b, a) in before_spec.containers.iter().zip(&after_spec.containers) {
            assert_only_appended(case.name, b, a);
        }

        let volumes: Vec<String> = after_spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        let mut expected: Vec<String> = before_spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        expected.extend(RESERVED_VOLUMES.map(str::to_owned));
        assert_eq!(volumes, expected, "{}", case.name);

        let labels = after.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_BINDING), Some(&binding_name));
        for (k, v) in before.metadata.labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "{}: label {k}", case.name);
        }
        let annotations = after.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get(ANNOTATION_STATUS).map(String::as_str),
            Some(STATUS_INJECTED)
        );
        assert_eq!(
            annotations
                .get(ANNOTATION_BINDING_GENERATION)
                .map(String::as_str),
            Some("3")
        );
        for (k, v) in before.metadata.annotations.iter().flatten() {
            assert_eq!(annotations.get(k), Some(v), "{}: annotation {k}", case.name);
        }
    }
}

/// `after` is `before` with env and volume mounts appended (and nothing else changed).
fn assert_only_appended(case: &str, before: &Container, after: &Container) {
    let mut trimmed = after.clone();
    keep_prefix(&before.env, &mut trimmed.env);
    keep_prefix(&before.volume_mounts, &mut trimmed.volume_mounts);
    assert_eq!(&trimmed, before, "{case}: container {}", before.name);
}

fn keep_prefix<T>(before: &Option<Vec<T>>, after: &mut Option<Vec<T>>) {
    match (before, after.as_mut()) {
        (None, _) => *after = None,
        (Some(b), Some(a)) => a.truncate(b.len()),
        (Some(_), None) => {}
    }
}

#[test]
fn reinvocation_on_the_patched_pod_is_skipped() {
    for case in golden_cases() {
        let (patch, _, _) = injected(&case);
        let mut after = case.pod.clone();
        json_patch::patch(&mut after, &patch).unwrap();
        assert_eq!(
            decide_on(&after, &case.bindings),
            Decision::Skip {
                reason: SkipReason::AlreadyInjected
            },
            "{}",
            case.name
        );
    }
}

#[test]
fn fields_unknown_to_this_code_survive_the_patch() {
    let pod = pod_with(json!({"spec": {
        "futureField": {"x": 1},
        "containers": [{"name": "app", "image": "app:1", "futureContainerField": true}]
    }}));
    let Decision::Inject { patch, .. } = decide_on(&pod, &[binding("s3-reader", "app")]) else {
        panic!("expected an injection");
    };
    let mut after = pod.clone();
    json_patch::patch(&mut after, &patch.operations().unwrap()).unwrap();
    assert_eq!(after["spec"]["futureField"], json!({"x": 1}));
    assert_eq!(
        after["spec"]["containers"][0]["futureContainerField"],
        json!(true)
    );
}

#[test]
fn app_containers_get_the_endpoint_and_never_lose_user_values() {
    let pod = pod_with(json!({"spec": {"containers": [
        {"name": "app", "image": "app:1", "env": [{"name": "AWS_REGION", "value": "us-east-1"}]},
        {"name": "batch", "image": "batch:1"}
    ]}}));
    let b = with(binding("s3-reader", "app"), |s| {
        s.region = Some("eu-west-1".to_owned());
    });
    let after = applied(&pod, &[b]);
    let env = |i: usize| -> Vec<(String, String)> {
        after.spec.as_ref().unwrap().containers[i]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    };
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        env(0),
        [
            pair("AWS_REGION", "us-east-1"),
            pair(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9911/v1/credentials"
            ),
            pair(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "/var/run/credvend/auth/token"
            ),
        ]
    );
    assert_eq!(
        env(1),
        [
            pair(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9911/v1/credentials"
            ),
            pair(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "/var/run/credvend/auth/token"
            ),
            pair("AWS_REGION", "eu-west-1"),
            pair("AWS_DEFAULT_REGION", "eu-west-1"),
        ]
    );
    let mounts = after.spec.as_ref().unwrap().containers[1]
        .volume_mounts
        .clone()
        .unwrap();
    assert_eq!(mounts[0].name, AUTH_VOLUME);
    assert_eq!(mounts[0].read_only, Some(true));
}

fn applied(pod: &Value, bindings: &[AWSRoleBinding]) -> Pod {
    let Decision::Inject { patch, .. } = decide_on(pod, bindings) else {
        panic!("expected an injection");
    };
    let mut after = pod.clone();
    json_patch::patch(&mut after, &patch.operations().unwrap()).unwrap();
    typed(&after)
}

#[test]
fn the_agent_is_hardened_and_alone_with_the_service_account_token() {
    let b = with(binding("s3-reader", "app"), |s| {
        s.region = Some("eu-west-1".to_owned());
    });
    let after = applied(&base_pod(), &[b]);
    let spec = after.spec.unwrap();
    let agent = &spec.init_containers.as_ref().unwrap()[0];
    let args = agent.args.clone().unwrap();
    assert_eq!(args[..2], ["agent", "--binding"]);
    assert_eq!(
        args[3..],
        [
            "--auth-token-file",
            "/var/run/credvend/auth/token",
            "--cache-file",
            "/var/run/credvend/cache/credentials.json",
            "--listen",
            "127.0.0.1:9911",
            "--metrics-listen",
            "0.0.0.0:9912",
        ]
    );
    let plan: crate::plan::BindingPlan = serde_json::from_str(&args[2]).unwrap();
    assert_eq!(
        plan,
        crate::plan::BindingPlan {
            name: "s3-reader".into(),
            role_arn: "arn:aws:iam::111122223333:role/s3-reader".into(),
            duration: "1h".into(),
            session_name: "{namespace}.{pod}".into(),
            token_file: "/var/run/secrets/credvend.io/serviceaccount/token".into(),
            audience: "sts.amazonaws.com".into(),
            region: Some("eu-west-1".into()),
            sts_endpoint: None,
            policy: None,
            policy_arns: Vec::new(),
            chain: Vec::new(),
        }
    );
    let sc = agent.security_context.clone().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let startup = agent.startup_probe.clone().unwrap();
    assert_eq!(startup.period_seconds, Some(1));
    assert_eq!(
        startup.http_get.unwrap().path.as_deref(),
        Some("/healthz/ready")
    );
    // The projected token is mounted into the agent and nowhere else.
    let token_mounts = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == TOKEN_VOLUME)
        })
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(token_mounts, [AGENT_CONTAINER_NAME]);
    // Something is mounted at the Kubernetes API token path, so the ServiceAccount admission
    // plugin gives the agent no API token.
    let api_path = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == API_TOKEN_MOUNT_PATH)
        .unwrap();
    assert_eq!(
        (api_path.name.as_str(), api_path.read_only),
        (NO_API_TOKEN_VOLUME, Some(true))
    );
    // So is the credentials cache, which holds the secrets themselves.
    let cache_mounts = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == CACHE_VOLUME)
        })
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(cache_mounts, [AGENT_CONTAINER_NAME]);
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME)
        .unwrap();
    let projection = token.projected.clone().unwrap().sources.unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("sts.amazonaws.com"));
    assert_eq!(projection.expiration_seconds, Some(3600));
    let auth = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == AUTH_VOLUME)
        .unwrap();
    assert_eq!(
        auth.empty_dir.clone().unwrap().medium.as_deref(),
        Some("Memory")
    );
    let cache = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == CACHE_VOLUME)
        .unwrap();
    assert_eq!(
        cache.empty_dir.clone().unwrap().medium.as_deref(),
        Some("Memory")
    );
}

#[test]
fn settings_defaults_reach_the_agent_when_the_binding_is_silent() {
    let settings = InjectSettings {
        default_region: Some("eu-central-1".to_owned()),
        default_sts_endpoint: Some("https://sts.eu-central-1.amazonaws.com".to_owned()),
        ..settings()
    };
    let b = binding("s3-reader", "app");
    let candidates = Candidates {
        namespace: NS,
        bindings: &[&b],
    };
    let Decision::Inject { patch, .. } = decide(&typed(&base_pod()), &candidates, &settings) else {
        panic!("expected an injection");
    };
    let text = String::from_utf8(patch.into_bytes()).unwrap();
    assert!(
        text.contains(
            r#"\"region\":\"eu-central-1\",\"stsEndpoint\":\"https://sts.eu-central-1.amazonaws.com\""#
        ),
        "{text}"
    );
    // Apps get AWS_REGION only from the binding.
    assert!(!text.contains("AWS_REGION"), "{text}");
}

// ----- skips and denials --------------------------------------------------------------------

#[test]
fn skips() {
    let cases = [
        (
            "no annotation",
            pod_with(json!({"metadata": {"annotations": null}})),
            SkipReason::NotRequested,
        ),
        (
            "unrelated annotations only",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/inject": null, "x": "y"}}})),
            SkipReason::NotRequested,
        ),
        (
            "opted out",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/inject": "false"}}})),
            SkipReason::OptedOut,
        ),
        (
            "opt-out wins over a binding",
            pod_with(json!({"metadata": {"annotations": {
                "credvend.io/inject": "false", "credvend.io/binding": "s3-reader"
            }}})),
            SkipReason::OptedOut,
        ),
    ];
    for (name, pod, want) in cases {
        assert_eq!(
            decide_on(&pod, &[binding("s3-reader", "app")]),
            Decision::Skip { reason: want },
            "{name}"
        );
    }
}

/// A denial case: name, pod, bindings, expected metric label, and words the message must
/// contain (the fix).
type DenyCase = (
    &'static str,
    Value,
    Vec<AWSRoleBinding>,
    &'static str,
    Vec<&'static str>,
);

#[test]
fn denials_name_the_fix() {
    let app = || vec![binding("s3-reader", "app")];
    let cases: Vec<DenyCase> = vec![
        (
            "inject annotation typo",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/inject": "yes"}}})),
            app(),
            "invalid_inject_annotation",
            vec!["\"yes\"", "\"true\""],
        ),
        (
            "unknown binding",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/binding": "s3-raeder"}}})),
            app(),
            "unknown_binding",
            vec!["\"s3-raeder\"", "namespace \"team-a\""],
        ),
        (
            "binding for another service account",
            pod_with(
                json!({"metadata": {"annotations": {"credvend.io/binding": "s3-reader"}},
                            "spec": {"serviceAccountName": "web"}}),
            ),
            app(),
            "wrong_service_account",
            vec!["team-a/s3-reader", "\"web\"", "serviceAccountName: app"],
        ),
        (
            "two bindings for the service account",
            base_pod(),
            vec![binding("s3-reader", "app"), binding("a-writer", "app")],
            "ambiguous_bindings",
            vec!["a-writer, s3-reader", "credvend.io/binding: <name>"],
        ),
        (
            "no binding for the service account",
            pod_with(json!({"spec": {"serviceAccountName": "web"}})),
            app(),
            "no_binding",
            vec![
                "\"web\"",
                "spec.serviceAccountName: web",
                "credvend.io/binding",
            ],
        ),
        (
            "a binding of another namespace does not count",
            base_pod(),
            vec![in_namespace(binding("s3-reader", "app"), "team-b")],
            "no_binding",
            vec!["\"team-a\""],
        ),
        (
            "host network",
            pod_with(json!({"spec": {"hostNetwork": true}})),
            app(),
            "host_network",
            vec!["hostNetwork", "node's loopback"],
        ),
        (
            "windows",
            pod_with(json!({"spec": {"os": {"name": "windows"}}})),
            app(),
            "windows",
            vec!["spec.os.name: windows"],
        ),
        (
            "foreign agent container",
            pod_with(json!({"spec": {"containers": [
                {"name": "app", "image": "app:1"},
                {"name": "credvend-agent", "image": "evil:1"}
            ]}})),
            app(),
            "foreign_agent_container",
            vec!["spec.containers", "rename"],
        ),
        (
            "foreign agent init container",
            pod_with(
                json!({"spec": {"initContainers": [{"name": "credvend-agent", "image": "old:1"}]}}),
            ),
            app(),
            "foreign_agent_container",
            vec![
                "spec.initContainers",
                "differ from what credvend injects",
                "remove it",
            ],
        ),
        (
            "a forged status annotation does not skip the checks",
            pod_with(json!({
                "metadata": {"annotations": {"credvend.io/status": "injected"}},
                "spec": {"hostNetwork": true}
            })),
            app(),
            "host_network",
            vec!["hostNetwork"],
        ),
        (
            "a forged status annotation with an agent of any image",
            pod_with(json!({
                "metadata": {
                    "annotations": {"credvend.io/status": "injected"},
                    "labels": {"credvend.io/binding": "s3-reader"}
                },
                "spec": {"initContainers": [{"name": "credvend-agent", "image": "evil:1"}]}
            })),
            app(),
            "foreign_agent_container",
            vec!["spec.initContainers"],
        ),
        (
            "markers without a request",
            pod_with(json!({
                "metadata": {
                    "annotations": {"credvend.io/inject": null, "credvend.io/status": "injected"},
                    "labels": {"credvend.io/binding": "s3-reader"}
                }
            })),
            app(),
            "markers_without_injection",
            vec![
                "the label credvend.io/binding and the annotation credvend.io/status",
                "credvend.io/inject: \"true\"",
            ],
        ),
        (
            "a forged label on an opted-out pod",
            pod_with(json!({
                "metadata": {
                    "annotations": {"credvend.io/inject": "false"},
                    "labels": {"credvend.io/binding": "s3-reader"}
                }
            })),
            app(),
            "markers_without_injection",
            vec!["the label credvend.io/binding"],
        ),
        (
            "a binding whose STS endpoint the operator does not allow",
            base_pod(),
            vec![with(binding("s3-reader", "app"), |s| {
                s.sts_endpoint = Some("https://tokens.example.com".to_owned());
            })],
            "invalid_binding",
            vec!["https://tokens.example.com", "agent.allowedStsEndpoints"],
        ),
        (
            "foreign volume",
            pod_with(json!({"spec": {"volumes": [{"name": "credvend-auth", "emptyDir": {}}]}})),
            app(),
            "foreign_volume",
            vec!["\"credvend-auth\""],
        ),
        (
            "foreign volume at the API token's place",
            pod_with(
                json!({"spec": {"volumes": [{"name": "credvend-no-api-token", "emptyDir": {}}]}}),
            ),
            app(),
            "foreign_volume",
            vec!["\"credvend-no-api-token\""],
        ),
        (
            "foreign cache volume",
            pod_with(json!({"spec": {"volumes": [{"name": "credvend-cache", "emptyDir": {}}]}})),
            app(),
            "foreign_volume",
            vec!["\"credvend-cache\""],
        ),
        (
            "mount path taken",
            pod_with(
                json!({"spec": {"containers": [{"name": "app", "image": "app:1",
                "volumeMounts": [{"name": "x", "mountPath": "/var/run/credvend/auth/"}]}]}}),
            ),
            app(),
            "mount_path_taken",
            vec!["\"app\"", "credvend.io/skip-containers"],
        ),
        (
            "port below 1024",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/port": "80"}}})),
            app(),
            "invalid_port",
            vec!["\"80\"", "1024 to 65535", "9912"],
        ),
        (
            "port beyond 65535",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/port": "70000"}}})),
            app(),
            "invalid_port",
            vec!["not a port number"],
        ),
        (
            "port not a number",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/port": "http"}}})),
            app(),
            "invalid_port",
            vec!["\"http\""],
        ),
        (
            "port equal to the metrics port",
            pod_with(json!({"metadata": {"annotations": {"credvend.io/port": "9912"}}})),
            app(),
            "invalid_port",
            vec!["metrics port"],
        ),
        (
            "credentials port declared by a container",
            pod_with(
                json!({"spec": {"containers": [{"name": "app", "image": "app:1",
                "ports": [{"containerPort": 9911}]}]}}),
            ),
            app(),
            "credentials_port_in_use",
            vec!["9911", "credvend.io/port"],
        ),
        (
            "metrics port declared by a container",
            pod_with(
                json!({"spec": {"containers": [{"name": "app", "image": "app:1",
                "ports": [{"containerPort": 9912}]}]}}),
            ),
            app(),
            "metrics_port_in_use",
            vec!["9912"],
        ),
        (
            "unknown skip-containers",
            pod_with(
                json!({"metadata": {"annotations": {"credvend.io/skip-containers": "app,istio-prxy"}}}),
            ),
            app(),
            "unknown_containers",
            vec!["\"istio-prxy\"", "it has \"app\""],
        ),
        (
            "invalid binding",
            base_pod(),
            vec![with(binding("s3-reader", "app"), |s| {
                s.role_arn = "arn:aws:iam::1234:role/x".to_owned();
                s.session_duration = "24h".to_owned();
            })],
            "invalid_binding",
            vec![
                "team-a/s3-reader is invalid",
                "12 digits",
                "15m..12h",
                "kubectl describe",
            ],
        ),
        (
            "binding name too long for a label",
            base_pod(),
            vec![binding(&"b".repeat(64), "app")],
            "invalid_binding",
            vec!["63 characters"],
        ),
        (
            "no spec",
            json!({"metadata": {"annotations": {"credvend.io/inject": "true"}}}),
            app(),
            "no_spec",
            vec![],
        ),
    ];
    for (name, pod, bindings, label, words) in cases {
        let Decision::Deny { reason } = decide_on(&pod, &bindings) else {
            panic!(
                "{name}: expected a denial, got {:?}",
                decide_on(&pod, &bindings)
            );
        };
        assert_eq!(reason.metric_label(), label, "{name}: {reason}");
        let message = reason.to_string();
        for word in words {
            assert!(message.contains(word), "{name}: {word:?} not in {message}");
        }
    }
}

#[test]
fn only_missing_bindings_invite_a_live_lookup() {
    let missing = decide_on(
        &pod_with(json!({"metadata": {"annotations": {"credvend.io/binding": "new"}}})),
        &[],
    );
    let none = decide_on(&base_pod(), &[]);
    let wrong_sa = decide_on(
        &pod_with(json!({"spec": {"hostNetwork": true}})),
        &[binding("s3-reader", "app")],
    );
    let is_missing =
        |d: &Decision| matches!(d, Decision::Deny { reason } if reason.binding_missing());
    assert!(is_missing(&missing));
    assert!(is_missing(&none));
    assert!(!is_missing(&wrong_sa));
}

#[test]
fn deprecated_service_account_field_is_honoured() {
    let pod = pod_with(json!({"spec": {"serviceAccountName": null, "serviceAccount": "app"}}));
    assert!(matches!(
        decide_on(&pod, &[binding("s3-reader", "app")]),
        Decision::Inject { .. }
    ));
}

#[test]
fn pointer_tokens_are_escaped() {
    // Kubernetes keys cannot contain '~', but the escaping must not depend on that.
    let path = patch::pointer(&["metadata", "labels", "example.com/a~b"]);
    assert_eq!(path.as_str(), "/metadata/labels/example.com~1a~0b");
}

#[test]
fn agent_port_name_fits_the_kubernetes_limit() {
    // IANA service names, which Kubernetes requires for port names, have at most 15 characters.
    assert!(METRICS_PORT_NAME.len() <= 15);
}

// ----- already injected: decided from the pod, completed on reinvocation --------------------

/// What the API server does to an admitted pod before a later webhook (or a reinvocation) sees
/// it: defaults, and the ServiceAccount admission plugin's API token mount on every container
/// that has nothing mounted at its path.
fn as_the_api_server_keeps_it(mut pod: Value) -> Value {
    let spec = pod["spec"].as_object_mut().unwrap();
    let mut needs_token = false;
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let c = c.as_object_mut().unwrap();
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            c.entry("imagePullPolicy").or_insert(json!("IfNotPresent"));
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                    p.entry("successThreshold").or_insert(json!(1));
                    p["httpGet"]["scheme"] = json!("HTTP");
                }
            }
            for e in c
                .get_mut("env")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(field) = e.pointer_mut("/valueFrom/fieldRef") {
                    field["apiVersion"] = json!("v1");
                }
            }
            let mounts = c.entry("volumeMounts").or_insert(json!([]));
            let has = mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == API_TOKEN_MOUNT_PATH);
            if !has {
                mounts.as_array_mut().unwrap().push(json!({
                    "name": "kube-api-access-abcde", "readOnly": true, "mountPath": API_TOKEN_MOUNT_PATH
                }));
                needs_token = true;
            }
        }
    }
    let volumes = spec
        .entry("volumes")
        .or_insert(json!([]))
        .as_array_mut()
        .unwrap();
    for v in volumes.iter_mut() {
        if let Some(p) = v.get_mut("projected") {
            p["defaultMode"] = json!(420);
        }
    }
    if needs_token {
        volumes.push(
            json!({"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
            ]}}),
        );
    }
    pod
}

fn patched(pod: &Value, bindings: &[AWSRoleBinding]) -> Value {
    let Decision::Inject { patch, .. } = decide_on(pod, bindings) else {
        panic!("expected an injection");
    };
    let mut after = pod.clone();
    json_patch::patch(&mut after, &patch.operations().unwrap()).unwrap();
    after
}

#[test]
fn the_agent_as_the_api_server_keeps_it_is_recognised_and_nothing_is_added_again() {
    for case in golden_cases() {
        let stored = as_the_api_server_keeps_it(patched(&case.pod, &case.bindings));
        let agent = &stored["spec"]["initContainers"][0];
        let agent_mounts: Vec<&str> = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(
            !agent_mounts
                .iter()
                .any(|m| m.starts_with("kube-api-access")),
            "{}: the ServiceAccount plugin gave the agent the API token: {agent_mounts:?}",
            case.name
        );
        assert_eq!(
            decide_on(&stored, &case.bindings),
            Decision::Skip {
                reason: SkipReason::AlreadyInjected
            },
            "{}",
            case.name
        );
    }
}

#[test]
fn containers_a_later_webhook_adds_are_completed_and_the_agent_is_not_added_twice() {
    let bindings = [with(binding("s3-reader", "app"), |s| {
        s.region = Some("eu-west-1".to_owned());
    })];
    let mut stored = as_the_api_server_keeps_it(patched(&base_pod(), &bindings));
    // A mesh webhook appends its proxy (and an init container of its own).
    stored["spec"]["containers"].as_array_mut().unwrap().push(
        json!({"name": "mesh-proxy", "image": "proxy:1", "env": [{"name": "MESH", "value": "1"}]}),
    );
    stored["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "mesh-init", "image": "proxy:1"}));
    let Decision::Inject {
        patch,
        warnings,
        kind,
        ..
    } = decide_on(&stored, &bindings)
    else {
        panic!(
            "expected a completion, got {:?}",
            decide_on(&stored, &bindings)
        );
    };
    assert_eq!(kind, Injection::Completed);
    assert!(warnings.is_empty(), "{warnings:?}");
    let patch = patch.operations().unwrap();
    assert!(patch.iter().all(|op| matches!(op, PatchOperation::Add(_))));
    let paths: Vec<String> = patch
        .iter()
        .map(|op| match op {
            PatchOperation::Add(add) => add.path.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/initContainers/1/env",
            "/spec/initContainers/1/volumeMounts",
            "/spec/containers/1/env/-",
            "/spec/containers/1/env/-",
            "/spec/containers/1/env/-",
            "/spec/containers/1/env/-",
            "/spec/containers/1/volumeMounts",
        ]
    );
    let mut after = stored.clone();
    json_patch::patch(&mut after, &patch).unwrap();
    let after_pod = typed(&after);
    let spec = after_pod.spec.as_ref().unwrap();
    let agents = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == AGENT_CONTAINER_NAME)
        .count();
    assert_eq!(agents, 1);
    let proxy = &spec.containers[1];
    let env: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        env,
        [
            "MESH",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION"
        ]
    );
    assert!(
        proxy
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == AUTH_VOLUME && m.read_only == Some(true))
    );
    // The app container, configured the first time, is untouched.
    assert_eq!(
        spec.containers[0],
        typed(&stored).spec.unwrap().containers[0]
    );
    // And a further reinvocation has nothing left to do.
    assert_eq!(
        decide_on(&after, &bindings),
        Decision::Skip {
            reason: SkipReason::AlreadyInjected
        }
    );
}

#[test]
fn an_agent_that_is_not_ours_for_the_chosen_binding_is_refused() {
    let bindings = vec![binding("s3-reader", "app"), binding("dynamo-writer", "app")];
    let mut stored = patched(
        &pod_with(json!({"metadata": {"annotations": {"credvend.io/binding": "s3-reader"}}})),
        &bindings,
    );
    let tamper = |f: &dyn Fn(&mut Value)| {
        let mut pod = stored.clone();
        f(&mut pod);
        match decide_on(&pod, &bindings) {
            Decision::Deny { reason } => reason,
            other => panic!("expected a denial, got {other:?}"),
        }
    };
    type Tamper = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "another image",
            Box::new(|p: &mut Value| p["spec"]["initContainers"][0]["image"] = json!("evil:1")),
        ),
        (
            "a command",
            Box::new(|p: &mut Value| {
                p["spec"]["initContainers"][0]["command"] = json!(["/bin/sh"])
            }),
        ),
        (
            "other arguments",
            Box::new(|p: &mut Value| {
                p["spec"]["initContainers"][0]["args"][2] =
                    json!("arn:aws:iam::111122223333:role/admin")
            }),
        ),
        (
            "privileged",
            Box::new(|p: &mut Value| {
                p["spec"]["initContainers"][0]["securityContext"]["privileged"] = json!(true)
            }),
        ),
        (
            "a lifecycle hook",
            Box::new(|p: &mut Value| {
                p["spec"]["initContainers"][0]["lifecycle"] =
                    json!({"postStart": {"exec": {"command": ["sh"]}}})
            }),
        ),
        (
            "envFrom",
            Box::new(|p: &mut Value| {
                p["spec"]["initContainers"][0]["envFrom"] = json!([{"secretRef": {"name": "aws"}}])
            }),
        ),
        (
            "another token audience",
            Box::new(|p: &mut Value| {
                p["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
                    json!("other")
            }),
        ),
        (
            "another binding asked for",
            Box::new(|p: &mut Value| {
                p["metadata"]["annotations"]["credvend.io/binding"] = json!("dynamo-writer")
            }),
        ),
    ];
    for (name, f) in cases {
        let reason = tamper(&*f);
        assert_eq!(
            reason.metric_label(),
            "foreign_agent_container",
            "{name}: {reason}"
        );
    }
    // Untouched, it is ours.
    stored = as_the_api_server_keeps_it(stored);
    assert!(matches!(
        decide_on(&stored, &bindings),
        Decision::Skip { .. }
    ));
}

#[test]
fn forged_markers_on_a_pod_without_our_agent_are_overwritten_by_a_full_injection() {
    let pod = pod_with(json!({
        "metadata": {
            "annotations": {"credvend.io/status": "injected"},
            "labels": {"credvend.io/binding": "someone-elses"}
        },
        "spec": {"containers": [{"name": "app", "image": "app:1", "env": [
            {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:9911/v1/credentials"}
        ]}]}
    }));
    let after = typed(&patched(&pod, &[binding("s3-reader", "app")]));
    assert_eq!(
        after.metadata.labels.unwrap()[LABEL_BINDING],
        "s3-reader",
        "the label names the binding actually used"
    );
    let spec = after.spec.unwrap();
    assert_eq!(
        spec.init_containers.unwrap()[0].name,
        AGENT_CONTAINER_NAME,
        "the sidecar is there"
    );
}

#[test]
fn updates_may_not_add_or_change_the_binding_label() {
    let labels = |value: Option<&str>| {
        value.map(|v| std::collections::BTreeMap::from([(LABEL_BINDING.to_owned(), v.to_owned())]))
    };
    let other = Some(std::collections::BTreeMap::from([(
        "app".to_owned(),
        "web".to_owned(),
    )]));
    // (old, new, allowed)
    let cases = [
        (None, None, true),
        (labels(Some("s3")), labels(Some("s3")), true),
        (labels(Some("s3")), None, true),
        (labels(Some("s3")), other.clone(), true),
        (None, labels(Some("s3")), false),
        (other, labels(Some("s3")), false),
        (labels(Some("s3")), labels(Some("dynamo")), false),
    ];
    for (old, new, allowed) in cases {
        let got = label_change(old.as_ref(), new.as_ref());
        assert_eq!(got.is_ok(), allowed, "{old:?} -> {new:?}");
        if let Err(reason) = got {
            assert_eq!(reason.metric_label(), "binding_label_changed");
            assert!(reason.to_string().contains("may be removed"), "{reason}");
        }
    }
}

// ----- several bindings per pod, include-containers ------------------------------------------

fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn plans(agent: &Container) -> Vec<crate::plan::BindingPlan> {
    let args = agent.args.clone().unwrap();
    args.windows(2)
        .filter(|w| w[0] == "--binding")
        .map(|w| serde_json::from_str(&w[1]).unwrap())
        .collect()
}

fn three_containers(annotations: Value) -> Value {
    pod_with(json!({
        "metadata": {"annotations": annotations},
        "spec": {"containers": [
            {"name": "app", "image": "app:1"},
            {"name": "worker", "image": "worker:1"},
            {"name": "uploader", "image": "uploader:1"}
        ]}
    }))
}

#[test]
fn container_bindings_give_each_container_its_own_uri_and_one_agent_serves_all() {
    let bindings = [
        binding("s3-reader", "app"),
        with(binding("queue-reader", "app"), |s| {
            s.audience = "queues".into();
            s.region = Some("eu-west-1".into());
        }),
        binding("s3-writer", "app"),
    ];
    let pod = three_containers(json!({
        "credvend.io/container-bindings": "worker=queue-reader, uploader=s3-writer"
    }));
    // s3-reader is the default although three bindings name `app`: the mapped ones are not.
    let after = applied(&pod, &bindings);
    let spec = after.spec.unwrap();
    let uri = |name: &str| {
        let c = spec.containers.iter().find(|c| c.name == name).unwrap();
        env_value(c, "AWS_CONTAINER_CREDENTIALS_FULL_URI").unwrap()
    };
    assert_eq!(uri("app"), "http://127.0.0.1:9911/v1/credentials");
    assert_eq!(
        uri("worker"),
        "http://127.0.0.1:9911/v1/credentials/queue-reader"
    );
    assert_eq!(
        uri("uploader"),
        "http://127.0.0.1:9911/v1/credentials/s3-writer"
    );
    let worker = spec.containers.iter().find(|c| c.name == "worker").unwrap();
    assert_eq!(
        env_value(worker, "AWS_REGION").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(env_value(&spec.containers[0], "AWS_REGION"), None);
    let agents: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == AGENT_CONTAINER_NAME)
        .collect();
    assert_eq!(agents.len(), 1);
    let plans = plans(agents[0]);
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["s3-reader", "queue-reader", "s3-writer"]);
    let files: Vec<String> = plans
        .iter()
        .map(|p| p.token_file.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "/var/run/secrets/credvend.io/serviceaccount/token",
            "/var/run/secrets/credvend.io/serviceaccount/token-queue-reader",
            "/var/run/secrets/credvend.io/serviceaccount/token",
        ],
        "one token per audience"
    );
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME)
        .unwrap();
    let audiences: Vec<_> = token
        .projected
        .as_ref()
        .unwrap()
        .sources
        .iter()
        .flatten()
        .map(|s| {
            let t = s.service_account_token.as_ref().unwrap();
            (t.path.clone(), t.audience.clone().unwrap())
        })
        .collect();
    assert_eq!(
        audiences,
        [
            ("token".to_owned(), "sts.amazonaws.com".to_owned()),
            ("token-queue-reader".to_owned(), "queues".to_owned())
        ]
    );
    // The label counts the pod for its default binding.
    assert_eq!(
        after
            .metadata
            .labels
            .unwrap()
            .get(LABEL_BINDING)
            .map(String::as_str),
        Some("s3-reader")
    );
}

#[test]
fn a_multi_binding_pod_is_recognised_on_reinvocation() {
    let bindings = [binding("s3-reader", "app"), binding("queue-reader", "app")];
    let pod = three_containers(json!({"credvend.io/container-bindings": "worker=queue-reader"}));
    let once = as_the_api_server_keeps_it(patched(&pod, &bindings));
    assert_eq!(
        decide_on(&once, &bindings),
        Decision::Skip {
            reason: SkipReason::AlreadyInjected
        }
    );
}

#[test]
fn container_bindings_and_include_containers_are_checked() {
    let app = || vec![binding("s3-reader", "app"), binding("queue-reader", "app")];
    let cases: Vec<DenyCase> = vec![
        (
            "both skip and include",
            three_containers(
                json!({"credvend.io/skip-containers": "worker", "credvend.io/include-containers": "app"}),
            ),
            app(),
            "skip_and_include",
            vec!["use one"],
        ),
        (
            "include names an unknown container",
            three_containers(json!({"credvend.io/include-containers": "wrker"})),
            app(),
            "unknown_containers",
            vec!["credvend.io/include-containers", "\"wrker\""],
        ),
        (
            "mapping without =",
            three_containers(json!({"credvend.io/container-bindings": "worker"})),
            app(),
            "invalid_container_bindings",
            vec!["<container>=<binding>"],
        ),
        (
            "mapping for an unknown container",
            three_containers(json!({"credvend.io/container-bindings": "wrker=queue-reader"})),
            app(),
            "unknown_containers",
            vec!["credvend.io/container-bindings", "\"wrker\""],
        ),
        (
            "mapping for a skipped container",
            three_containers(
                json!({"credvend.io/container-bindings": "worker=queue-reader", "credvend.io/skip-containers": "worker"}),
            ),
            app(),
            "container_binding_for_excluded",
            vec!["\"worker\""],
        ),
        (
            "mapping to another service account's binding",
            three_containers(json!({"credvend.io/container-bindings": "worker=other"})),
            vec![binding("s3-reader", "app"), binding("other", "web")],
            "wrong_service_account",
            vec!["team-a/other", "\"web\""],
        ),
        (
            "mapping to a binding that does not exist",
            three_containers(json!({"credvend.io/container-bindings": "worker=queue-raeder"})),
            vec![binding("s3-reader", "app")],
            "unknown_binding",
            vec!["\"queue-raeder\""],
        ),
    ];
    for (name, pod, bindings, label, words) in cases {
        let Decision::Deny { reason } = decide_on(&pod, &bindings) else {
            panic!("{name}: not denied");
        };
        assert_eq!(reason.metric_label(), label, "{name}: {reason}");
        let message = reason.to_string();
        for w in words {
            assert!(message.contains(w), "{name}: {w:?} in {message}");
        }
    }
}

#[test]
fn include_containers_configures_only_the_listed_ones() {
    let pod = three_containers(json!({"credvend.io/include-containers": "worker"}));
    let after = applied(&pod, &[binding("s3-reader", "app")]);
    let configured: Vec<&str> = after
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .filter(|c| env_value(c, "AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(configured, ["worker"]);
}

#[test]
fn chains_and_session_options_reach_the_agent_plan() {
    let b = with(binding("s3-reader", "app"), |s| {
        s.session_name = Some("{binding}.{pod}".into());
        s.session_policy = Some("{ \"Statement\": { \"Effect\": \"Allow\", \"Action\": \"s3:GetObject\", \"Resource\": \"*\" } }".into());
        s.session_duration = "2h".into();
        s.chain = vec![crate::crd::ChainHop {
            role_arn: "arn:aws:iam::444455556666:role/cross".into(),
            session_name: None,
            external_id: Some("partner-42".into()),
            session_tags: vec![crate::crd::SessionTag {
                key: "team".into(),
                value: "a".into(),
            }],
            transitive_tag_keys: vec!["team".into()],
            source_identity: Some("team-a".into()),
            session_policy: None,
            session_policy_arns: Vec::new(),
        }];
    });
    let Decision::Inject { warnings, .. } = decide_on(&base_pod(), std::slice::from_ref(&b)) else {
        panic!("expected an injection");
    };
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("1h STS allows a chained session")),
        "{warnings:?}"
    );
    let after = applied(&base_pod(), &[b]);
    let spec = after.spec.unwrap();
    let plan = &plans(&spec.init_containers.unwrap()[0])[0];
    assert_eq!(plan.session_name, "{binding}.{pod}");
    assert_eq!(
        plan.duration, "2h",
        "the agent applies the chaining rule itself"
    );
    assert!(
        plan.policy.as_deref().is_some_and(|p| !p.contains(' ')),
        "compact"
    );
    let hop = &plan.chain[0];
    assert_eq!(
        hop.session_name, "{binding}.{pod}",
        "hops default to the binding's"
    );
    assert_eq!(hop.external_id.as_deref(), Some("partner-42"));
    assert_eq!(hop.tags[0].key, "team");
    assert_eq!(hop.source_identity.as_deref(), Some("team-a"));
}

// ----- the injector's renders ----------------------------------------------------------------

/// `b` as the API server returns it: with a uid and a resourceVersion.
fn stored(mut b: AWSRoleBinding, resource_version: &str) -> AWSRoleBinding {
    b.metadata.uid = Some(format!("uid-{}", b.metadata.name.clone().unwrap()));
    b.metadata.resource_version = Some(resource_version.to_owned());
    b
}

fn injector_decides(injector: &Injector, pod: &Value, bindings: &[AWSRoleBinding]) -> Decision {
    let refs: Vec<&AWSRoleBinding> = bindings.iter().collect();
    injector.decide(
        &typed(pod),
        &Candidates {
            namespace: NS,
            bindings: &refs,
        },
    )
}

#[test]
fn the_injector_decides_every_golden_case_byte_for_byte_as_decide_does() {
    let injector = Injector::new(settings());
    for (i, case) in golden_cases().into_iter().enumerate() {
        // Cases differ in their bindings' specs, so each is another version of the binding.
        let bindings: Vec<AWSRoleBinding> = case
            .bindings
            .into_iter()
            .map(|b| stored(b, &i.to_string()))
            .collect();
        let pure = decide_on(&case.pod, &bindings);
        // The first decision renders the agent; the second is served from the render.
        for round in ["rendered", "remembered"] {
            assert_eq!(
                injector_decides(&injector, &case.pod, &bindings),
                pure,
                "{}: {round}",
                case.name
            );
        }
    }
    assert!(injector.renders_kept() > 0);
    assert!(injector.validations_kept() > 0);
}

#[test]
fn a_changed_binding_is_validated_and_rendered_afresh() {
    let injector = Injector::new(settings());
    let before = vec![stored(binding("s3-reader", "app"), "7")];
    injector_decides(&injector, &base_pod(), &before);
    assert_eq!(injector.renders_kept(), 1);
    // An edit gives a new resourceVersion, and the agent must carry the new role.
    let after = vec![stored(
        with(binding("s3-reader", "app"), |s| {
            s.role_arn = "arn:aws:iam::111122223333:role/other".into();
        }),
        "8",
    )];
    let decision = injector_decides(&injector, &base_pod(), &after);
    assert_eq!(decision, decide_on(&base_pod(), &after));
    let Decision::Inject { patch, .. } = decision else {
        panic!("expected an injection, got {decision:?}");
    };
    let text = String::from_utf8(patch.into_bytes()).unwrap();
    assert!(text.contains("role/other"), "{text}");
    assert_eq!(injector.renders_kept(), 2);
    assert_eq!(
        injector.validations_kept(),
        2,
        "each version validated once"
    );
    // Another port is another render, too.
    let on_port = pod_with(json!({"metadata": {"annotations": {"credvend.io/port": "9000"}}}));
    assert_eq!(
        injector_decides(&injector, &on_port, &after),
        decide_on(&on_port, &after)
    );
    assert_eq!(injector.renders_kept(), 3);
}

#[test]
fn a_binding_without_uid_or_resource_version_is_never_remembered() {
    let injector = Injector::new(settings());
    let bindings = vec![binding("s3-reader", "app")];
    assert_eq!(
        injector_decides(&injector, &base_pod(), &bindings),
        decide_on(&base_pod(), &bindings)
    );
    assert_eq!(injector.renders_kept(), 0);
    assert_eq!(injector.validations_kept(), 0);
}

#[test]
fn a_refused_binding_is_checked_again_for_every_pod() {
    let injector = Injector::new(settings());
    let invalid = vec![stored(
        with(binding("s3-reader", "app"), |s| {
            s.role_arn = "not-an-arn".into()
        }),
        "3",
    )];
    for _ in 0..2 {
        let decision = injector_decides(&injector, &base_pod(), &invalid);
        assert!(
            matches!(decision, Decision::Deny { .. }),
            "an invalid binding is refused every time: {decision:?}"
        );
        assert_eq!(decision, decide_on(&base_pod(), &invalid));
    }
    assert_eq!(injector.validations_kept(), 0);
}

#[test]
fn the_injector_keeps_a_bounded_number_of_renders() {
    let injector = Injector::new(settings());
    for version in 0..300 {
        let bindings = vec![stored(binding("s3-reader", "app"), &version.to_string())];
        injector_decides(&injector, &base_pod(), &bindings);
        assert!(
            injector.renders_kept() <= 256,
            "{}",
            injector.renders_kept()
        );
    }
}
