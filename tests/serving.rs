//! Every port stays available to its legitimate clients while hostile ones do their worst:
//! thousands of idle and slow connections, slow heads and bodies, large bodies, and a
//! shutdown with admissions in flight. Against the real binaries: the agent with moto's STS,
//! the operator installed from the chart on the real control plane (its webhook called by
//! the real API server).
//!
//! Hostile clients connect from 127.0.0.2 (another pod's address), legitimate ones from
//! 127.0.0.1 (the kubelet, the API server, the pod's own app). Latency is bounded only by
//! what each client itself allows (the kubelet's probe timeout, the API server's 5 s webhook
//! timeout); the figures measured are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use support::agent::{AgentOptions, AgentProcess};
use support::http;
use support::k8s;
use support::operator::{self as op, Installed};
use support::sts::StsPeer;

const READY: Duration = Duration::from_secs(30);
const LEGIT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const HOSTILE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The kubelet's timeout for the agent's probes (`timeoutSeconds: 1` in the injected spec).
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failures before the kubelet marks the agent unready (`failureThreshold`).
const AGENT_PROBE_FAILURES: usize = 3;
/// How long botocore's container provider waits for the endpoint.
const BOTOCORE_TIMEOUT: Duration = Duration::from_secs(2);
/// The chart's `timeoutSeconds` of the operator's probes.
const OPERATOR_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The chart's `failureThreshold` of the operator's readiness probe.
const OPERATOR_PROBE_FAILURES: usize = 2;
/// The API server's webhook timeout in the chart.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// The injected agent's memory limit and the operator's.
/// How soon a hostile connection closed by the server is reopened.
const REOPEN_AFTER: Duration = Duration::from_secs(5);
const AGENT_MEMORY_LIMIT_MIB: f64 = 64.0;
const OPERATOR_MEMORY_LIMIT_MIB: f64 = 256.0;

// ---------------------------------------------------------------------------------------
// Hostile clients

/// How many connections this process may open besides its own needs: the soft
/// RLIMIT_NOFILE minus a margin, shared among `floods` floods.
fn flood_size(wanted: usize, floods: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    wanted.min(soft.saturating_sub(512) / floods)
}

async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(dst).await
}

/// What a hostile connection does once connected.
#[derive(Clone)]
struct Behaviour {
    /// Sent at once.
    burst: Vec<u8>,
    /// Then one byte a second, forever (empty: nothing, an idle connection).
    trickle: Vec<u8>,
    /// Over TLS (to the webhook) or plain.
    tls: Option<TlsConnector>,
}

impl Behaviour {
    fn idle() -> Behaviour {
        Behaviour {
            burst: Vec::new(),
            trickle: Vec::new(),
            tls: None,
        }
    }
    /// A request head that never ends.
    fn slow_head() -> Behaviour {
        Behaviour {
            burst: b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n".to_vec(),
            trickle: b"X-Slow: aaaaaaaaaaaaaaaa\r\n".to_vec(),
            tls: None,
        }
    }
    /// A complete head announcing a body that arrives at one byte a second.
    fn slow_body(path: &str) -> Behaviour {
        Behaviour {
            burst: format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            .into_bytes(),
            trickle: b"{\"a\":\"bbbbbbbbbbbbbbbbbbbb".to_vec(),
            tls: None,
        }
    }
    fn over(mut self, tls: &TlsConnector) -> Behaviour {
        self.tls = Some(tls.clone());
        self
    }
}

