//! A real Kubernetes node for the pod-level tests: the control plane of [`super::k8s`] made
//! node-ready, plus containerd, a kubelet with a real node identity, kube-controller-manager and
//! kube-scheduler, so pods are scheduled, started with runc and networked like in a cluster.
//!
//! One node per test binary ([`shared`]); [`Node::start`] makes a private one (the demo).
//!
//! ## What it owns, and what it never touches
//! Each node claims a *slot* `N` (an exclusive `flock` on `/tmp/credvend-node-N.lock`, held for
//! the node's life and released by the kernel however the test ends), which names everything
//! it makes: the directory `/tmp/credvend-node-N` (containerd's root, state, sockets and config,
//! the kubelet's root dir, logs, CNI state), the bridge `credvend-brN` with `10.213.N.1/24`, the
//! pod CIDR `10.213.N.0/24`, the cgroup root `/credvend-node-N` and the node name
//! `credvend-node-N`. It never changes the machine's sysctls, iptables rules or cgroup mounts:
//! the kubelet, which writes a few global sysctls at start, runs in a mount namespace of its own
//! where regular files holding the values it wants are bind-mounted over those `/proc/sys`
//! entries; its root dir is a shared bind mount, so the volumes it mounts there are seen by
//! containerd and runc outside that namespace. Pods get no default route: the CNI bridge is not
//! their gateway and nothing masquerades or forwards, so their traffic reaches only the bridge
//! (the API server and the test's STS listen on its address) and the other pods.
//!
//! ## Why the host network namespace
//! The node's network pieces live in the test's own network namespace (the host's), on a bridge
//! of their own, rather than in a separate namespace: the API server, the kubelet's probes and
//! the test itself must all reach pods and be reached by them, and a separate namespace would
//! need a veth pair and routes in both directions for that — more moving parts, while its one
//! advantage (everything vanishes with the namespace) does not hold anyway, because pod
//! network namespaces are bind-mounted files that outlive their creator.
//!
//! ## Teardown
//! `tests/python/node_cleanup.py` tears a node down from its directory alone (see there for the
//! order: pods through the API first, then processes, shims, cgroups, mounts, bridge, files).
//! It runs when the node is dropped, from the control plane's reaper when the test process dies
//! however it dies (the reaper runs it before it kills the API server, so pods are still deleted
//! through the API), and at the start of every later run for each slot whose lock is free but
//! whose directory is still there.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::{Api, Client};
use tokio::sync::OnceCell;

use super::image;
use super::k8s::{ControlPlane, Options, spawn_logged};
use super::python::{python, repo_path};

/// How long containerd, the kubelet and node registration may take (two busy cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Slots tried for a node of this process; concurrent test binaries take different ones.
const SLOTS: u8 = 32;
/// The sysctls the kubelet sets at start, with the values it wants. Inside its mount namespace
/// these paths are regular files, so the machine's own settings stay as they are.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

static SHARED: OnceCell<Node> = OnceCell::const_new();

/// The node shared by all tests of the current test binary, started on first use and torn
/// down by the reaper when the process exits.
pub async fn shared() -> anyhow::Result<&'static Node> {
    SHARED.get_or_try_init(Node::start).await
}

/// The binaries of a node, from the environment (what `make test` passes) or the scripts.
struct Binaries {
    kubelet: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    /// Holds containerd, containerd-shim-runc-v2 and ctr.
    containerd_dir: PathBuf,
    pause: PathBuf,
}

/// A running node and its control plane.
pub struct Node {
    // Field order is drop order: the node goes before the control plane it needs for a
    // clean teardown (pods are deleted through the API).
    processes: Procs,
    cp: Option<ControlPlane>,
    dir: PathBuf,
    name: String,
    bridge_ip: Ipv4Addr,
    containerd_socket: PathBuf,
    ctr: PathBuf,
    startup: Duration,
    /// Held for the node's life; the kernel releases it when the process ends.
    _slot_lock: File,
}

/// Where a slot's files live, and the names derived from it.
struct Slot {
    n: u8,
    lock: File,
}

impl Slot {
    fn dir(n: u8) -> PathBuf {
        PathBuf::from(format!("/tmp/credvend-node-{n}"))
    }

