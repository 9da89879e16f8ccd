//! credvend on running pods: a real kubelet node (tests/support/node.rs) runs what the webhook
//! injected, from the credvend image built from the release binary, next to an app image whose
//! Go SDK client has nothing but the injected environment (plus the region and the STS
//! endpoint: STS is moto, served to pods over https on the node's bridge).
//!
//! One node, one STS and one operator serve every test of this binary; each test has its own
//! namespace, service account and binding. The operator runs as a process with the chart's
//! args and RBAC (tests/support/operator.rs); `helm install` of the operator as a pod is
//! tests/helm_install.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

use credvend::crd::AWSRoleBinding;
use support::http::eventually;
use support::image;
use support::k8s;
use support::node::Node;
use support::operator::{
    InstallOptions, Installed, binding_yaml, install_with, wait_binding_ready,
};
use support::pods::{
    self, app_report, container_pid, container_status, events, finished, jwt_claims, log,
    memory_mib, proc_status, sdk_container, sdk_pod, wait_pod,
};
use support::sts::StsPeer;

const ROLE: &str = "s3-reader";

/// Tests that switch STS into failure or shorten its lifetimes take a peer of their own from
/// here, so the switch reaches no other test; the operator allows each one's endpoint.
const OWN_STS_PEERS: usize = 2;

struct World {
    node: Node,
    sts: StsPeer,
    own_sts: std::sync::Mutex<Vec<StsPeer>>,
    _operator: Installed,
}

/// An STS peer for this test alone (see [`OWN_STS_PEERS`]).
fn own_sts(world: &World) -> StsPeer {
    world
        .own_sts
        .lock()
        .unwrap()
        .pop()
        .expect("OWN_STS_PEERS covers every test that needs a peer of its own")
}

static WORLD: OnceCell<World> = OnceCell::const_new();

/// The node, STS and operator, started by the first test that asks.
async fn world() -> &'static World {
    WORLD
        .get_or_init(|| async {
            let node = Node::start().await.expect("the test node starts");
            let started = Instant::now();
            pods::import_images(&node).expect("images import");
            eprintln!("images imported in {:.1?}", started.elapsed());
            let sts = pods::start_sts(&node).expect("STS starts");
            let own: Vec<StsPeer> = (0..OWN_STS_PEERS)
                .map(|_| pods::start_sts(&node).expect("STS starts"))
                .collect();
            let allowed: Vec<&str> = std::iter::once(sts.pod_endpoint())
                .chain(own.iter().map(StsPeer::pod_endpoint))
                .collect();
            let dir = node.dir().join("operator");
            std::fs::create_dir_all(&dir).unwrap();
            let client = node.client().unwrap();
            let operator = install_with(
                node.control_plane(),
                &client,
                &dir,
                &InstallOptions {
                    sts_endpoints: &allowed,
                    flags: &[
                        format!("--agent-image={}", image::CREDVEND_IMAGE),
                        "--agent-image-pull-policy=Never".to_owned(),
                    ],
                    ..InstallOptions::default()
                },
            )
            .await;
            node.control_plane()
                .reap_at_exit(operator.operator.pid())
                .unwrap();
            World {
                node,
                sts,
                own_sts: std::sync::Mutex::new(own),
                _operator: operator,
            }
        })
        .await
}

