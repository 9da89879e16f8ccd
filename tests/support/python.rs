//! The Python interpreter of the test virtualenv (moto, boto3), as prepared by `make test`.

use std::path::PathBuf;
use std::process::Command;

/// `CREDVEND_PYTHON` when set (the Makefile sets it), else whatever `scripts/venv.sh` prepares
/// (so a plain `cargo test` works on a machine that ran `make` once). Never a skip: a missing
/// interpreter fails the test with the command that fixes it.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CREDVEND_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = repo_path("scripts/venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `make venv`", script.display()));
    assert!(
        out.status.success(),
        "scripts/venv.sh failed (run `make venv`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `python -c CODE` as an app would run it: an empty environment except what keeps the SDK
/// away from this machine's own AWS configuration, plus STS at `sts_endpoint` in us-east-1.
/// The caller adds the container-credentials variables under test.
pub fn app_python(code: &str, sts_endpoint: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.args(["-c", code])
        .env_clear()
        .env("AWS_ENDPOINT_URL_STS", sts_endpoint)
        // botocore reads only AWS_DEFAULT_REGION; the other SDKs read AWS_REGION.
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}
