//! The operator end to end on a real control plane, installed from the chart's rendered
//! manifests, then the injected agent run exactly as the stored pod specifies, and boto3 using
//! the app container's env; the admission rules through the real API server (forged markers,
//! reinvocation after a second webhook, the STS endpoint policy); readiness with and without
//! leader election; and leadership passing on when a leader dies or could not campaign.
//!
//! There is no kubelet, so the test plays its part (see `support::operator`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use credvend::crd::AWSRoleBinding;
use support::http::{self, eventually};
use support::k8s;
use support::operator::*;
use support::sts::StsPeer;

#[tokio::test(flavor = "multi_thread")]
async fn operator_injects_an_agent_that_vends_credentials_to_boto3() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let installed = install_isolated(cp, &client, dir.path(), sts.endpoint()).await;

    let ns = k8s::unique_name("team-a");
    k8s::create_namespace(&client, &ns).await.unwrap();
    installed.admit_namespace(&client, &ns).await;
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
        args.windows(2).any(|w| w[0] == "--binding"
            && serde_json::from_str::<serde_json::Value>(&w[1])
                .is_ok_and(|plan| plan["roleArn"] == ROLE_ARN)),
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
    // The ServiceAccount admission plugin ran after our patch: the app has the Kubernetes API
    // token, the agent (which never calls the API server) has an empty directory there.
    let at_api_path = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
            .map(|m| m.name.clone())
    };
    assert!(
        at_api_path(app).is_some_and(|name| name.starts_with("kube-api-access-")),
        "{:?}",
        app.volume_mounts
    );
    assert_eq!(
        at_api_path(&agent).as_deref(),
        Some("credvend-no-api-token")
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
        // The marker credvend writes proves nothing: a forged one skips no check.
        (
            pod(
                "d7",
                "app",
                serde_json::json!({"credvend.io/inject": "true", "credvend.io/status": "injected"}),
                serde_json::json!({"initContainers": [{"name": "credvend-agent", "image": "impostor:1"}]}),
            ),
            "not the agent credvend injects",
        ),
        (
            pod(
                "d8",
                "app",
                serde_json::json!({"credvend.io/inject": "true", "credvend.io/status": "injected"}),
                serde_json::json!({"hostNetwork": true}),
            ),
            "hostNetwork",
        ),
        (
            labelled(
                pod(
                    "d9",
                    "app",
                    serde_json::json!({"credvend.io/status": "injected"}),
                    none.clone(),
                ),
                "s3-reader",
            ),
            "only credvend writes",
        ),
        (
            pod(
                "d10",
                "evil",
                serde_json::json!({"credvend.io/binding": "elsewhere"}),
                none.clone(),
            ),
            "stsEndpoint \"https://tokens.example.com\" is neither one of AWS's STS endpoints",
        ),
    ];
    // A binding whose STS endpoint the operator does not allow: its pods are refused.
    k8s::create_service_account(&client, &ns, "evil")
        .await
        .unwrap();
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("elsewhere", &ns, "evil", "https://tokens.example.com"),
        )
        .await
        .unwrap();
    for (p, needle) in &cases {
        let message = denial(&pods, p).await;
        assert!(message.contains("credvend"), "{message}");
        assert!(
            message.contains(needle),
            "denial of {} should mention {needle:?}: {message}",
            p.name_any()
        );
    }

    // Updates may not add or change the label that counts a pod for a binding.
    let relabel = |value: &str| {
        Patch::Merge(serde_json::json!({"metadata": {"labels": {"credvend.io/binding": value}}}))
    };
    let refused = pods
        .patch("web-0", &PatchParams::default(), &relabel("dup-1"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be added or changed"),
        "{refused}"
    );
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain", "app", none.clone(), none.clone()),
        )
        .await
        .unwrap();
    let refused = pods
        .patch(
            &plain.name_any(),
            &PatchParams::default(),
            &relabel("s3-reader"),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("credvend.io/binding"),
        "{refused}"
    );
    // Other label changes of an injected pod pass untouched.
    pods.patch(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await
    .unwrap();

    // The binding reports Ready and its one pod (forged labels were refused, so count nothing).
    let status = wait_binding_ready(&bindings, "s3-reader", 1).await;
    assert_eq!(status.observed_generation, Some(1));
    eventually("binding elsewhere Ready=False", WAIT, || async {
        let b = bindings.get("elsewhere").await.ok()?;
        let condition = b.status?.conditions.into_iter().next()?;
        (condition.status == "False" && condition.reason == "StsEndpointNotAllowed").then_some(())
    })
    .await;

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

fn labelled(mut pod: Pod, binding: &str) -> Pod {
    pod.metadata.labels = Some([("credvend.io/binding".to_owned(), binding.to_owned())].into());
    pod
}

/// [`install`], its webhook seeing only the namespaces the test admits: the tests of this file
/// share one control plane, and one of them kills an operator whose webhook configuration
/// (failurePolicy Fail) stays behind.
async fn install_isolated(
    cp: &k8s::ControlPlane,
    client: &kube::Client,
    dir: &std::path::Path,
    sts: &str,
) -> Installed {
    install_with(
        cp,
        client,
        dir,
        &InstallOptions {
            sts_endpoints: &[sts],
            isolated: true,
            ..InstallOptions::default()
        },
    )
    .await
}

/// A namespace admitted to `installed`'s webhook, with service account `app` and a binding
/// `s3-reader` for it (STS at `sts`).
async fn team(
    installed: &Installed,
    client: &kube::Client,
    prefix: &str,
    sts: &str,
) -> (String, Api<AWSRoleBinding>) {
    let ns = k8s::unique_name(prefix);
    k8s::create_namespace(client, &ns).await.unwrap();
    installed.admit_namespace(client, &ns).await;
    k8s::create_service_account(client, &ns, "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("s3-reader", &ns, "app", sts),
        )
        .await
        .unwrap();
    (ns, bindings)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_leader_election_the_operator_becomes_ready_and_writes_status() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    // install_with returns only once /healthz/ready answers 200: before the fix it stayed
    // 503 "bindings cache not synced yet" in this mode.
    let started = std::time::Instant::now();
    let installed = install_with(
        cp,
        &client,
        dir.path(),
        &InstallOptions {
            sts_endpoints: &[sts.endpoint()],
            values: &[("leaderElection.enabled", "false"), ("replicaCount", "1")],
            isolated: true,
            ..InstallOptions::default()
        },
    )
    .await;
    assert!(
        installed.objects.iter().all(|o| o["kind"] != "Role"
            || o["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["resources"][0] != "leases")),
        "no Lease permission is rendered without leader election"
    );
    println!(
        "without leader election: ready {:?} after the install began",
        started.elapsed()
    );
    let (ns, bindings) = team(&installed, &client, "no-le", sts.endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create_annotated_pod(&pods, "web-0", "app").await;
    wait_binding_ready(&bindings, "s3-reader", 1).await;
    let page = metrics_page(installed.metrics_port).await;
    assert_eq!(
        metric_value(&page, "credvend_leader", ""),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_takes_over_when_the_leader_is_killed() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let mut installed = install_isolated(cp, &client, dir.path(), sts.endpoint()).await;
    let (_, bindings) = team(&installed, &client, "takeover", sts.endpoint()).await;
    wait_binding_ready(&bindings, "s3-reader", 0).await;
    let lease_name = installed
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()?
                .iter()
                .find_map(|a| a.as_str()?.strip_prefix("--lease-name=").map(str::to_owned))
        })
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &installed.namespace);
    let holder = || async {
        leases
            .get_opt(&lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    assert_eq!(holder().await.as_deref(), Some("operator-0"));

    // A second replica is ready (it serves the webhook) but does not lead.
    let follower = installed.replica("operator-1", dir.path()).await;
    let page = metrics_page(follower.metrics_port).await;
    assert_eq!(
        metric_value(&page, "credvend_leader", ""),
        Some(0.0),
        "{page}"
    );

    // The leader dies without releasing the Lease (SIGKILL): the follower takes over once it
    // expires, and statuses keep being written.
    installed.operator.kill();
    let killed = std::time::Instant::now();
    eventually("operator-1 to hold the Lease", WAIT, || async {
        (holder().await.as_deref() == Some("operator-1")).then_some(())
    })
    .await;
    println!(
        "operator-1 took the Lease {:?} after operator-0 was killed",
        killed.elapsed()
    );
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml(
                "after",
                &bindings_namespace(&bindings),
                "other",
                sts.endpoint(),
            ),
        )
        .await
        .unwrap();
    wait_binding_ready(&bindings, "after", 0).await;
    let page = metrics_page(follower.metrics_port).await;
    assert_eq!(
        metric_value(&page, "credvend_leader", ""),
        Some(1.0),
        "{page}\n{}",
        follower.proc.log()
    );
}

fn bindings_namespace(bindings: &Api<AWSRoleBinding>) -> String {
    bindings.namespace().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_cannot_campaign_keeps_trying_and_leads_once_it_can() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    // The Lease permissions are taken away before the operator starts.
    let without_leases = |objects: &[serde_json::Value]| -> Vec<serde_json::Value> {
        let mut role = objects
            .iter()
            .find(|o| o["kind"] == "Role")
            .unwrap()
            .clone();
        let rules: Vec<serde_json::Value> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["apiGroups"][0] != "coordination.k8s.io")
            .cloned()
            .collect();
        role["rules"] = serde_json::Value::Array(rules);
        vec![role]
    };
    let installed = install_with(
        cp,
        &client,
        dir.path(),
        &InstallOptions {
            sts_endpoints: &[sts.endpoint()],
            before_start: Some(&without_leases),
            isolated: true,
            ..InstallOptions::default()
        },
    )
    .await;
    // Ready (the webhook works), the failure counted, and no status written.
    let (_, bindings) = team(&installed, &client, "no-lease", sts.endpoint()).await;
    eventually("a failed campaign in the metrics", WAIT, || async {
        let page = metrics_page(installed.metrics_port).await;
        (metric_value(&page, "credvend_leader_election_errors_total", "")? >= 1.0).then_some(())
    })
    .await;
    assert!(bindings.get("s3-reader").await.unwrap().status.is_none());

    // The permission comes back: the next campaign succeeds and the status is written.
    let role = installed
        .objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .unwrap()
        .clone();
    support::manifests::apply_all(&client, &[role])
        .await
        .unwrap();
    let restored = std::time::Instant::now();
    wait_binding_ready(&bindings, "s3-reader", 0).await;
    println!(
        "status written {:?} after the Lease permission came back",
        restored.elapsed()
    );
    let page = metrics_page(installed.metrics_port).await;
    assert_eq!(
        metric_value(&page, "credvend_leader", ""),
        Some(1.0),
        "{page}"
    );
}

// ----- reinvocation: a second mutating webhook that adds a container ------------------------

/// A mutating webhook on loopback that appends a `mesh-proxy` container to every pod it sees,
/// as a service mesh's injector would; served over TLS with a certificate of its own.
struct MeshWebhook {
    port: u16,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeshWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshWebhook {
    async fn start() -> MeshWebhook {
        use std::sync::Arc;
        k8s::install_crypto_provider();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt as _;
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let patch = serde_json::json!([{
                                "op": "add",
                                "path": "/spec/containers/-",
                                "value": {"name": "mesh-proxy", "image": "proxy:1"}
                            }]);
                            use base64::Engine as _;
                            let answer = serde_json::json!({
                                "apiVersion": "admission.k8s.io/v1",
                                "kind": "AdmissionReview",
                                "response": {
                                    "uid": review["request"]["uid"],
                                    "allowed": true,
                                    "patchType": "JSONPatch",
                                    "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string()),
                                }
                            });
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(answer.to_string()),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        MeshWebhook {
            port,
            ca_pem: cert.pem(),
            task,
        }
    }

    /// Registers it for pods of `namespace` annotated `mesh.example/inject`, under a name that
    /// sorts after credvend's configuration, so the API server calls it after credvend's
    /// webhook (and then reinvokes credvend's, which asks for `IfNeeded`).
    async fn register(&self, client: &kube::Client, namespace: &str) -> String {
        use base64::Engine as _;
        let name = format!("zz-mesh-{namespace}");
        let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "inject.mesh.example",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5,
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "matchConditions": [{
                    "name": "mesh-pods",
                    "expression": "has(object.metadata.annotations) && 'mesh.example/inject' in object.metadata.annotations"
                }],
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{}/mutate", self.port),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
                },
            }]
        }))
        .unwrap();
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        name
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_a_later_webhook_adds_get_credentials_and_no_second_agent() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let installed = install_isolated(cp, &client, dir.path(), sts.endpoint()).await;
    let (ns, bindings) = team(&installed, &client, "mesh", sts.endpoint()).await;
    let mesh = MeshWebhook::start().await;
    let mesh_config = mesh.register(&client, &ns).await;
    assert!(
        mesh_config.as_str() > installed.webhook_config.as_str(),
        "the API server calls webhooks in the order of their configurations' names"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let annotations = serde_json::json!({
        "credvend.io/inject": "true",
        "mesh.example/inject": "true",
        "credvend.io/port": support::ports::free_port().to_string(),
    });
    let wanted = pod("web-0", "app", annotations, serde_json::json!({}));
    // Dry runs until both webhooks are in force, then for real.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("both webhooks to take effect", WAIT, || async {
        let p = pods.create(&dry, &wanted).await.ok()?;
        let spec = p.spec?;
        (spec.containers.iter().any(|c| c.name == "mesh-proxy")
            && spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == "credvend-agent"))
        .then_some(())
    })
    .await;
    let stored = pods.create(&PostParams::default(), &wanted).await.unwrap();
    let spec = stored.spec.as_ref().unwrap();
    assert_eq!(
        support::operator::agent_count(spec),
        1,
        "one agent, however often credvend's webhook ran"
    );
    let proxy = spec
        .containers
        .iter()
        .find(|c| c.name == "mesh-proxy")
        .unwrap();
    let env = env_of(proxy);
    let port = stored.annotations()["credvend.io/port"].clone();
    assert_eq!(
        env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .map(String::as_str),
        Some(format!("http://127.0.0.1:{port}/v1/credentials").as_str()),
        "the mesh's container was completed on reinvocation: {:?}",
        proxy.env
    );
    assert_eq!(
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        "/var/run/credvend/auth/token"
    );
    assert!(
        proxy
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "credvend-auth" && m.read_only == Some(true)),
        "{:?}",
        proxy.volume_mounts
    );
    wait_binding_ready(&bindings, "s3-reader", 1).await;
    let page = metrics_page(installed.metrics_port).await;
    assert!(
        metric_value(
            &page,
            "credvend_admissions_total",
            r#"reason="completed",result="completed""#
        )
        .is_some_and(|n| n >= 1.0),
        "{page}"
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&mesh_config, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_loses_its_lease_permission_steps_down_and_leads_again_once_it_returns() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let installed = install_isolated(cp, &client, dir.path(), sts.endpoint()).await;
    let (_, bindings) = team(&installed, &client, "lease-lost", sts.endpoint()).await;
    wait_binding_ready(&bindings, "s3-reader", 0).await;
    let leader = || async {
        metric_value(
            &metrics_page(installed.metrics_port).await,
            "credvend_leader",
            "",
        )
    };
    assert_eq!(leader().await, Some(1.0));

    // The Lease permission goes away while the replica leads: renewals fail (the lease
    // manager only retries), so the replica must notice by itself and stop writing.
    let role = installed
        .objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .unwrap()
        .clone();
    let mut without_leases = role.clone();
    let rules: Vec<serde_json::Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"][0] != "coordination.k8s.io")
        .cloned()
        .collect();
    without_leases["rules"] = serde_json::Value::Array(rules);
    support::manifests::apply_all(&client, &[without_leases])
        .await
        .unwrap();
    let removed = std::time::Instant::now();
    eventually("the leader to step down", WAIT, || async {
        (leader().await? == 0.0).then_some(())
    })
    .await;
    println!(
        "stepped down {:?} after losing the Lease permission",
        removed.elapsed()
    );

    support::manifests::apply_all(&client, &[role])
        .await
        .unwrap();
    eventually("the replica to lead again", WAIT, || async {
        (leader().await? == 1.0).then_some(())
    })
    .await;
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml(
                "after",
                &bindings_namespace(&bindings),
                "other",
                sts.endpoint(),
            ),
        )
        .await
        .unwrap();
    wait_binding_ready(&bindings, "after", 0).await;
}
