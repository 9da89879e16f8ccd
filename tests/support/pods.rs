//! What the pod-level tests and the demo share on top of the test node: the images imported,
//! STS (moto) serving pods over https on the node's bridge, waiting for pods with a useful
//! failure message, and reading what the kubelet reports (logs, events, container state).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use serde_json::json;

use super::image;
use super::node::Node;
use super::release;
use super::sts::{PodListener, StsPeer};

/// How long a pod may take to reach the state a test waits for (two busy cores).
pub const POD_WAIT: Duration = Duration::from_secs(120);

/// Imports the credvend image (the release binary, trusting the node's CA) and the Go SDK app
/// image into the node.
pub fn import_images(node: &Node) -> anyhow::Result<()> {
    let ca = node.control_plane().ca_pem();
    node.import(&image::credvend_image(release::binary(), ca)?)?;
    node.import(&image::sdk_go_image(&image::sdk_go_client()?, ca)?)?;
    Ok(())
}

/// moto's STS on 127.0.0.1 for the test and on the node's bridge over https for pods, with a
/// serving certificate from the node's CA; the control plane's reaper stops it at exit.
pub fn start_sts(node: &Node) -> anyhow::Result<StsPeer> {
    let address = node.bridge_ip();
    let (cert_pem, key_pem) =
        node.control_plane()
            .issue_certificate("credvend-test-sts", &[], &[address.to_string()])?;
    let sts = StsPeer::start_for_pods(PodListener {
        address,
        cert_pem,
        key_pem,
    });
    node.control_plane().reap_at_exit(sts.pid())?;
    Ok(sts)
}

/// An annotated pod whose app is the Go SDK client: `calls` GetCallerIdentity calls,
/// `pause_ms` apart, with nothing but the injected environment plus the region and the STS
/// endpoint (there is no real AWS here). `extra` is merged into the pod spec.
pub fn sdk_pod(
    name: &str,
    sa: &str,
    sts: &str,
    calls: u32,
    pause_ms: u32,
    extra: serde_json::Value,
) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {"credvend.io/inject": "true"}},
        "spec": {
            "serviceAccountName": sa,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [sdk_container(sts, calls, pause_ms)],
        },
    });
    if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(pod).expect("a valid pod")
}

/// A Deployment `name` of `replicas` annotated pods of service account `app`, each running
/// `container` (an [`sdk_container`]).
pub fn sdk_deployment(
    name: &str,
    replicas: u32,
    container: serde_json::Value,
) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"credvend.io/inject": "true"}},
                "spec": {
                    "serviceAccountName": "app",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            },
        },
    }))
    .expect("a Deployment")
}

/// The app container of [`sdk_pod`], for other workload templates.
pub fn sdk_container(sts: &str, calls: u32, pause_ms: u32) -> serde_json::Value {
    json!({
        "name": "app",
        "image": image::SDK_GO_IMAGE,
        "imagePullPolicy": "Never",
        "env": [
            {"name": "AWS_REGION", "value": "us-east-1"},
            {"name": "AWS_ENDPOINT_URL_STS", "value": sts},
            {"name": "CREDVEND_SDK_CALLS", "value": calls.to_string()},
            {"name": "CREDVEND_SDK_SLEEP_MS", "value": pause_ms.to_string()},
        ],
    })
}

