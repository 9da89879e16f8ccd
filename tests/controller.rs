//! The AWSRoleBinding controller on a real control plane (tests/support/k8s.rs): it runs behind
//! leader election exactly as the operator runs it, and the tests watch what a user would see —
//! the binding's status, its Events, the Lease.
//!
//! There is no kubelet: pods are only stored, and they carry the `credvend.io/binding` label
//! directly, as the webhook would have written it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt as _, ResourceExt as _};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use credvend::aws::StsEndpointAllowlist;
use credvend::controller::{self, ControllerMetrics};
use credvend::crd::{AWSRoleBinding, CONDITION_READY};
use support::k8s;

/// Generous: the two cores of a CI machine are often busy compiling other test binaries, and
/// a follower waits for a Lease to expire (15 s) before taking over.
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);
const LEASE: &str = "credvend-operator";
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/s3-reader";

/// Installs the CRD (server-side apply, so every test may do it) and waits until it is served.
async fn install_crd(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = AWSRoleBinding::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("credvend-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD not established in time")
    .unwrap();
}

/// A fresh namespace with the CRD installed.
async fn setup(prefix: &str) -> (Client, String) {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    install_crd(&client).await;
    let ns = k8s::unique_name(prefix);
    k8s::create_namespace(&client, &ns).await.unwrap();
    (client, ns)
}

/// One operator replica's controller half, wired as the operator wires it: the watches and the
/// controller on every replica, the Lease campaign (in the test's namespace) deciding who
/// writes. `leading` counts how often it became leader.
struct Replica {
    stop: Option<oneshot::Sender<()>>,
    campaign: JoinHandle<()>,
    controller: JoinHandle<()>,
    leading: Arc<AtomicUsize>,
    metrics: ControllerMetrics,
}

impl Replica {
    fn start(client: &Client, ns: &str, identity: &str) -> Replica {
        Self::start_with(client, ns, identity, StsEndpointAllowlist::aws())
    }

    fn start_with(
        client: &Client,
        ns: &str,
        identity: &str,
        allowed: StsEndpointAllowlist,
    ) -> Replica {
        let (stores, watches) = controller::watches(client.clone());
        let metrics = ControllerMetrics::unregistered();
        let (leading_tx, leading_rx) = watch::channel(false);
        let leading = Arc::new(AtomicUsize::new(0));
        {
            let (mut rx, leading) = (leading_rx.clone(), leading.clone());
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    if *rx.borrow_and_update() {
                        leading.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        let controller = tokio::spawn(controller::run(
            client.clone(),
            metrics.clone(),
            stores,
            watches,
            leading_rx,
            allowed,
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let campaign = tokio::spawn(controller::campaign(
            client.clone(),
            ns.to_owned(),
            LEASE.to_owned(),
            identity.to_owned(),
            leading_tx,
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Replica {
            stop: Some(stop),
            campaign,
            controller,
            leading,
            metrics,
        }
    }

    fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst) > 0
    }

    /// Shuts down as the operator does on SIGTERM: the campaign releases the Lease.
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.campaign)
            .await
            .expect("the campaign did not end after shutdown")
            .unwrap();
        self.controller.abort();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.campaign.abort();
        self.controller.abort();
    }
}

/// Polls the binding until `done` accepts it; on timeout, fails showing the last status seen.
async fn wait_for_binding(
    api: &Api<AWSRoleBinding>,
    name: &str,
    what: &str,
    done: impl Fn(&AWSRoleBinding) -> bool,
) -> AWSRoleBinding {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let binding = api.get(name).await.unwrap();
        if done(&binding) {
            return binding;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; last status: {:#?}",
            binding.status
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `check` returns `Some`, failing with `what` after [`WAIT`].
async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `(status, reason, message, observedGeneration)` of the Ready condition.
fn ready(binding: &AWSRoleBinding) -> Option<(String, String, String, Option<i64>)> {
    let status = binding.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
        condition.observed_generation,
    ))
}

fn binding(name: &str, role_arn: &str) -> AWSRoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "credvend.io/v1alpha1",
        "kind": "AWSRoleBinding",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": "default", "roleArn": role_arn},
    }))
    .unwrap()
}

