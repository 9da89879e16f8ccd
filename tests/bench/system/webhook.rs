//! The webhook: AdmissionReviews over TLS from a real operator whose store holds the binding,
//! next to a minimal TLS server answering the same bytes (bench/baseline, `baseline-tls`);
//! and the decision alone, in process.

use std::ffi::OsStr;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use credvend::aws::StsEndpointAllowlist;
use credvend::controller::BindingsByNamespace;
use credvend::crd::AWSRoleBinding;
use credvend::inject::{self, Candidates, Decision, InjectSettings, Injector};
use credvend::webhook::admission::{Admission, BindingSource, StoreAndApi};
use credvend::webhook::metrics::AdmissionMetrics;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::load::{Request, Run};
use crate::procfs::{self, Memory};
use crate::report::{Report, Row};
use crate::servers::Baseline;
use crate::stats::Spread;
use crate::support::operator::Installed;
use crate::{Plan, tls_client};

const SECTION: &str = "webhook";
const MINIMAL: &str = "minimal TLS";

/// The AdmissionReview the API server sends for creating `pod` in `namespace`.
pub fn review(namespace: &str, pod: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "a6e3e0a6-0d6c-4b9e-9a52-1f1f7b9c3e11",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("review JSON")
}

/// An annotated pod as a Deployment's ReplicaSet creates it.
pub fn pod(namespace: &str, sa: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7c5b8d9f4-x2x9k", "generateName": "web-7c5b8d9f4-", "namespace": namespace,
            "labels": {"app": "web", "pod-template-hash": "7c5b8d9f4"},
            "annotations": {"credvend.io/inject": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c5b8d9f4",
                                 "uid": "0f4c1a3e-8d2b-4d7e-9f61-2c0d6a7b9e10", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [{
                "name": "app", "image": "registry.example/web:1.4.2",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "AWS_REGION", "value": "us-east-1"}, {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0, "securityContext": {}
        }
    })
}

/// The PEM of the CA the operator patched into its webhook configuration.
async fn ca_pem(client: &kube::Client, config: &str) -> Vec<u8> {
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(config)
        .await
        .expect("the webhook configuration");
    let bundle = mwc.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("a caBundle");
    bundle.0
}