/// A namespace with service account `app` and a Ready binding of it to [`ROLE`] using
/// `sts` (the pods' STS endpoint).
async fn namespace(world: &World, prefix: &str, sts: &str) -> (kube::Client, String) {
    let client = world.node.client().unwrap();
    let ns = k8s::unique_name(prefix);
    k8s::create_namespace(&client, &ns).await.unwrap();
    k8s::create_service_account(&client, &ns, "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(&PostParams::default(), &binding_yaml(ROLE, &ns, "app", sts))
        .await
        .unwrap();
    wait_binding_ready(&bindings, ROLE, 0).await;
    (client, ns)
}

/// Creates `pod`, retrying while the API server has not yet picked up the webhook, and
/// returns the stored (injected) pod.
async fn create(pods: &Api<Pod>, pod: &Pod) -> Pod {
    support::operator::create_injected(pods, pod).await
}

fn arn(ns: &str, pod: &str) -> String {
    format!("arn:aws:sts::111122223333:assumed-role/{ROLE}/{ns}.{pod}")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_annotated_pod_runs_the_agent_as_a_native_sidecar_and_its_sdk_gets_the_role() {
    let world = world().await;
    let started = Instant::now();
    let (client, ns) = namespace(world, "pod-runs", world.sts.pod_endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let stored = create(
        &pods,
        &sdk_pod("web-0", "app", world.sts.pod_endpoint(), 3, 0, json!({})),
    )
    .await;
    let agent = &stored
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    assert_eq!(agent.name, "credvend-agent");
    assert_eq!(
        agent.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );

    let phase = wait_pod(&pods, "web-0", "end", &world.node, finished).await;
    let diagnostics = pods::diagnostics(&pods, "web-0").await;
    assert_eq!(phase, "Succeeded", "{diagnostics}");
    let report = app_report(&pods, "web-0").await;
    assert_eq!(report["ok"], true, "{report}\n{diagnostics}");
    assert_eq!(report["arn"], arn(&ns, "web-0"), "{report}");
    assert_eq!(report["succeeded"], 3, "{report}");

    // The app started only once the agent had credentials: its first call already worked,
    // and STS saw the agent's AssumeRoleWithWebIdentity before any of the app's calls.
    let requests = world.sts.requests().await;
    let ours: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| {
            r["form"]["RoleSessionName"] == format!("{ns}.web-0")
                || r["headers"]["authorization"]
                    .as_str()
                    .is_some_and(|a| a.contains(report["access_key_id"].as_str().unwrap_or("-")))
        })
        .collect();
    assert_eq!(
        ours.first().map(|r| r["form"]["Action"].clone()),
        Some(json!("AssumeRoleWithWebIdentity")),
        "{ours:#?}"
    );
    assert!(
        ours.iter()
            .filter(|r| r["form"]["Action"] == "GetCallerIdentity")
            .count()
            >= 3
    );

    // The token STS received is the kubelet's projected token: the binding's audience, bound
    // to this pod and node, with the injected expiry.
    let token = ours[0]["form"]["WebIdentityToken"].as_str().unwrap();
    let claims = jwt_claims(token);
    assert_eq!(claims["aud"], json!(["sts.amazonaws.com"]), "{claims}");
    assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:app"));
    let k8s_claims = &claims["kubernetes.io"];
    assert_eq!(k8s_claims["pod"]["name"], "web-0", "{claims}");
    assert_eq!(k8s_claims["node"]["name"], world.node.name(), "{claims}");
    let volume_expiry = stored
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "credvend-token")
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.as_ref())
        .and_then(|t| t.expiration_seconds)
        .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        volume_expiry
    );

    // The sidecar was stopped after the app ended, cleanly.
    let pod = pods.get("web-0").await.unwrap();
    let agent = container_status(&pod, "credvend-agent").unwrap();
    let terminated = agent
        .state
        .and_then(|s| s.terminated)
        .expect("agent terminated");
    assert_eq!(terminated.exit_code, 0, "{terminated:?}");
    eprintln!("test time: {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sts_failing_at_start_the_app_waits_for_the_agent_and_starts_once_sts_answers() {
    let world = world().await;
    let started = Instant::now();
    // A peer of this test's own: its failure switch must not reach the other tests.
    let sts = own_sts(world);
    let (client, ns) = namespace(world, "sts-down", sts.pod_endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    sts.fail("ServiceUnavailable", 503).await;
    create(
        &pods,
        &sdk_pod("web-0", "app", sts.pod_endpoint(), 1, 0, json!({})),
    )
    .await;

    // The agent runs but its startup probe fails, and the app container is not started.
    wait_pod(&pods, "web-0", "failing startup probe", &world.node, |p| {
        let agent = container_status(p, "credvend-agent")?;
        (agent.state.as_ref()?.running.is_some() && agent.started == Some(false)).then_some(())
    })
    .await;
    let probe_events = eventually("a startup probe event", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let events = events(&pods, "web-0").await;
            events
                .iter()
                .any(|e| e.contains("Startup probe failed"))
                .then_some(events)
        }
    })
    .await;
    let pod = pods.get("web-0").await.unwrap();
    let app = container_status(&pod, "app").unwrap();
    assert!(
        app.state.as_ref().unwrap().waiting.is_some() && app.started != Some(true),
        "the app must wait for the agent: {app:?}"
    );
    let agent_log = eventually(
        "the agent to log the STS error",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let text = log(&pods, "web-0", "credvend-agent").await;
                text.contains("ServiceUnavailable").then_some(text)
            }
        },
    )
    .await;
    eprintln!("events while STS failed:\n  {}", probe_events.join("\n  "));
    eprintln!(
        "agent log while STS failed (first lines):\n{}",
        agent_log.lines().take(5).collect::<Vec<_>>().join("\n")
    );

    sts.recover().await;
    let phase = wait_pod(&pods, "web-0", "end", &world.node, finished).await;
    let report = app_report(&pods, "web-0").await;
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        pods::diagnostics(&pods, "web-0").await
    );
    assert_eq!(report["arn"], arn(&ns, "web-0"), "{report}");
    eprintln!("test time: {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_injected_job_completes_and_its_agent_sidecar_ends_completed() {
    let world = world().await;
    let started = Instant::now();
    let (client, ns) = namespace(world, "job", world.sts.pod_endpoint()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "report"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"credvend.io/inject": "true"}},
                "spec": {
                    "serviceAccountName": "app",
                    "restartPolicy": "Never",
                    "containers": [sdk_container(world.sts.pod_endpoint(), 2, 0)],
                },
            },
        },
    }))
    .unwrap();
    // Dry runs of the template's pod until the webhook is in effect, then the Job.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods::wait_webhook(&pods, "app").await;
    jobs.create(&PostParams::default(), &job).await.unwrap();

    let pod_name = eventually("the Job's pod", Duration::from_secs(60), || async {
        let list = pods
            .list(&ListParams::default().labels("job-name=report"))
            .await
            .ok()?;
        list.items.first()?.metadata.name.clone()
    })
    .await;
    let phase = wait_pod(&pods, &pod_name, "end", &world.node, finished).await;
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        pods::diagnostics(&pods, &pod_name).await
    );
    eventually("the Job to complete", Duration::from_secs(60), || async {
        let job = jobs.get("report").await.ok()?;
        let conditions = job.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(())
    })
    .await;
    let pod = pods.get(&pod_name).await.unwrap();
    let agent = container_status(&pod, "credvend-agent").unwrap();
    let terminated = agent
        .state
        .and_then(|s| s.terminated)
        .expect("the agent ended");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("Completed"),
        "{terminated:?}"
    );
    assert_eq!(terminated.exit_code, 0);
    let report = app_report(&pods, &pod_name).await;
    assert_eq!(report["arn"], arn(&ns, &pod_name), "{report}");
    eprintln!("test time: {:.1?}", started.elapsed());
}

