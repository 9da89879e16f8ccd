//! The five SDK client programs and how to run one.
//!
//! Each program (tests/sdk/<lang>/) resolves credentials through its SDK's default chain, calls
//! STS GetCallerIdentity `CREDVEND_SDK_CALLS` times (with `CREDVEND_SDK_SLEEP_MS` between calls)
//! and prints one JSON line, parsed here into a [`Report`]. Where the programs live comes from the
//! `CREDVEND_SDK_*` variables that `scripts/sdk-clients.sh` prints (`make test` passes them); when
//! they are missing, the script is run from here, so a bare `cargo test` works too. The Rust
//! client is this crate's `sdk-client-rust` example, which cargo builds next to the tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;
use tokio::process::Command;

use super::netns::Netns;

/// No client run may take longer than this; a hang is reported, not waited out. Far above the
/// slowest legitimate run (Java's six retries against a closed port take a few seconds).
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sdk {
    Python,
    Rust,
    Go,
    Java,
    Js,
}

impl Sdk {
    pub const ALL: [Sdk; 5] = [Sdk::Python, Sdk::Rust, Sdk::Go, Sdk::Java, Sdk::Js];

    /// Column heading: the SDK as a user knows it.
    pub fn title(self) -> &'static str {
        match self {
            Sdk::Python => "boto3/botocore",
            Sdk::Rust => "Rust aws-config",
            Sdk::Go => "Go aws-sdk-go-v2",
            Sdk::Java => "Java SDK v2",
            Sdk::Js => "JS SDK v3",
        }
    }
}

/// The JSON line a client prints.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub version: Option<String>,
    pub ok: bool,
    #[serde(default)]
    pub arn: Option<String>,
    /// Access key ids the SDK signed with, in order, each listed once per change.
    #[serde(default)]
    pub access_key_ids: Vec<String>,
    /// Reported when `CREDVEND_SDK_REPORT_ACCOUNT=1`: the AccountId on the SDK's credentials
    /// (`null` or empty when it dropped the field).
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Report {
    /// The first error, for the matrix's notes. Java's chain error lists every provider it
    /// tried; only the container provider's part says anything here.
    pub fn error_text(&self) -> &str {
        let error = self
            .error
            .as_deref()
            .or(self.errors.first().map(String::as_str))
            .unwrap_or("");
        const CONTAINER: &str = "ContainerCredentialsProvider(): ";
        match error.rfind(CONTAINER) {
            Some(at) => {
                let reason = &error[at..];
                reason
                    .split(", InstanceProfileCredentialsProvider()")
                    .next()
                    .unwrap_or(reason)
            }
            None => error,
        }
    }
}

/// One finished client run.
#[derive(Debug)]
pub struct Run {
    pub report: Report,
    pub stderr: String,
}

/// What a pod's container would have in its environment for the SDK, plus the run's knobs.
#[derive(Clone, Debug, Default)]
pub struct PodEnv {
    pub vars: BTreeMap<String, String>,
}

