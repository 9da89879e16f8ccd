//! Benchmark: the credentials endpoint's request path against a per-request baseline.
//!
//! The agent renders the credentials document once per refresh and serves the same bytes to
//! every request. The baseline is what an endpoint that serializes per request would do:
//! render the document, then answer. Both run here, in the same process and the same run, and
//! the output is their ratio (timings on a shared machine vary; the ratio is what to read).
//! No threshold is asserted. Run with `cargo bench --bench endpoint`; `cargo test` runs it once
//! with few iterations so it cannot rot.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use credvend::agent::auth::AuthToken;
use credvend::agent::cache::{Cached, Caches, CredentialCache};
use credvend::agent::credentials::Credentials;
use credvend::agent::endpoint::{CREDENTIALS_PATH, EndpointRequest, respond};
use http::Method;
use secrecy::SecretString;

const TOKEN: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

fn credentials() -> Credentials {
    Credentials {
        access_key_id: "ASIAEXAMPLEEXAMPLE12".into(),
        secret_access_key: SecretString::from("s".repeat(40)),
        // Session tokens are typically 1–4 KB.
        session_token: SecretString::from("t".repeat(2048)),
        expiration: SystemTime::now() + Duration::from_secs(3600),
        assumed_role_arn: Some(
            "arn:aws:sts::111122223333:assumed-role/s3-reader/team-a.web-0".into(),
        ),
    }
}

fn time_per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` does not: a quick smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let iterations = if full { 200_000 } else { 2_000 };
    let auth = AuthToken::new(TOKEN.into());
    let creds = credentials();
    let cache = CredentialCache::default();
    cache.store(Cached::new(&creds));
    let cache = Caches::single("default", std::sync::Arc::new(cache));
    let req = EndpointRequest {
        method: &Method::GET,
        path: CREDENTIALS_PATH,
        authorization: Some(TOKEN.as_bytes()),
    };

    let served = time_per_call(iterations, || {
        black_box(respond(black_box(req), &auth, &cache, SystemTime::now()));
    });
    let baseline = time_per_call(iterations, || {
        // Per-request rendering: what the agent avoids.
        let per_request = std::sync::Arc::new(CredentialCache::default());
        per_request.store(Cached::new(black_box(&creds)));
        let per_request = Caches::single("default", per_request);
        black_box(respond(
            black_box(req),
            &auth,
            &per_request,
            SystemTime::now(),
        ));
    });
    let ratio = baseline.as_secs_f64() / served.as_secs_f64().max(f64::MIN_POSITIVE);
    println!("endpoint request path ({iterations} iterations each)");
    println!("  pre-rendered body (credvend): {served:>10.2?} per request");
    println!("  render per request (baseline): {baseline:>10.2?} per request");
    println!("  baseline / credvend: {ratio:.1}x");
}