/// `n` hostile connections to `dst`, each reopened a few seconds after the server closes it
/// (an attacker keeping up the pressure; at once would measure only how fast this machine
/// churns connections); stopped on drop.
struct Flood {
    tasks: Vec<JoinHandle<()>>,
    opened: Arc<AtomicUsize>,
    closed_by_server: Arc<AtomicUsize>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn flood(n: usize, dst: SocketAddr, behaviour: Behaviour) -> Flood {
    let opened = Arc::new(AtomicUsize::new(0));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let tasks = (0..n)
        .map(|_| {
            let (behaviour, opened, closed) =
                (behaviour.clone(), opened.clone(), closed_by_server.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(tcp) = connect_from(HOSTILE, dst).await {
                        opened.fetch_add(1, Ordering::Relaxed);
                        match &behaviour.tls {
                            None => hold(tcp, &behaviour).await,
                            Some(tls) => {
                                let name = rustls::pki_types::ServerName::from(dst.ip());
                                if let Ok(stream) = tls.connect(name, tcp).await {
                                    hold(stream, &behaviour).await;
                                }
                            }
                        }
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(REOPEN_AFTER).await;
                }
            })
        })
        .collect();
    Flood {
        tasks,
        opened,
        closed_by_server,
    }
}

/// Does what `behaviour` says until the server closes the connection.
async fn hold<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, behaviour: &Behaviour) {
    if stream.write_all(&behaviour.burst).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    let mut next = behaviour.trickle.iter().cycle();
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(b) = next.next()
                    && stream.write_all(&[*b]).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Waits until every connection of `flood` was opened at least once.
async fn wait_opened(flood: &Flood, n: usize) {
    http::eventually("the hostile connections to open", READY, || async {
        (flood.opened.load(Ordering::Relaxed) >= n).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Measuring

/// VmRSS and VmHWM (peak) of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The latencies of a series of calls.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn add(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    /// The longest run of consecutive calls slower than `timeout`: the kubelet marks a
    /// container unready after `failureThreshold` consecutive probe failures.
    fn longest_run_over(&self, timeout: Duration) -> usize {
        let (mut run, mut longest) = (0, 0);
        for d in &self.0 {
            run = if *d >= timeout { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        longest
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.1?}, max {:.1?} of {}",
            self.median(),
            self.max(),
            self.0.len()
        )
    }
}

async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = f.await;
    (v, t.elapsed())
}

// ---------------------------------------------------------------------------------------
// The agent

async fn ready_agent(sts: &StsPeer) -> AgentProcess {
    let agent = AgentProcess::start(AgentOptions::new(sts.endpoint()));
    agent.wait_ready(READY).await;
    agent
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(LEGIT, port)
}

/// Probes readiness (a new connection each time, as the kubelet does) and fetches
/// credentials (as the app does) for `period`.
async fn probe_and_fetch(agent: &AgentProcess, period: Duration) -> (Latencies, Latencies) {
    let (mut probes, mut fetches) = (Latencies::default(), Latencies::default());
    let until = Instant::now() + period;
    while Instant::now() < until {
        let (ready, took) = timed(http::get(&agent.metrics_url("/healthz/ready"))).await;
        assert_eq!(ready.unwrap().status, 200);
        probes.add(took);
        let (creds, took) = timed(agent.fetch()).await;
        assert_eq!(creds.status, 200, "{}", creds.text());
        fetches.add(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (probes, fetches)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_answers_probes_and_apps_while_thousands_of_slow_connections_are_held() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let (rss_before, _) = memory_mib(agent.pid());
    // The same calls without a flood, on this machine as loaded as it is now.
    let (quiet_probes, quiet_fetches) = probe_and_fetch(&agent, Duration::from_secs(3)).await;

    // Half idle, half trickling a head, on each of the two ports: the metrics port is
    // reachable by every pod, the credentials port by the pod's own containers.
    let n = flood_size(800, 4);
    let floods = [
        flood(n, addr(agent.metrics_port), Behaviour::idle()),
        flood(n, addr(agent.metrics_port), Behaviour::slow_head()),
        flood(n, addr(agent.port), Behaviour::idle()),
        flood(n, addr(agent.port), Behaviour::slow_head()),
    ];
    for f in &floods {
        wait_opened(f, n).await;
    }

    // The kubelet (a new connection per probe) and the app, for longer than the head
    // deadline, so the flood's connections are cut and reopened meanwhile.
    let (probes, fetches) = probe_and_fetch(&agent, Duration::from_secs(8)).await;
    let (rss, hwm) = memory_mib(agent.pid());
    let reopened: usize = floods
        .iter()
        .map(|f| f.closed_by_server.load(Ordering::Relaxed))
        .sum();
    println!(
        "agent, quiet: probes {quiet_probes}, credentials fetches {quiet_fetches}; \
         under {} hostile connections ({reopened} closed by the agent and reopened): \
         probes {probes}, fetches {fetches}; \
         RSS {rss_before:.1} MiB before, {rss:.1} MiB under the flood, peak {hwm:.1} MiB",
        4 * n,
    );
    assert!(
        probes.longest_run_over(AGENT_PROBE_TIMEOUT) < AGENT_PROBE_FAILURES,
        "{AGENT_PROBE_FAILURES} probes in a row beyond the kubelet's timeout: the pod would go unready ({probes})"
    );
    assert!(
        fetches.max() < BOTOCORE_TIMEOUT,
        "a credentials fetch took longer than botocore waits ({fetches})"
    );
    assert!(
        hwm < AGENT_MEMORY_LIMIT_MIB * 0.75,
        "peak RSS {hwm:.1} MiB is near the sidecar's {AGENT_MEMORY_LIMIT_MIB} MiB limit"
    );
    assert!(
        reopened > 0,
        "the flood was never cut: the cap is not in force"
    );
}

/// A raw HTTP/1.1 exchange on `stream`: sends a GET of `path` and reads one response with a
/// Content-Length body; `None` if the server closed the connection instead.
async fn get_on(stream: &mut TcpStream, path: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    read_reply(stream).await
}

/// Reads one response with a Content-Length body; `None` if the connection closed first.
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
    }
}

/// Whether the server closed `stream` (reads EOF or a reset within `within`).
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_keeps_a_keep_alive_connection_idle_for_longer_than_5s() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let token = agent.auth_token();
    let stream = TcpStream::connect(addr(agent.port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        ::http::Request::get("/v1/credentials")
            .header("host", "127.0.0.1")
            .header("authorization", token.as_str())
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    // Node's agent and the JDK keep idle connections 5 s: the server must keep them longer,
    // or a client reusing one races the close. Being idle is what this test is about.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !sender.is_closed(),
        "the agent closed an idle keep-alive connection at 7 s"
    );
    let resp = sender.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), 200, "the pooled connection is still served");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_cuts_slow_request_heads_at_5s_however_they_trickle() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let mut stream = connect_from(HOSTILE, addr(agent.metrics_port))
        .await
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A header byte every 200 ms: never idle, never done.
    let mut buf = [0u8; 64];
    let cut = loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                assert!(matches!(read, Ok(0) | Err(_)), "the agent answered an unfinished head");
                break started.elapsed();
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"a").await.is_err() {
                    break started.elapsed();
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never cut");
    };
    println!("slow head cut after {cut:?}");
    assert!(
        cut >= Duration::from_millis(4900) && cut < Duration::from_secs(10),
        "cut after {cut:?}, not at the 5 s head deadline"
    );
    assert!(
        agent
            .metric(r#"credvend_connections_closed_total{listener="health",reason="head_timeout"}"#)
            .await
            .is_some_and(|n| n >= 1.0),
        "the cut is not counted"
    );
    // The same port still answers a head sent in one go.
    assert_eq!(
        http::get(&agent.metrics_url("/healthz/live"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_at_its_connection_cap_evicts_the_oldest_connections_of_the_busiest_peer() {
    const CAP: usize = 64; // the agent's health port
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let port = addr(agent.metrics_port);
    // Fill the port with keep-alive connections, each proven accepted by an answer, in order.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = connect_from(HOSTILE, port).await.unwrap();
        assert!(get_on(&mut s, "/healthz/live").await.is_some());
        held.push(s);
    }
    // Ten newcomers from another address: each is served, each pushes out the oldest.
    const NEW: usize = 10;
    let mut newcomers = Vec::new();
    for _ in 0..NEW {
        let mut s = connect_from(LEGIT, port).await.unwrap();
        assert!(
            get_on(&mut s, "/healthz/ready").await.is_some(),
            "a new connection at the cap was not served"
        );
        newcomers.push(s);
    }
    for (i, s) in held.iter_mut().enumerate().take(NEW) {
        assert!(
            closed_by_server(s, Duration::from_secs(5)).await,
            "connection {i}, among the oldest, was not evicted"
        );
    }
    for (i, s) in held.iter_mut().enumerate().skip(NEW) {
        assert!(
            get_on(s, "/healthz/live").await.is_some(),
            "connection {i} was evicted although younger ones of its peer were not"
        );
    }
    for s in &mut newcomers {
        assert!(get_on(s, "/healthz/live").await.is_some());
    }
    // Counted before the evicted connection closes; the metrics request itself, one more
    // connection, may have evicted another.
    let evicted = agent
        .metric(r#"credvend_connections_closed_total{listener="health",reason="evicted"}"#)
        .await;
    assert!(evicted.is_some_and(|n| n >= NEW as f64), "{evicted:?}");
}

// ---------------------------------------------------------------------------------------
// The operator

/// A TLS client trusting the CA the operator put into its webhook configuration.
async fn webhook_tls(client: &Client, installed: &Installed) -> TlsConnector {
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&installed.webhook_config)
        .await
        .unwrap();
    let bundle = mwc.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap()
        .0;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&bundle) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

/// An AdmissionReview of a pod without the annotation (the webhook answers "allowed, no
/// patch"), padded with an annotation of `pad` bytes.
fn review(uid: &str, pad: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "dev"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web-0", "namespace": "team-a",
                             "annotations": {"example.com/pad": "p".repeat(pad)}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}
            },
            "dryRun": false
        }
    }))
    .unwrap()
}

