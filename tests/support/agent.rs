//! The real `credvend agent` binary, run as a process the way the webhook configures it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::http;
use super::ports::free_port;

/// The role every agent test assumes unless told otherwise.
pub const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/s3-reader";
/// The session name the tests pass (as the webhook derives it from namespace and pod name).
pub const SESSION_NAME: &str = "team-a.web-0";

/// A JWT-shaped token like a projected service-account token (moto does not verify it).
pub fn fake_jwt(expires_in: Duration) -> String {
    let exp = (SystemTime::now() + expires_in)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "aud": ["sts.amazonaws.com"],
        "exp": exp,
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:team-a:app",
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"test"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub role_arn: String,
    pub sts_endpoint: String,
    /// Host part of `--listen`: `127.0.0.1` or `[::1]`.
    pub listen_host: String,
    /// Extra flags, e.g. `--duration 15m`.
    pub extra_args: Vec<String>,
    /// Write a token file with this content before start; `None` leaves it missing.
    pub token: Option<String>,
    /// Give the agent a directory for its credentials cache file (as the webhook's
    /// `credvend-cache` volume does); without one it keeps credentials in memory only.
    pub cache_dir: bool,
    /// Extra environment variables for the agent process.
    pub env: Vec<(String, String)>,
    /// The metrics port to use instead of a free one.
    pub metrics_port: Option<u16>,
    /// Binding plans to pass as `--binding` (the webhook's way) instead of `--role-arn` and
    /// its flags. `tokenFile`, `stsEndpoint` and `region` default to the test's.
    pub bindings: Vec<serde_json::Value>,
    /// The binary to run instead of this build's `credvend` (the benchmark runs the release
    /// build).
    pub binary: Option<PathBuf>,
}

impl AgentOptions {
    pub fn new(sts_endpoint: &str) -> Self {
        AgentOptions {
            role_arn: ROLE_ARN.to_owned(),
            sts_endpoint: sts_endpoint.to_owned(),
            listen_host: "127.0.0.1".to_owned(),
            extra_args: Vec::new(),
            token: Some(fake_jwt(Duration::from_secs(3600))),
            cache_dir: true,
            env: Vec::new(),
            metrics_port: None,
            bindings: Vec::new(),
            binary: None,
        }
    }
}

/// A running agent with its own temp dir (token file, auth token file, log); killed on drop.
pub struct AgentProcess {
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    pub port: u16,
    pub metrics_port: u16,
    listen_host: String,
    env: Vec<(String, String)>,
    binary: PathBuf,
}

impl AgentProcess {
    /// Starts the agent (without waiting for readiness).
    pub fn start(opts: AgentOptions) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics_port) = (free_port(), opts.metrics_port.unwrap_or_else(free_port));
        if let Some(token) = &opts.token {
            std::fs::write(dir.path().join("token"), token).unwrap();
        }
        let token_file = dir.path().join("token").to_str().unwrap().to_owned();
        let single: Vec<String> = [
            "--role-arn",
            &opts.role_arn,
            "--token-file",
            &token_file,
            "--sts-endpoint",
            &opts.sts_endpoint,
            "--region",
            "us-east-1",
            "--session-name",
            SESSION_NAME,
        ]
        .map(str::to_owned)
        .into();
        let plans = opts.bindings.iter().flat_map(|plan| {
            let mut plan = plan.clone();
            for (key, value) in [
                ("tokenFile", &token_file),
                ("stsEndpoint", &opts.sts_endpoint),
                ("region", &"us-east-1".to_owned()),
            ] {
                if plan.get(key).is_none() {
                    plan[key] = value.clone().into();
                }
            }
            ["--binding".to_owned(), plan.to_string()]
        });
        let mut args: Vec<String> = vec!["agent".to_owned()];
        if opts.bindings.is_empty() {
            args.extend(single);
        } else {
            args.extend(plans);
        }
        args.extend(
            [
                "--auth-token-file",
                dir.path().join("auth/token").to_str().unwrap(),
                "--listen",
                &format!("{}:{port}", opts.listen_host),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ]
            .map(|s| s.to_string()),
        );
        if opts.cache_dir {
            std::fs::create_dir(dir.path().join("cache")).unwrap();
        }
        args.extend([
            "--cache-file".to_owned(),
            dir.path()
                .join("cache/credentials.json")
                .to_str()
                .unwrap()
                .to_owned(),
        ]);
        args.extend(opts.extra_args.iter().cloned());
        let mut agent = AgentProcess {
            dir,
            child: None,
            args,
            port,
            metrics_port,
            listen_host: opts.listen_host,
            env: opts.env,
            binary: opts
                .binary
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_credvend"))),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_REGION")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn credvend agent");
        self.child = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the agent logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// The credentials cache file (in `cache/`, when the agent was given that directory).
    pub fn cache_file(&self) -> PathBuf {
        self.dir.path().join("cache/credentials.json")
    }

    /// The process id of the running agent.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// A field of `/proc/<pid>/status` (e.g. `Threads`, `VmHWM`), as its first number.
    pub fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// The agent's child processes (zombies included), each as its pid and command line.
    pub fn children(&self) -> Vec<(u32, String)> {
        let parent = self.pid();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`: the fields after the last ')' are fixed.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(parent) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            }
        }
        found
    }

    pub fn auth_token_file(&self) -> PathBuf {
        self.dir.path().join("auth/token")
    }

    pub fn auth_token(&self) -> String {
        std::fs::read_to_string(self.auth_token_file()).unwrap()
    }

    /// `http://127.0.0.1:PORT/v1/credentials` (what the webhook puts in FULL_URI).
    pub fn credentials_url(&self) -> String {
        format!("http://{}:{}/v1/credentials", self.listen_host, self.port)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// Waits until `/healthz/ready` says 200, failing with the agent's log after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = self.metrics_url("/healthz/ready");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = http::get(&url).await
                && r.status == 200
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("agent not ready after {timeout:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the metrics endpoint answers at all (the agent is up, ready or not).
    pub async fn wait_up(&self, timeout: Duration) {
        let url = self.metrics_url("/healthz/live");
        http::eventually("agent liveness", timeout, || {
            let url = url.clone();
            async move { http::get(&url).await.ok().filter(|r| r.status == 200) }
        })
        .await;
    }

    /// GET the credentials endpoint with the auth token from the file.
    pub async fn fetch(&self) -> http::Reply {
        let token = self.auth_token();
        http::request(
            "GET",
            &self.credentials_url(),
            &[("authorization", token.as_bytes())],
        )
        .await
        .unwrap()
    }

    /// The value of one sample in `/metrics`, e.g. `credvend_sts_errors_total{code="Throttling"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let page = http::get(&self.metrics_url("/metrics")).await.ok()?.text();
        page.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }

    /// Requests answered with 200 so far.
    pub async fn requests_served(&self) -> f64 {
        self.metric(r#"credvend_endpoint_requests_total{status="200"}"#)
            .await
            .unwrap_or(0.0)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().unwrap()
    }

    /// Terminates and starts the agent again with the same flags and files.
    pub fn restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    /// Waits for the process to exit by itself (start-up errors).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("agent running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent still running; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