impl PodEnv {
    /// The env the webhook injects: the endpoint URI, the token file, the region; plus STS on moto.
    pub fn new(credentials_uri: &str, token_file: &Path, sts_endpoint: &str) -> PodEnv {
        PodEnv::default()
            .set("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials_uri)
            .set(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                &token_file.display().to_string(),
            )
            .set("AWS_ENDPOINT_URL_STS", sts_endpoint)
            // botocore reads only AWS_DEFAULT_REGION, the others only AWS_REGION: the webhook
            // sets both, and so do we.
            .set("AWS_REGION", "us-east-1")
            .set("AWS_DEFAULT_REGION", "us-east-1")
    }

    pub fn set(mut self, name: &str, value: &str) -> PodEnv {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn unset(mut self, name: &str) -> PodEnv {
        self.vars.remove(name);
        self
    }

    /// How many GetCallerIdentity calls, and the pause between them.
    pub fn calls(self, calls: u32, pause: Duration) -> PodEnv {
        self.set("CREDVEND_SDK_CALLS", &calls.to_string())
            .set("CREDVEND_SDK_SLEEP_MS", &pause.as_millis().to_string())
    }
}

/// Where the five client programs are.
#[derive(Clone, Debug)]
pub struct Clients {
    python: PathBuf,
    rust: PathBuf,
    go: PathBuf,
    java_jar: PathBuf,
    js_dir: PathBuf,
    repo: PathBuf,
}

impl Clients {
    /// Reads the `CREDVEND_SDK_*` variables, running `scripts/sdk-clients.sh --no-rust` for any
    /// that are missing (it is cached, so this is cheap after the first time).
    pub fn locate() -> anyhow::Result<Clients> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let names = [
            "CREDVEND_SDK_PYTHON",
            "CREDVEND_SDK_GO",
            "CREDVEND_SDK_JAVA_JAR",
            "CREDVEND_SDK_JS_DIR",
        ];
        let mut found: BTreeMap<String, String> = names
            .iter()
            .filter_map(|n| Some((n.to_string(), std::env::var(n).ok()?)))
            .collect();
        if found.len() < names.len() {
            let out = std::process::Command::new(repo.join("scripts/sdk-clients.sh"))
                .arg("--no-rust")
                .stderr(Stdio::inherit())
                .output()?;
            anyhow::ensure!(out.status.success(), "scripts/sdk-clients.sh failed");
            for line in String::from_utf8(out.stdout)?.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    found.entry(k.to_owned()).or_insert_with(|| v.to_owned());
                }
            }
        }
        let get = |name: &str| -> anyhow::Result<PathBuf> {
            found
                .get(name)
                .map(PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("{name} was not provided by scripts/sdk-clients.sh"))
        };
        Ok(Clients {
            python: get("CREDVEND_SDK_PYTHON")?,
            rust: match std::env::var("CREDVEND_SDK_RUST") {
                Ok(path) => PathBuf::from(path),
                Err(_) => rust_example_beside_this_test()?,
            },
            go: get("CREDVEND_SDK_GO")?,
            java_jar: get("CREDVEND_SDK_JAVA_JAR")?,
            js_dir: get("CREDVEND_SDK_JS_DIR")?,
            repo,
        })
    }

    /// The program and arguments that run `sdk`'s client.
    fn program(&self, sdk: Sdk) -> (OsString, Vec<OsString>) {
        let path = |p: &Path| p.as_os_str().to_owned();
        match sdk {
            Sdk::Python => (
                path(&self.python),
                vec![path(&self.repo.join("tests/sdk/python/client.py"))],
            ),
            Sdk::Rust => (path(&self.rust), vec![]),
            Sdk::Go => (path(&self.go), vec![]),
            // C1 only: a JVM that lives a second starts faster without the optimising compiler.
            Sdk::Java => (
                "java".into(),
                vec![
                    "-XX:TieredStopAtLevel=1".into(),
                    "-jar".into(),
                    path(&self.java_jar),
                ],
            ),
            Sdk::Js => (
                "node".into(),
                vec![path(&self.repo.join("tests/sdk/js/client.js"))],
            ),
        }
    }

    /// The client's command, run inside `netns` when given (through `nsenter`).
    fn command(&self, sdk: Sdk, netns: Option<&Netns>) -> Command {
        let (program, args) = self.program(sdk);
        match netns {
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.args(ns.nsenter_args()).arg(program).args(args);
                c
            }
        }
    }

    /// Runs one client with exactly `env` (plus PATH) and nothing else from this machine: an
    /// empty HOME and empty AWS config files, so no profile, key or instance metadata leaks in.
    pub async fn run(&self, sdk: Sdk, env: &PodEnv) -> Run {
        self.run_in(sdk, env, None).await
    }

    /// [`Clients::run`] inside a network namespace of the test's own, when given.
    pub async fn run_in(&self, sdk: Sdk, env: &PodEnv, netns: Option<&Netns>) -> Run {
        match self.try_run(sdk, env, netns).await {
            Ok(mut run) => {
                if sdk == Sdk::Rust {
                    // aws-config has no version constant; the lock file says what was built.
                    run.report.version = locked_version(&self.repo, "aws-config");
                }
                run
            }
            Err(err) => Run {
                report: Report {
                    error: Some(format!("client did not run: {err:#}")),
                    ..Report::default()
                },
                stderr: String::new(),
            },
        }
    }

    async fn try_run(&self, sdk: Sdk, env: &PodEnv, netns: Option<&Netns>) -> anyhow::Result<Run> {
        let home = TempDir::new()?;
        let (config, credentials) = (home.path().join("config"), home.path().join("credentials"));
        std::fs::write(&config, "")?;
        std::fs::write(&credentials, "")?;
        let mut cmd = self.command(sdk, netns);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(&env.vars)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if sdk == Sdk::Js {
            // The client runs from the repository; its packages are in the cache.
            cmd.env("NODE_PATH", self.js_dir.join("node_modules"));
        }
        let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {RUN_LIMIT:?}"))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'));
        let report = match line.map(serde_json::from_str::<Report>) {
            Some(Ok(report)) => report,
            _ => Report {
                error: Some(format!("no JSON report; stderr: {}", tail(&stderr, 400))),
                ..Report::default()
            },
        };
        Ok(Run { report, stderr })
    }
}

/// The version of `krate` in the repository's Cargo.lock.
fn locked_version(repo: &Path, krate: &str) -> Option<String> {
    let lock = std::fs::read_to_string(repo.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    lines.find(|l| *l == format!("name = \"{krate}\""))?;
    let version = lines.next()?.strip_prefix("version = \"")?;
    Some(version.trim_end_matches('"').to_owned())
}

/// `cargo test` builds examples into target/<profile>/examples, beside this test's deps/ dir.
fn rust_example_beside_this_test() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("unexpected test binary location {}", exe.display()))?;
    let path = profile_dir.join("examples/sdk-client-rust");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo test --all-targets` (or `cargo build --example sdk-client-rust`)",
        path.display()
    );
    Ok(path)
}

/// The last `max` bytes of `s` (at a char boundary), for error messages.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim()
}