/// POSTs `body` to the webhook over a new TLS connection; the status and the response.
async fn post_review(
    tls: &TlsConnector,
    port: u16,
    body: impl Into<Bytes>,
) -> anyhow::Result<(u16, ::http::HeaderMap, Vec<u8>)> {
    let tcp = connect_from(LEGIT, addr(port)).await?;
    let stream = tls.connect(ServerNameLoopback::get(), tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = ::http::Request::post("/mutate")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    Ok((parts.status.as_u16(), parts.headers, body))
}

struct ServerNameLoopback;
impl ServerNameLoopback {
    fn get() -> rustls::pki_types::ServerName<'static> {
        rustls::pki_types::ServerName::from(LEGIT)
    }
}

fn assert_allowed(uid: &str, status: u16, body: &[u8]) {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["response"]["uid"], uid);
    assert_eq!(v["response"]["allowed"], true);
}

/// Removes the operator's webhook configuration: the control plane is shared by the tests of
/// this file, and a configuration left behind by a stopped operator (`failurePolicy: Fail`)
/// would refuse every later test's pods.
async fn uninstall(client: &Client, installed: &Installed) {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&installed.webhook_config, &Default::default())
        .await
        .unwrap();
}

/// A namespace with a binding for service account `app`, where annotated pods are injected
/// by `installed` only.
async fn team(client: &Client, sts: &StsPeer, installed: &Installed) -> Api<Pod> {
    let ns = k8s::unique_name("team");
    k8s::create_namespace(client, &ns).await.unwrap();
    installed.admit_namespace(client, &ns).await;
    k8s::create_service_account(client, &ns, "app")
        .await
        .unwrap();
    Api::<credvend::crd::AWSRoleBinding>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &op::binding_yaml("s3-reader", &ns, "app", sts.endpoint()),
        )
        .await
        .unwrap();
    Api::namespaced(client.clone(), &ns)
}

