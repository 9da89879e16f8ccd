//! The operator end to end on a real control plane, installed from the chart's rendered
//! manifests, then the injected agent run exactly as the stored pod specifies, and boto3 using
//! the app container's env.
//!
//! There is no kubelet, so the test plays its part: it asks TokenRequest for the token the
//! projected volume would hold, writes it where the agent's flags say (paths mapped into a temp
//! dir), and starts `credvend agent` with the injected args and the downward-API env.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use credvend::crd::AWSRoleBinding;
use support::agent::free_port;
use support::http::{self, eventually};
use support::k8s::{self, ControlPlane};
use support::manifests::{apply_all, documents, render_chart};
use support::python::python;
use support::sts::StsPeer;

const WAIT: Duration = Duration::from_secs(60);
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/s3-reader";

/// A process killed on drop, with its output in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a readiness URL until 200, failing with the process's log.
async fn wait_ready(url: &str, proc: &Proc) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if http::get(url).await.is_ok_and(|r| r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} not ready after {WAIT:?}; log:\n{}", proc.log());
}

/// A kubeconfig that authenticates as a service account, so the operator runs with exactly the
/// chart's RBAC rather than as cluster admin.
fn service_account_kubeconfig(cp: &ControlPlane, token: &str, dir: &Path) -> PathBuf {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: operator}}\ncurrent-context: test\n",
        cp.url()
    );
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, config).unwrap();
    path
}

struct Installed {
    /// The MutatingWebhookConfiguration's name.
    webhook_config: String,
    metrics_port: u16,
    operator: Proc,
}

/// Renders the chart in url mode, applies every object, and runs the operator with the
/// Deployment's own args (listen addresses moved to loopback) and the chart's service account
/// identity, so the chart's flags and RBAC are what is tested.
async fn install(cp: &ControlPlane, client: &Client, dir: &Path) -> Installed {
    let release = k8s::unique_name("rel");
    let release_ns = k8s::unique_name("credvend-system");
    k8s::create_namespace(client, &release_ns).await.unwrap();
    let webhook_port = free_port();
    let metrics_port = free_port();
    let url = format!("https://127.0.0.1:{webhook_port}/mutate");
    let rendered = render_chart(&release, &release_ns, &[("webhook.url", &url)]).unwrap();
    let objects = documents(&rendered).unwrap();
    apply_all(client, &objects, true)
        .await
        .expect("dry-run apply of the chart");
    apply_all(client, &objects, false)
        .await
        .expect("apply of the chart");

    let deployment = objects
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "Deployment"))
        .expect("the chart renders a Deployment");
    let pod_spec = &deployment.data["spec"]["template"]["spec"];
    let service_account = pod_spec["serviceAccountName"].as_str().unwrap().to_owned();
    let chart_args: Vec<String> =
        serde_json::from_value(pod_spec["containers"][0]["args"].clone()).unwrap();
    let mut args: Vec<String> = chart_args
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--webhook-listen", _)) => format!("--webhook-listen=127.0.0.1:{webhook_port}"),
            Some(("--metrics-listen", _)) => format!("--metrics-listen=127.0.0.1:{metrics_port}"),
            // What the kubelet does with $(POD_NAMESPACE) from the downward API.
            _ => a.replace("$(POD_NAMESPACE)", &release_ns),
        })
        .collect();
    args.push("--webhook-extra-san=127.0.0.1".into());
    args.push("--pod-name=operator-0".into());
    args.push("--agent-image=credvend:test".into());
    args.retain(|a| !a.starts_with("--agent-image=") || a == "--agent-image=credvend:test");
    let webhook_config = chart_args
        .iter()
        .find_map(|a| a.strip_prefix("--webhook-config-name="))
        .expect("the chart passes --webhook-config-name")
        .to_owned();

    let token = k8s::request_token(
        client,
        &release_ns,
        &service_account,
        cp.issuer(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let kubeconfig = service_account_kubeconfig(cp, &token, dir);
    let operator = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_credvend"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info"),
        dir.join("operator.log"),
    );
    let installed = Installed {
        webhook_config,
        metrics_port,
        operator,
    };
    wait_ready(
        &format!("http://127.0.0.1:{metrics_port}/healthz/ready"),
        &installed.operator,
    )
    .await;
    // Self-signed TLS mode: the operator put its CA into the webhook configuration.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = installed.webhook_config.clone();
    eventually("the caBundle patch", WAIT, || {
        let (mwcs, name) = (mwcs.clone(), name.clone());
        async move {
            let mwc = mwcs.get(&name).await.ok()?;
            let hooks = mwc.webhooks.unwrap_or_default();
            hooks
                .iter()
                .all(|h| {
                    h.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                })
                .then_some(())
        }
    })
    .await;
    installed
}

fn binding_yaml(name: &str, ns: &str, sa: &str, sts: &str) -> AWSRoleBinding {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "credvend.io/v1alpha1",
        "kind": "AWSRoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "serviceAccountName": sa,
            "roleArn": ROLE_ARN,
            "region": "us-east-1",
            "stsEndpoint": sts,
        }
    }))
    .unwrap()
}