/// The authorization token file of a pod's `credvend-auth` volume, read on the node.
fn auth_token(world: &World, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap();
    let dir = world.node.kubelet_root().join(format!(
        "pods/{uid}/volumes/kubernetes.io~empty-dir/credvend-auth"
    ));
    let file = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .unwrap_or_else(|| panic!("no token file in {}", dir.display()));
    std::fs::read_to_string(file.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_restarted_and_the_app_keeps_working_with_the_same_auth_token() {
    let world = world().await;
    let started = Instant::now();
    let sts = own_sts(world);
    // Short-lived credentials, so the app's SDK fetches again from the restarted agent.
    sts.set_lifetime(10).await;
    let (client, ns) = namespace(world, "restart", sts.pod_endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    create(
        &pods,
        &sdk_pod("web-0", "app", sts.pod_endpoint(), 40, 1000, json!({})),
    )
    .await;
    let pod = wait_pod(&pods, "web-0", "running app", &world.node, |p| {
        let app = container_status(p, "app")?;
        app.state.as_ref()?.running.as_ref()?;
        Some(p.clone())
    })
    .await;
    let token_before = auth_token(world, &pod);
    let agent = container_status(&pod, "credvend-agent").unwrap();
    let pid = container_pid(&world.node, &agent).expect("the agent's pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let pod = wait_pod(&pods, "web-0", "restarted agent", &world.node, |p| {
        let agent = container_status(p, "credvend-agent")?;
        (agent.restart_count >= 1 && agent.started == Some(true)).then(|| p.clone())
    })
    .await;
    assert_eq!(
        auth_token(world, &pod),
        token_before,
        "the auth token must survive a restart"
    );

    let phase = wait_pod(&pods, "web-0", "end", &world.node, finished).await;
    let report = app_report(&pods, "web-0").await;
    assert_eq!(
        phase,
        "Succeeded",
        "{report}\n{}",
        pods::diagnostics(&pods, "web-0").await
    );
    // A refresh that falls into the seconds the agent is down may fail after the SDK's
    // retries; every call after it works again.
    assert!(report["succeeded"].as_u64().unwrap() >= 35, "{report}");
    eprintln!(
        "app calls across the agent restart: {}/40 succeeded, errors {}",
        report["succeeded"], report["errors"]
    );
    let keys = report["access_key_ids"].as_array().unwrap().len();
    assert!(
        keys >= 3,
        "the app fetched fresh credentials after the restart: {report}"
    );
    eprintln!("test time: {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_of_three_is_counted_by_its_binding_and_scaling_to_zero_counts_zero() {
    let world = world().await;
    let started = Instant::now();
    let (client, ns) = namespace(world, "deploy", world.sts.pod_endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods::wait_webhook(&pods, "app").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // A long-running app: a call a second.
    let deployment = pods::sdk_deployment(
        "web",
        3,
        sdk_container(world.sts.pod_endpoint(), 100_000, 1000),
    );
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    eventually("3 ready replicas", Duration::from_secs(180), || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas? == 3).then_some(())
    })
    .await;
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    let status = wait_binding_ready(&bindings, ROLE, 3).await;
    assert_eq!(status.pods, 3);

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    let status = wait_binding_ready(&bindings, ROLE, 0).await;
    assert_eq!(status.pods, 0);
    let _ = deployments.delete("web", &DeleteParams::default()).await;
    eprintln!("test time: {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_run_as_non_root_and_fs_group_the_agent_is_65532_read_only_without_capabilities() {
    let world = world().await;
    let started = Instant::now();
    let (client, ns) = namespace(world, "shape", world.sts.pod_endpoint()).await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let security =
        json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000}});
    let stored = create(
        &pods,
        &sdk_pod("web-0", "app", world.sts.pod_endpoint(), 20, 500, security),
    )
    .await;
    let pod = wait_pod(&pods, "web-0", "started agent", &world.node, |p| {
        let agent = container_status(p, "credvend-agent")?;
        (agent.started == Some(true)).then(|| p.clone())
    })
    .await;
    let agent = container_status(&pod, "credvend-agent").unwrap();
    let pid = container_pid(&world.node, &agent).expect("the agent's pid");
    let status = proc_status(pid);
    assert_eq!(
        status["Uid"].split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "{status:?}"
    );
    assert_eq!(
        status["Gid"].split_whitespace().next(),
        Some("65532"),
        "{status:?}"
    );
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(status[caps], "0000000000000000", "{caps}: {status:?}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "read-only root: {root}"
    );
    // It read its token (it is started, so it has credentials), which the kubelet made
    // readable to the pod's fsGroup and no one else.
    let uid = pod.metadata.uid.as_deref().unwrap();
    let token = world.node.kubelet_root().join(format!(
        "pods/{uid}/volumes/kubernetes.io~projected/credvend-token/token"
    ));
    let meta = std::fs::metadata(&token).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    eprintln!(
        "token file mode {:o}, gid {}",
        meta.mode() & 0o777,
        meta.gid()
    );
    assert_eq!(meta.gid(), 2000);
    assert_eq!(meta.mode() & 0o007, 0, "not world-readable");

    // Memory in the agent's cgroup, idle and at its peak while the app calls.
    let idle = memory_mib(&world.node, &agent).unwrap();
    let mut peak = idle;
    loop {
        let pod = pods.get("web-0").await.unwrap();
        if finished(&pod).is_some() {
            break;
        }
        if let Some(now) = memory_mib(&world.node, &agent) {
            peak = peak.max(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            started.elapsed() < pods::POD_WAIT,
            "{}",
            pods::diagnostics(&pods, "web-0").await
        );
    }
    let resources = stored
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0]
        .resources
        .clone()
        .unwrap_or_default();
    eprintln!(
        "agent memory: idle {idle:.1} MiB, peak while the app called {peak:.1} MiB; injected requests {:?}, limits {:?}",
        resources.requests.unwrap_or_default(),
        resources.limits.unwrap_or_default()
    );
    let report = app_report(&pods, "web-0").await;
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("test time: {:.1?}", started.elapsed());
}

