//! A real Kubernetes control plane for integration tests: etcd and kube-apiserver, started as
//! processes on free loopback ports in a temporary directory.
//!
//! There is no kubelet, scheduler or controller-manager: objects are admitted (admission
//! plugins and webhooks run) and stored, but pods never run. What the missing controllers would
//! have done and a test relies on, the helpers here do explicitly — most visibly
//! [`create_namespace`], which also creates the namespace's `default` service account, because
//! the ServiceAccount admission plugin stays enabled (as in a real cluster, it sets
//! `serviceAccountName` and mounts the `kube-api-access` volume before our webhook sees the pod)
//! and it rejects pods whose service account does not exist.
//!
//! The binaries come from `CREDVEND_KUBE_APISERVER` and `CREDVEND_ETCD` (set by `make test`);
//! when both are unset, `scripts/k8s-bins.sh` builds or finds them. That is the newest supported
//! release; [`ControlPlane::start_release`] with [`Release::Oldest`] runs the oldest (README
//! "Compatibility"), from `CREDVEND_KUBE_APISERVER_OLDEST`/`CREDVEND_ETCD_OLDEST` or
//! `scripts/k8s-bins.sh tests/k8s-oldest`. Startup takes a few seconds,
//! so tests normally share one control plane per test binary through [`shared`] and keep out of
//! each other's way with [`unique_name`]d namespaces; [`ControlPlane::start`] gives a private one.
//! Processes and files go away on drop (also when a test panics) and, for the shared instance
//! that is never dropped, when the test process exits, through a small reaper process.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::sync::OnceCell;

/// How long etcd and kube-apiserver get to become ready. Generous because the two cores of a
/// CI machine are often busy compiling other test binaries at the same time.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between `/readyz` polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Range for service ClusterIPs. Nothing routes to it, but the API server needs one to allocate
/// from; its first address is the `kubernetes` service's, which the serving certificate names.
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_IP: &str = "10.0.0.1";

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();
static BINARIES: OnceCell<Binaries> = OnceCell::const_new();
static OLDEST_BINARIES: OnceCell<Binaries> = OnceCell::const_new();

/// Which end of the supported Kubernetes range a control plane runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Release {
    /// tests/k8s: what every test runs.
    #[default]
    Newest,
    /// tests/k8s-oldest: the oldest release the README claims, for the admission end-to-end.
    Oldest,
}

impl Release {
    /// Suffix of the environment variables naming its binaries.
    fn env_suffix(self) -> &'static str {
        match self {
            Release::Newest => "",
            Release::Oldest => "_OLDEST",
        }
    }

    /// The argument `scripts/k8s-bins.sh` builds it with.
    fn module(self) -> Option<&'static str> {
        match self {
            Release::Newest => None,
            Release::Oldest => Some("tests/k8s-oldest"),
        }
    }
}

/// The control plane shared by all tests of the current test binary, started on first use.
///
/// It lives until the process exits; its processes and directory are then removed by the reaper.
/// A failed start is not cached, so every test that asks reports the failure itself.
pub async fn shared() -> anyhow::Result<&'static ControlPlane> {
    SHARED.get_or_try_init(ControlPlane::start).await
}

/// A name no other test in this process (or a concurrent run) uses, for namespaces and other
/// cluster-scoped objects on a shared control plane. Lower-case and DNS-label safe.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A running etcd + kube-apiserver pair and what a test needs to talk to it.
pub struct ControlPlane {
    processes: Processes,
    config: Config,
    kubeconfig: PathBuf,
    url: String,
    issuer: String,
    ca_pem: String,
    pki: Pki,
    startup: Duration,
}

