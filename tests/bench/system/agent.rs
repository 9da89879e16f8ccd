//! The sidecar: its endpoint under load, its memory, its start-up and its STS calls, each next
//! to the minimal hyper server (bench/baseline, `baseline-http`) run the same way.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use credvend::agent::schedule;

use crate::Plan;
use crate::load::{Generator, Request, Run};
use crate::procfs::{self, Memory};
use crate::report::{Report, Row};
use crate::servers::{Baseline, Binaries, binary_sizes, layout_coverage};
use crate::stats::Spread;
use crate::support::agent::{AgentOptions, AgentProcess, ROLE_ARN, SESSION_NAME, fake_jwt};
use crate::support::http;
use crate::support::sts::StsPeer;

const SECTION_ENDPOINT: &str = "endpoint";
const SECTION_MEMORY: &str = "agent mem";
const SECTION_READY: &str = "ready";
const SECTION_STS: &str = "sts";
const MINIMAL: &str = "minimal hyper";

/// Starts a release agent against `sts`, logging at the production level.
fn start_agent(bins: &Binaries, sts: &StsPeer) -> AgentProcess {
    let mut opts = AgentOptions::new(sts.endpoint());
    opts.binary = Some(bins.credvend.clone());
    opts.env = vec![("RUST_LOG".into(), "info".into())];
    AgentProcess::start(opts)
}

/// A row of a load run: its name, its unit and how it is read from the run.
pub type Metric<'a, T> = (&'a str, &'a str, &'a dyn Fn(&T) -> f64);

/// A load run with the server's CPU time and its resident memory halfway through.
struct Measured {
    run: Run,
    cpu_seconds: f64,
    rss_mid: f64,
}

fn measured(generator: &Generator, pid: u32, url: &str, conns: u32, req: &Request<'_>) -> Measured {
    let cpu_before = procfs::cpu_time(pid);
    let half = generator.duration / 2;
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(half);
        Memory::read(pid).rss
    });
    let run = generator.run(url, conns, req);
    let cpu_seconds = (procfs::cpu_time(pid) - cpu_before).as_secs_f64();
    Measured {
        run,
        cpu_seconds,
        rss_mid: sampler.join().unwrap_or(f64::NAN),
    }
}

