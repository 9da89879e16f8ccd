//! `make bench`: what the sidecar costs per pod and what the endpoint and the webhook do,
//! each row next to a baseline measured in the same run (see BENCHMARKS.md).
//!
//! Real parts throughout: the release binary as the image ships it, moto as STS, a real
//! kube-apiserver and etcd, wrk as the load generator, and the minimal servers of
//! bench/baseline as the machine's practical limit. The generator and the server under test
//! are pinned to different CPUs when there are two.
//!
//! `cargo bench` (which passes `--bench`) makes the full run and writes BENCHMARKS.md;
//! `cargo test` runs the same code once with small counts and one-second loads, so it cannot
//! rot. Benchmarks print; the only assertions are about correctness (no failed request, no
//! failed pod creation, one STS call for many cold requests), never about time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../support/mod.rs"]
mod support;

mod agent;
mod load;
mod procfs;
mod report;
mod scale;
mod servers;
mod stats;
mod tls_client;
mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::Report;
use servers::Binaries;

/// The bindings' STS endpoint: never called (the pods have no node), but it must be allowed.
pub const STS: &str = "http://127.0.0.1:9";

/// Where BENCHMARKS.md's generated part ends; what follows is kept as it is.
const KEPT: &str = "<!-- Everything below this line is kept by `make bench`. -->";

/// Counts and durations of one run.
pub struct Plan {
    pub binaries: Binaries,
    pub generator: load::Generator,
    /// The CPU of the server under test (`None` on a one-core machine).
    pub server_cpu: Option<usize>,
    pub connections: Vec<u32>,
    pub repeats: usize,
    pub ready_repeats: usize,
    pub burst: usize,
    pub cold_requests: usize,
    pub micro_iterations: u32,
    pub pods: usize,
    pub bindings: usize,
    pub labelled_pods: usize,
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set: run through `make bench` or `make test`"))
}

/// The machine's CPUs, read once at start (later, while the harness pins itself to start a
/// server, the affinity mask would say one).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

