//! The processes under test: credvend's release binary and the baselines of bench/baseline,
//! started the same way and pinned to the same CPU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::ports::free_port;

/// Where the binaries are.
pub struct Binaries {
    /// credvend as the image ships it.
    pub credvend: PathBuf,
    /// `baseline-http` and `baseline-tls` (scripts/bench-baselines.sh).
    pub baselines: PathBuf,
}

impl Binaries {
    pub fn baseline(&self, name: &str) -> PathBuf {
        self.baselines.join(name)
    }
}

/// A baseline server; killed on drop.
pub struct Baseline {
    child: Child,
    pub port: u16,
}

impl Baseline {
    /// Starts `binary` with `args` and `--listen 127.0.0.1:PORT`, returning once it accepts.
    pub fn start(binary: &Path, args: &[&std::ffi::OsStr]) -> Baseline {
        let port = free_port();
        let child = Command::new(binary)
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let baseline = Baseline { child, port };
        wait_accepting(port, Duration::from_secs(10));
        baseline
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_accepting(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file's size in MiB, and the size `strip` leaves (the same for a binary shipped stripped).
pub fn binary_sizes(path: &Path) -> (f64, f64) {
    let mib = |p: &Path| std::fs::metadata(p).map_or(f64::NAN, |m| m.len() as f64 / 1048576.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let stripped = dir.path().join("stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    (mib(path), if ok { mib(&stripped) } else { f64::NAN })
}

/// The share of layout/agent.order (build.rs) that the build behind the shipped binary at
/// `shipped` still has, in percent: names the build lost (a dependency upgrade, a new
/// toolchain) fall back to the default layout and cost the agent RSS. The Dockerfile strips
/// what it installs, so the symbols are read from the build it installed from (the release
/// dir beside the image dir); NaN when there is none.
pub fn layout_coverage(shipped: &Path) -> f64 {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/agent.order");
    let listed: Vec<String> = std::fs::read_to_string(order)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let Some(built) = shipped
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release/credvend"))
    else {
        return f64::NAN;
    };
    let Ok(out) = Command::new("nm")
        .arg("--defined-only")
        .arg(&built)
        .output()
    else {
        return f64::NAN;
    };
    if !out.status.success() || listed.is_empty() {
        return f64::NAN;
    }
    let symbols: std::collections::HashSet<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let found = listed
        .iter()
        .filter(|n| symbols.contains(n.as_str()))
        .count();
    100.0 * found as f64 / listed.len() as f64
}
