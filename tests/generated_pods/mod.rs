//! Generated pods for the injection's property tests (`inject_props`, `inject_apiserver`), and
//! the checks both apply to what the webhook would do with them.
//!
//! The pods are valid Kubernetes pods (the API server test creates them), shaped to meet the
//! injection's corners: env vars the injection also sets (`AWS_REGION`, the container
//! credentials variables), duplicates, `valueFrom` entries, present-but-empty lists, init
//! containers and native sidecars, volumes and mounts, labels and annotations present or not,
//! skip lists, custom ports, a second service account, host networking.
// Each test binary uses part of this module; its checks panic with the reason, by design.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use credvend::crd::{AWSRoleBinding, AWSRoleBindingSpec};
use credvend::inject::{Candidates, Decision, InjectSettings, decide};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "team-a";
/// Service accounts the pods run as; the API server test creates them.
pub const SERVICE_ACCOUNTS: &[&str] = &["app", "batch"];

const CONTAINER_NAMES: &[&str] = &["app", "web", "worker", "proxy"];
const INIT_NAMES: &[&str] = &["migrate", "fetch", "mesh"];
const ENV_NAMES: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_EC2_METADATA_DISABLED",
    "HOME",
    "LOG_LEVEL",
];
const VOLUME_NAMES: &[&str] = &["data", "cache", "config"];
const MOUNT_PATHS: &[&str] = &["/data", "/cache", "/etc/app", "/var/run/credvend"];

/// The bindings of the namespace: one per service account, the second with its own region and
/// a short session (which warns).
pub fn bindings() -> Vec<AWSRoleBinding> {
    let mk = |name: &str, spec: Value| {
        let spec: AWSRoleBindingSpec = serde_json::from_value(spec).unwrap();
        let mut b = AWSRoleBinding::new(name, spec);
        b.metadata.namespace = Some(NAMESPACE.to_owned());
        b.metadata.generation = Some(4);
        b
    };
    vec![
        mk(
            "s3-reader",
            json!({"serviceAccountName": "app", "roleArn": "arn:aws:iam::111122223333:role/s3-reader"}),
        ),
        mk(
            "batch",
            json!({"serviceAccountName": "batch", "roleArn": "arn:aws:iam::111122223333:role/batch",
                   "region": "eu-west-1", "sessionDuration": "30m"}),
        ),
    ]
}

pub fn settings() -> InjectSettings {
    InjectSettings {
        agent_image: "credvend:test".to_owned(),
        ..InjectSettings::default()
    }
}

/// What the webhook decides for `pod` (as JSON), with [`bindings`] and [`settings`].
pub fn decide_json(pod: &Value) -> Decision {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("a generated pod is a Pod");
    let bindings = bindings();
    let refs: Vec<&AWSRoleBinding> = bindings.iter().collect();
    decide(
        &typed,
        &Candidates {
            namespace: NAMESPACE,
            bindings: &refs,
        },
        &settings(),
    )
}

fn env_var() -> impl Strategy<Value = Value> {
    let name = prop::sample::select(ENV_NAMES);
    prop_oneof![
        4 => (name.clone(), prop::sample::select(&["1", "us-west-2", "", "http://x"][..]))
            .prop_map(|(n, v)| json!({"name": n, "value": v})),
        1 => name.clone().prop_map(|n| json!({"name": n})),
        1 => name.prop_map(|n| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
    ]
}

/// An optional list: absent, present and empty, or present with items.
fn maybe_list<S: Strategy<Value = Value>>(
    item: S,
    max: usize,
) -> impl Strategy<Value = Option<Vec<Value>>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Vec::new())),
        3 => prop::collection::vec(item, 1..=max).prop_map(Some),
    ]
}