    /// Cleans up every slot an earlier run left behind and claims the first free one.
    fn claim() -> anyhow::Result<Slot> {
        let mut claimed = None;
        for n in 0..SLOTS {
            // Past the claimed slot only leftovers matter.
            if claimed.is_some() && !Self::dir(n).exists() {
                continue;
            }
            let lock_path = PathBuf::from(format!("/tmp/credvend-node-{n}.lock"));
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("opening {}", lock_path.display()))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", lock_path.display()));
                }
            }
            // Free lock, directory still there: its owner died before cleaning up.
            if Self::dir(n).exists() {
                eprintln!(
                    "cleaning up test node {} left by an earlier run",
                    Self::dir(n).display()
                );
                cleanup(&Self::dir(n), false)?;
            }
            if claimed.is_none() {
                claimed = Some(Slot { n, lock });
            }
        }
        claimed.ok_or_else(|| anyhow!("all {SLOTS} test node slots are in use"))
    }
}

/// Runs the cleanup script on a node directory and waits for it; with `keep_control_plane`
/// the caller stops the node's control plane itself.
fn cleanup(dir: &Path, keep_control_plane: bool) -> anyhow::Result<()> {
    let status = Command::new(python())
        .arg(repo_path("tests/python/node_cleanup.py"))
        .arg(dir)
        .args(keep_control_plane.then_some("--keep-control-plane"))
        .stdin(Stdio::null())
        .status()
        .context("running tests/python/node_cleanup.py")?;
    ensure!(status.success(), "node cleanup of {} failed", dir.display());
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs one of the repository's scripts and returns its stdout lines.
fn script(name: &str) -> anyhow::Result<Vec<String>> {
    let path = repo_path(&format!("scripts/{name}"));
    let out = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}); it installs or builds what the test node needs",
        path.display(),
        out.status
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Binaries {
    /// `CREDVEND_KUBELET`, `CREDVEND_KUBE_CONTROLLER_MANAGER`, `CREDVEND_KUBE_SCHEDULER`,
    /// `CREDVEND_CONTAINERD_DIR` and `CREDVEND_PAUSE` when set, else the scripts that build
    /// or find them; the Debian packages (runc, CNI plugins) are always ensured by
    /// `scripts/node-deps.sh`, which returns at once when they are installed.
    fn find() -> anyhow::Result<Binaries> {
        script("node-deps.sh")?;
        let k8s = match (
            env_path("CREDVEND_KUBELET"),
            env_path("CREDVEND_KUBE_CONTROLLER_MANAGER"),
            env_path("CREDVEND_KUBE_SCHEDULER"),
        ) {
            (Some(a), Some(b), Some(c)) => vec![a, b, c],
            _ => script("k8s-bins.sh")?
                .into_iter()
                .skip(2)
                .map(PathBuf::from)
                .collect(),
        };
        let containerd_dir = match env_path("CREDVEND_CONTAINERD_DIR") {
            Some(dir) => dir,
            None => PathBuf::from(script("containerd-bin.sh")?.concat()),
        };
        let pause = match env_path("CREDVEND_PAUSE") {
            Some(path) => path,
            None => PathBuf::from(script("pause-bin.sh")?.concat()),
        };
        let [kubelet, controller_manager, scheduler] = <[PathBuf; 3]>::try_from(k8s)
            .map_err(|lines| anyhow!("scripts/k8s-bins.sh printed {lines:?}, not 5 paths"))?;
        let bins = Binaries {
            kubelet,
            controller_manager,
            scheduler,
            containerd_dir,
            pause,
        };
        for path in [
            &bins.kubelet,
            &bins.controller_manager,
            &bins.scheduler,
            &bins.containerd_dir.join("containerd"),
            &bins.containerd_dir.join("containerd-shim-runc-v2"),
            &bins.containerd_dir.join("ctr"),
            &bins.pause,
            &PathBuf::from("/usr/sbin/runc"),
            &PathBuf::from("/usr/lib/cni/bridge"),
        ] {
            ensure!(path.is_file(), "{} is missing", path.display());
        }
        Ok(bins)
    }
}

