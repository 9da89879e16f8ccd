//! `make demo`: credvend end to end on this machine, narrated, on running pods.
//!
//! A local cluster with a real node (kube-apiserver, etcd, containerd, kubelet,
//! controller-manager and scheduler; see tests/support/node.rs), the credvend image built from
//! the release binary, moto as STS, `helm install` of the chart, a binding, an annotated
//! Deployment whose app container holds the Go AWS SDK, that SDK's call from inside the pod,
//! the agent's metrics and the binding's status. It is also a test: any failed step exits
//! non-zero. (A plain `main`, so its output is shown as it happens.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};

use credvend::crd::AWSRoleBinding;
use support::http::{self, eventually};
use support::k8s;
use support::node::Node;
use support::operator::{binding_yaml, env_of, wait_binding_ready};
use support::pods::{self, container_status, exec_in, sdk_container};

const STEPS: u32 = 9;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}/{STEPS}] {text}\x1b[0m");
}

fn main() {
    k8s::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(demo());
    println!(
        "\n\x1b[1mDemo finished: the pod's app got short-lived credentials for its role.\x1b[0m"
    );
}

async fn demo() {
    let begun = Instant::now();
    step(
        1,
        "Starting a local cluster with one node (API server, etcd, containerd, kubelet, controller-manager, scheduler)",
    );
    let node = Node::start().await.expect("the node starts");
    println!(
        "    node {} Ready in {:.1?}; API server {} on the node's bridge",
        node.name(),
        node.startup_time(),
        node.control_plane().url()
    );
    let client = node.client().unwrap();

    step(
        2,
        "Importing the images: credvend (release binary, laid out as the Dockerfile does) and an app with the Go AWS SDK",
    );
    let started = Instant::now();
    pods::import_images(&node).expect("images import");
    println!(
        "    {} and {} imported in {:.1?} (no registry: pods use imagePullPolicy Never)",
        support::image::CREDVEND_IMAGE,
        support::image::SDK_GO_IMAGE,
        started.elapsed()
    );

    step(
        3,
        "Starting STS (moto), served to pods over https on the node's bridge",
    );
    let sts = pods::start_sts(&node).unwrap();
    println!("    STS endpoint for pods {}", sts.pod_endpoint());

    step(
        4,
        "helm install credvend (the operator runs as two pods of its Deployment)",
    );
    let values = pods::node_values(&node, sts.pod_endpoint());
    println!(
        "    values on top of the chart's defaults:\n{}",
        indent(&values)
    );
    let out = pods::helm(
        &node,
        "install",
        "credvend",
        "credvend-system",
        &values,
        &[],
    )
    .unwrap();
    println!(
        "{}",
        indent(out.lines().take(6).collect::<Vec<_>>().join("\n").as_str())
    );
    let operators: Api<Pod> = Api::namespaced(client.clone(), "credvend-system");
    for pod in operators.list(&ListParams::default()).await.unwrap() {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        println!(
            "    pod {} {phase} at {ip}",
            pod.metadata.name.unwrap_or_default()
        );
    }
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually(
        "the webhook's caBundle",
        Duration::from_secs(120),
        || async {
            let mwc = mwcs.get("credvend").await.ok()?;
            mwc.webhooks?
                .iter()
                .all(|h| {
                    h.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                })
                .then_some(())
        },
    )
    .await;
    println!("    webhook configuration credvend has the operator's own CA");

    step(
        5,
        "Creating namespace team-a, service account app and an AWSRoleBinding",
    );
    k8s::create_namespace(&client, "team-a").await.unwrap();
    k8s::create_service_account(&client, "team-a", "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), "team-a");
    let binding = binding_yaml("s3-reader", "team-a", "app", sts.pod_endpoint());
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    println!(
        "{}",
        indent(&serde_saphyr::to_string(&binding.spec).unwrap())
    );

    step(
        6,
        "Creating a Deployment of two pods annotated credvend.io/inject: \"true\"",
    );
    let deployment =
        pods::sdk_deployment("web", 2, sdk_container(sts.pod_endpoint(), 1_000_000, 5000));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "team-a");
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    pods::wait_webhook(&pods_api, "app").await;
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    eventually("two ready pods", Duration::from_secs(180), || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let pod = pods_api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let agent = &spec.init_containers.as_ref().unwrap()[0];
    println!(
        "    pod {name}: init container {} (restartPolicy {}: a native sidecar) started first",
        agent.name,
        agent.restart_policy.as_deref().unwrap_or("")
    );
    println!("    app container env (injected):");
    for (k, v) in env_of(&spec.containers[0]) {
        println!("      {k}={v}");
    }

    step(
        7,
        "The app's Go SDK, inside the pod, calls STS GetCallerIdentity with only that env",
    );
    let app = container_status(&pod, "app").unwrap();
    // The app container's own process calls every few seconds; this is one more call, made
    // exactly as the app makes them (its namespaces, user and environment).
    let out = exec_in(
        &node,
        &app,
        &["/usr/local/bin/sdk-client-go"],
        &[("CREDVEND_SDK_CALLS", "1"), ("CREDVEND_SDK_SLEEP_MS", "0")],
    )
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    println!("    {}", report["arn"].as_str().unwrap_or_default());
    assert_eq!(
        report["arn"],
        format!("arn:aws:sts::111122223333:assumed-role/s3-reader/team-a.{name}")
    );

    step(
        8,
        "The agent's metrics (scraped from the pod's IP, as Prometheus would)",
    );
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let page = http::get(&format!("http://{ip}:9912/metrics"))
        .await
        .unwrap()
        .text();
    let shown: Vec<&str> = page
        .lines()
        .filter(|l| {
            l.starts_with("credvend_credentials_expiration")
                || l.starts_with("credvend_credentials_refresh_total")
                || l.starts_with("credvend_web_identity_token_expiration")
                || l.starts_with("credvend_endpoint_requests_total")
        })
        // Statuses not answered yet are exported at 0; the demo shows what happened.
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("credvend_credentials_expiration_timestamp_seconds"))
    );
    println!("{}", indent(&shown.join("\n")));

    step(
        9,
        "The binding's status, written by the operator's elected leader",
    );
    let status = wait_binding_ready(&bindings, "s3-reader", 2).await;
    for c in &status.conditions {
        println!("    {}={} ({}): {}", c.type_, c.status, c.reason, c.message);
    }
    println!("    pods: {}", status.pods);
    println!(
        "\nCleaning up (helm uninstall, pods, node, STS, control plane) after {:.0?}.",
        begun.elapsed()
    );
    pods::helm(&node, "uninstall", "credvend", "credvend-system", "", &[]).unwrap();
    drop(sts);
    node.shutdown().unwrap();
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
