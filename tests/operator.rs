//! The operator end to end on a real control plane, installed from the chart's rendered
//! manifests, then the injected agent run exactly as the stored pod specifies, and boto3 using
//! the app container's env.
//!
//! There is no kubelet, so the test plays its part (see `support::operator`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use credvend::crd::AWSRoleBinding;
use support::http;
use support::k8s;
use support::operator::*;
use support::sts::StsPeer;

#[tokio::test(flavor = "multi_thread")]
async fn operator_injects_an_agent_that_vends_credentials_to_boto3() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let installed = install(cp, &client, dir.path()).await;
    let sts = StsPeer::start();

    let ns = k8s::unique_name("team-a");
    k8s::create_namespace(&client, &ns).await.unwrap();
    k8s::create_service_account(&client, &ns, "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("s3-reader", &ns, "app", sts.endpoint()),
        )
        .await
        .unwrap();

    // An annotated pod gets the agent, on a port chosen by annotation.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let stored = create_annotated_pod(&pods, "web-0", "app").await;
    let port = stored.annotations()["credvend.io/port"].clone();

    let agent = agent_container(&stored);
    assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
    assert_eq!(agent.image.as_deref(), Some("credvend:test"));
    let args = agent.args.clone().unwrap();
    assert_eq!(args[0], "agent");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--role-arn" && w[1] == ROLE_ARN),
        "{args:?}"
    );
    assert!(agent.startup_probe.is_some());
    let app = &stored.spec.as_ref().unwrap().containers[0];
    let app_env = env_of(app);
    assert_eq!(
        app_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        format!("http://127.0.0.1:{port}/v1/credentials")
    );
    assert_eq!(
        app_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        "/var/run/credvend/auth/token"
    );
    assert_eq!(
        app_env["AWS_REGION"], "us-east-1",
        "the user's value is kept"
    );
    assert!(
        app.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "credvend-token" && m.name != "credvend-cache"),
        "the SA token and the credentials cache stay in the sidecar"
    );
    assert_eq!(
        stored
            .labels()
            .get("credvend.io/binding")
            .map(String::as_str),
        Some("s3-reader")
    );
    assert_eq!(
        stored
            .annotations()
            .get("credvend.io/status")
            .map(String::as_str),
        Some("injected")
    );

    // Each denial is refused by the API server with a message that names the fix.
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("dup-1", &ns, "dup", sts.endpoint()),
        )
        .await
        .unwrap();
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("dup-2", &ns, "dup", sts.endpoint()),
        )
        .await
        .unwrap();
    k8s::create_service_account(&client, &ns, "dup")
        .await
        .unwrap();
    k8s::create_service_account(&client, &ns, "other")
        .await
        .unwrap();
    let inject = serde_json::json!({"credvend.io/inject": "true"});
    let none = serde_json::json!({});
    let cases = [
        (
            pod(
                "d1",
                "app",
                serde_json::json!({"credvend.io/binding": "nope"}),
                none.clone(),
            ),
            "nope",
        ),
        (
            pod(
                "d2",
                "other",
                serde_json::json!({"credvend.io/binding": "s3-reader"}),
                none.clone(),
            ),
            "other",
        ),
        (pod("d3", "dup", inject.clone(), none.clone()), "dup-2"),
        (
            pod(
                "d4",
                "app",
                inject.clone(),
                serde_json::json!({"hostNetwork": true}),
            ),
            "hostNetwork",
        ),
        (
            pod(
                "d5",
                "app",
                inject.clone(),
                serde_json::json!({"os": {"name": "windows"}}),
            ),
            "windows",
        ),
        (
            pod(
                "d6",
                "app",
                inject.clone(),
                serde_json::json!({"initContainers": [{"name": "credvend-agent", "image": "impostor:1"}]}),
            ),
            "credvend-agent",
        ),
    ];
    for (p, needle) in &cases {
        let message = denial(&pods, p).await;
        assert!(message.contains("credvend"), "{message}");
        assert!(
            message.contains(needle),
            "denial of {} should mention {needle:?}: {message}",
            p.name_any()
        );
    }

    // The binding reports Ready and its pod.
    let status = wait_binding_ready(&bindings, "s3-reader", 1).await;
    assert_eq!(status.observed_generation, Some(1));

    // Now the kubelet's part: the projected token, the downward API, the agent as injected.
    let running = run_injected_agent(&client, &stored, &ns, dir.path()).await;
    let volumes = stored.spec.as_ref().unwrap().volumes.clone().unwrap();
    let audience = volumes
        .iter()
        .find(|v| v.name == "credvend-token")
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.as_ref())
        .and_then(|t| t.audience.clone());
    assert_eq!(audience.as_deref(), Some("sts.amazonaws.com"));

    // The app: boto3 with the app container's env, nothing else.
    let mut app_cmd = running.app_command(
        app,
        sts.endpoint(),
        "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])",
    );
    let out = app_cmd.output().unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\nagent log:\n{}\noperator log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        running.proc.log(),
        installed.operator.log()
    );
    let arn = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        arn.trim(),
        format!("arn:aws:sts::111122223333:assumed-role/s3-reader/{ns}.web-0")
    );

    // The agent sent the real, API-server-signed token for the pod's service account.
    let calls = sts.web_identity_calls().await;
    assert_eq!(calls[0]["WebIdentityToken"], running.token.as_str());
    assert_eq!(calls[0]["RoleArn"], ROLE_ARN);
    assert_eq!(calls[0]["DurationSeconds"], "3600");

    // Operator metrics count what happened.
    let page = http::get(&format!(
        "http://127.0.0.1:{}/metrics",
        installed.metrics_port
    ))
    .await
    .unwrap()
    .text();
    assert!(
        page.contains(r#"credvend_admissions_total{reason="injected",result="injected"}"#),
        "{page}"
    );
    assert!(page.contains(r#"result="denied""#));
    assert!(page.contains("credvend_webhook_certificate_expiration_timestamp_seconds"));
}
