//! `make demo`: credvend end to end on this machine, narrated.
//!
//! A local control plane (kube-apiserver + etcd), moto as STS, the chart's rendered manifests,
//! the operator, a binding, an annotated pod, the injected agent run exactly as injected with a
//! real TokenRequest token, and boto3 getting the binding's role. It is also a test: any failed
//! step exits non-zero. (A plain `main`, so its output is shown as it happens.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use credvend::crd::AWSRoleBinding;
use support::http;
use support::k8s::{self, ControlPlane};
use support::operator::{
    binding_yaml, create_annotated_pod, env_of, install, run_injected_agent, wait_binding_ready,
};
use support::sts::StsPeer;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}/9] {text}\x1b[0m");
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
    step(
        1,
        "Starting a local Kubernetes control plane (kube-apiserver and etcd on 127.0.0.1)",
    );
    let cp = ControlPlane::start().await.expect("control plane");
    println!(
        "    API server {} (ready in {:.1?})",
        cp.url(),
        cp.startup_time()
    );
    let client = cp.client().unwrap();

    step(2, "Starting STS (moto) on 127.0.0.1");
    let sts = StsPeer::start();
    println!("    STS endpoint {}", sts.endpoint());

    step(
        3,
        "Installing the chart's manifests and starting the operator as the chart's service account",
    );
    let dir = tempfile::tempdir().unwrap();
    let installed = install(&cp, &client, dir.path(), sts.endpoint()).await;
    println!(
        "    operator ready; webhook configuration {} has its caBundle",
        installed.webhook_config
    );

    step(
        4,
        "Creating namespace team-a, service account app and an AWSRoleBinding",
    );
    k8s::create_namespace(&client, "team-a").await.unwrap();
    k8s::create_service_account(&client, "team-a", "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), "team-a");
    let binding = binding_yaml("s3-reader", "team-a", "app", sts.endpoint());
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    println!(
        "{}",
        indent(&serde_saphyr::to_string(&binding.spec).unwrap())
    );

    step(5, "Creating a pod annotated credvend.io/inject: \"true\"");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let stored = create_annotated_pod(&pods, "web-0", "app").await;
    let spec = stored.spec.as_ref().unwrap();
    let agent = &spec.init_containers.as_ref().unwrap()[0];
    println!(
        "    injected init container {} (restartPolicy {}):",
        agent.name,
        agent.restart_policy.as_deref().unwrap_or("")
    );
    println!(
        "      args: {}",
        agent.args.clone().unwrap_or_default().join(" ")
    );
    println!("    app container env:");
    for (k, v) in env_of(&spec.containers[0]) {
        println!("      {k}={v}");
    }
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    println!("    volumes: {}", volumes.join(", "));
    println!(
        "    label credvend.io/binding={}",
        stored.labels()["credvend.io/binding"]
    );

    step(
        6,
        "Running the agent exactly as injected, with a real TokenRequest token",
    );
    let running = run_injected_agent(&client, &stored, "team-a", dir.path()).await;
    println!(
        "    agent ready (token for system:serviceaccount:team-a:app, audience sts.amazonaws.com)"
    );

    step(
        7,
        "The app calls STS GetCallerIdentity with boto3 and only the injected env",
    );
    let out = running
        .app_command(
            &spec.containers[0],
            sts.endpoint(),
            "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        running.proc.log()
    );
    let arn = String::from_utf8(out.stdout).unwrap();
    println!("    {}", arn.trim());
    assert_eq!(
        arn.trim(),
        "arn:aws:sts::111122223333:assumed-role/s3-reader/team-a.web-0"
    );

    step(8, "The agent's metrics");
    let page = http::get(&format!(
        "http://127.0.0.1:{}/metrics",
        running.metrics_port
    ))
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
        .collect();
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("credvend_credentials_expiration_timestamp_seconds"))
    );
    println!("{}", indent(&shown.join("\n")));

    step(9, "The binding's status");
    let status = wait_binding_ready(&bindings, "s3-reader", 1).await;
    for c in &status.conditions {
        println!("    {}={} ({}): {}", c.type_, c.status, c.reason, c.message);
    }
    println!("    pods: {}", status.pods);
    println!("\nCleaning up (agent, operator, STS, control plane).");
    drop(running);
    drop(installed);
    drop(sts);
    cp.shutdown().unwrap();
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