impl Node {
    /// Starts a control plane and a node on it, and waits until the node is Ready with its
    /// sandbox image imported.
    pub async fn start() -> anyhow::Result<Node> {
        let bins = tokio::task::spawn_blocking(Binaries::find).await??;
        let started = Instant::now();
        let slot = tokio::task::spawn_blocking(Slot::claim).await??;
        let n = slot.n;
        let dir = Slot::dir(n);
        let name = format!("credvend-node-{n}");
        let bridge = format!("credvend-br{n}");
        let network = format!("credvend-{n}");
        let bridge_ip = Ipv4Addr::new(10, 213, n, 1);
        let cgroup_root = format!("/credvend-node-{n}");
        fs::create_dir_all(dir.join("pids"))?;
        let containerd_socket = dir.join("containerd.sock");
        let containerd_config = dir.join("containerd.toml");

        // The cleanup script's inventory, written before anything is made (the API part is
        // added once the control plane runs).
        let mut inventory = serde_json::json!({
            "dir": dir,
            "name": name,
            "bridge": bridge,
            "network": network,
            "cgroup_root": cgroup_root,
            "containerd_socket": containerd_socket,
            "containerd_config": containerd_config,
        });
        write_inventory(&dir, &inventory)?;

        // A bridge of this name without a directory would be from a run whose cleanup was
        // interrupted after it removed the directory.
        let _ = run("ip", &["link", "delete", &bridge, "type", "bridge"]);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{bridge_ip}/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;

        let cleanup_cmd = format!(
            "flock {lock} {python} {script} {dir}",
            lock = format_args!("/tmp/credvend-node-{n}.lock"),
            python = python().display(),
            script = repo_path("tests/python/node_cleanup.py").display(),
            dir = dir.display(),
        );
        let cp = ControlPlane::start_with(Options {
            address: Some(bridge_ip),
            for_node: true,
            before_reap: Some(cleanup_cmd),
            ..Options::default()
        })
        .await?;
        let cp_dir = cp.dir().to_owned();
        inventory["api"] = cp.url().into();
        inventory["control_plane_dir"] = cp_dir.display().to_string().into();
        inventory["ca"] = cp_dir.join("ca.crt").display().to_string().into();
        inventory["admin_cert"] = cp_dir.join("admin.crt").display().to_string().into();
        inventory["admin_key"] = cp_dir.join("admin.key").display().to_string().into();
        write_inventory(&dir, &inventory)?;

        let mut node = Node {
            processes: Procs {
                dir: dir.clone(),
                list: Vec::new(),
            },
            cp: Some(cp),
            dir: dir.clone(),
            name: name.clone(),
            bridge_ip,
            containerd_socket: containerd_socket.clone(),
            ctr: bins.containerd_dir.join("ctr"),
            startup: Duration::ZERO,
            _slot_lock: slot.lock,
        };
        let cp = node
            .cp
            .as_ref()
            .ok_or_else(|| anyhow!("no control plane"))?;
        let procs = &mut node.processes;

        // containerd: everything under the node's directory, CNI on the node's bridge.
        fs::create_dir_all(dir.join("cni/net.d"))?;
        fs::write(
            dir.join("cni/net.d/10-credvend.conflist"),
            cni_config(&network, &bridge, n, &dir),
        )?;
        fs::write(
            &containerd_config,
            containerd_config_toml(&dir, &containerd_socket),
        )?;
        let path = format!(
            "{}:{}",
            bins.containerd_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        procs.spawn(
            "containerd",
            Command::new(bins.containerd_dir.join("containerd"))
                .arg("--config")
                .arg(&containerd_config)
                .env("PATH", &path),
        )?;
        procs
            .wait_for("containerd's socket", || containerd_socket.exists())
            .await?;
        import(
            &node.ctr,
            &containerd_socket,
            &dir,
            &image::pause_image(&bins.pause)?,
        )?;

        // The cgroup root, in every hierarchy, with the cpuset of its parent (an empty cpuset
        // would make every child unusable).
        for hierarchy in cgroup_hierarchies()? {
            let path = hierarchy.join(cgroup_root.trim_start_matches('/'));
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if hierarchy.join(file).exists()
                    && fs::read_to_string(path.join(file))?.trim().is_empty()
                {
                    fs::write(path.join(file), fs::read_to_string(hierarchy.join(file))?)?;
                }
            }
        }

        // The kubelet's identity, serving certificate and configuration.
        let pki = dir.join("pki");
        fs::create_dir_all(&pki)?;
        let (cert, key) =
            cp.issue_certificate(&format!("system:node:{name}"), &["system:nodes"], &[])?;
        cp.write_kubeconfig(&dir.join("kubelet.kubeconfig"), &cert, &key)?;
        let (cert, key) =
            cp.issue_certificate(&name, &[], &[name.clone(), bridge_ip.to_string()])?;
        fs::write(pki.join("kubelet.crt"), cert)?;
        fs::write(pki.join("kubelet.key"), key)?;
        // Controller-manager and scheduler as cluster admins: this cluster's RBAC is not what
        // the tests examine, and it spares the per-controller service-account credentials.
        let (cert, key) =
            cp.issue_certificate("credvend-test-controllers", &["system:masters"], &[])?;
        cp.write_kubeconfig(&dir.join("controllers.kubeconfig"), &cert, &key)?;
        let ca = cp_dir.join("ca.crt");
        let [kubelet_port, healthz_port] = super::ports::free_ports();
        fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(
                &dir,
                &ca,
                &cgroup_root,
                bridge_ip,
                kubelet_port,
                healthz_port,
            ),
        )?;