pub async fn run(
    plan: &Plan,
    report: &mut Report,
    client: &kube::Client,
    op: &Installed,
    namespace: &str,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let review_file = dir.path().join("review.json");
    let review = review(namespace, &pod(namespace, "app"));
    std::fs::write(&review_file, &review).expect("write the review");
    let ca = ca_pem(client, &op.webhook_config).await;
    let (status, answer) = tls_client::post(&ca, op.webhook_port, "/mutate", review.clone()).await;
    let parsed: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(status, 200, "{parsed}");
    assert_eq!(parsed["response"]["allowed"], true, "{parsed}");
    assert_eq!(
        parsed["response"]["patchType"], "JSONPatch",
        "the review is injected: {parsed}"
    );

    // The baseline answers with exactly these bytes, over its own self-signed certificate.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    let (cert_file, key_file, answer_file) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("answer.json"),
    );
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key");
    std::fs::write(&answer_file, &answer).expect("answer");
    procfs::pin_self(plan.server_cpu);
    let minimal = Baseline::start(
        &plan.binaries.baseline("baseline-tls"),
        &[
            OsStr::new("--body"),
            answer_file.as_os_str(),
            OsStr::new("--cert"),
            cert_file.as_os_str(),
            OsStr::new("--key"),
            key_file.as_os_str(),
        ],
    );
    procfs::unpin_self(crate::cores());
    let operator_pid = op.operator.pid();
    procfs::pin(operator_pid, plan.server_cpu);
    procfs::pin(minimal.pid(), plan.server_cpu);
    let idle = (Memory::read(operator_pid), Memory::read(minimal.pid()));

    let servers = [
        (
            operator_pid,
            format!("https://127.0.0.1:{}/mutate", op.webhook_port),
        ),
        (
            minimal.pid(),
            format!("https://127.0.0.1:{}/mutate", minimal.port),
        ),
    ];
    let request = Request::Post { body: &review_file };
    for &conns in &plan.connections {
        let mut runs: [Vec<(Run, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..plan.repeats {
            for (i, (pid, url)) in servers.iter().enumerate() {
                let before = procfs::cpu_time(*pid);
                let run = plan.generator.run(url, conns, &request);
                let cpu = (procfs::cpu_time(*pid) - before).as_secs_f64();
                assert_eq!(run.errors, 0, "errors under load on {url}");
                runs[i].push((run, cpu));
            }
        }
        let command = plan.generator.describe(
            conns,
            "-s post.lua (the AdmissionReview)",
            "https://127.0.0.1:<port>/mutate",
        );
        let rows: [crate::agent::Metric<(Run, f64)>; 4] = [
            ("reviews/s", "rev/s", &|m| m.0.rps),
            ("p50", "ms", &|m| m.0.p50_ms),
            ("p99", "ms", &|m| m.0.p99_ms),
            ("reviews per server CPU-second", "rev/cpu-s", &|m| {
                m.0.requests as f64 / m.1.max(0.01)
            }),
        ];
        for (what, unit, f) in rows {
            let spread = |i: usize| Spread::of(&runs[i].iter().map(f).collect::<Vec<_>>());
            report.add(Row {
                section: SECTION,
                measure: format!("{what}, {conns} conn"),
                unit,
                credvend: spread(0),
                baseline_name: MINIMAL,
                baseline: spread(1),
                command: command.clone(),
            });
        }
    }
    let loaded = (Memory::read(operator_pid), Memory::read(minimal.pid()));
    let status = "grep -E 'VmRSS|VmHWM' /proc/<pid>/status";
    for (measure, a, b) in [
        ("operator VmRSS idle", idle.0.rss, idle.1.rss),
        ("operator VmRSS after load", loaded.0.rss, loaded.1.rss),
        ("operator VmHWM", loaded.0.hwm, loaded.1.hwm),
        ("operator threads", loaded.0.threads, loaded.1.threads),
    ] {
        report.add(Row {
            section: SECTION,
            measure: measure.into(),
            unit: if measure.contains("threads") {
                ""
            } else {
                "MiB"
            },
            credvend: Spread::one(a),
            baseline_name: MINIMAL,
            baseline: Spread::one(b),
            command: status.into(),
        });
    }
    let patch_bytes = patch_size(&parsed);
    report.add(Row {
        section: SECTION,
        measure: "response size".into(),
        unit: "bytes",
        credvend: Spread::one(answer.len() as f64),
        baseline_name: "the JSONPatch alone",
        baseline: Spread::one(patch_bytes as f64),
        command: "POST the review once; wc -c".into(),
    });
    drop(minimal);
    in_process(plan, report, namespace, &review);
    lookup(plan, report, client);
}

/// The webhook's binding lookup (`StoreAndApi::cached`) with one binding in the store and
/// with a thousand in a hundred namespaces (ten in the namespace looked up), the index filled
/// from the store as the bindings watch fills it after a list.
fn lookup(plan: &Plan, report: &mut Report, client: &kube::Client) {
    let filled = |count: usize| {
        let (store, mut writer) = kube::runtime::reflector::store::<AWSRoleBinding>();
        for i in 0..count {
            let ns = format!("team-{}", i % 100);
            let mut b =
                crate::support::operator::binding_yaml(&format!("b{i}"), &ns, "app", crate::STS);
            b.metadata.uid = Some(format!("uid-{i}"));
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(b));
        }
        let by_namespace = BindingsByNamespace::default();
        by_namespace.rebuild(&store);
        StoreAndApi {
            by_namespace,
            client: client.clone(),
        }
    };
    let (one, many) = (filled(1), filled(1000));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..plan.repeats {
        a.push(per_call(plan.micro_iterations, || {
            black_box(many.cached(black_box("team-7")));
        }));
        b.push(per_call(plan.micro_iterations, || {
            black_box(one.cached(black_box("team-0")));
        }));
    }
    report.add(Row {
        section: SECTION,
        measure: "binding lookup per review, 1000 bindings".into(),
        unit: "µs",
        credvend: Spread::of(&a),
        baseline_name: "1 binding in the store",
        baseline: Spread::of(&b),
        command: "StoreAndApi::cached in process".into(),
    });
}

