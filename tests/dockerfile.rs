//! The image's build, reproduced without a Docker engine: the Dockerfile's own final
//! `cargo build` command, run on exactly the files its `COPY` lines put in the build context,
//! then the binary it produces, checked for the subcommands the chart and the webhook run.
//!
//! The release build is slow the first time (it is cached under `$CREDVEND_CACHE` and shared
//! with the pod-level tests' image, see `support::release`), so this is one test that does
//! everything once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::release;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_image_build_produces_a_working_binary_from_its_build_context_alone() {
    let steps = release::instructions();
    // The runtime stage: distroless, non-root, the one binary as entry point.
    let last_from = release::runtime_stage_start(&steps);
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
    assert_eq!(
        release::build_context(&steps),
        ["Cargo.toml", "Cargo.lock", "build.rs", "layout", "src"]
    );
    let build = release::build_command(&steps);
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );

    // The same command on a copy of that context (the build every image test shares).
    let bin = release::binary();
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
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
    // Shipped stripped (the Dockerfile's `install -s`; the release profile keeps the symbols
    // that scripts/agent-layout.sh records the agent's layout from): every pod maps this file,
    // and symbols would be a third of it. A stripped ELF keeps no `.symtab` section name.
    let image = std::fs::read(bin).unwrap();
    assert!(
        !image.windows(9).any(|w| w == b"\0.symtab\0"),
        "the release binary still has its symbol table"
    );
    assert!(run(&["agent", "--help"]).contains("--role-arn"));
    assert!(run(&["operator", "--help"]).contains("--webhook-listen"));
}