fn container(
    name: &'static str,
    volumes: Vec<&'static str>,
    sidecar: bool,
) -> impl Strategy<Value = Value> {
    let mounts = if volumes.is_empty() {
        Just(None).boxed()
    } else {
        maybe_list(
            (
                prop::sample::select(volumes),
                prop::sample::select(MOUNT_PATHS),
            )
                .prop_map(|(v, p)| json!({"name": v, "mountPath": p})),
            2,
        )
        .boxed()
    };
    // Mostly free ports; sometimes the agent's two (which the webhook refuses).
    let port = prop_oneof![12 => Just(8080), 4 => Just(9090), 1 => Just(9911), 1 => Just(9912)];
    let ports = maybe_list(port.prop_map(|p| json!({"containerPort": p})), 1);
    (maybe_list(env_var(), 4), mounts, ports).prop_map(move |(env, mounts, ports)| {
        let mut c = Map::new();
        c.insert("name".into(), json!(name));
        c.insert("image".into(), json!(format!("registry.test/{name}:1")));
        if sidecar {
            c.insert("restartPolicy".into(), json!("Always"));
        }
        if let Some(env) = env {
            c.insert("env".into(), Value::Array(env));
        }
        if let Some(mut mounts) = mounts {
            // A path is mounted once per container.
            let mut seen = BTreeSet::new();
            mounts.retain(|m| seen.insert(m["mountPath"].as_str().unwrap_or_default().to_owned()));
            c.insert("volumeMounts".into(), Value::Array(mounts));
        }
        if let Some(ports) = ports {
            c.insert("ports".into(), Value::Array(ports));
        }
        Value::Object(c)
    })
}

fn containers(
    names: &'static [&'static str],
    min: usize,
    volumes: Vec<&'static str>,
    init: bool,
) -> impl Strategy<Value = Vec<Value>> {
    subsequence(names, min..=names.len().min(3)).prop_flat_map(move |chosen| {
        chosen
            .into_iter()
            .enumerate()
            .map(|(i, n)| container(n, volumes.clone(), init && i == 0).boxed())
            .collect::<Vec<_>>()
    })
}

fn annotations(all_containers: Vec<String>) -> impl Strategy<Value = Option<Map<String, Value>>> {
    let inject = prop_oneof![
        12 => Just(Some("true")),
        1 => Just(Some("false")),
        1 => Just(Some("yes")),
        2 => Just(None),
    ];
    let binding = prop_oneof![
        12 => Just(None),
        2 => Just(Some("s3-reader")),
        2 => Just(Some("batch")),
        1 => Just(Some("missing")),
    ];
    let skip = prop_oneof![
        8 => Just(None),
        4 => subsequence(all_containers, 0..=1).prop_map(|s| Some(s.join(","))),
        1 => Just(Some("nosuch".to_owned())),
    ];
    let port = prop_oneof![
        12 => Just(None),
        2 => Just(Some("10000")),
        1 => Just(Some("80")),
        1 => Just(Some("9912")),
    ];
    let other = prop::option::of(Just(("team.example/owner", "data")));
    (inject, binding, skip, port, other, any::<bool>()).prop_map(
        |(inject, binding, skip, port, other, empty)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), json!(v));
                }
            };
            put("credvend.io/inject", inject.map(str::to_owned));
            put("credvend.io/binding", binding.map(str::to_owned));
            put("credvend.io/skip-containers", skip);
            put("credvend.io/port", port.map(str::to_owned));
            if let Some((k, v)) = other {
                put(k, Some(v.to_owned()));
            }
            (empty || !m.is_empty()).then_some(m)
        },
    )
}

