//! The load generator: wrk, pinned to its own CPU, keep-alive, reporting through a Lua `done`
//! hook so the numbers come exact (microseconds) rather than parsed from its rounded summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How a load run is made.
pub struct Generator {
    pub wrk: PathBuf,
    /// The CPU wrk runs on (`None` on a one-core machine).
    pub cpu: Option<usize>,
    pub duration: Duration,
    dir: tempfile::TempDir,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// The request wrk sends.
pub enum Request<'a> {
    Get { authorization: &'a str },
    Post { body: &'a Path },
}

impl Generator {
    pub fn new(wrk: PathBuf, cpu: Option<usize>, duration: Duration) -> Generator {
        Generator {
            wrk,
            cpu,
            duration,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The command line of a run, for BENCHMARKS.md (paths and ports left as placeholders).
    pub fn describe(&self, connections: u32, request: &str, url: &str) -> String {
        let pin = self
            .cpu
            .map_or(String::new(), |c| format!("taskset -c {c} "));
        format!(
            "{pin}wrk -t1 -c{connections} -d{}s --latency {request} {url}",
            self.duration.as_secs()
        )
    }

    /// Runs wrk with one thread and `connections` keep-alive connections against `url`.
    pub fn run(&self, url: &str, connections: u32, request: &Request<'_>) -> Run {
        let script = self.dir.path().join(format!("run-{connections}.lua"));
        std::fs::write(&script, lua(request)).expect("write the wrk script");
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&self.wrk);
                c
            }
            None => Command::new(&self.wrk),
        };
        cmd.args(["-t1", &format!("-c{connections}")])
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .arg("--timeout=5s")
            .arg("-s")
            .arg(&script)
            .arg(url);
        let out = cmd.output().expect("run wrk");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&stdout).unwrap_or_else(|| panic!("no result line in wrk's output:\n{stdout}"))
    }
}

/// The script: the request, and a `done` hook that prints one line of exact numbers.
fn lua(request: &Request<'_>) -> String {
    let setup = match request {
        Request::Get { authorization } => {
            format!("wrk.method = \"GET\"\nwrk.headers[\"Authorization\"] = {authorization:?}\n")
        }
        Request::Post { body } => format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             local f = assert(io.open({:?}, \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body.display().to_string()
        ),
    };
    format!(
        "{setup}\
         done = function(summary, latency, requests)\n\
         \x20 local e = summary.errors\n\
         \x20 io.write(string.format(\"credvend-bench %.0f %.0f %.0f %.0f %.0f\\n\",\n\
         \x20   summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,\n\
         \x20   latency:percentile(50), latency:percentile(99)))\n\
         end\n"
    )
}

/// The `done` hook's line: requests, duration (µs), errors, p50 and p99 (µs).
fn parse(stdout: &str) -> Option<Run> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("credvend-bench "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [requests, duration_us, errors, p50, p99] = v[..] else {
        return None;
    };
    Some(Run {
        requests: requests as u64,
        rps: requests / (duration_us / 1e6),
        p50_ms: p50 / 1e3,
        p99_ms: p99 / 1e3,
        errors: errors as u64,
    })
}
