//! ENDPOINT.md's cases T12–T23: how each SDK reacts when the endpoint misbehaves (errors,
//! broken bodies, odd Expiration formats, stalls, a closed port). The agent never does these
//! things on purpose; the cases document the SDKs, so that the agent's real behaviour (status
//! codes, bodies, timing) can be chosen against them. A scripted [`Double`] stands in for the
//! agent and counts the requests.

use std::sync::Arc;
use std::time::Duration;

use super::clients::{PodEnv, Run, Sdk};
use super::double::{Behaviour, Double, Reply};
use super::matrix::{Against, Case, Cell, Expect};
use super::phrases::{cell, requests as phrase, shorten};
use super::stack::Ctx;

const fn case(id: &'static str, title: &'static str) -> Case {
    Case {
        id,
        title,
        against: Against::Double,
        waits: false,
    }
}

pub const CASES: &[Case] = &[
    case("T12", "500 on every request"),
    case("T13", "429 on every request"),
    case("T14", "403, then (separately) 404, with a JSON error"),
    case("T15", "200 with a body that is not JSON"),
    case("T16", "200 with an error body `{\"Code\",\"Message\"}`"),
    case("T17", "200 without Expiration"),
    case("T18", "Expiration `+00:00` / no zone / `.123456Z`"),
    case("T21", "already-expired credentials"),
    case("T22", "answer delayed 1.5 s / 3 s"),
    case("T23", "nothing listening on the port"),
];

pub async fn run(ctx: Arc<Ctx>, case: Case, sdk: Sdk) -> Cell {
    match case.id {
        "T12" => {
            requests_until_failure(&ctx, sdk, Reply::json(500, error_body("InternalError"))).await
        }
        "T13" => requests_until_failure(&ctx, sdk, Reply::json(429, error_body("Throttled"))).await,
        "T14" => forbidden_and_not_found(&ctx, sdk).await,
        "T15" => requests_until_failure(&ctx, sdk, Reply::json(200, "{not json")).await,
        "T16" => {
            let body = r#"{"Code":"X","Message":"m"}"#;
            requests_until_failure(&ctx, sdk, Reply::json(200, body)).await
        }
        "T17" => {
            let body =
                r#"{"AccessKeyId":"ASIADOUBLE0000000017","SecretAccessKey":"s","Token":"t"}"#;
            requests_until_failure(&ctx, sdk, Reply::json(200, body)).await
        }
        "T18" => expiration_formats(&ctx, sdk).await,
        "T21" => {
            requests_until_failure(
                &ctx,
                sdk,
                Reply::json(200, credentials(-60, "ASIADOUBLE0000000021")),
            )
            .await
        }
        "T22" => slow_answers(&ctx, sdk).await,
        "T23" => closed_port(&ctx, sdk).await,
        other => unreachable!("no case {other}"),
    }
}

fn error_body(code: &str) -> String {
    format!(r#"{{"code":"{code}","message":"scripted by the conformance test"}}"#)
}

/// A credentials body that expires `lifetime` seconds from now (negative: in the past), with
/// the Expiration in the agent's format (UTC, whole seconds, `Z`).
pub fn credentials(lifetime: i64, key: &str) -> String {
    credentials_expiring(&expiration(lifetime, "Z"), key)
}

pub fn credentials_expiring(expiration: &str, key: &str) -> String {
    serde_json::json!({
        "AccessKeyId": key, "SecretAccessKey": "secret", "Token": "token",
        "AccountId": "123456789012", "Expiration": expiration,
    })
    .to_string()
}

/// `YYYY-MM-DDTHH:MM:SS` `lifetime` seconds from now, followed by `suffix` (`Z`, `+00:00`, …).
fn expiration(lifetime: i64, suffix: &str) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(lifetime);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    format!("{}{suffix}", at.format(&format).expect("formattable date"))
}

/// The env for a client of the double; the token file holds a plain token (the double does not
/// check it).
fn pod_env(ctx: &Ctx, uri: &str, dir: &tempfile::TempDir) -> PodEnv {
    let token = dir.path().join("token");
    std::fs::write(&token, "double-token").expect("write token");
    PodEnv::new(uri, &token, ctx.sts.endpoint())
}

/// One client run against the double answering `behaviour`: outcome and request count.
async fn against(ctx: &Ctx, sdk: Sdk, behaviour: Behaviour) -> (Run, usize) {
    let double = Double::start(behaviour).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let run = ctx
        .run(sdk, &pod_env(ctx, &double.url("/v1/credentials"), &dir))
        .await;
    (run, double.requests().len())
}