/// Creates an annotated pod through the API server (so through the webhook, with
/// `failurePolicy: Fail` and the chart's 5 s timeout) and checks it was injected.
async fn create_through_api_server(pods: &Api<Pod>, name: &str) -> Duration {
    let annotations =
        serde_json::json!({"credvend.io/inject": "true", "credvend.io/port": "19911"});
    let pod = op::pod(name, "app", annotations, serde_json::json!({}));
    let (created, took) = timed(pods.create(&PostParams::default(), &pod)).await;
    let created = created.unwrap_or_else(|e| panic!("creating {name} failed: {e}"));
    assert_eq!(
        created
            .annotations()
            .get("credvend.io/status")
            .map(String::as_str),
        Some("injected")
    );
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_answers_admissions_while_thousands_of_slow_connections_are_held() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let installed = op::install_with(
        cp,
        &client,
        dir.path(),
        &op::InstallOptions {
            sts_endpoints: &[sts.endpoint()],
            isolated: true,
            ..op::InstallOptions::default()
        },
    )
    .await;
    let pods = team(&client, &sts, &installed).await;
    op::create_injected(
        &pods,
        &op::pod(
            "warm-up",
            "app",
            serde_json::json!({"credvend.io/inject": "true", "credvend.io/port": "19911"}),
            serde_json::json!({}),
        ),
    )
    .await;
    let tls = webhook_tls(&client, &installed).await;
    let pid = installed.operator.pid();
    let (rss_before, _) = memory_mib(pid);

    let webhook = addr(installed.webhook_port);
    let n = flood_size(900, 5);
    let floods = [
        // Connections that never start a handshake, or trickle one.
        flood(n, webhook, Behaviour::idle()),
        flood(n, webhook, Behaviour::slow_head()),
        // After a handshake: heads and bodies at one byte a second.
        flood(n / 3, webhook, Behaviour::slow_head().over(&tls)),
        flood(n / 3, webhook, Behaviour::slow_body("/mutate").over(&tls)),
        // And the health port, as any pod can.
        flood(n, addr(installed.metrics_port), Behaviour::slow_head()),
    ];
    for f in &floods[..2] {
        wait_opened(f, n).await;
    }

    let (mut reviews, mut probes, mut creations) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let uid = format!("review-{i}");
        let (answer, took) =
            timed(post_review(&tls, installed.webhook_port, review(&uid, 0))).await;
        let (status, _, body) = match answer {
            Ok(answer) => answer,
            Err(err) => panic!(
                "review {i} failed after {took:?}: {err:#}; the operator's counts:\n{}",
                closed_counts(installed.metrics_port).await
            ),
        };
        assert_allowed(&uid, status, &body);
        reviews.add(took);
        let url = format!("http://127.0.0.1:{}/healthz/ready", installed.metrics_port);
        let (ready, took) = timed(http::get(&url)).await;
        assert_eq!(ready.unwrap().status, 200);
        probes.add(took);
        creations.add(create_through_api_server(&pods, &format!("web-{i}")).await);
    }
    let (rss, hwm) = memory_mib(pid);
    let opened: usize = floods
        .iter()
        .map(|f| f.opened.load(Ordering::Relaxed))
        .sum();
    println!(
        "operator under {} hostile connections ({opened} opened in all): reviews {reviews}, \
         probes {probes}, pod creations through the API server {creations}; \
         RSS {rss_before:.1} MiB before, {rss:.1} MiB under the flood, peak {hwm:.1} MiB",
        3 * n + 2 * (n / 3),
    );
    assert!(
        reviews.max() < WEBHOOK_TIMEOUT,
        "a review took longer than the API server waits ({reviews})"
    );
    assert!(
        probes.longest_run_over(OPERATOR_PROBE_TIMEOUT) < OPERATOR_PROBE_FAILURES,
        "the replica would have gone unready ({probes})"
    );
    assert!(
        hwm < OPERATOR_MEMORY_LIMIT_MIB / 2.0,
        "peak RSS {hwm:.1} MiB"
    );
    uninstall(&client, &installed).await;
}

