//! The image's binary, built once the way the Dockerfile builds it: the Dockerfile's own final
//! `cargo build` command, run on exactly the files its `COPY` lines put in the build context.
//!
//! One release build serves every test that needs the image's binary (tests/dockerfile.rs
//! checks it, the test node runs it as the credvend image): the context and the target dir live
//! under `$CREDVEND_CACHE`, outside the clone, so later runs rebuild only what changed. Files
//! are copied into the context only when their contents differ, so unchanged sources keep their
//! modification times and cargo sees them as fresh. A lock file serialises concurrent test
//! binaries (cargo's own lock covers only the target dir, not the context copy).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow, ensure};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$CREDVEND_CACHE`, else `$XDG_CACHE_HOME/credvend`, else `~/.cache/credvend` (as
/// scripts/lib.sh resolves it).
pub fn cache() -> PathBuf {
    std::env::var_os("CREDVEND_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            base.join("credvend")
        })
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
pub fn instructions() -> Vec<String> {
    let text = fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// Index of the last `FROM`: where the runtime stage begins.
pub fn runtime_stage_start(steps: &[String]) -> usize {
    steps.iter().rposition(|s| s.starts_with("FROM ")).unwrap()
}

/// What the builder stage copies into the build context (sources, without destinations).
pub fn build_context(steps: &[String]) -> Vec<String> {
    steps[..runtime_stage_start(steps)]
        .iter()
        .filter_map(|s| s.strip_prefix("COPY "))
        .flat_map(|args| {
            let mut parts: Vec<&str> = args.split_whitespace().collect();
            parts.pop(); // the destination
            parts.into_iter().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

/// The builder stage's final `cargo build` command.
pub fn build_command(steps: &[String]) -> String {
    final_run_command(steps, "cargo build")
}

/// The builder stage's final `install` command: how the built binary becomes the image's.
pub fn install_command(steps: &[String]) -> String {
    final_run_command(steps, "install ")
}

/// The command of the builder stage's last `RUN` that starts with `program`.
fn final_run_command(steps: &[String], program: &str) -> String {
    steps[..runtime_stage_start(steps)]
        .iter()
        .rev()
        .find_map(|s| s.strip_prefix("RUN "))
        .and_then(|run| {
            run.split("&&")
                .map(str::trim)
                .find(|c| c.starts_with(program))
        })
        .unwrap()
        .to_owned()
}

/// Where the Dockerfile's `install` puts the image's binary; [`binary`] puts it under the
/// cache instead.
const IMAGE_BINARY: &str = "/out/credvend";

/// The image's binary (built, then installed as the Dockerfile installs it), made on first use
/// in this process; `CREDVEND_RELEASE_BINARY` names
/// one built elsewhere instead (a CI job that already ran the Dockerfile's build).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("CREDVEND_RELEASE_BINARY").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        build().unwrap_or_else(|e| panic!("the release build failed: {e:#}"))
    })
}

fn build() -> anyhow::Result<PathBuf> {
    let steps = instructions();
    let build = build_command(&steps);
    let cache = cache();
    fs::create_dir_all(&cache)?;
    let lock = File::create(cache.join("docker-context.lock"))?;
    lock.lock().context("locking the build context")?;
    let context = cache.join("docker-context");
    fs::create_dir_all(&context)?;
    for source in build_context(&steps) {
        sync(&repo().join(&source), &context.join(&source))?;
    }
    let target = cache.join("docker-target");
    let mut words = build.split_whitespace();
    let program = words.next().ok_or_else(|| anyhow!("empty build command"))?;
    eprintln!("building the release binary as the Dockerfile does: `{build}`");
    let status = Command::new(program)
        .args(words)
        .current_dir(&context)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .with_context(|| format!("running `{build}`"))?;
    ensure!(
        status.success(),
        "`{build}` failed on the Docker build context"
    );
    // Then the Dockerfile's own install step (it strips), from our target dir and into the
    // cache instead of /out.
    let shipped = target.join("image/credvend");
    let install = install_command(&steps);
    let mut words = install
        .split_whitespace()
        .map(|w| match w.strip_prefix("target/") {
            _ if w == IMAGE_BINARY => shipped.clone().into_os_string(),
            Some(built) => target.join(built).into_os_string(),
            None => w.into(),
        });
    let program = words
        .next()
        .ok_or_else(|| anyhow!("empty install command"))?;
    let status = Command::new(program)
        .args(words)
        .status()
        .with_context(|| format!("running `{install}`"))?;
    ensure!(status.success(), "`{install}` failed");
    Ok(shipped)
}

/// Makes `to` a copy of `from`, writing only files whose contents differ and removing what
/// `from` no longer has.
fn sync(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_file() {
        let data = fs::read(from)?;
        if fs::read(to).ok().as_deref() != Some(&data[..]) {
            fs::write(to, data).with_context(|| format!("writing {}", to.display()))?;
        }
        return Ok(());
    }
    fs::create_dir_all(to)?;
    let mut names = std::collections::BTreeSet::new();
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        names.insert(entry.file_name());
        sync(&entry.path(), &to.join(entry.file_name()))?;
    }
    for entry in fs::read_dir(to)? {
        let entry = entry?;
        if !names.contains(&entry.file_name()) {
            let path = entry.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}
