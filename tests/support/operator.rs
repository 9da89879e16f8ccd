//! The operator as the end-to-end tests and the demo run it: the chart rendered and applied to
//! the real API server, the operator started with the Deployment's own args and the chart's
//! service-account identity, and the kubelet's part for an injected pod (projected token,
//! downward API, the agent started exactly as the pod spec says).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use credvend::crd::AWSRoleBinding;

use super::http::{self, eventually};
use super::k8s::{self, ControlPlane};
use super::manifests::{apply_all, render_chart};
use super::ports::free_port;
use super::python::app_python;

pub const WAIT: Duration = Duration::from_secs(60);
pub const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/s3-reader";

/// A process killed on drop, with its output in a file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Sends SIGTERM (what the kubelet sends), without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }
    /// The exit status, once the process has exited by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// SIGKILL: the process gets no chance to clean up (release a Lease, say).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a readiness URL until 200, failing with the process's log.
pub async fn wait_ready(url: &str, proc: &Proc) {
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
pub fn service_account_kubeconfig(cp: &ControlPlane, token: &str, dir: &Path) -> PathBuf {
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

pub struct Installed {
    /// The MutatingWebhookConfiguration's name.
    pub webhook_config: String,
    pub metrics_port: u16,
    pub webhook_port: u16,
    pub operator: Proc,
    /// The release namespace (the Lease and the TLS Secret live there).
    pub namespace: String,
    /// Every object the chart rendered.
    pub objects: Vec<serde_json::Value>,
    /// The Deployment's args, listen addresses and pod name left out (see [`Installed::replica`]).
    args: Vec<String>,
    kubeconfig: PathBuf,
    binary: PathBuf,
    /// The release, for an isolated install.
    isolated: Option<String>,
}

/// Changes to the rendered objects, applied before the operator starts.
pub type BeforeStart = dyn Fn(&[serde_json::Value]) -> Vec<serde_json::Value> + Sync;

/// How [`install_with`] installs the chart.
#[derive(Default)]
pub struct InstallOptions<'a> {
    /// STS endpoints the operator allows besides AWS's (the tests' moto on loopback).
    pub sts_endpoints: &'a [&'a str],
    /// More `--set` values.
    pub values: &'a [(&'a str, &'a str)],
    /// Operator flags of the test's own (`--flag=value`); each replaces the chart's flag of
    /// that name. The test node uses it for the image it imported (`--agent-image`,
    /// `--agent-image-pull-policy=Never`).
    pub flags: &'a [String],
    /// Called with the rendered objects after they were applied and before the operator
    /// starts; what it returns is applied (to take a permission away, say).
    pub before_start: Option<&'a BeforeStart>,
    /// Send the webhook only pods of namespaces passed to [`Installed::admit_namespace`], so
    /// several installs on one control plane (tests running in parallel, an operator a test
    /// kills while its webhook configuration stays behind) never see each other's pods.
    pub isolated: bool,
    /// The binary to run instead of this build's `credvend` (the benchmark runs the release
    /// build).
    pub binary: Option<&'a Path>,
}

/// The namespace label an isolated install's webhook selects.
const ISOLATION_LABEL: &str = "credvend.test/install";

/// Another operator replica of the same release, as a second pod of the Deployment would run.
pub struct Replica {
    pub proc: Proc,
    pub metrics_port: u16,
}