fn labelled_pod(name: &str, binding: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"credvend.io/binding": binding}},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }))
    .unwrap()
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
}

#[tokio::test]
async fn controller_reports_validity_pod_count_and_changes_of_state() {
    let (client, ns) = setup("controller").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let replica = Replica::start(&client, &ns, "replica-a");

    // A valid binding: Ready, for generation 1, no pods yet.
    bindings
        .create(&PostParams::default(), &binding("s3", ROLE_ARN))
        .await
        .unwrap();
    let valid = wait_for_binding(&bindings, "s3", "Ready=True", |b| {
        ready(b).is_some_and(|(status, ..)| status == "True")
    })
    .await;
    let (_, reason, message, generation) = ready(&valid).unwrap();
    assert_eq!(reason, "Valid");
    assert!(message.contains(ROLE_ARN), "{message}");
    assert!(message.contains("\"default\""), "{message}");
    assert_eq!(generation, Some(1));
    let status = valid.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.pods, 0);
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("replica-a")
    );

    // Two pods labelled for it (and one for another binding, which must not count).
    for (pod, for_binding) in [("p1", "s3"), ("p2", "s3"), ("p3", "other")] {
        pods.create(&PostParams::default(), &labelled_pod(pod, for_binding))
            .await
            .unwrap();
    }
    wait_for_binding(&bindings, "s3", "pods: 2", |b| {
        b.status.as_ref().is_some_and(|s| s.pods == 2)
    })
    .await;
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    wait_for_binding(&bindings, "s3", "pods: 1", |b| {
        b.status.as_ref().is_some_and(|s| s.pods == 1)
    })
    .await;

    // A role path over IAM's 512 characters passes the CRD's rules but not the controller's.
    let long_path = "team/".repeat(110);
    let invalid_arn = format!("arn:aws:iam::111122223333:role/{long_path}s3-reader");
    bindings
        .patch(
            "s3",
            &PatchParams::apply("credvend-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "credvend.io/v1alpha1",
                "kind": "AWSRoleBinding",
                "spec": {"serviceAccountName": "default", "roleArn": invalid_arn},
            })),
        )
        .await
        .unwrap();
    let invalid = wait_for_binding(&bindings, "s3", "Ready=False for generation 2", |b| {
        ready(b)
            .is_some_and(|(status, _, _, generation)| status == "False" && generation == Some(2))
    })
    .await;
    let (_, reason, message, _) = ready(&invalid).unwrap();
    assert_eq!(reason, "InvalidRoleArn");
    assert!(message.contains("longer than 512 characters"), "{message}");
    let status = invalid.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.pods, 1);

    // Each change of state left an Event on the binding.
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    let seen = eventually("a Ready and an InvalidRoleArn Event", || async {
        let list = events.list(&Default::default()).await.unwrap();
        let on_binding: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("s3")
                    && e.reporting_controller.as_deref() == Some("credvend-operator")
            })
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note,
                )
            })
            .collect();
        let has = |type_: &str, reason: &str| {
            on_binding.iter().any(|(t, r, _)| t == type_ && r == reason)
        };
        (has("Normal", "Ready") && has("Warning", "InvalidRoleArn")).then_some(on_binding)
    })
    .await;
    let (_, _, note) = seen
        .iter()
        .find(|(_, reason, _)| reason == "InvalidRoleArn")
        .unwrap();
    assert!(
        note.as_deref().unwrap().contains("longer than 512"),
        "{note:?}"
    );

    // Shutting down releases the Lease.
    replica.shutdown().await;
    assert_eq!(lease_holder(&client, &ns).await, None);
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    let (client, ns) = setup("leader").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);

    let first = Replica::start(&client, &ns, "replica-a");
    eventually("replica-a to lead", || async {
        (lease_holder(&client, &ns).await.as_deref() == Some("replica-a") && first.is_leading())
            .then_some(())
    })
    .await;
    let second = Replica::start(&client, &ns, "replica-b");

    bindings
        .create(&PostParams::default(), &binding("before", ROLE_ARN))
        .await
        .unwrap();
    wait_for_binding(&bindings, "before", "Ready=True", |b| {
        ready(b).is_some_and(|(status, ..)| status == "True")
    })
    .await;
    // The status was written while replica-a held the Lease, and replica-b never led.
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("replica-a")
    );
    assert!(!second.is_leading());

    // replica-a shuts down and releases the Lease; replica-b takes over and reconciles.
    first.shutdown().await;
    eventually("replica-b to lead", || async {
        (lease_holder(&client, &ns).await.as_deref() == Some("replica-b") && second.is_leading())
            .then_some(())
    })
    .await;
    bindings
        .create(
            &PostParams::default(),
            &binding("after", "arn:aws:iam::111122223333:role/other"),
        )
        .await
        .unwrap();
    wait_for_binding(&bindings, "after", "Ready=True", |b| {
        ready(b).is_some_and(|(status, ..)| status == "True")
    })
    .await;
    second.shutdown().await;
}