impl Plan {
    fn new(full: bool) -> Plan {
        let binaries = Binaries {
            credvend: support::release::binary().to_path_buf(),
            baselines: env_path("CREDVEND_BENCH_BASELINES"),
        };
        let pinned = cores() >= 2;
        let seconds = if full { 5 } else { 1 };
        Plan {
            binaries,
            generator: load::Generator::new(
                env_path("CREDVEND_WRK"),
                pinned.then_some(0),
                Duration::from_secs(seconds),
            ),
            server_cpu: pinned.then_some(1),
            connections: vec![1, 16, 64],
            repeats: if full { 3 } else { 1 },
            ready_repeats: if full { 7 } else { 2 },
            burst: if full { 1000 } else { 100 },
            cold_requests: if full { 1000 } else { 50 },
            micro_iterations: if full { 20_000 } else { 200 },
            pods: if full { 1000 } else { 20 },
            bindings: if full { 1000 } else { 10 },
            labelled_pods: if full { 10_000 } else { 40 },
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo test` hands a bench target libtest's flags; only a filter-free run does anything.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    support::k8s::install_crypto_provider();
    check_profiles_match();
    let started = Instant::now();
    let plan = Plan::new(full);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(run(&plan));
    let text = report.text();
    println!("\n{text}");
    if full {
        let path = std::env::var_os("CREDVEND_BENCHMARKS_MD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
        // Notes below the marker (the before/after of a change, say) outlive the rerun.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find(KEPT).map(|i| old[i..].to_owned()))
            .unwrap_or_else(|| format!("{KEPT}\n"));
        let file = format!("{}\n{kept}", markdown(&report, started.elapsed()));
        std::fs::write(&path, file).expect("write BENCHMARKS.md");
        println!("wrote {}", path.display());
    }
    // The plain closing line CI counts: the smoke run is a test.
    println!("bench: {} passed, 0 failed", report.rows.len());
}

async fn run(plan: &Plan) -> Report {
    let mut report = Report::default();
    let only = std::env::var("CREDVEND_BENCH_ONLY").unwrap_or_default();
    println!(
        "benchmarks on {} cores (credvend: {})",
        cores(),
        plan.binaries.credvend.display()
    );
    if only.is_empty() || only == "agent" {
        agent::run(plan, &mut report).await;
    }
    if only.is_empty() || only == "webhook" || only == "scale" {
        let cp = support::k8s::ControlPlane::start()
            .await
            .expect("control plane");
        let client = cp.client().expect("client");
        let dir = tempfile::tempdir().expect("temp dir");
        // The operator starts on the server's CPU, as in a pod with one CPU.
        procfs::pin_self(plan.server_cpu);
        let op = support::operator::install_with(
            &cp,
            &client,
            dir.path(),
            &support::operator::InstallOptions {
                sts_endpoints: &[STS],
                isolated: true,
                binary: Some(&plan.binaries.credvend),
                ..Default::default()
            },
        )
        .await;
        procfs::unpin_self(cores());
        if only.is_empty() || only == "webhook" {
            let ns = support::k8s::unique_name("bench-webhook");
            support::k8s::create_namespace(&client, &ns)
                .await
                .expect("namespace");
            op.admit_namespace(&client, &ns).await;
            let bindings: kube::Api<credvend::crd::AWSRoleBinding> =
                kube::Api::namespaced(client.clone(), &ns);
            bindings
                .create(
                    &Default::default(),
                    &support::operator::binding_yaml("s3", &ns, "app", STS),
                )
                .await
                .expect("binding");
            support::operator::wait_binding_ready(&bindings, "s3", 0).await;
            webhook::run(plan, &mut report, &client, &op, &ns).await;
        }
        if only.is_empty() || only == "scale" {
            scale::run(plan, &mut report, &client, &op).await;
        }
        drop(op);
        cp.shutdown().expect("control plane shutdown");
    }
    report
}

fn markdown(report: &Report, took: Duration) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "# Benchmarks\n\n\
         Generated by `make bench` ({took:.0?}) on {cores} cores ({cpu}, Linux {kernel}). \
         Every row is measured next to its baseline in the same run; the ratio is credvend / \
         baseline on medians, the spread is half the range of the repeats as a percentage of \
         the median. Load rows: wrk with one thread and keep-alive connections, pinned to CPU 0, \
         the server under test pinned to CPU 1; 3 repeats of 5 s, the two servers alternating. \
         `CREDVEND_BENCH_ONLY=agent|webhook|scale make bench` reruns one part. Timings on a \
         shared machine vary: read the ratios.\n\n\
         What each part is: `endpoint`, `agent mem`, `ready`, `sts` run the release agent against \
         moto's STS next to `baseline-http` (bench/baseline: the same bytes and Authorization \
         check on plain hyper, nothing else); `webhook` sends a real AdmissionReview (an \
         annotated pod whose binding is in the operator's store) to the release operator next to \
         `baseline-tls` (the same TLS stack answering the same response bytes without decoding \
         anything); `scale` creates pods on a real kube-apiserver and etcd through the webhook \
         next to the same pods in a namespace the webhook does not see.\n\n{}",
        report.markdown(),
        cores = cores(),
        kernel = kernel.trim(),
    )
}

/// The baselines are built with credvend's own release profile, so ratios compare code, not
/// compiler settings.
fn check_profiles_match() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let section = |file: &str| {
        let text = std::fs::read_to_string(root.join(file)).expect("read a manifest");
        let start = text
            .find("\n[profile.release]")
            .expect("a [profile.release]")
            + 1;
        let rest = &text[start + 1..];
        let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
        text[start..start + end]
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        section("Cargo.toml"),
        section("bench/baseline/Cargo.toml"),
        "bench/baseline/Cargo.toml must keep credvend's [profile.release]"
    );
}