impl Installed {
    /// Lets the webhook of an isolated install see the pods of `namespace` (a no-op otherwise).
    pub async fn admit_namespace(&self, client: &Client, namespace: &str) {
        let Some(release) = &self.isolated else {
            return;
        };
        let patch = serde_json::json!({"metadata": {"labels": {ISOLATION_LABEL: release}}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                namespace,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap();
    }

    /// Starts one more operator process with the release's args and identity `pod_name`; it
    /// serves the webhook on a port of its own (the webhook configuration keeps pointing at the
    /// first one) and returns once it is ready.
    pub async fn replica(&self, pod_name: &str, dir: &Path) -> Replica {
        let (webhook_port, metrics_port) = (free_port(), free_port());
        let proc = start_operator(
            &self.binary,
            &self.args,
            &self.kubeconfig,
            webhook_port,
            metrics_port,
            pod_name,
            dir,
        );
        wait_ready(
            &format!("http://127.0.0.1:{metrics_port}/healthz/ready"),
            &proc,
        )
        .await;
        Replica { proc, metrics_port }
    }
}

fn start_operator(
    binary: &Path,
    args: &[String],
    kubeconfig: &Path,
    webhook_port: u16,
    metrics_port: u16,
    pod_name: &str,
    dir: &Path,
) -> Proc {
    let mut args = args.to_vec();
    args.push(format!("--webhook-listen=127.0.0.1:{webhook_port}"));
    args.push(format!("--metrics-listen=127.0.0.1:{metrics_port}"));
    args.push(format!("--pod-name={pod_name}"));
    Proc::spawn(
        Command::new(binary)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info"),
        dir.join(format!("{pod_name}.log")),
    )
}

/// Renders the chart in url mode, applies every object, and runs the operator with the
/// Deployment's own args (listen addresses moved to loopback) and the chart's service account
/// identity, so the chart's flags and RBAC are what is tested. `sts_endpoint` (the test's
/// STS double) is added to the operator's allowed STS endpoints through the chart value.
pub async fn install(
    cp: &ControlPlane,
    client: &Client,
    dir: &Path,
    sts_endpoint: &str,
) -> Installed {
    install_with(
        cp,
        client,
        dir,
        &InstallOptions {
            sts_endpoints: &[sts_endpoint],
            ..InstallOptions::default()
        },
    )
    .await
}

/// [`install`] with more choices.
pub async fn install_with(
    cp: &ControlPlane,
    client: &Client,
    dir: &Path,
    options: &InstallOptions<'_>,
) -> Installed {
    let release = k8s::unique_name("rel");
    let release_ns = k8s::unique_name("credvend-system");
    k8s::create_namespace(client, &release_ns).await.unwrap();
    let webhook_port = free_port();
    let metrics_port = free_port();
    let url = format!("https://127.0.0.1:{webhook_port}/mutate");
    let endpoints = format!("{{{}}}", options.sts_endpoints.join(","));
    let mut values = vec![("webhook.url", url.as_str())];
    if !options.sts_endpoints.is_empty() {
        values.push(("agent.allowedStsEndpoints", endpoints.as_str()));
    }
    values.extend_from_slice(options.values);
    let mut objects = render_chart(&release, &release_ns, &values).unwrap();
    if options.isolated {
        for object in objects
            .iter_mut()
            .filter(|o| o["kind"] == "MutatingWebhookConfiguration")
        {
            for webhook in object["webhooks"].as_array_mut().unwrap() {
                webhook["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({
                        "key": ISOLATION_LABEL, "operator": "In", "values": [release]
                    }));
            }
        }
    }
    // Dry run of everything first, then the real apply (see apply_all).
    apply_all(client, &objects)
        .await
        .expect("apply of the chart");
    if let Some(before_start) = options.before_start {
        let changed = before_start(&objects);
        apply_all(client, &changed)
            .await
            .expect("apply of the changes");
    }

    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let service_account = pod_spec["serviceAccountName"].as_str().unwrap().to_owned();
    let chart_args: Vec<String> =
        serde_json::from_value(pod_spec["containers"][0]["args"].clone()).unwrap();
    let mut args: Vec<String> = chart_args
        .iter()
        .filter(|a| {
            !a.starts_with("--webhook-listen=")
                && !a.starts_with("--metrics-listen=")
                && !a.starts_with("--agent-image=")
        })
        // What the kubelet does with $(POD_NAMESPACE) from the downward API.
        .map(|a| a.replace("$(POD_NAMESPACE)", &release_ns))
        .collect();
    args.push("--webhook-extra-san=127.0.0.1".into());
    args.push("--agent-image=credvend:test".into());
    // Flags of the test's own replace the chart's flag of that name.
    let flag_of = |a: &str| {
        a.split_once('=')
            .map_or(a.to_owned(), |(f, _)| f.to_owned())
    };
    let replaced: Vec<String> = options.flags.iter().map(|o| flag_of(o)).collect();
    args.retain(|a| !replaced.contains(&flag_of(a)));
    args.extend(options.flags.iter().cloned());
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
    let binary = options.binary.map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_credvend")),
        Path::to_path_buf,
    );
    let operator = start_operator(
        &binary,
        &args,
        &kubeconfig,
        webhook_port,
        metrics_port,
        "operator-0",
        dir,
    );
    let installed = Installed {
        webhook_config,
        metrics_port,
        webhook_port,
        operator,
        namespace: release_ns,
        objects,
        args,
        kubeconfig,
        binary,
        isolated: options.isolated.then(|| release.clone()),
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

/// The value of one sample of `metric` (with exactly these labels, `""` for none) on a
/// Prometheus text page, if present.
pub fn metric_value(page: &str, metric: &str, labels: &str) -> Option<f64> {
    let name = if labels.is_empty() {
        metric.to_owned()
    } else {
        format!("{metric}{{{labels}}}")
    };
    page.lines().find_map(|line| {
        line.strip_prefix(&name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The operator's metrics page at `port`.
pub async fn metrics_page(port: u16) -> String {
    http::get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default()
}

/// How many `credvend-agent` init containers a pod spec has (one, whatever ran how often).
pub fn agent_count(spec: &k8s_openapi::api::core::v1::PodSpec) -> usize {
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == "credvend-agent")
        .count()
}

pub fn binding_yaml(name: &str, ns: &str, sa: &str, sts: &str) -> AWSRoleBinding {
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

pub fn pod(
    name: &str,
    sa: &str,
    annotations: serde_json::Value,
    extra_spec: serde_json::Value,
) -> Pod {
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
pub async fn create_injected(pods: &Api<Pod>, pod: &Pod) -> Pod {
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the webhook to take effect", WAIT, || async {
        let p = pods
            .create(&dry, pod)
            .await
            .inspect_err(|e| eprintln!("dry run of {}: {e}", pod.name_any()))
            .ok()?;
        p.annotations()
            .contains_key("credvend.io/status")
            .then_some(())
    })
    .await;
    pods.create(&PostParams::default(), pod).await.unwrap()
}

pub async fn denial(pods: &Api<Pod>, pod: &Pod) -> String {
    match pods.create(&PostParams::default(), pod).await {
        Ok(p) => panic!("pod {} was admitted: {:?}", p.name_any(), p.spec),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("unexpected error: {other}"),
    }
}

pub fn agent_container(pod: &Pod) -> Container {
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(init[0].name, "credvend-agent", "the agent runs first");
    init[0].clone()
}

pub fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

/// An injected pod's agent running as a process, as the kubelet would run it.
pub struct RunningAgent {
    pub proc: Proc,
    /// The projected token written for it (what STS should receive).
    pub token: String,
    /// Port of its metrics server (moved to a free loopback port).
    pub metrics_port: u16,
    /// Where the pod's file system paths live on this machine.
    pub root: PathBuf,
}

impl RunningAgent {
    /// A pod path mapped into the temp dir.
    pub fn map_path(&self, pod_path: &str) -> PathBuf {
        self.root.join(pod_path.trim_start_matches('/'))
    }

    /// The app container's command: `python -c CODE` with the container's env (the token
    /// file path mapped), the STS endpoint of the test, and nothing else.
    pub fn app_command(&self, app: &Container, sts_endpoint: &str, code: &str) -> Command {
        let mut cmd = app_python(code, sts_endpoint);
        for (k, v) in env_of(app) {
            let v = if k == "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" {
                self.map_path(&v).display().to_string()
            } else {
                v
            };
            cmd.env(k, v);
        }
        cmd
    }
}

/// Does the kubelet's part for `stored` (an injected pod of `namespace`): asks TokenRequest for
/// the projected token with the volume's audience and expiry, writes it where the agent's
/// flags say (paths mapped under `dir`), fills the downward-API env, and starts
/// `credvend agent` with the injected args; returns once the agent is ready.
pub async fn run_injected_agent(
    client: &Client,
    stored: &Pod,
    namespace: &str,
    dir: &Path,
) -> RunningAgent {
    let spec = stored.spec.as_ref().expect("pod spec");
    let agent = agent_container(stored);
    let sat = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "credvend-token")
        .and_then(|v| v.projected.clone())
        .and_then(|p| p.sources)
        .and_then(|s| s.into_iter().find_map(|s| s.service_account_token))
        .expect("a projected service-account token volume");
    let service_account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let audience = sat.audience.clone().unwrap_or_default();
    let expiry = Duration::from_secs(sat.expiration_seconds.unwrap_or(3600).unsigned_abs());
    let token = k8s::request_token(client, namespace, &service_account, &audience, expiry)
        .await
        .unwrap();
    let metrics_port = free_port();
    let root = dir.join("pod");
    let map_path = |p: &str| root.join(p.trim_start_matches('/'));
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "credvend-token")
        .expect("the agent mounts the token volume");
    let token_file = map_path(&format!("{}/{}", mount.mount_path, sat.path));
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, &token).unwrap();

    // The injected args, with file paths mapped into the temp dir and the metrics port moved
    // to a free loopback port; every other flag passes through unchanged.
    let mut args = Vec::new();
    let injected = agent.args.clone().unwrap_or_default();
    let mut it = injected.iter();
    while let Some(flag) = it.next() {
        args.push(flag.clone());
        if flag == "--auth-token-file" {
            args.push(map_path(it.next().unwrap()).display().to_string());
        } else if flag == "--binding" {
            let mut plan: serde_json::Value = serde_json::from_str(it.next().unwrap()).unwrap();
            let mapped = map_path(plan["tokenFile"].as_str().unwrap());
            plan["tokenFile"] = mapped.display().to_string().into();
            args.push(plan.to_string());
        } else if flag == "--cache-file" {
            // The kubelet would provide the credvend-cache emptyDir.
            let cache = map_path(it.next().unwrap());
            std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
            args.push(cache.display().to_string());
        } else if flag == "--metrics-listen" {
            it.next();
            args.push(format!("127.0.0.1:{metrics_port}"));
        }
    }
    let mut env = BTreeMap::new();
    for e in agent.env.iter().flatten() {
        let field = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match field {
            Some("metadata.name") => stored.name_any(),
            Some("metadata.namespace") => namespace.to_owned(),
            Some("spec.serviceAccountName") => service_account.clone(),
            Some(other) => panic!("downward API field {other} is not simulated"),
            None => e.value.clone().unwrap_or_default(),
        };
        env.insert(e.name.clone(), value);
    }
    let proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_credvend"))
            .args(&args)
            .envs(&env)
            .env_remove("AWS_REGION"),
        dir.join("agent.log"),
    );
    wait_ready(
        &format!("http://127.0.0.1:{metrics_port}/healthz/ready"),
        &proc,
    )
    .await;
    RunningAgent {
        proc,
        token,
        metrics_port,
        root,
    }
}

/// Waits until binding `name` reports `Ready=True` for its current generation with `pods`
/// pods, and returns that status.
pub async fn wait_binding_ready(
    bindings: &Api<AWSRoleBinding>,
    name: &str,
    pods: i32,
) -> credvend::crd::AWSRoleBindingStatus {
    eventually(
        &format!("binding {name} Ready with {pods} pod(s)"),
        WAIT,
        || async {
            let b = bindings.get(name).await.ok()?;
            let generation = b.metadata.generation;
            let status = b.status?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && status.pods == pods && status.observed_generation == generation)
                .then_some(status)
        },
    )
    .await
}

/// Creates pod `name` of service account `sa`, annotated `credvend.io/inject: "true"` with a free
/// loopback port (`credvend.io/port`), so that tests never collide with another process on the
/// default port; returns the stored, injected pod.
pub async fn create_annotated_pod(pods: &Api<Pod>, name: &str, sa: &str) -> Pod {
    let annotations = serde_json::json!({
        "credvend.io/inject": "true",
        "credvend.io/port": free_port().to_string(),
    });
    create_injected(pods, &pod(name, sa, annotations, serde_json::json!({}))).await
}