/// How a control plane differs from the admission-only default. [`ControlPlane::start`] uses
/// `Options::default()`: loopback only, RBAC only, no kubelet to talk to.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The address kube-apiserver listens on and advertises instead of 127.0.0.1 (which must
    /// be a local address, e.g. a test bridge's), so that pods can reach it; the serving
    /// certificate names it.
    pub address: Option<std::net::Ipv4Addr>,
    /// Makes the API server ready for a real node: the Node authorizer and NodeRestriction
    /// (a kubelet with a `system:node:<name>` identity), endpoint IPs for webhooks and
    /// aggregated APIs (there is no kube-proxy), the kubelet's InternalIP for logs and exec,
    /// and a client certificate the kubelets trust.
    pub for_node: bool,
    /// A command the reaper runs (with `sh -c`) before it kills etcd and kube-apiserver, while
    /// the API server still answers: how a node deletes its pods even after a `kill -9` of
    /// the test.
    pub before_reap: Option<String>,
    /// Which end of the supported range runs.
    pub release: Release,
}

impl ControlPlane {
    /// Starts a private control plane and waits until kube-apiserver reports ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// [`ControlPlane::start`] with the binaries of `release`.
    pub async fn start_release(release: Release) -> anyhow::Result<Self> {
        Self::start_with(Options {
            release,
            ..Options::default()
        })
        .await
    }

    /// Starts a private control plane shaped by `options`.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let bins = binaries(options.release).await?;
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("credvend-k8s-")
            .tempdir()
            .context("creating the control plane's temporary directory")?;
        let root = dir.path().to_owned();
        let mut processes = Processes::new(dir, options.before_reap.as_deref())?;

        let [etcd_client, etcd_peer, apiserver_port] = super::ports::free_ports();
        let address = options
            .address
            .map_or_else(|| "127.0.0.1".to_owned(), |a| a.to_string());
        let url = format!("https://{address}:{apiserver_port}");
        // The issuer is the API server's own URL, so its OIDC discovery document
        // ({issuer}/.well-known/openid-configuration) is really served where `iss` points.
        let issuer = url.clone();
        let pki = Pki::generate(std::slice::from_ref(&address))?;
        let files = pki.write(&root)?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        processes.spawn(
            "etcd",
            Command::new(&bins.etcd).args([
                "--name=credvend".to_owned(),
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=credvend={peer_url}"),
                // Throwaway data: durability buys nothing and fsync is the slowest part of etcd.
                "--unsafe-no-fsync=true".to_owned(),
                "--log-level=warn".to_owned(),
            ]),
        )?;
        let mut node_args = Vec::new();
        if options.for_node {
            node_args.extend([
                "--authorization-mode=Node,RBAC".to_owned(),
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                // Without it, logs and exec look the node's name up in DNS.
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                // No kube-proxy programs ClusterIPs: dial the Service's endpoint IPs instead.
                "--enable-aggregator-routing=true".to_owned(),
                format!(
                    "--kubelet-certificate-authority={}",
                    files.ca_cert.display()
                ),
                format!(
                    "--kubelet-client-certificate={}",
                    files.kubelet_client_cert.display()
                ),
                format!(
                    "--kubelet-client-key={}",
                    files.kubelet_client_key.display()
                ),
            ]);
        } else {
            node_args.push("--authorization-mode=RBAC".to_owned());
        }
        processes.spawn(
            "kube-apiserver",
            Command::new(&bins.apiserver).args(node_args).args([
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                // The reconciler publishes the advertise address as the `kubernetes` service's
                // endpoint for in-cluster clients and refuses loopback; nothing runs in-cluster.
                "--endpoint-reconciler-type=none".to_owned(),
                format!("--secure-port={apiserver_port}"),
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", root.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", files.serving_cert.display()),
                format!("--tls-private-key-file={}", files.serving_key.display()),
                format!("--client-ca-file={}", files.ca_cert.display()),
                format!("--service-account-issuer={issuer}"),
                format!("--api-audiences={issuer}"),
                format!("--service-account-key-file={}", files.sa_public.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    files.sa_private.display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--profiling=false".to_owned(),
            ]),
        )?;