/// Polls pod `name` until `done` says so, failing with the pod's state, events and logs.
pub async fn wait_pod<T>(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    node: &Node,
    mut done: impl FnMut(&Pod) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + POD_WAIT;
    loop {
        if let Ok(pod) = pods.get(name).await
            && let Some(value) = done(&pod)
        {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "pod {name}: no {what} after {POD_WAIT:?}\n{}\n{}",
                diagnostics(pods, name).await,
                node.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's phase once it is Succeeded or Failed.
pub fn finished(pod: &Pod) -> Option<String> {
    let phase = pod.status.as_ref()?.phase.clone()?;
    matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
}

/// The pod's status, events and container logs, to explain a failure.
pub async fn diagnostics(pods: &Api<Pod>, name: &str) -> String {
    let status = pods
        .get(name)
        .await
        .map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default())
        .unwrap_or_else(|e| e.to_string());
    let events = events(pods, name).await.join("\n");
    let agent = log(pods, name, "credvend-agent").await;
    let app = log(pods, name, "app").await;
    format!(
        "--- status ---\n{status}\n--- events ---\n{events}\n--- agent log ---\n{agent}\n--- app log ---\n{app}"
    )
}

/// The pod's events as `reason: message` lines, oldest first.
pub async fn events(pods: &Api<Pod>, name: &str) -> Vec<String> {
    let namespace = pods.namespace().unwrap_or("default").to_owned();
    let api: Api<Event> = Api::namespaced(pods.clone().into_client(), &namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut list = api.list(&params).await.map(|l| l.items).unwrap_or_default();
    list.sort_by_key(|e| e.first_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// A container's log as the kubelet serves it (through the API server).
pub async fn log(pods: &Api<Pod>, name: &str, container: &str) -> String {
    let params = LogParams {
        container: Some(container.to_owned()),
        ..LogParams::default()
    };
    pods.logs(name, &params)
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"))
}

/// The Go client's JSON report: the last line of the app container's log.
pub async fn app_report(pods: &Api<Pod>, name: &str) -> serde_json::Value {
    let text = log(pods, name, "app").await;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("the app printed no report:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"))
}

/// The status of the agent (the first init container) or of a named app container.
pub fn container_status(pod: &Pod, name: &str) -> Option<ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
}

/// The claims of a JWT (its payload, not verified: the API server signed it and STS is moto).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The host pid of a running container (from its cgroup in the node's memory hierarchy).
pub fn container_pid(node: &Node, status: &ContainerStatus) -> Option<u32> {
    let id = status.container_id.as_deref()?;
    let cgroup = node.memory_cgroup_of(id)?;
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `memory.usage_in_bytes` of a container's cgroup (cgroup v1), in MiB.
pub fn memory_mib(node: &Node, status: &ContainerStatus) -> Option<f64> {
    let cgroup = node.memory_cgroup_of(status.container_id.as_deref()?)?;
    let bytes: f64 = std::fs::read_to_string(cgroup.join("memory.usage_in_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(bytes / (1024.0 * 1024.0))
}

/// Fields of `/proc/<pid>/status` (e.g. `Uid`, `CapEff`).
pub fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The Helm values a cluster like the test node's needs on top of the chart's defaults: the
/// imported image (never pulled: there is no registry), the test's STS among the endpoints
/// bindings may name, and, because no kube-proxy programs the `kubernetes` Service's
/// ClusterIP, the API server's own address for the operator.
pub fn node_values(node: &Node, sts_endpoint: &str) -> String {
    let url = node.control_plane().url();
    let port = url.rsplit(':').next().unwrap_or_default();
    let (repository, tag) = image::CREDVEND_IMAGE.rsplit_once(':').unwrap();
    format!(
        "image:\n  repository: {repository}\n  tag: {tag}\n  pullPolicy: Never\n\
         agent:\n  image:\n    pullPolicy: Never\n  allowedStsEndpoints:\n    - \"{sts_endpoint}\"\n\
         operator:\n  env:\n\
         \x20   - name: KUBERNETES_SERVICE_HOST\n      value: \"{host}\"\n\
         \x20   - name: KUBERNETES_SERVICE_PORT\n      value: \"{port}\"\n",
        host = node.bridge_ip(),
    )
}

/// `helm <verb> RELEASE charts/credvend` against the node's cluster with `values` (YAML, on
/// top of the chart's defaults) and `--wait`, so it returns once the operator's pods are
/// ready; `verb` is `install`, `upgrade` or `uninstall`; `sets` are `--set key=value` words.
/// Returns helm's output.
pub fn helm(
    node: &Node,
    verb: &str,
    release: &str,
    namespace: &str,
    values: &str,
    sets: &[&str],
) -> anyhow::Result<String> {
    let file = node.dir().join(format!("values-{release}-{verb}.yaml"));
    std::fs::write(&file, values)?;
    let kubeconfig = node.control_plane().kubeconfig().display().to_string();
    let file = file.display().to_string();
    let mut args = vec![verb, release];
    if verb != "uninstall" {
        args.extend(["charts/credvend", "--values", &file, "--create-namespace"]);
        for set in sets {
            args.extend(["--set", set]);
        }
    }
    args.extend([
        "--namespace",
        namespace,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout",
        "180s",
    ]);
    let out = super::manifests::run_helm(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "helm {}: {text}", args.join(" "));
    Ok(text)
}

/// Runs `program` inside a running container — its namespaces, its user and its environment,
/// as `kubectl exec` would (the node has no exec client here, so this enters them from the
/// host with nsenter), with `overrides` replacing variables of that environment — and returns
/// its stdout.
pub fn exec_in(
    node: &Node,
    status: &ContainerStatus,
    program: &[&str],
    overrides: &[(&str, &str)],
) -> anyhow::Result<String> {
    let pid = container_pid(node, status)
        .ok_or_else(|| anyhow::anyhow!("{} is not running", status.name))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let proc = proc_status(pid);
    let uid = proc
        .get("Uid")
        .and_then(|u| u.split_whitespace().next())
        .unwrap_or("0")
        .to_owned();
    let gid = proc
        .get("Gid")
        .and_then(|g| g.split_whitespace().next())
        .unwrap_or("0")
        .to_owned();
    let mut command = std::process::Command::new("nsenter");
    command
        .args([
            "--target",
            &pid.to_string(),
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
        ])
        .args(["--setuid", &uid, "--setgid", &gid, "--"])
        .args(program)
        .env_clear();
    for pair in environ.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let pair = String::from_utf8_lossy(pair);
        if let Some((k, v)) = pair.split_once('=') {
            command.env(k, v);
        }
    }
    command.envs(overrides.iter().copied());
    let out = command.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program:?} in {} failed: {}{}",
        status.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the API server sends annotated pods of `pods`' namespace to the webhook: the
/// dry run of an annotated pod comes back injected. (A new webhook configuration takes effect
/// a moment after it is stored; workloads created before that would get uninjected pods.)
pub async fn wait_webhook(pods: &Api<Pod>, sa: &str) {
    let probe = sdk_pod("webhook-probe", sa, "https://127.0.0.1", 1, 0, json!({}));
    let dry = kube::api::PostParams {
        dry_run: true,
        ..kube::api::PostParams::default()
    };
    super::http::eventually("the webhook to take effect", POD_WAIT, || async {
        let p = pods.create(&dry, &probe).await.ok()?;
        p.metadata
            .annotations?
            .contains_key("credvend.io/status")
            .then_some(())
    })
    .await;
}