/// A binding `name` of service account `sa` to role `name`, with the pods' STS endpoint.
fn role_binding(name: &str, ns: &str, sa: &str, sts: &str) -> AWSRoleBinding {
    let mut binding = binding_yaml(name, ns, sa, sts);
    binding.spec.role_arn = format!("arn:aws:iam::111122223333:role/{name}");
    binding
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_two_bindings_gives_each_container_its_own_role_through_one_agent() {
    let world = world().await;
    let started = Instant::now();
    let sts = world.sts.pod_endpoint();
    let (client, ns) = namespace(world, "two-roles", sts).await;
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    for (name, sa) in [("queue-reader", "app"), ("web-only", "web")] {
        bindings
            .create(&PostParams::default(), &role_binding(name, &ns, sa, sts))
            .await
            .unwrap();
        wait_binding_ready(&bindings, name, 0).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut worker = sdk_container(sts, 2, 0);
    worker["name"] = json!("worker");
    let mut pod = sdk_pod("multi-0", "app", sts, 2, 0, json!({}));
    pod.metadata.annotations.get_or_insert_default().insert(
        "credvend.io/container-bindings".into(),
        "worker=queue-reader".into(),
    );
    pod.spec
        .as_mut()
        .unwrap()
        .containers
        .push(serde_json::from_value(worker).unwrap());
    let stored = create(&pods, &pod).await;
    let spec = stored.spec.as_ref().unwrap();
    assert_eq!(
        support::operator::agent_count(spec),
        1,
        "one agent serves both bindings"
    );
    let uri = |name: &str| {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| {
                c.env
                    .iter()
                    .flatten()
                    .find(|e| e.name == "AWS_CONTAINER_CREDENTIALS_FULL_URI")
            })
            .and_then(|e| e.value.clone())
            .unwrap()
    };
    assert!(uri("app").ends_with("/v1/credentials"), "{}", uri("app"));
    assert!(
        uri("worker").ends_with("/v1/credentials/queue-reader"),
        "{}",
        uri("worker")
    );

    let phase = wait_pod(&pods, "multi-0", "end", &world.node, finished).await;
    let diagnostics = pods::diagnostics(&pods, "multi-0").await;
    assert_eq!(phase, "Succeeded", "{diagnostics}");
    let report = |container: &'static str| {
        let pods = pods.clone();
        async move {
            let text = pods::log(&pods, "multi-0", container).await;
            let line = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("{}")
                .to_owned();
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        }
    };
    let app = report("app").await;
    let queue = report("worker").await;
    assert_eq!(app["arn"], arn(&ns, "multi-0"), "{app}\n{diagnostics}");
    assert_eq!(
        queue["arn"],
        format!("arn:aws:sts::111122223333:assumed-role/queue-reader/{ns}.multi-0"),
        "{queue}\n{diagnostics}"
    );

    // A container may only use bindings of the pod's own service account.
    let mut foreign = sdk_pod("multi-1", "app", sts, 1, 0, json!({}));
    let annotations = foreign.metadata.annotations.get_or_insert_default();
    annotations.insert("credvend.io/binding".into(), ROLE.into());
    annotations.insert(
        "credvend.io/container-bindings".into(),
        "app=web-only".into(),
    );
    let err = pods
        .create(&PostParams::default(), &foreign)
        .await
        .expect_err("a binding of another service account is refused");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "AWSRoleBinding {ns}/web-only does not allow service account \"app\""
        )),
        "{message}"
    );
    eprintln!("test time: {:.1?}", started.elapsed());
}
