//! Every generated pod's admission result is a pod the real API server accepts: the patched pod
//! for an injection, the pod itself for a skip, submitted with `dryRun=All` (validation and
//! admission plugins run, nothing is stored). Four hundred cases, against the test control
//! plane (tests/support/k8s.rs).

mod generated_pods;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use credvend::inject::Decision;
use generated_pods::{NAMESPACE, SERVICE_ACCOUNTS, check_injection, decide_json, pod};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use support::k8s;

const CASES: u32 = 400;

#[test]
fn every_admitted_result_is_a_pod_the_api_server_accepts() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (api, namespace) = runtime.block_on(async {
        k8s::install_crypto_provider();
        let cp = k8s::shared().await.unwrap();
        let client = cp.client().unwrap();
        let namespace = k8s::unique_name(NAMESPACE);
        k8s::create_namespace(&client, &namespace).await.unwrap();
        for sa in SERVICE_ACCOUNTS {
            k8s::create_service_account(&client, &namespace, sa)
                .await
                .unwrap();
        }
        (Api::<Pod>::namespaced(client, &namespace), namespace)
    });
    let injected = AtomicUsize::new(0);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&pod(), |pod| {
        let result = match decide_json(&pod) {
            Decision::Inject { patch, .. } => {
                injected.fetch_add(1, Ordering::Relaxed);
                check_injection(&pod, &patch)
            }
            Decision::Skip { .. } => pod,
            Decision::Deny { .. } => return Ok(()),
        };
        let mut result: Value = result;
        result["metadata"]["namespace"] = namespace.clone().into();
        let typed: Pod = serde_json::from_value(result.clone()).unwrap();
        runtime
            .block_on(api.create(&dry_run, &typed))
            .map(drop)
            .map_err(|e| TestCaseError::fail(format!("the API server refuses {result}: {e}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let injected = injected.into_inner();
    eprintln!("{injected} of {CASES} cases were injections, all accepted by the API server");
    assert!(
        injected >= 100,
        "only {injected} of {CASES} cases were injections"
    );
}