        let kubeconfig = root.join("kubeconfig");
        fs::write(&kubeconfig, pki.kubeconfig(&url))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await
        .context("loading the generated kubeconfig")?;

        let mut cp = ControlPlane {
            processes,
            config,
            kubeconfig,
            url,
            issuer,
            ca_pem: pki.ca_pem.clone(),
            pki,
            startup: Duration::ZERO,
        };
        cp.startup = cp.wait_ready(started).await?;
        eprintln!(
            "control plane ready at {} in {:.1}s",
            cp.url,
            cp.startup.as_secs_f64()
        );
        Ok(cp)
    }

    /// Polls `/readyz` until it answers `ok`, failing early (with the logs) if a process exits.
    async fn wait_ready(&mut self, started: Instant) -> anyhow::Result<Duration> {
        let client = self.client()?;
        let deadline = started + STARTUP_TIMEOUT;
        loop {
            self.processes.ensure_running()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let last =
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(started.elapsed()),
                    Ok(Ok(body)) => body,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "/readyz did not answer within 5s".to_owned(),
                };
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {STARTUP_TIMEOUT:?}: {last}\n{}",
                    self.processes.log_tails()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A client authenticated as a cluster admin (`O=system:masters`).
    ///
    /// Made afresh per call because a `kube::Client` is tied to the tokio runtime it was
    /// created on, and every `#[tokio::test]` has its own.
    pub fn client(&self) -> anyhow::Result<Client> {
        install_crypto_provider();
        Client::try_from(self.config.clone()).context("building a kube client")
    }

    /// A kubeconfig file with the same admin identity, for tools and child processes.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's base URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The service-account token issuer (`iss` of every token this API server signs).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// PEM of the CA that signed the API server's serving certificate and the admin client
    /// certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate and key (PEM) signed by this control plane's CA: a client certificate
    /// for `common_name` in the groups `organizations` (how the API server names the user),
    /// or, with `server_names`, a serving certificate for those DNS names and IPs.
    pub fn issue_certificate(
        &self,
        common_name: &str,
        organizations: &[&str],
        server_names: &[String],
    ) -> anyhow::Result<(String, String)> {
        self.pki.issue(common_name, organizations, server_names)
    }

    /// A kubeconfig file for a client certificate from [`issue_certificate`], written to
    /// `path`, so that a component (kubelet, controller-manager) runs with its own identity.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        fs::write(path, kubeconfig(&self.url, &self.ca_pem, cert_pem, key_pem))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// How long the start took, from spawning etcd to a ready kube-apiserver.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The temporary directory holding certificates, the kubeconfig, logs and etcd's data.
    pub fn dir(&self) -> &Path {
        self.processes.root()
    }

    /// Process ids of etcd and kube-apiserver, to check that they are gone after shutdown.
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .children
            .iter()
            .map(|p| p.child.id())
            .collect()
    }

    /// Has the reaper kill `pid` too when the test process exits (for processes a test binary
    /// shares between its tests, such as an operator next to the shared control plane). The
    /// reaper's `before_reap` command runs first.
    pub fn reap_at_exit(&self, pid: u32) -> anyhow::Result<()> {
        self.processes.reap_at_exit(pid)
    }

    /// Stops both processes and removes the directory, reporting what could not be cleaned up.
    /// Dropping does the same but can only print such errors.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.processes.stop()
    }
}

/// Creates a namespace and, standing in for the controller-manager's service-account
/// controller, its `default` service account, so pods without `serviceAccountName` pass the
/// ServiceAccount admission plugin (one that already exists, made by a running
/// controller-manager, is fine).
pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<Namespace> {
    let namespace = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    // Where a controller-manager runs, its service-account controller may have been first.
    match Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            },
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => {
            return Err(error).with_context(|| format!("creating service account {name}/default"));
        }
    }
    Ok(namespace)
}

