//! The processes under test: credvend's release binary and the baselines of bench/baseline,
//! started the same way and pinned to the same CPU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::free_port;

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