fn pod(name: &str, sa: &str, annotations: serde_json::Value, extra_spec: serde_json::Value) -> Pod {
    let mut spec = serde_json::json!({
        "serviceAccountName": sa,
        "containers": [{"name": "app", "image": "app:1", "env": [{"name": "AWS_REGION", "value": "us-east-1"}]}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates `pod`, retrying dry-runs until the webhook is in effect (the API server picks up
/// new webhook configurations asynchronously), then for real.
async fn create_injected(pods: &Api<Pod>, pod: &Pod) -> Pod {
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the webhook to take effect", WAIT, || async {
        let p = pods.create(&dry, pod).await.ok()?;
        p.annotations()
            .contains_key("credvend.io/status")
            .then_some(())
    })
    .await;
    pods.create(&PostParams::default(), pod).await.unwrap()
}

async fn denial(pods: &Api<Pod>, pod: &Pod) -> String {
    match pods.create(&PostParams::default(), pod).await {
        Ok(p) => panic!("pod {} was admitted: {:?}", p.name_any(), p.spec),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn agent_container(pod: &Pod) -> Container {
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(init[0].name, "credvend-agent", "the agent runs first");
    init[0].clone()
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

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

    // An annotated pod gets the agent; its credentials port is chosen by annotation so that
    // this test never collides with another process on the default port.
    let port = free_port();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let annotations =
        serde_json::json!({"credvend.io/inject": "true", "credvend.io/port": port.to_string()});
    let stored = create_injected(
        &pods,
        &pod("web-0", "app", annotations, serde_json::json!({})),
    )
    .await;

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
            .all(|m| m.name != "credvend-token"),
        "the SA token stays in the sidecar"
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
    eventually("binding status Ready with 1 pod", WAIT, || async {
        let b = bindings.get("s3-reader").await.ok()?;
        let status = b.status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.pods == 1 && status.observed_generation == Some(1)).then_some(())
    })
    .await;

    // Now the kubelet's part: the projected token, the downward API, the mounts.
    let volumes = stored.spec.as_ref().unwrap().volumes.clone().unwrap();
    let projected = volumes
        .iter()
        .find(|v| v.name == "credvend-token")
        .and_then(|v| v.projected.clone())
        .unwrap();
    let sat = projected.sources.unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("sts.amazonaws.com"));
    let token = k8s::request_token(
        &client,
        &ns,
        "app",
        sat.audience.as_deref().unwrap(),
        Duration::from_secs(sat.expiration_seconds.unwrap() as u64),
    )
    .await
    .unwrap();
    let root = dir.path().join("pod");
    let map_path = |p: &str| root.join(p.trim_start_matches('/'));
    let token_file = map_path(&format!(
        "/var/run/secrets/credvend.io/serviceaccount/{}",
        sat.path
    ));
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, &token).unwrap();

    // The injected args, with file paths mapped into the temp dir and the metrics port moved
    // to a free loopback port (the flags are otherwise passed through unchanged).
    let agent_metrics = free_port();
    let mut run_args = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        run_args.push(flag.clone());
        if matches!(flag.as_str(), "--token-file" | "--auth-token-file") {
            run_args.push(map_path(it.next().unwrap()).display().to_string());
        } else if flag == "--metrics-listen" {
            it.next();
            run_args.push(format!("127.0.0.1:{agent_metrics}"));
        }
    }
    let downward: BTreeMap<String, String> = [
        ("POD_NAME".to_owned(), stored.name_any()),
        ("POD_NAMESPACE".to_owned(), ns.clone()),
    ]
    .into();
    for e in agent.env.iter().flatten() {
        if let Some(field) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            assert!(
                downward.contains_key(&e.name),
                "unexpected downward env {} ({})",
                e.name,
                field.field_path
            );
        }
    }
    let agent_proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_credvend"))
            .args(&run_args)
            .envs(&downward)
            .env_remove("AWS_REGION"),
        dir.path().join("agent.log"),
    );
    wait_ready(
        &format!("http://127.0.0.1:{agent_metrics}/healthz/ready"),
        &agent_proc,
    )
    .await;

    // The app: boto3 with the app container's env, nothing else.
    let mut app_cmd = Command::new(python());
    app_cmd
        .args([
            "-c",
            "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])",
        ])
        .env_clear()
        .env("AWS_ENDPOINT_URL_STS", sts.endpoint())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1");
    for (k, v) in &app_env {
        let v = if k == "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" {
            map_path(v).display().to_string()
        } else {
            v.clone()
        };
        app_cmd.env(k, v);
    }
    let out = app_cmd.output().unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\nagent log:\n{}\noperator log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent_proc.log(),
        installed.operator.log()
    );
    let arn = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        arn.trim(),
        format!("arn:aws:sts::111122223333:assumed-role/s3-reader/{ns}.web-0")
    );

    // The agent sent the real, API-server-signed token for the pod's service account.
    let calls = sts.web_identity_calls().await;
    assert_eq!(calls[0]["WebIdentityToken"], token.as_str());
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