/// Creates a service account.
pub async fn create_service_account(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<ServiceAccount> {
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            },
        )
        .await
        .with_context(|| format!("creating service account {namespace}/{name}"))
}

/// Requests a token for a service account through the TokenRequest API — the same call the
/// kubelet makes for a projected token volume — and returns the signed JWT.
pub async fn request_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
    expiry: Duration,
) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(i64::try_from(expiry.as_secs())?),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {namespace}/{service_account}"))?;
    let token = response
        .status
        .map(|status| status.token)
        .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{service_account} has no status"))?;
    ensure!(!token.is_empty(), "TokenRequest returned an empty token");
    Ok(token)
}

/// Whether a process with this id still exists (`kill -0`, which works without /proc).
pub fn process_exists(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// kube 5 builds its rustls configuration from the process-wide default provider; the crate
/// standardises on aws-lc-rs. Another test may have installed it already, which is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

struct Binaries {
    apiserver: PathBuf,
    etcd: PathBuf,
}

/// Finds the binaries of `release` once per test process: from the environment (what `make
/// test` passes), or by running `scripts/k8s-bins.sh`, which builds them the first time.
async fn binaries(release: Release) -> anyhow::Result<&'static Binaries> {
    let cell = match release {
        Release::Newest => &BINARIES,
        Release::Oldest => &OLDEST_BINARIES,
    };
    let apiserver_var = format!("CREDVEND_KUBE_APISERVER{}", release.env_suffix());
    let etcd_var = format!("CREDVEND_ETCD{}", release.env_suffix());
    cell.get_or_try_init(|| async {
        let (apiserver, etcd) = match (
            std::env::var_os(&apiserver_var),
            std::env::var_os(&etcd_var),
        ) {
            (Some(apiserver), Some(etcd)) => (PathBuf::from(apiserver), PathBuf::from(etcd)),
            _ => build_binaries(release, &apiserver_var, &etcd_var).await?,
        };
        for (path, var) in [(&apiserver, &apiserver_var), (&etcd, &etcd_var)] {
            ensure!(
                path.is_file(),
                "{} (from {var}) does not exist; build it with `make k8s-bins k8s-oldest`",
                path.display()
            );
        }
        Ok(Binaries { apiserver, etcd })
    })
    .await
}

async fn build_binaries(
    release: Release,
    apiserver_var: &str,
    etcd_var: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("scripts/k8s-bins.sh");
    let mut command = tokio::process::Command::new(&script);
    if let Some(module) = release.module() {
        command.arg(repo.join(module));
    }
    // stderr is inherited so the (slow) first build shows its progress.
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} ({apiserver_var}/{etcd_var} are unset); \
                 build the binaries with `make k8s-bins k8s-oldest`",
                script.display()
            )
        })?;
    ensure!(
        output.status.success(),
        "{} failed ({}); build the binaries with `make k8s-bins k8s-oldest`",
        script.display(),
        output.status
    );
    let stdout = String::from_utf8(output.stdout)?;
    let mut lines = stdout.lines().map(PathBuf::from);
    match (lines.next(), lines.next()) {
        (Some(apiserver), Some(etcd)) => Ok((apiserver, etcd)),
        _ => bail!(
            "{} printed {stdout:?}, not two paths; try `make k8s-bins k8s-oldest`",
            script.display()
        ),
    }
}

/// The certificates and keys of one control plane, all made in memory for this run. The CA
/// stays available, so node components get identities of their own from it.
struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    sa_private_pem: String,
    sa_public_pem: String,
}

struct PkiFiles {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
}