pub async fn run(plan: &Plan, report: &mut Report) {
    let bins = &plan.binaries;
    let sts = StsPeer::start();
    // Servers start on their CPU, as in a pod with one CPU.
    procfs::pin_self(plan.server_cpu);
    let agent = start_agent(bins, &sts);
    agent.wait_ready(Duration::from_secs(30)).await;
    let token = agent.auth_token();
    let first = agent.fetch().await;
    assert_eq!(first.status, 200, "first fetch: {}", first.text());
    let dir = tempfile::tempdir().expect("temp dir");
    let body = dir.path().join("credentials.json");
    std::fs::write(&body, &first.body).expect("write the body");
    let token_file = agent.auth_token_file();
    let minimal = Baseline::start(
        &bins.baseline("baseline-http"),
        &[
            OsStr::new("--body"),
            body.as_os_str(),
            OsStr::new("--token"),
            token_file.as_os_str(),
        ],
    );
    procfs::unpin_self(crate::cores());
    let minimal_url = format!("http://127.0.0.1:{}/v1/credentials", minimal.port);
    let reply = http::request("GET", &minimal_url, &[("authorization", token.as_bytes())])
        .await
        .expect("the minimal server answers");
    assert_eq!(
        reply.body, first.body,
        "the minimal server serves the agent's bytes"
    );
    procfs::pin(agent.pid(), plan.server_cpu);
    procfs::pin(minimal.pid(), plan.server_cpu);

    let idle = (Memory::read(agent.pid()), Memory::read(minimal.pid()));

    // Load: each connection count, the two servers alternating within every repeat.
    let request = Request::Get {
        authorization: &token,
    };
    let servers = [
        (agent.pid(), agent.credentials_url()),
        (minimal.pid(), minimal_url.clone()),
    ];
    let mut loaded = (Memory::default(), Memory::default());
    for &conns in &plan.connections {
        let mut runs: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..plan.repeats {
            for (i, (pid, url)) in servers.iter().enumerate() {
                let m = measured(&plan.generator, *pid, url, conns, &request);
                assert_eq!(m.run.errors, 0, "errors under load on {url}");
                runs[i].push(m);
            }
        }
        let spread = |i: usize, f: &dyn Fn(&Measured) -> f64| {
            Spread::of(&runs[i].iter().map(f).collect::<Vec<_>>())
        };
        let command = plan.generator.describe(
            conns,
            "-s get.lua (Authorization: <token>)",
            "http://127.0.0.1:<port>/v1/credentials",
        );
        let rows: [Metric<Measured>; 4] = [
            ("req/s", "req/s", &|m| m.run.rps),
            ("p50", "ms", &|m| m.run.p50_ms),
            ("p99", "ms", &|m| m.run.p99_ms),
            ("req per server CPU-second", "req/cpu-s", &|m| {
                m.run.requests as f64 / m.cpu_seconds.max(0.01)
            }),
        ];
        for (what, unit, f) in rows {
            report.add(Row {
                section: SECTION_ENDPOINT,
                measure: format!("{what}, {conns} conn"),
                unit,
                credvend: spread(0, f),
                baseline_name: MINIMAL,
                baseline: spread(1, f),
                command: command.clone(),
            });
        }
        if Some(&conns) == plan.connections.last() {
            let mid = |i: usize| runs[i].iter().map(|m| m.rss_mid).fold(0.0, f64::max);
            loaded.0 = Memory {
                rss: mid(0),
                ..Memory::read(agent.pid())
            };
            loaded.1 = Memory {
                rss: mid(1),
                ..Memory::read(minimal.pid())
            };
        }
    }

    memory_rows(
        plan,
        report,
        idle,
        loaded,
        &bins.credvend,
        &bins.baseline("baseline-http"),
    );
    burst_rows(plan, report, agent.port, minimal.port).await;
    drop(minimal);
    drop(agent);
    ready_rows(plan, report, &sts, &body).await;
    sts_rows(plan, report, &sts).await;
}

fn memory_rows(
    plan: &Plan,
    report: &mut Report,
    idle: (Memory, Memory),
    loaded: (Memory, Memory),
    agent_bin: &Path,
    minimal_bin: &Path,
) {
    let last = plan.connections.last().copied().unwrap_or(1);
    let load = format!("under load ({last} conn)");
    let mut add = |measure: String, unit, a: f64, b: f64, command: &str| {
        report.add(Row {
            section: SECTION_MEMORY,
            measure,
            unit,
            credvend: Spread::one(a),
            baseline_name: MINIMAL,
            baseline: Spread::one(b),
            command: command.to_owned(),
        })
    };
    let status = "grep -E 'VmRSS|VmHWM|RssAnon|RssFile|Threads' /proc/<pid>/status";
    add(
        "VmRSS idle after first fetch".into(),
        "MiB",
        idle.0.rss,
        idle.1.rss,
        status,
    );
    add(
        "  of it private (RssAnon), idle".into(),
        "MiB",
        idle.0.anon,
        idle.1.anon,
        status,
    );
    add(
        "  of it file pages (RssFile), idle".into(),
        "MiB",
        idle.0.file,
        idle.1.file,
        status,
    );
    add("VmHWM idle".into(), "MiB", idle.0.hwm, idle.1.hwm, status);
    add(
        format!("VmRSS {load}"),
        "MiB",
        loaded.0.rss,
        loaded.1.rss,
        status,
    );
    add(
        "VmHWM after load".into(),
        "MiB",
        loaded.0.hwm,
        loaded.1.hwm,
        status,
    );
    add(
        "threads".into(),
        "",
        loaded.0.threads,
        loaded.1.threads,
        status,
    );
    let (a, b) = (binary_sizes(agent_bin), binary_sizes(minimal_bin));
    add(
        "binary as shipped".into(),
        "MiB",
        a.0,
        b.0,
        "ls -l the image's credvend (the Dockerfile's install -s)",
    );
    add(
        "binary stripped".into(),
        "MiB",
        a.1,
        b.1,
        "strip -o credvend.stripped <binary>",
    );
    let coverage = layout_coverage(agent_bin);
    report.add(Row {
        section: SECTION_MEMORY,
        measure: "agent layout: recorded functions in the build".into(),
        unit: "%",
        credvend: Spread::one(coverage),
        baseline_name: "layout/agent.order",
        baseline: Spread::one(100.0),
        command: "nm --defined-only target/release/credvend (re-record: scripts/agent-layout.sh)"
            .into(),
    });
}

