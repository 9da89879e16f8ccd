//! The operator at scale on the real control plane: a thousand annotated pods created as fast
//! as the API server takes them, then the operator's memory with many bindings and labelled
//! pods in its caches. The pods have no node and stay Pending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credvend::crd::AWSRoleBinding;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use crate::procfs::Memory;
use crate::report::{Report, Row};
use crate::stats::{Spread, histogram_quantile};
use crate::support::k8s;
use crate::support::operator::{self, Installed};
use crate::{Plan, STS};

const SECTION: &str = "scale";
/// Creations in flight at once: what a busy controller-manager sends, and enough to keep
/// the API server the bottleneck.
const IN_FLIGHT: usize = 32;

/// Creates `count` pods named `{prefix}-{i}` from `template`, `IN_FLIGHT` at a time; returns
/// the wall time, each creation's latency (ms) and the failures' messages.
async fn create_pods(
    pods: &Api<Pod>,
    template: &Pod,
    prefix: &str,
    count: usize,
) -> (Duration, Vec<f64>, Vec<String>) {
    let start = Instant::now();
    let results: Vec<Result<f64, String>> = futures::stream::iter(0..count)
        .map(|i| {
            let mut pod = template.clone();
            pod.metadata.name = Some(format!("{prefix}-{i}"));
            // The API's namespace is the one that counts.
            pod.metadata.namespace = None;
            let pods = pods.clone();
            async move {
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod)
                    .await
                    .map(|_| t.elapsed().as_secs_f64() * 1e3)
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    (
        elapsed,
        ok.into_iter().filter_map(Result::ok).collect(),
        failed.into_iter().filter_map(Result::err).collect(),
    )
}

/// `q` of `samples` (ms).
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The injected admissions' latency histogram on the operator's metrics page, cumulative
/// `(le, count)` in seconds.
async fn histogram(op: &Installed) -> Vec<(f64, f64)> {
    let page = operator::metrics_page(op.metrics_port).await;
    let prefix = "credvend_admission_duration_seconds_bucket{";
    let mut out: Vec<(f64, f64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|l| l.contains(r#"result="injected""#))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

pub async fn run(plan: &Plan, report: &mut Report, client: &kube::Client, op: &Installed) {
    let idle = Memory::read(op.operator.pid());
    // The API server's own rate and latency: the same pods in a namespace the webhook does
    // not see.
    let plain_ns = k8s::unique_name("bench-plain");
    k8s::create_namespace(client, &plain_ns)
        .await
        .expect("namespace");
    k8s::create_service_account(client, &plain_ns, "app")
        .await
        .expect("service account");
    let ns = k8s::unique_name("bench-scale");
    k8s::create_namespace(client, &ns).await.expect("namespace");
    op.admit_namespace(client, &ns).await;
    k8s::create_service_account(client, &ns, "app")
        .await
        .expect("service account");
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &operator::binding_yaml("s3", &ns, "app", STS),
        )
        .await
        .expect("binding");
    operator::wait_binding_ready(&bindings, "s3", 0).await;
    let template: Pod = serde_json::from_value(crate::webhook::pod(&ns, "app")).expect("pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The webhook configuration is in effect (the API server picks it up asynchronously).
    let mut first = template.clone();
    first.metadata.name = Some("first".into());
    first.metadata.generate_name = None;
    first.metadata.namespace = None;
    operator::create_injected(&pods, &first).await;

    let mut plain_template = template.clone();
    plain_template.metadata.generate_name = None;
    let plain: Api<Pod> = Api::namespaced(client.clone(), &plain_ns);
    let (plain_wall, plain_lat, plain_failed) =
        create_pods(&plain, &plain_template, "web", plan.pods).await;
    assert!(
        plain_failed.is_empty(),
        "{} plain creations failed: {:?}",
        plain_failed.len(),
        plain_failed.first()
    );

    let before = histogram(op).await;
    let (wall, lat, failed) = create_pods(&pods, &plain_template, "web", plan.pods).await;
    // Correctness, not timing: every pod is admitted.
    assert!(
        failed.is_empty(),
        "{} of {} creations failed: {:?}",
        failed.len(),
        plan.pods,
        failed.first()
    );
    let after = histogram(op).await;
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            (
                le,
                n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let admitted = delta.last().map_or(0.0, |d| d.1);
    assert!(
        admitted >= plan.pods as f64,
        "the histogram counted {admitted} of {} admissions",
        plan.pods
    );

    let n = plan.pods;
    let rate = |wall: Duration| n as f64 / wall.as_secs_f64();
    let cmd = format!("{n} pod creations, {IN_FLIGHT} in flight (kube-rs), Pending pods");
    let mut add = |measure: String, unit, a: Spread, name, b: Spread, command: &str| {
        report.add(Row {
            section: SECTION,
            measure,
            unit,
            credvend: a,
            baseline_name: name,
            baseline: b,
            command: command.to_owned(),
        })
    };
    add(
        format!("{n} annotated pods: creations/s"),
        "pods/s",
        Spread::one(rate(wall)),
        "no webhook",
        Spread::one(rate(plain_wall)),
        &cmd,
    );
    add(
        format!("{n} annotated pods: failures"),
        "",
        Spread::one(failed.len() as f64),
        "no webhook",
        Spread::one(plain_failed.len() as f64),
        &cmd,
    );
    for q in [0.5, 0.99] {
        let pct = (q * 100.0) as u32;
        add(
            format!("create latency p{pct}, client side"),
            "ms",
            Spread::one(quantile(&lat, q)),
            "no webhook",
            Spread::one(quantile(&plain_lat, q)),
            &cmd,
        );
        add(
            format!("admission p{pct} (operator histogram)"),
            "ms",
            Spread::one(histogram_quantile(q, &delta) * 1e3),
            "whole create, same pods",
            Spread::one(quantile(&lat, q)),
            "histogram_quantile(credvend_admission_duration_seconds{result=\"injected\"})",
        );
    }

    // Bindings in namespaces of their own (a service account each), then labelled pods up to
    // the target, all through the webhook.
    let per_ns = 100.min(plan.bindings.max(1));
    let mut made = 0;
    let mut k = 0;
    while made < plan.bindings {
        let bns = format!("{ns}-b{k}");
        k8s::create_namespace(client, &bns)
            .await
            .expect("namespace");
        let api: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &bns);
        let batch = per_ns.min(plan.bindings - made);
        let api = Arc::new(api);
        let results: Vec<_> = futures::stream::iter(0..batch)
            .map(|i| {
                let (api, bns) = (api.clone(), bns.clone());
                async move {
                    api.create(
                        &PostParams::default(),
                        &operator::binding_yaml(&format!("b{i}"), &bns, &format!("sa-{i}"), STS),
                    )
                    .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        assert!(
            results.iter().all(Result::is_ok),
            "binding creations failed"
        );
        made += batch;
        k += 1;
    }
    let more = plan.labelled_pods.saturating_sub(plan.pods + 1);
    let (_, _, failed) = create_pods(&pods, &plain_template, "more", more).await;
    assert!(
        failed.is_empty(),
        "{} labelled pod creations failed: {:?}",
        failed.len(),
        failed.first()
    );
    let total = (plan.pods + 1 + more) as i32;
    // The controller has counted every labelled pod: they are all in its cache.
    crate::support::http::eventually(
        "the binding to count every pod",
        Duration::from_secs(600),
        || {
            let bindings = bindings.clone();
            async move {
                let b = bindings.get("s3").await.ok()?;
                (b.status?.pods == total).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full = Memory::read(op.operator.pid());
    let cmd = format!(
        "{} bindings, {total} labelled pods; /proc/<pid>/status",
        plan.bindings + 1
    );
    add(
        format!(
            "operator VmRSS, {} bindings + {total} pods",
            plan.bindings + 1
        ),
        "MiB",
        Spread::one(full.rss),
        "operator idle",
        Spread::one(idle.rss),
        &cmd,
    );
    add(
        "operator VmHWM at scale".into(),
        "MiB",
        Spread::one(full.hwm),
        "operator idle",
        Spread::one(idle.hwm),
        &cmd,
    );
}