impl Pki {
    /// `addresses` are the API server's own, named in its serving certificate next to the
    /// in-cluster names.
    fn generate(addresses: &[String]) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "credvend-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        // Every name a client inside or outside the (imaginary) cluster could use.
        let mut names: Vec<String> = [
            "127.0.0.1",
            "localhost",
            SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(str::to_owned)
        .to_vec();
        for address in addresses {
            if !names.contains(address) {
                names.push(address.clone());
            }
        }
        let (serving_cert_pem, serving_key_pem) = issue(&ca, "kube-apiserver", &[], &names)?;

        // The API server maps a client certificate's CN to the user and each O to a group;
        // system:masters bypasses authorization, as the admin kubeconfig of a real cluster does.
        let (admin_cert_pem, admin_key_pem) =
            issue(&ca, "credvend-test-admin", &["system:masters"], &[])?;

        // ECDSA P-256, so tokens are signed ES256 (kube-apiserver picks the JWT algorithm from
        // the key type).
        let sa_key = KeyPair::generate()?;

        Ok(Pki {
            ca_pem: ca_cert.pem(),
            ca,
            serving_cert_pem,
            serving_key_pem,
            admin_cert_pem,
            admin_key_pem,
            sa_private_pem: sa_key.serialize_pem(),
            sa_public_pem: sa_key.public_key_pem(),
        })
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        server_names: &[String],
    ) -> anyhow::Result<(String, String)> {
        issue(&self.ca, common_name, organizations, server_names)
    }

    fn write(&self, dir: &Path) -> anyhow::Result<PkiFiles> {
        let write = |name: &str, contents: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        // What the API server shows the kubelet when it fetches logs or runs exec; the
        // kubelet authorizes it by asking the API server, which lets system:masters do anything.
        let (kubelet_client_cert, kubelet_client_key) =
            self.issue("kube-apiserver-kubelet-client", &["system:masters"], &[])?;
        // The admin identity as files too, for tools that take a certificate and key (the
        // node's cleanup deletes pods with them).
        write("admin.crt", &self.admin_cert_pem)?;
        write("admin.key", &self.admin_key_pem)?;
        Ok(PkiFiles {
            ca_cert: write("ca.crt", &self.ca_pem)?,
            serving_cert: write("apiserver.crt", &self.serving_cert_pem)?,
            serving_key: write("apiserver.key", &self.serving_key_pem)?,
            sa_private: write("sa.key", &self.sa_private_pem)?,
            sa_public: write("sa.pub", &self.sa_public_pem)?,
            kubelet_client_cert: write("apiserver-kubelet-client.crt", &kubelet_client_cert)?,
            kubelet_client_key: write("apiserver-kubelet-client.key", &kubelet_client_key)?,
        })
    }

    /// A self-contained kubeconfig (certificates inline) for the admin identity.
    fn kubeconfig(&self, url: &str) -> String {
        kubeconfig(url, &self.ca_pem, &self.admin_cert_pem, &self.admin_key_pem)
    }
}