        // The kubelet's private view of /proc/sys, and its root dir shared with the host.
        let sysctl_dir = dir.join("sysctl");
        for (name, value) in KUBELET_SYSCTLS {
            let file = sysctl_dir.join(name);
            fs::create_dir_all(file.parent().ok_or_else(|| anyhow!("no parent"))?)?;
            fs::write(&file, format!("{value}\n"))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
        }
        let kubelet_root = dir.join("kubelet");
        fs::create_dir_all(&kubelet_root)?;
        let root = kubelet_root.display().to_string();
        run("mount", &["--bind", &root, &root])?;
        run("mount", &["--make-rshared", &root])?;
        let mut wrapper = String::from("set -e\nmount --make-rprivate /proc\n");
        for (name, _) in KUBELET_SYSCTLS {
            wrapper.push_str(&format!(
                "mount --bind {} /proc/sys/{name}\n",
                sysctl_dir.join(name).display()
            ));
        }
        wrapper.push_str("exec \"$@\"\n");
        let kubelet_args = [
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", dir.join("kubelet.kubeconfig").display()),
            format!("--root-dir={root}"),
            format!("--cert-dir={}", pki.display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={bridge_ip}"),
            "--v=1".to_owned(),
        ];
        procs.spawn(
            "kubelet",
            Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "unchanged",
                    "sh",
                    "-c",
                    &wrapper,
                    "kubelet",
                ])
                .arg(&bins.kubelet)
                .args(&kubelet_args)
                .env("PATH", &path),
        )?;
        procs.spawn(
            "kube-controller-manager",
            Command::new(&bins.controller_manager).args([
                format!(
                    "--kubeconfig={}",
                    dir.join("controllers.kubeconfig").display()
                ),
                "--controllers=*".to_owned(),
                // Published as every namespace's kube-root-ca.crt, which kube-api-access
                // volumes need.
                format!("--root-ca-file={}", ca.display()),
                format!(
                    "--service-account-private-key-file={}",
                    cp_dir.join("sa.key").display()
                ),
                format!("--flex-volume-plugin-dir={}", dir.join("flex").display()),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
                "--use-service-account-credentials=false".to_owned(),
            ]),
        )?;
        procs.spawn(
            "kube-scheduler",
            Command::new(&bins.scheduler).args([
                format!(
                    "--kubeconfig={}",
                    dir.join("controllers.kubeconfig").display()
                ),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
            ]),
        )?;

        wait_node_ready(procs, &cp.client()?, &name, started).await?;
        node.startup = started.elapsed();
        eprintln!(
            "node {} ready in {:.1}s (API server {})",
            node.name,
            node.startup.as_secs_f64(),
            node.control_plane().url()
        );
        Ok(node)
    }

    /// Imports an image into containerd's `k8s.io` namespace, where the kubelet finds it
    /// (pods use `imagePullPolicy: Never`: there is no registry).
    pub fn import(&self, image: &image::Image) -> anyhow::Result<()> {
        import(&self.ctr, &self.containerd_socket, &self.dir, image)
    }

    /// The last lines of each node process's log, to explain a failure.
    pub fn log_tails(&self) -> String {
        self.processes.log_tails()
    }

    pub fn control_plane(&self) -> &ControlPlane {
        self.cp
            .as_ref()
            .expect("the control plane runs while the node does")
    }

    /// An admin client of the node's API server.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.control_plane().client()
    }

    /// The node's name (its Node object, `spec.nodeName` of its pods).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bridge's address: the node's InternalIP, where the API server listens and where
    /// pods reach services of the test (STS).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip
    }

    /// The node's directory (containerd, kubelet root dir, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's root dir; pod volumes are under `pods/<uid>/volumes/`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// The cgroup (memory hierarchy) directory of a container, found by its id.
    pub fn memory_cgroup_of(&self, container_id: &str) -> Option<PathBuf> {
        let id = container_id.rsplit("://").next()?;
        // The cgroup root is named like the node.
        find_dir(&PathBuf::from("/sys/fs/cgroup/memory").join(&self.name), id)
    }

    /// How long the node took to start, control plane included.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Tears the node down now (pods first), reporting failures; dropping does the same.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if self.cp.is_none() {
            return Ok(());
        }
        let result = cleanup(&self.dir, true);
        for (_, child) in &mut self.processes.list {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.processes.list.clear();
        if let Some(cp) = self.cp.take() {
            cp.shutdown()?;
        }
        result
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("node cleanup: {error}");
        }
    }
}