/// The same scripted answer to every request: how many attempts before the SDK gives up (or
/// whether it accepts the answer at all).
async fn requests_until_failure(ctx: &Ctx, sdk: Sdk, reply: Reply) -> Cell {
    let status = reply.status;
    let body = reply.body.clone();
    let (run, requests) = against(ctx, sdk, Behaviour::always(reply)).await;
    let expected = expected_attempts(sdk, status, &body);
    cell(&run, phrase(&run, requests), expected)
}

fn fails(n: usize) -> String {
    format!("fails after {n} requests").replace("after 1 requests", "after 1 request")
}

/// ENDPOINT.md's expectation for a scripted answer, as the phrase [`phrase`] produces, with
/// what was seen where an SDK departs from it or ENDPOINT.md gives less.
fn expected_attempts(sdk: Sdk, status: u16, body: &str) -> Expect {
    use Sdk::*;
    let exactly = |n: usize| Expect::endpoint_md(fails(n));
    match (status, body) {
        (500, _) => match sdk {
            Python | Rust => exactly(3),
            // JS: its HTTP provider tries 4 times, then the chain falls back to the older
            // container-metadata provider, which asks once more.
            Js => exactly(5),
            Java => exactly(6),
            Go => Expect::departs(
                fails(3),
                fails(9),
                "the STS client's own retryer also retries the failed credential retrieval, each time with the provider's 3 attempts: 3 × 3",
            ),
        },
        (429, _) => exactly(match sdk {
            Python | Go => 3,
            Rust | Java => 1,
            Js => 5,
        }),
        (200, "{not json") => match sdk {
            Python | Rust => exactly(3),
            Js => exactly(4),
            // ENDPOINT.md gives no count for Go and Java.
            Go | Java => Expect::unstated(fails(1)),
        },
        // ENDPOINT.md: b KeyError; R fails after 1 attempt; J falls back (then fails); G accepts
        // empty credentials; V "Failed to load access key".
        (200, b) if b.contains("\"Code\"") => match sdk {
            Rust => exactly(1),
            Go => Expect::detail("ok", "ok, 1 request"),
            Js => Expect::detail("fails", fails(5)),
            Python | Java => Expect::detail("fails", fails(1)),
        },
        // ENDPOINT.md: b KeyError; R MissingField after 3 attempts; J falls back, then fails;
        // G keeps the credentials forever; V prefetches in 1 h.
        (200, b) if !b.contains("Expiration") => match sdk {
            Rust => exactly(3),
            Go => Expect::detail("ok", "ok, 1 request"),
            Js => Expect::detail("fails", fails(5)),
            Python => Expect::detail("fails", fails(1)),
            Java => Expect::departs(
                "ok",
                fails(1),
                "2.57 fails with a NullPointerException from comparing the missing expiry (\"otherInstant is null\")",
            ),
        },
        // Already expired. ENDPOINT.md: b "still expired"; G (newest) an "already-expired"
        // error; V uses them with a warning; R and J use them, re-fetching on every check.
        (200, _) => match sdk {
            Python => Expect::detail("fails", fails(2)),
            Go => Expect::departs(
                "fails",
                "ok, 1 request",
                "aws-sdk-go-v2 as pinned uses them without an error; the \"already-expired\" error is from a newer release",
            ),
            Js => Expect::detail("ok", "ok, 3 requests"),
            Rust | Java => Expect::detail("ok", "ok, 1 request"),
        },
        _ => Expect::unstated("?"),
    }
}

async fn forbidden_and_not_found(ctx: &Ctx, sdk: Sdk) -> Cell {
    let (run403, n403) = against(
        ctx,
        sdk,
        Behaviour::always(Reply::json(403, error_body("AccessDenied"))),
    )
    .await;
    let (run404, n404) = against(
        ctx,
        sdk,
        Behaviour::always(Reply::json(404, error_body("NotFound"))),
    )
    .await;
    let observed = format!(
        "403: {}; 404: {}",
        phrase(&run403, n403),
        phrase(&run404, n404)
    );
    let attempts = match sdk {
        Sdk::Python => 3,
        Sdk::Js => 5,
        _ => 1,
    };
    let fails = if attempts == 1 {
        "fails after 1 request".to_owned()
    } else {
        format!("fails after {attempts} requests")
    };
    let expected = format!("403: {fails}; 404: {fails}");
    let mut cell = cell(&run403, observed, Expect::endpoint_md(expected));
    cell.note = Some(format!(
        "403: {} / 404: {}",
        shorten(run403.report.error_text(), 140),
        shorten(run404.report.error_text(), 140)
    ));
    cell
}