/// The decoded JSONPatch's length, whether the response carries it as base64 or as an array of
/// numbers.
fn patch_size(answer: &serde_json::Value) -> usize {
    match &answer["response"]["patch"] {
        serde_json::Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_or(0, |b| b.len()),
        serde_json::Value::Array(numbers) => numbers.len(),
        _ => 0,
    }
}

/// One namespace's bindings in memory.
struct Fixed(Vec<Arc<AWSRoleBinding>>);

impl BindingSource for Fixed {
    fn cached(&self, _namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
        self.0.clone()
    }
    async fn live(&self, _namespace: &str) -> Result<Vec<AWSRoleBinding>, kube::Error> {
        Ok(self.0.iter().map(|b| (**b).clone()).collect())
    }
}

/// The pure decision per pod, against the whole review (decode, decide, encode) in process.
fn in_process(plan: &Plan, report: &mut Report, namespace: &str, review: &[u8]) {
    let binding = crate::support::operator::binding_yaml("s3", namespace, "app", crate::STS);
    let mut binding = binding;
    binding.metadata.generation = Some(1);
    // As the operator's cache holds it, so the review's Injector remembers its render, as the
    // webhook's does.
    binding.metadata.uid = Some("0b7c4c8e-1d2a-4f3b-9e6d-5a8f7c6b4d21".into());
    binding.metadata.resource_version = Some("1".into());
    let pod: Pod = serde_json::from_value(pod(namespace, "app")).expect("pod");
    // The operator's settings as the chart sets them: the binding's STS endpoint allowed.
    // Without it every call here would time a denial, not the injection the row names.
    let settings = InjectSettings {
        allowed_sts_endpoints: StsEndpointAllowlist::aws_and(&[crate::STS.to_owned()])
            .expect("the bench's STS endpoint is a valid pattern"),
        ..InjectSettings::default()
    };
    let refs = [&binding];
    let candidates = Candidates {
        namespace,
        bindings: &refs,
    };
    assert!(
        matches!(
            inject::decide(&pod, &candidates, &settings),
            Decision::Inject { .. }
        ),
        "the in-process pod is injected"
    );
    let iterations = plan.micro_iterations;
    let mut decide = Vec::new();
    let mut whole = Vec::new();
    let admission = Admission {
        bindings: Fixed(vec![Arc::new(binding.clone())]),
        injector: Injector::new(settings.clone()),
        metrics: AdmissionMetrics::unregistered(),
    };
    let answer = futures::executor::block_on(admission.review(review)).expect("review");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(
        answer["response"]["patchType"], "JSONPatch",
        "the in-process review is injected: {answer}"
    );
    for _ in 0..plan.repeats {
        decide.push(per_call(iterations, || {
            black_box(inject::decide(black_box(&pod), &candidates, &settings));
        }));
        whole.push(per_call(iterations, || {
            // Nothing in a review from the store awaits I/O: a plain executor drives it.
            black_box(
                futures::executor::block_on(admission.review(black_box(review))).expect("review"),
            );
        }));
    }
    report.add(Row {
        section: SECTION,
        measure: "inject::decide per pod".into(),
        unit: "µs",
        credvend: Spread::of(&decide),
        baseline_name: "whole review in process",
        baseline: Spread::of(&whole),
        command: "in process, after a 10% warm-up".into(),
    });
}

/// Microseconds per call of `f`.
fn per_call(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations.max(1))
}