/// A valid pod of [`NAMESPACE`] named `pod-<n>`, usually asking for credentials.
pub fn pod() -> impl Strategy<Value = Value> {
    let volumes = prop_oneof![2 => Just(None), 1 => Just(Some(Vec::new())), 3 => subsequence(VOLUME_NAMES, 1..=2).prop_map(Some)];
    (volumes, any::<u32>()).prop_flat_map(|(volumes, n)| {
        let names: Vec<&'static str> = volumes.clone().unwrap_or_default();
        let init = prop_oneof![2 => Just(None), 1 => Just(Some(Vec::new())), 2 => containers(INIT_NAMES, 1, names.clone(), true).prop_map(Some)];
        (
            Just(volumes),
            Just(n),
            containers(CONTAINER_NAMES, 1, names, false),
            init,
            prop_oneof![6 => Just(Some("app")), 2 => Just(Some("batch")), 1 => Just(None)],
            prop_oneof![20 => Just(false), 1 => Just(true)],
            prop::option::of(Just(json!({"app.kubernetes.io/name": "web"}))),
        )
            .prop_flat_map(|(volumes, n, containers, init, sa, host_network, labels)| {
                let mut all: Vec<String> = containers.iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
                all.extend(init.iter().flatten().map(|c| c["name"].as_str().unwrap().to_owned()));
                annotations(all).prop_map(move |annotations| {
                    let mut metadata = json!({"name": format!("pod-{n}"), "namespace": NAMESPACE});
                    if let Some(labels) = &labels {
                        metadata["labels"] = labels.clone();
                    }
                    if let Some(a) = annotations {
                        metadata["annotations"] = Value::Object(a);
                    }
                    let (mut containers, mut init) = (containers.clone(), init.clone());
                    unique_ports(containers.iter_mut().chain(init.iter_mut().flatten()));
                    let mut spec = json!({"containers": containers});
                    if let Some(sa) = sa {
                        spec["serviceAccountName"] = json!(sa);
                    }
                    if let Some(init) = init {
                        spec["initContainers"] = json!(init);
                    }
                    if let Some(volumes) = &volumes {
                        spec["volumes"] = volumes.iter().map(|v| json!({"name": v, "emptyDir": {}})).collect();
                    }
                    if host_network {
                        spec["hostNetwork"] = json!(true);
                    }
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
                })
            })
    })
}

/// Drops a container port that an earlier container of the pod declares already: the API
/// server refuses duplicates when they become host ports (with `hostNetwork`).
fn unique_ports<'a>(containers: impl Iterator<Item = &'a mut Value>) {
    let mut seen = BTreeSet::new();
    for c in containers {
        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
            ports.retain(|p| seen.insert(p["containerPort"].as_u64()));
        }
    }
}

/// Applies an injection's patch to `pod` and checks what the webhook promises of it: only
/// `add`s, every field the user wrote still in place, no user env var overridden, a valid Pod,
/// and reinjecting the result changes nothing. The patch is read from its bytes, as the API
/// server reads it. Returns the patched pod.
pub fn check_injection(pod: &Value, document: &credvend::inject::PatchDocument) -> Value {
    let ops: Value = serde_json::from_slice(document.as_bytes())
        .unwrap_or_else(|e| panic!("the patch is not JSON: {e}\n{document:?}"));
    let patch = &document
        .operations()
        .unwrap_or_else(|e| panic!("the patch is not a JSON Patch: {e}\n{ops}"));
    assert!(
        ops.as_array().unwrap().iter().all(|op| op["op"] == "add"),
        "only adds: {ops}"
    );
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{ops}\n{pod}"));
    assert!(
        survives(pod, &patched),
        "a user field was removed or rewritten:\n{pod}\n→ {patched}"
    );
    for list in ["containers", "initContainers"] {
        for before in pod["spec"][list].as_array().into_iter().flatten() {
            let name = &before["name"];
            let after = patched["spec"][list]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| &c["name"] == name))
                .unwrap_or_else(|| panic!("container {name} vanished"));
            for var in before["env"].as_array().into_iter().flatten() {
                // Kubernetes lets the last entry of a name win.
                let effective = |c: &Value| {
                    c["env"]
                        .as_array()
                        .and_then(|e| e.iter().rev().find(|v| v["name"] == var["name"]).cloned())
                };
                assert_eq!(
                    effective(after),
                    effective(before),
                    "env {} of container {name} overridden",
                    var["name"]
                );
            }
        }
    }
    match decide_json(&patched) {
        Decision::Skip { .. } => {}
        other => panic!("reinjection changes the pod: {other:?}"),
    }
    patched
}

/// Whether `original` survives in `patched`: object keys kept with surviving values, array
/// items kept in order (additions anywhere), scalars unchanged.
pub fn survives(original: &Value, patched: &Value) -> bool {
    match (original, patched) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| survives(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            let mut rest = b.iter();
            a.iter().all(|v| rest.any(|w| survives(v, w)))
        }
        (a, b) => a == b,
    }
}