async fn expiration_formats(ctx: &Ctx, sdk: Sdk) -> Cell {
    let variants = [
        ("+00:00", "+00:00"),
        ("no zone", ""),
        (".123456Z", ".123456Z"),
    ];
    let mut observed = Vec::new();
    let mut notes = Vec::new();
    let mut last = None;
    for (name, suffix) in variants {
        let body = credentials_expiring(&expiration(3600, suffix), "ASIADOUBLE0000000018");
        let (run, _) = against(ctx, sdk, Behaviour::always(Reply::json(200, body))).await;
        observed.push(format!(
            "{name} {}",
            if run.report.ok { "ok" } else { "fails" }
        ));
        if !run.report.ok {
            notes.push(format!("{name}: {}", shorten(run.report.error_text(), 120)));
        }
        last = Some(run);
    }
    // ENDPOINT.md: an offset is accepted by b, G, V and refused by R, J; no zone is refused by
    // b, R, J, G (it says nothing of Java); fractions are accepted by all.
    let verdicts: [&str; 3] = match sdk {
        Sdk::Python | Sdk::Java | Sdk::Go => ["ok", "fails", "ok"],
        Sdk::Rust | Sdk::Js => ["fails", "fails", "ok"],
    };
    let phrase: Vec<String> = variants
        .iter()
        .zip(verdicts)
        .map(|((n, _), v)| format!("{n} {v}"))
        .collect();
    let expect = match sdk {
        Sdk::Java => Expect::detail("+00:00 ok", phrase.join(", ")),
        _ => Expect::endpoint_md(phrase.join(", ")),
    };
    let run = last.expect("three variants");
    let mut cell = cell(&run, observed.join(", "), expect);
    cell.note = (!notes.is_empty()).then(|| notes.join(" / "));
    cell
}

async fn slow_answers(ctx: &Ctx, sdk: Sdk) -> Cell {
    let mut observed = Vec::new();
    let mut last = None;
    for delay in [1500, 3000] {
        let reply = Reply::json(200, credentials(3600, "ASIADOUBLE0000000022"))
            .after(Duration::from_millis(delay));
        let (run, requests) = against(ctx, sdk, Behaviour::always(reply)).await;
        observed.push(format!(
            "{:.1}s: {}",
            delay as f64 / 1000.0,
            phrase(&run, requests)
        ));
        last = Some(run);
    }
    // ENDPOINT.md: J and V time out at 1 s, b at 2 s, R at 5 s; G has none. A timed-out
    // request is retried as an error is (T12's counts).
    let both_ok = "1.5s: ok, 1 request; 3.0s: ok, 1 request";
    let expected = match sdk {
        Sdk::Rust | Sdk::Go => Expect::endpoint_md(both_ok),
        Sdk::Python => Expect::endpoint_md("1.5s: ok, 1 request; 3.0s: fails after 3 requests"),
        Sdk::Js => Expect::departs(
            "1.5s: fails after 5 requests; 3.0s: fails after 5 requests",
            both_ok,
            "the JS HTTP provider passes a 1 s requestTimeout, but 3.1169 waited out a 3 s answer and used it",
        ),
        Sdk::Java => {
            Expect::endpoint_md("1.5s: fails after 6 requests; 3.0s: fails after 6 requests")
        }
    };
    let run = last.expect("two delays");
    cell(&run, observed.join("; "), expected)
}

async fn closed_port(ctx: &Ctx, sdk: Sdk) -> Cell {
    // Nothing listens on it, and no outgoing connection takes it meanwhile.
    let port = crate::support::ports::free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = ctx
        .run(
            sdk,
            &pod_env(
                ctx,
                &format!("http://127.0.0.1:{port}/v1/credentials"),
                &dir,
            ),
        )
        .await;
    let observed = if run.report.ok { "ok" } else { "fails" };
    // ENDPOINT.md gives each SDK's attempts; with nothing listening they cannot be counted.
    cell(&run, observed.to_owned(), Expect::endpoint_md("fails"))
}