/// A certificate signed by `ca`: a serving certificate when `server_names` is not empty,
/// else a client certificate for `common_name` in the groups `organizations`.
fn issue(
    ca: &Issuer<'static, KeyPair>,
    common_name: &str,
    organizations: &[&str],
    server_names: &[String],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(server_names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for organization in organizations {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *organization);
    }
    params.extended_key_usages = if server_names.is_empty() {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    };
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A self-contained kubeconfig (certificates inline) for one client certificate.
fn kubeconfig(url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let ca = BASE64.encode(ca_pem);
    let cert = BASE64.encode(cert_pem);
    let key = BASE64.encode(key_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: credvend-test
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: credvend-test-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: credvend-test
  context:
    cluster: credvend-test
    user: credvend-test-admin
    namespace: default
current-context: credvend-test
"
    )
}

struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Owns the child processes and the directory; stopping is idempotent and also runs on drop.
struct Processes {
    dir: Option<TempDir>,
    root: PathBuf,
    children: Vec<Process>,
    reaper: std::sync::Mutex<Option<(Child, ChildStdin)>>,
}

/// Kills the processes it is told about (one pid per line on stdin) and removes the directory
/// once stdin reaches end-of-file — which happens when the test process exits, however it
/// exits, because nothing else holds the pipe's write end. Rust has no exit hook for statics,
/// and this needs no unsafe code. A non-empty second argument is a command run first, while
/// the processes still run (see [`Options::before_reap`]).
const REAPER_SCRIPT: &str = r#"
pids=
while read -r pid; do pids="$pids $pid"; done
[ -z "$2" ] || sh -c "$2" >/dev/null 2>&1
# A killed process lingers as a zombie until init reaps it; that counts as gone.
gone() {
  ! kill -0 "$1" 2>/dev/null || case "$(cat "/proc/$1/stat" 2>/dev/null)" in *") Z "*) true ;; *) false ;; esac
}
for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
for pid in $pids; do
  n=0
  until gone "$pid" || [ "$n" -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
done
rm -rf "$1"
"#;

impl Processes {
    fn new(dir: TempDir, before_reap: Option<&str>) -> anyhow::Result<Self> {
        let root = dir.path().to_owned();
        let mut reaper = Command::new("sh")
            .args(["-c", REAPER_SCRIPT, "credvend-reaper"])
            .arg(&root)
            .arg(before_reap.unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the reaper shell")?;
        let stdin = reaper
            .stdin
            .take()
            .ok_or_else(|| anyhow!("reaper has no stdin"))?;
        Ok(Processes {
            dir: Some(dir),
            root,
            children: Vec::new(),
            reaper: std::sync::Mutex::new(Some((reaper, stdin))),
        })
    }

    fn root(&self) -> &Path {
        &self.root
    }

    /// Spawns a process with its output in `<name>.log` and registers it with the reaper.
    fn spawn(&mut self, name: &'static str, command: &mut Command) -> anyhow::Result<()> {
        let log = self.root.join(format!("{name}.log"));
        let child = spawn_logged(name, command, &log)?;
        let pid = child.id();
        self.children.push(Process { name, child, log });
        self.reap_at_exit(pid)
            .with_context(|| format!("telling the reaper about {name}"))
    }

    /// Tells the reaper to kill `pid` when the test process exits.
    fn reap_at_exit(&self, pid: u32) -> anyhow::Result<()> {
        let mut reaper = self
            .reaper
            .lock()
            .map_err(|_| anyhow!("the reaper's lock is poisoned"))?;
        if let Some((_, stdin)) = reaper.as_mut() {
            writeln!(stdin, "{pid}").and_then(|()| stdin.flush())?;
        }
        Ok(())
    }

    /// Fails, with the process's log, if a process has already exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.children {
            if let Some(status) = process.child.try_wait()? {
                let name = process.name;
                bail!(
                    "{name} exited ({status}) during startup\n{}",
                    self.log_tails()
                );
            }
        }
        Ok(())
    }

    /// The last lines of each process's log, to explain a failed start.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for process in &self.children {
            let text = fs::read_to_string(&process.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!(
                "--- last lines of {} ---\n{tail}\n",
                process.log.display()
            ));
        }
        out
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        // The reaper goes first, so it cannot signal a pid that the kernel has since reused.
        let reaper = self.reaper.get_mut().map(Option::take).unwrap_or_default();
        if let Some((mut reaper, stdin)) = reaper {
            let _ = reaper.kill();
            let _ = reaper.wait();
            drop(stdin);
        }
        // Newest first: kube-apiserver before the etcd it writes to. SIGKILL, because the data
        // is thrown away and graceful shutdown of kube-apiserver takes seconds.
        let mut errors = Vec::new();
        while let Some(mut process) = self.children.pop() {
            if let Err(error) = process.child.kill().and_then(|()| process.child.wait()) {
                errors.push(format!("stopping {}: {error}", process.name));
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(error) = dir.close() {
                errors.push(format!("removing {}: {error}", path.display()));
            }
        }
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("control plane cleanup: {error}");
        }
    }
}

/// Spawns `command` with no stdin and its stdout and stderr in `log`; `name` names it in errors.
pub fn spawn_logged(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", command.get_program()))
}
