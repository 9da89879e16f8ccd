//! Every golden pod shape through the real webhook, on both ends of the supported Kubernetes
//! range.
//!
//! The library's golden tests (`src/inject/tests.rs`) prove that each pod shape gets exactly
//! the patch in `tests/golden/inject/<case>.json`. This proves that the patch is what a real
//! API server stores: the chart is applied and the operator runs as in `tests/operator.rs`,
//! each case's bindings are created, and its pod (`tests/golden/admission/<case>.json`, the
//! same shape the library test builds) is created through the webhook. The stored pod must
//! equal the golden patch applied to the input, as the same API server stores that (a dry-run
//! create of the expected pod, which the webhook skips as already injected), so both sides
//! get the same defaulting and only credvend's part can differ. Both run with
//! `automountServiceAccountToken: false`: the ServiceAccount plugin's token volume would come
//! before credvend's on one side and after it on the other.
//!
//! The case list is the golden directory itself: a new golden without an input here fails.
//! The newest release is the one every other test runs; the oldest is built from
//! `tests/k8s-oldest` (README "Compatibility").
// A test that cannot set up its control plane has nothing better to do than stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use credvend::crd::AWSRoleBinding;
use support::k8s::{self, ControlPlane, Release};
use support::operator::{InstallOptions, create_injected, install_with, wait_binding_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_pod_shape_is_stored_as_its_patch_says_on_the_newest_api_server() {
    every_golden_shape(Release::Newest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_pod_shape_is_stored_as_its_patch_says_on_the_oldest_api_server() {
    every_golden_shape(Release::Oldest).await;
}

async fn every_golden_shape(release: Release) {
    let cp = ControlPlane::start_release(release).await.unwrap();
    let client = cp.client().unwrap();
    let version = client.apiserver_version().await.unwrap().git_version;
    eprintln!("{release:?} release: kube-apiserver {version}");
    let dir = tempfile::tempdir().unwrap();
    let installed = install_with(&cp, &client, dir.path(), &InstallOptions::default()).await;

    let cases = cases();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // One namespace per case: every input pod is called web-0, and bindings must not mix.
        let namespace = format!("golden-{i}");
        if let Err(failure) = check(&client, &namespace, case).await {
            failures.push(format!("{}: {failure}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{release:?} release ({version}): {} of {} pod shapes were stored differently from their golden patch:\n{}\n\
         operator log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        installed.operator.log()
    );
    drop(installed);
    cp.shutdown().unwrap();
}

struct Case {
    name: String,
    pod: Value,
    bindings: Vec<Value>,
    patch: json_patch::Patch,
}

fn golden_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every golden patch with its input; a golden without an input (or the reverse) fails here.
fn cases() -> Vec<Case> {
    let (patches, inputs) = (golden_dir("inject"), golden_dir("admission"));
    let (with_patch, with_input) = (names_in(&patches), names_in(&inputs));
    assert_eq!(
        with_patch, with_input,
        "every golden patch in tests/golden/inject needs its input pod and bindings in \
         tests/golden/admission (the shape src/inject/tests.rs builds), and the reverse"
    );
    with_patch
        .into_iter()
        .map(|name| {
            let input = read_json(&inputs.join(format!("{name}.json")));
            let patch = serde_json::from_value(read_json(&patches.join(format!("{name}.json"))))
                .unwrap_or_else(|e| panic!("{name}: not a JSON patch: {e}"));
            Case {
                pod: input["pod"].clone(),
                bindings: input["bindings"].as_array().cloned().unwrap_or_default(),
                name,
                patch,
            }
        })
        .collect()
}

/// Creates the case's namespace, service account and bindings, then its pod through the
/// webhook; compares the stored pod with the golden patch's result.
async fn check(client: &kube::Client, namespace: &str, case: &Case) -> Result<(), String> {
    k8s::create_namespace(client, namespace).await.unwrap();
    k8s::create_service_account(client, namespace, "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), namespace);
    let mut generations = Vec::new();
    for binding in &case.bindings {
        let name = binding["name"].as_str().unwrap();
        let object: AWSRoleBinding = serde_json::from_value(json!({
            "apiVersion": "credvend.io/v1alpha1",
            "kind": "AWSRoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "spec": binding["spec"],
        }))
        .unwrap();
        let created = bindings
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| format!("binding {name} refused: {e}"))?;
        wait_binding_ready(&bindings, name, 0).await;
        generations.push((name.to_owned(), created.metadata.generation.unwrap_or(1)));
    }

    let mut input = case.pod.clone();
    // The ServiceAccount plugin's kube-api-access volume would be added before the webhook on
    // one side and after it on the other; without it, the comparison is of credvend's part.
    input["spec"]["automountServiceAccountToken"] = json!(false);
    let mut expected = input.clone();
    json_patch::patch(&mut expected, &case.patch).map_err(|e| format!("golden patch: {e}"))?;
    // The goldens are made with bindings of generation 3; these are the real ones.
    let chosen = expected["metadata"]["labels"]["credvend.io/binding"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some((_, generation)) = generations.iter().find(|(n, _)| *n == chosen) {
        expected["metadata"]["annotations"]["credvend.io/binding-generation"] =
            json!(generation.to_string());
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let input_pod: Pod = serde_json::from_value(input).map_err(|e| e.to_string())?;
    let stored = create_injected(&pods, &input_pod).await;
    let stored = pods
        .get(&stored.metadata.name.clone().unwrap())
        .await
        .unwrap();
    // Under another name, since web-0 now exists; the name is in no field credvend sets.
    expected["metadata"]["name"] = json!("web-0-golden");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let expected_pod: Pod = serde_json::from_value(expected).map_err(|e| e.to_string())?;
    let expected_stored = pods
        .create(&dry_run, &expected_pod)
        .await
        .map_err(|e| format!("the golden result itself is refused: {e}"))?;

    let (want, got) = (comparable(&expected_stored), comparable(&stored));
    if want == got {
        return Ok(());
    }
    let diff = json_patch::diff(&want, &got);
    Err(format!(
        "stored pod differs from the golden result by {}",
        serde_json::to_string(&diff).unwrap()
    ))
}

/// What credvend decides in a stored pod: its labels, annotations and spec; not the fields the
/// API server sets per object (uid, timestamps, managedFields).
fn comparable(pod: &Pod) -> Value {
    let value = serde_json::to_value(pod).unwrap();
    json!({
        "labels": value["metadata"]["labels"],
        "annotations": value["metadata"]["annotations"],
        "spec": value["spec"],
    })
}