/// The node's processes, with their logs in the node's directory and their pids in
/// `pids/` for the cleanup script.
struct Procs {
    dir: PathBuf,
    list: Vec<(&'static str, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &'static str, command: &mut Command) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let child = spawn_logged(name, command, &log)?;
        fs::write(self.dir.join("pids").join(name), child.id().to_string())?;
        self.list.push((name, child));
        Ok(())
    }

    /// Fails with the logs if a node process has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.list {
            if let Some(status) = child.try_wait()? {
                let name = *name;
                bail!("{name} exited ({status})\n{}", self.log_tails());
            }
        }
        Ok(())
    }

    /// The last lines of each node process's log.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.list {
            let log = self.dir.join(format!("{name}.log"));
            let text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            out.push_str(&format!(
                "--- last lines of {} ---\n{tail}\n",
                log.display()
            ));
        }
        out
    }

    async fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !ready() {
            self.ensure_running()?;
            if Instant::now() > deadline {
                bail!("no {what} after {STARTUP_TIMEOUT:?}\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Polls the Node object until its Ready condition is True, failing early with the logs.
async fn wait_node_ready(
    procs: &mut Procs,
    client: &Client,
    name: &str,
    started: Instant,
) -> anyhow::Result<()> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let deadline = started + STARTUP_TIMEOUT;
    loop {
        procs.ensure_running()?;
        let ready = nodes.get_opt(name).await?.is_some_and(|node| {
            node.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {name} not Ready after {STARTUP_TIMEOUT:?}\n{}",
                procs.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Imports an OCI image archive into containerd's `k8s.io` namespace, where the kubelet
/// finds it (pods use `imagePullPolicy: Never`: there is no registry).
fn import(ctr: &Path, socket: &Path, dir: &Path, image: &image::Image) -> anyhow::Result<()> {
    let file_name: String = image
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let archive = dir.join(format!("{file_name}.tar"));
    fs::write(&archive, &image.archive)
        .with_context(|| format!("writing {}", archive.display()))?;
    let out = Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import", "--local"])
        .arg(&archive)
        .output()
        .context("running ctr images import")?;
    let _ = fs::remove_file(&archive);
    ensure!(
        out.status.success(),
        "ctr images import {} failed: {}{}",
        archive.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(root).ok()?.flatten() {
        if entry.file_type().ok()?.is_dir() {
            if entry.file_name().to_string_lossy() == name {
                return Some(entry.path());
            }
            if let Some(found) = find_dir(&entry.path(), name) {
                return Some(found);
            }
        }
    }
    None
}

fn write_inventory(dir: &Path, inventory: &serde_json::Value) -> anyhow::Result<()> {
    fs::write(dir.join("node.json"), serde_json::to_vec_pretty(inventory)?)
        .context("writing node.json")
}

/// Every cgroup hierarchy mounted on this machine (v1 controllers, named and unified).
fn cgroup_hierarchies() -> anyhow::Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            matches!(fields.get(dash + 1), Some(&"cgroup" | &"cgroup2"))
                .then(|| PathBuf::from(fields[4]))
        })
        .collect())
}

/// Bridge CNI on the node's own bridge: not the pods' gateway, no masquerading, addresses
/// from the node's pod CIDR, IPAM state in the node's directory.
fn cni_config(network: &str, bridge: &str, n: u8, dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": format!("10.213.{n}.0/24"),
                    "rangeStart": format!("10.213.{n}.10"),
                }]],
                "dataDir": dir.join("cni/ipam"),
            },
        }],
    })
    .to_string()
}

/// containerd 2.x (config version 3) with every path in the node's directory.
fn containerd_config_toml(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let s = socket.display();
    format!(
        r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/containerd/opt"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj; without
  # this, sandboxes get -998 and runc fails.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#,
        pause = image::PAUSE_IMAGE,
    )
}

/// The KubeletConfiguration: cgroupfs on cgroup v1 (1.37 only warns), no iptables, no
/// read-only port, x509 client auth with the test CA, images never garbage-collected (they
/// cannot be pulled again), every path in the node's directory.
fn kubelet_config(
    dir: &Path,
    ca: &Path,
    cgroup_root: &str,
    address: Ipv4Addr,
    port: u16,
    healthz_port: u16,
) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
tlsCertFile: {d}/pki/kubelet.crt
tlsPrivateKeyFile: {d}/pki/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{d}/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
rotateCertificates: false
serializeImagePulls: false
shutdownGracePeriod: 0s
"#,
        ca = ca.display(),
    )
}
