//! Five real AWS SDKs get credentials from the real agent through their default credential
//! chains, and behave as the endpoint notes' (ENDPOINT.md) cases say, or as documented where
//! they do not. The suite's parts are in `tests/conformance/` (start with its module doc);
//! the client programs are in `tests/sdk/`, installed by `scripts/sdk-clients.sh`.
//!
//! The test prints the SDK × case matrix and writes it to `target/sdk-matrix.md`, whatever the
//! outcome, then fails if any cell differs from its expectation. `scripts/sdk-matrix.sh` puts
//! the matrix into the README.

mod conformance;
mod support;

use std::path::PathBuf;

use conformance::clients::{Clients, Sdk};
use conformance::matrix::Matrix;
use conformance::refresh_cases::{self, REFRESH_LIFETIME, SHORT_LIFETIMES};
use conformance::stack::Ctx;
use conformance::{agent_cases, double_cases};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_gets_credentials_from_the_agent_as_endpoint_md_says() {
    let clients = Clients::locate().expect("SDK clients (run `make sdks`)");
    let mut lifetimes = SHORT_LIFETIMES.to_vec();
    lifetimes.push(REFRESH_LIFETIME);
    let ctx = Ctx::new(clients, &lifetimes).await;

    let mut tasks = tokio::task::JoinSet::new();
    for (suite, cases) in [
        (Suite::Agent, agent_cases::CASES),
        (Suite::Refresh, refresh_cases::CASES),
        (Suite::Double, double_cases::CASES),
    ] {
        for (&case, sdk) in cases.iter().flat_map(|c| Sdk::ALL.map(move |s| (c, s))) {
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let _slot = if case.waits {
                    None
                } else {
                    Some(ctx.slot().await)
                };
                let cell = match suite {
                    Suite::Agent => agent_cases::run(ctx.clone(), case, sdk).await,
                    Suite::Refresh => refresh_cases::run(ctx.clone(), case, sdk).await,
                    Suite::Double => double_cases::run(ctx.clone(), case, sdk).await,
                };
                (case, sdk, cell)
            });
        }
    }
    let mut matrix = Matrix::default();
    while let Some(done) = tasks.join_next().await {
        let (case, sdk, cell) = done.expect("a case panicked");
        matrix.add(case, sdk, cell);
    }

    let markdown = matrix.to_markdown();
    println!("{markdown}");
    let out = target_dir().join("sdk-matrix.md");
    std::fs::write(&out, &markdown).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    let failures = matrix.failures();
    assert!(
        failures.is_empty(),
        "{} cells differ from their expectation:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Which module runs a case.
#[derive(Clone, Copy)]
enum Suite {
    Agent,
    Refresh,
    Double,
}

/// The cargo target directory: this test binary runs from `<target>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}