/// The server's `credvend_connections_closed_total` lines, to explain a failure.
async fn closed_counts(metrics_port: u16) -> String {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    match http::get(&url).await {
        Ok(page) => page
            .text()
            .lines()
            .filter(|l| l.starts_with("credvend_connections_closed_total"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(err) => format!("(metrics unavailable: {err})"),
    }
}

/// Sends a POST head announcing `body` and the first `sent` bytes of it, over TLS; the
/// stream is left open for the caller.
async fn partial_post(
    tls: &TlsConnector,
    port: u16,
    body: &[u8],
    sent: usize,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(HOSTILE, addr(port)).await?;
    let mut stream = tls.connect(ServerNameLoopback::get(), tcp).await?;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body[..sent]).await?;
    stream.flush().await?;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_memory_stays_bounded_under_concurrent_large_and_slow_bodies() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Isolated, and no namespace admitted: its reviews come from this test alone, never from
    // the API server.
    let installed = op::install_with(
        cp,
        &client,
        dir.path(),
        &op::InstallOptions {
            isolated: true,
            ..op::InstallOptions::default()
        },
    )
    .await;
    let tls = webhook_tls(&client, &installed).await;
    let pid = installed.operator.pid();
    let port = installed.webhook_port;
    let (rss_before, _) = memory_mib(pid);

    // 60 concurrent 8 MiB reviews: over the per-request limit, refused from the head.
    let big = Bytes::from(review("big", 8 * 1024 * 1024));
    let answers = futures::future::join_all((0..60).map(|_| {
        let (tls, big) = (tls.clone(), big.clone());
        async move { post_review(&tls, port, big).await }
    }))
    .await;
    // The server may close before the whole body is sent (an error here); both are refusals.
    for (status, _, _) in answers.into_iter().flatten() {
        assert_eq!(status, 413);
    }
    let (_, hwm_8mib) = memory_mib(pid);

    // 60 concurrent reviews just under the limit, at full speed: served as the body budget
    // allows, the rest told to retry.
    let large = Bytes::from(review("large", 4 * 1024 * 1024 - 4096));
    let answers = futures::future::join_all((0..60).map(|_| {
        let (tls, large) = (tls.clone(), large.clone());
        async move { post_review(&tls, port, large).await }
    }))
    .await;
    // 200: served; 0: the connection was closed under the sender (its body dropped for
    // room); 503: no room within the body deadline; 408: this machine did not get the whole
    // body through TLS within the deadline (60 senders at once).
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for answer in answers {
        let status = answer.map_or(0, |(status, _, _)| status);
        *statuses.entry(status).or_default() += 1;
    }
    assert!(
        statuses.keys().all(|s| [0, 200, 408, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains_key(&200), "none served: {statuses:?}");
    let (_, hwm_4mib) = memory_mib(pid);

    // 60 large bodies stalled one KiB short (holding the budget), 500 trickling at one
    // byte a second: a legitimate review is still answered within the API server's timeout.
    let stalled: Vec<JoinHandle<()>> = (0..60)
        .map(|_| {
            let (tls, large) = (tls.clone(), large.clone());
            tokio::spawn(async move {
                // The server stops reading when the budget is spent, and cuts stalled bodies.
                if let Ok(stream) = partial_post(&tls, port, &large, large.len() - 1024).await {
                    let mut stream = stream;
                    let _ = stream.read(&mut [0u8; 1024]).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // let them arrive: they are the attack
    let n = flood_size(500, 1);
    let trickle = flood(n, addr(port), Behaviour::slow_body("/mutate").over(&tls));
    wait_opened(&trickle, n).await;
    let mut reviews = Latencies::default();
    for i in 0..10 {
        let uid = format!("legit-{i}");
        let (answer, took) = timed(post_review(&tls, port, review(&uid, 0))).await;
        let (status, _, body) = answer.unwrap();
        assert_allowed(&uid, status, &body);
        reviews.add(took);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss, hwm) = memory_mib(pid);
    println!(
        "operator RSS {rss_before:.1} MiB before; peak {hwm_8mib:.1} MiB after 60 × 8 MiB, \
         {hwm_4mib:.1} MiB after 60 × 4 MiB ({statuses:?}), {hwm:.1} MiB with 60 stalled large \
         bodies and {n} trickling ones (RSS now {rss:.1} MiB); legitimate reviews {reviews}"
    );
    for t in stalled {
        t.abort();
    }
    assert!(
        reviews.max() < WEBHOOK_TIMEOUT,
        "a review took longer than the API server waits ({reviews})"
    );
    assert!(
        hwm < OPERATOR_MEMORY_LIMIT_MIB * 0.75,
        "peak RSS {hwm:.1} MiB is near the operator's {OPERATOR_MEMORY_LIMIT_MIB} MiB limit"
    );
    uninstall(&client, &installed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_shutdown_stops_being_ready_keeps_answering_then_drains_in_flight_admissions() {
    let cp = k8s::shared().await.unwrap();
    let client = cp.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sts = StsPeer::start();
    let mut installed = op::install_with(
        cp,
        &client,
        dir.path(),
        &op::InstallOptions {
            sts_endpoints: &[sts.endpoint()],
            values: &[("operator.shutdownDelaySeconds", "2")],
            isolated: true,
            ..op::InstallOptions::default()
        },
    )
    .await;
    let pods = team(&client, &sts, &installed).await;
    op::create_injected(
        &pods,
        &op::pod(
            "warm-up",
            "app",
            serde_json::json!({"credvend.io/inject": "true", "credvend.io/port": "19911"}),
            serde_json::json!({}),
        ),
    )
    .await;
    let tls = webhook_tls(&client, &installed).await;
    let port = installed.webhook_port;
    let ready_url = format!("http://127.0.0.1:{}/healthz/ready", installed.metrics_port);

    // Idle and slow connections held through the shutdown must not hold it up.
    let held = [
        flood(50, addr(port), Behaviour::idle()),
        flood(50, addr(port), Behaviour::slow_head().over(&tls)),
        flood(50, addr(port), Behaviour::slow_body("/mutate").over(&tls)),
    ];
    for f in &held {
        wait_opened(f, 50).await;
    }
    // An admission in flight: its head and half its body are in when SIGTERM arrives.
    let body = review("in-flight", 64 * 1024);
    let mut in_flight = partial_post(&tls, port, &body, body.len() / 2)
        .await
        .unwrap();
    installed.operator.sigterm();

    // Leaving: not ready, yet still answering (the endpoints take a moment to move), and
    // each answer retires its connection.
    http::eventually("readiness to fail after SIGTERM", READY, || async {
        let r = http::get(&ready_url).await.ok()?;
        (r.status == 503).then_some(())
    })
    .await;
    let (status, headers, answer) = post_review(&tls, port, review("during-delay", 0))
        .await
        .unwrap();
    assert_allowed("during-delay", status, &answer);
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "answers while leaving close their connection"
    );
    create_through_api_server(&pods, "during-delay").await;

    // Then the listener closes ...
    http::eventually("the webhook to stop accepting", READY, || async {
        TcpStream::connect(addr(port)).await.is_err().then_some(())
    })
    .await;
    // ... and the admission in flight still gets its answer.
    in_flight.write_all(&body[body.len() / 2..]).await.unwrap();
    in_flight.flush().await.unwrap();
    let response = read_reply(&mut in_flight)
        .await
        .expect("an answer to the admission in flight");
    let (head, json) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_allowed("in-flight", 200, json.as_bytes());

    // Within the chart's grace period (the 2 s delay here, plus 15 s).
    let status = installed.operator.wait_exit(Duration::from_secs(17));
    drop(held);
    uninstall(&client, &installed).await;
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        installed.operator.log()
    );
}