/// A thousand new connections at once: with too small a listen backlog some wait for a SYN
/// retransmit (1 s); none should.
async fn burst_rows(plan: &Plan, report: &mut Report, agent_port: u16, minimal_port: u16) {
    let burst = |port: u16| async move {
        let tasks: Vec<_> = (0..plan.burst)
            .map(|_| {
                tokio::spawn(async move {
                    let start = Instant::now();
                    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
                    (start.elapsed(), stream)
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        let mut open = Vec::new();
        for t in tasks {
            let (took, stream) = t.await.expect("connect task");
            open.push(stream.expect("connect in the burst"));
            slowest = slowest.max(took);
        }
        drop(open);
        slowest.as_secs_f64() * 1e3
    };
    let (a, b) = (burst(agent_port).await, burst(minimal_port).await);
    report.add(Row {
        section: SECTION_ENDPOINT,
        measure: format!("slowest connect of {} at once", plan.burst),
        unit: "ms",
        credvend: Spread::one(a),
        baseline_name: MINIMAL,
        baseline: Spread::one(b),
        command: "tokio TcpStream::connect ×burst, concurrently".into(),
    });
}

/// Process start to the first 200, less the STS round trip; the minimal server's start to its
/// first 200 is the floor.
async fn ready_rows(plan: &Plan, report: &mut Report, sts: &StsPeer, body: &Path) {
    let bins = &plan.binaries;
    let mut to_ready = Vec::new();
    let mut sts_rtt = Vec::new();
    let mut in_agent = Vec::new();
    let mut floor = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, fake_jwt(Duration::from_secs(3600))).expect("token");
    let auth = dir.path().join("auth");
    std::fs::write(&auth, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG").expect("auth token");
    for _ in 0..plan.ready_repeats {
        let start = Instant::now();
        let agent = start_agent(bins, sts);
        let url = agent.credentials_url();
        loop {
            if let Ok(token) = std::fs::read_to_string(agent.auth_token_file())
                && let Ok(r) =
                    http::request("GET", &url, &[("authorization", token.as_bytes())]).await
                && r.status == 200
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent not ready: {}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        to_ready.push(start.elapsed().as_secs_f64() * 1e3);
        // The first exchange as the agent itself timed it (token read, STS call, cache write).
        let exchange = agent
            .metric(r#"credvend_credentials_refresh_duration_seconds_sum{binding="default"}"#)
            .await
            .unwrap_or(f64::NAN);
        in_agent.push(exchange * 1e3);
        drop(agent);

        // The same exchange made directly: one AssumeRoleWithWebIdentity on a new
        // connection, as the agent's first call is.
        sts_rtt.push(sts_round_trip(sts.endpoint(), &token_file).await);

        let start = Instant::now();
        let minimal = Baseline::start(
            &bins.baseline("baseline-http"),
            &[
                OsStr::new("--body"),
                body.as_os_str(),
                OsStr::new("--token"),
                auth.as_os_str(),
            ],
        );
        let url = format!("http://127.0.0.1:{}/v1/credentials", minimal.port);
        let token = std::fs::read(&auth).expect("auth token");
        while http::request("GET", &url, &[("authorization", &token)])
            .await
            .map_or(true, |r| r.status != 200)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        floor.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let less_sts: Vec<f64> = to_ready.iter().zip(&in_agent).map(|(r, s)| r - s).collect();
    let command = "spawn, then GET /v1/credentials every 1 ms until 200".to_owned();
    for (measure, values) in [
        ("start to first 200", &to_ready),
        ("start to first 200, less the first exchange", &less_sts),
        ("the first exchange (agent's refresh histogram)", &in_agent),
    ] {
        report.add(Row {
            section: SECTION_READY,
            measure: measure.into(),
            unit: "ms",
            credvend: Spread::of(values),
            baseline_name: "minimal hyper start",
            baseline: Spread::of(&floor),
            command: command.clone(),
        });
    }
    report.add(Row {
        section: SECTION_READY,
        measure: "STS round trip, measured directly (moto)".into(),
        unit: "ms",
        credvend: Spread::of(&sts_rtt),
        baseline_name: "minimal hyper start",
        baseline: Spread::of(&floor),
        command: "one AssumeRoleWithWebIdentity POST on a new connection".into(),
    });
}

/// One AssumeRoleWithWebIdentity POST on a new connection to `endpoint`, in milliseconds.
async fn sts_round_trip(endpoint: &str, token_file: &Path) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = endpoint.trim_start_matches("http://").to_owned();
    let token = std::fs::read_to_string(token_file).expect("token");
    let form = format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={SESSION_NAME}&DurationSeconds=3600&WebIdentityToken={}",
        ROLE_ARN.replace(':', "%3A").replace('/', "%2F"),
        token.trim()
    );
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect to STS");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send to STS");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read STS");
    let took = start.elapsed().as_secs_f64() * 1e3;
    assert!(
        answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"),
        "STS answered {}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    took
}

/// STS calls: a thousand requests while the agent is still cold (each retried until it gets
/// credentials, as an SDK does), and one pod's refreshes over a day.
async fn sts_rows(plan: &Plan, report: &mut Report, sts: &StsPeer) {
    let before = sts.web_identity_calls().await.len();
    sts.delay(1).await;
    let agent = start_agent(&plan.binaries, sts);
    agent.wait_up(Duration::from_secs(30)).await;
    let token = Arc::new(agent.auth_token());
    let url = Arc::new(agent.credentials_url());
    let go = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..plan.cold_requests)
        .map(|_| {
            let (token, url, go) = (token.clone(), url.clone(), go.clone());
            tokio::spawn(async move {
                while !go.load(Ordering::Relaxed) {
                    tokio::task::yield_now().await;
                }
                loop {
                    match http::request("GET", &url, &[("authorization", token.as_bytes())]).await {
                        Ok(r) if r.status == 200 => return,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    go.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    sts.delay(0).await;
    let calls = sts.web_identity_calls().await.len() - before;
    // Correctness, not timing: one exchange however many callers wait.
    assert_eq!(
        calls, 1,
        "{} cold requests made {calls} STS calls",
        plan.cold_requests
    );
    report.add(Row {
        section: SECTION_STS,
        measure: format!(
            "STS calls for {} concurrent cold requests",
            plan.cold_requests
        ),
        unit: "calls",
        credvend: Spread::one(calls as f64),
        baseline_name: "one exchange",
        baseline: Spread::one(1.0),
        command: "STS delayed 1 s; requests retried every 50 ms until 200".into(),
    });
    drop(agent);

    // A day of the agent's own schedule (src/agent/schedule.rs) for the default 1 h session,
    // with its jitter drawn at random.
    let lifetime = Duration::from_secs(3600);
    let day = Duration::from_secs(24 * 3600);
    let mut at = Duration::ZERO;
    let mut calls = 0u32;
    while at < day {
        calls += 1;
        let jitter = rand_unit() * 2.0 - 1.0;
        at += schedule::renewal_delay(lifetime, lifetime, jitter);
    }
    report.add(Row {
        section: SECTION_STS,
        measure: "STS calls per pod per day (1 h sessions)".into(),
        unit: "calls",
        credvend: Spread::one(f64::from(calls)),
        baseline_name: "one per session lifetime",
        baseline: Spread::one((day.as_secs() / lifetime.as_secs()) as f64),
        command: "schedule::renewal_delay over 24 h".into(),
    });
}

/// A sample in [0, 1) from the OS.
fn rand_unit() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("randomness");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