fn binding_for(name: &str, service_account: &str, sts_endpoint: Option<&str>) -> AWSRoleBinding {
    let mut spec = json!({"serviceAccountName": service_account, "roleArn": ROLE_ARN});
    if let Some(url) = sts_endpoint {
        spec["stsEndpoint"] = json!(url);
    }
    serde_json::from_value(json!({
        "apiVersion": "credvend.io/v1alpha1",
        "kind": "AWSRoleBinding",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn bindings_sharing_a_service_account_say_so_until_one_is_gone() {
    let (client, ns) = setup("ambiguous").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let replica = Replica::start(&client, &ns, "replica-a");
    bindings
        .create(&PostParams::default(), &binding_for("s3", "app", None))
        .await
        .unwrap();
    wait_for_binding(&bindings, "s3", "Ready=True, Valid", |b| {
        ready(b).is_some_and(|(status, reason, ..)| status == "True" && reason == "Valid")
    })
    .await;

    // A second binding for the same service account: both say so, each naming the other.
    bindings
        .create(&PostParams::default(), &binding_for("dynamo", "app", None))
        .await
        .unwrap();
    for (name, other) in [("s3", "dynamo"), ("dynamo", "s3")] {
        let b = wait_for_binding(&bindings, name, "reason AmbiguousServiceAccount", |b| {
            ready(b).is_some_and(|(_, reason, ..)| reason == "AmbiguousServiceAccount")
        })
        .await;
        let (status, _, message, _) = ready(&b).unwrap();
        assert_eq!(status, "True", "pods naming the binding still work");
        assert!(
            message.contains(&format!(
                "AWSRoleBinding {other} also names service account \"app\""
            )),
            "{message}"
        );
        assert!(message.contains("credvend.io/binding: <name>"), "{message}");
    }

    // One is deleted: the other is plainly valid again.
    bindings
        .delete("dynamo", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_binding(&bindings, "s3", "reason Valid again", |b| {
        ready(b).is_some_and(|(status, reason, ..)| status == "True" && reason == "Valid")
    })
    .await;
    replica.shutdown().await;
}

#[tokio::test]
async fn a_binding_whose_sts_endpoint_the_operator_does_not_allow_is_not_ready() {
    let (client, ns) = setup("sts-allow").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let allowed = StsEndpointAllowlist::aws_and(&["https://sts.internal.example".into()]).unwrap();
    let replica = Replica::start_with(&client, &ns, "replica-a", allowed);
    for (name, url) in [
        ("elsewhere", "https://tokens.example.com"),
        ("aws", "https://sts.eu-west-1.amazonaws.com"),
        ("allowed", "https://sts.internal.example"),
    ] {
        bindings
            .create(&PostParams::default(), &binding_for(name, name, Some(url)))
            .await
            .unwrap();
    }
    let refused = wait_for_binding(&bindings, "elsewhere", "Ready=False", |b| {
        ready(b).is_some_and(|(status, ..)| status == "False")
    })
    .await;
    let (_, reason, message, _) = ready(&refused).unwrap();
    assert_eq!(reason, "StsEndpointNotAllowed");
    assert!(message.contains("https://tokens.example.com"), "{message}");
    assert!(message.contains("agent.allowedStsEndpoints"), "{message}");
    for name in ["aws", "allowed"] {
        wait_for_binding(&bindings, name, "Ready=True", |b| {
            ready(b).is_some_and(|(status, ..)| status == "True")
        })
        .await;
    }
    assert_eq!(replica.metrics.leader.get(), 1);
    replica.shutdown().await;
}

fn binding_with(name: &str, spec: serde_json::Value) -> AWSRoleBinding {
    let mut full = json!({"serviceAccountName": "app", "roleArn": ROLE_ARN});
    json_patch::merge(&mut full, &spec);
    serde_json::from_value(json!({
        "apiVersion": "credvend.io/v1alpha1",
        "kind": "AWSRoleBinding",
        "metadata": {"name": name},
        "spec": full,
    }))
    .unwrap()
}

const CROSS: &str = "arn:aws:iam::444455556666:role/cross";

#[tokio::test]
async fn the_api_server_refuses_bad_session_options_and_chains_with_the_fix_named() {
    let (client, ns) = setup("session-options").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let arns: Vec<String> = (0..11)
        .map(|i| format!("arn:aws:iam::111122223333:policy/p{i}"))
        .collect();
    let cases = [
        (
            "policy",
            json!({"sessionPolicy": "allow s3"}),
            "sessionPolicy must be an IAM policy document in JSON",
        ),
        (
            "arns",
            json!({"sessionPolicyArns": ["ReadOnlyAccess"]}),
            "sessionPolicyArns must be managed policy ARNs",
        ),
        (
            "eleven-arns",
            json!({"sessionPolicyArns": arns}),
            "must have at most 10 items",
        ),
        (
            "template",
            json!({"sessionName": "{namespace}.{podname}"}),
            "sessionName must be letters, digits",
        ),
        (
            "hop-role",
            json!({"chain": [{"roleArn": "cross-account"}]}),
            "chain[].roleArn must be an IAM role ARN",
        ),
        (
            "hop-external-id",
            json!({"chain": [{"roleArn": CROSS, "externalId": "has space"}]}),
            "chain[].externalId must be 2 to 1224",
        ),
        (
            "hop-tag-key",
            json!({"chain": [{"roleArn": CROSS, "sessionTags": [{"key": "aws:team", "value": "a"}]}]}),
            "must not start with aws:",
        ),
        (
            "hop-tag-twice",
            json!({"chain": [{"roleArn": CROSS, "sessionTags": [{"key": "team", "value": "a"}, {"key": "Team", "value": "b"}]}]}),
            "must not repeat a key",
        ),
        (
            "hop-transitive",
            json!({"chain": [{"roleArn": CROSS, "sessionTags": [{"key": "team", "value": "a"}], "transitiveTagKeys": ["cost"]}]}),
            "transitiveTagKeys may only name keys",
        ),
        (
            "hop-source-identity",
            json!({"chain": [{"roleArn": CROSS, "sourceIdentity": "a b"}]}),
            "chain[].sourceIdentity must be 2 to 64",
        ),
    ];
    for (name, spec, words) in cases {
        let err = bindings
            .create(&PostParams::default(), &binding_with(name, spec))
            .await
            .expect_err(name);
        let kube::Error::Api(status) = &err else {
            panic!("{name}: {err}");
        };
        assert_eq!(status.code, 422, "{name}: {status:?}");
        assert!(
            status.message.contains(words),
            "{name}: {words:?} in {}",
            status.message
        );
    }
}

#[tokio::test]
async fn a_chained_binding_says_its_session_is_clamped_and_what_the_role_must_trust() {
    let (client, ns) = setup("chained").await;
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let replica = Replica::start(&client, &ns, "replica-a");
    let chained = json!({
        "sessionDuration": "2h",
        "audience": "sts.example.com",
        "sessionPolicy": "{\"Statement\": {\"Effect\": \"Allow\", \"Action\": \"s3:GetObject\", \"Resource\": \"*\"}}",
        "chain": [{"roleArn": CROSS, "externalId": "partner-42"}],
    });
    // What the schema cannot say: a source identity that changes, a policy without Statement.
    let changing = json!({"serviceAccountName": "other", "chain": [
        {"roleArn": CROSS, "sourceIdentity": "team-a"},
        {"roleArn": "arn:aws:iam::777788889999:role/next", "sourceIdentity": "team-b"}
    ]});
    let statementless =
        json!({"serviceAccountName": "third", "sessionPolicy": "{\"Version\": \"2012-10-17\"}"});
    for (name, spec) in [
        ("chained", chained),
        ("changing", changing),
        ("statementless", statementless),
    ] {
        bindings
            .create(&PostParams::default(), &binding_with(name, spec))
            .await
            .unwrap();
    }
    let clamped = wait_for_binding(&bindings, "chained", "Ready=True", |b| {
        ready(b).is_some_and(|(status, ..)| status == "True")
    })
    .await;
    let (_, reason, message, _) = ready(&clamped).unwrap();
    assert_eq!(reason, "ChainedSessionClamped");
    for words in [
        "may use role arn:aws:iam::111122223333:role/s3-reader, then arn:aws:iam::444455556666:role/cross",
        "sessions of 1h",
        "longer than the 1h STS allows a chained session",
    ] {
        assert!(message.contains(words), "{words:?} in {message}");
    }
    let status = clamped.status.unwrap();
    assert_eq!(
        status.subject.as_deref(),
        Some(format!("system:serviceaccount:{ns}:app").as_str())
    );
    assert_eq!(status.audience.as_deref(), Some("sts.example.com"));
    for (name, want_reason, words) in [
        (
            "changing",
            "InvalidChain",
            "chain[1].sourceIdentity \"team-b\" differs",
        ),
        (
            "statementless",
            "InvalidSessionPolicy",
            "needs a \"Statement\"",
        ),
    ] {
        let refused = wait_for_binding(&bindings, name, "Ready=False", |b| {
            ready(b).is_some_and(|(status, ..)| status == "False")
        })
        .await;
        let (_, reason, message, _) = ready(&refused).unwrap();
        assert_eq!(reason, want_reason, "{message}");
        assert!(message.contains(words), "{words:?} in {message}");
    }
    replica.shutdown().await;
}

#[tokio::test]
async fn trust_policy_prints_what_each_role_must_trust_from_the_clusters_issuer() {
    let (client, ns) = setup("trust").await;
    let cp = k8s::shared().await.unwrap();
    let bindings = Api::<AWSRoleBinding>::namespaced(client.clone(), &ns);
    let spec = json!({"chain": [{"roleArn": CROSS, "externalId": "partner-42",
                                 "sessionTags": [{"key": "team", "value": "a"}]}]});
    bindings
        .create(&PostParams::default(), &binding_with("cross", spec))
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args(["trust-policy", "--namespace", &ns, "cross"])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two blocks: a `#` line naming the role, then its policy.
    let blocks: Vec<(&str, serde_json::Value)> = text
        .split("\n\n")
        .map(|block| {
            let (head, policy) = block.split_once('\n').unwrap();
            (head, serde_json::from_str(policy).unwrap())
        })
        .collect();
    assert_eq!(blocks.len(), 2, "{text}");
    let provider = cp
        .issuer()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    assert!(blocks[0].0.contains(ROLE_ARN), "{}", blocks[0].0);
    let first = &blocks[0].1["Statement"][0];
    assert_eq!(
        first["Principal"]["Federated"],
        format!("arn:aws:iam::111122223333:oidc-provider/{provider}")
    );
    assert_eq!(
        first["Condition"]["StringEquals"][format!("{provider}:sub")],
        format!("system:serviceaccount:{ns}:app")
    );
    assert_eq!(
        first["Condition"]["StringEquals"][format!("{provider}:aud")],
        "sts.amazonaws.com"
    );
    let hop = &blocks[1].1["Statement"][0];
    assert!(blocks[1].0.contains(CROSS));
    assert_eq!(hop["Principal"]["AWS"], ROLE_ARN);
    assert_eq!(hop["Action"], json!(["sts:AssumeRole", "sts:TagSession"]));
    assert_eq!(
        hop["Condition"]["StringEquals"]["sts:ExternalId"],
        "partner-42"
    );

    // A binding that does not exist is named in the error.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args(["trust-policy", "-n", &ns, "nope"])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(&format!("AWSRoleBinding {ns}/nope")),
        "{stderr}"
    );
}
