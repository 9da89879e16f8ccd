//! The image's build, reproduced without a Docker engine: the Dockerfile's own final
//! `cargo build` command, run on exactly the files its `COPY` lines put in the build context,
//! then the binary it produces, checked for the subcommands the chart and the webhook run.
//!
//! The release build is slow the first time (it is cached under `$CREDVEND_CACHE`), so this
//! is one test that does everything once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    std::env::var_os("CREDVEND_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            base.join("credvend")
        })
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
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

#[test]
fn the_image_build_produces_a_working_binary_from_its_build_context_alone() {
    let steps = instructions();
    // The runtime stage: distroless, non-root, the one binary as entry point.
    let last_from = steps.iter().rposition(|s| s.starts_with("FROM ")).unwrap();
    let runtime = &steps[last_from..];
    assert!(
        runtime[0].contains("distroless") && runtime[0].contains("nonroot"),
        "{}",
        runtime[0]
    );
    assert!(runtime.iter().any(|s| s == "USER 65532:65532"));
    assert!(runtime.iter().any(|s| s == r#"ENTRYPOINT ["credvend"]"#));
    assert!(
        !runtime.iter().any(|s| s.starts_with("RUN ")),
        "no build tools or shell steps in the runtime stage"
    );

    // The builder stage: what it copies is the whole build context the binary may need.
    let copies: Vec<&str> = steps[..last_from]
        .iter()
        .filter_map(|s| s.strip_prefix("COPY "))
        .flat_map(|args| {
            let mut parts: Vec<&str> = args.split_whitespace().collect();
            parts.pop(); // the destination
            parts
        })
        .collect();
    assert_eq!(copies, ["Cargo.toml", "Cargo.lock", "src"]);
    let build = steps[..last_from]
        .iter()
        .rev()
        .find_map(|s| s.strip_prefix("RUN "))
        .and_then(|run| {
            run.split("&&")
                .map(str::trim)
                .find(|c| c.starts_with("cargo build"))
        })
        .unwrap()
        .to_owned();
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );

    // Reproduce the context and run the same command on it.
    let context = cache().join("docker-context");
    let _ = std::fs::remove_dir_all(context.join("src"));
    std::fs::create_dir_all(&context).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(file), context.join(file)).unwrap();
    }
    copy_dir(&repo().join("src"), &context.join("src"));
    let target = cache().join("docker-target");
    let mut words = build.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .current_dir(&context)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "`{build}` failed on the Docker build context"
    );

    let bin = target.join("release/credvend");
    let run = |args: &[&str]| {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "credvend {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
    let crd = std::fs::read_to_string(repo().join("crds/awsrolebinding.yaml")).unwrap();
    assert_eq!(
        run(&["crd"]),
        crd,
        "the image's `credvend crd` must print the committed CRD"
    );
    assert!(run(&["agent", "--help"]).contains("--role-arn"));
    assert!(run(&["operator", "--help"]).contains("--webhook-listen"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}
