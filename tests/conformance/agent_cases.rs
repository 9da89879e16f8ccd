//! ENDPOINT.md's cases that must hold against the real agent (T01–T11, T19): each starts its
//! own agent (so request counts belong to one SDK), runs one SDK client with a pod's env and
//! compares what happened with what ENDPOINT.md says that SDK does. Where an SDK was seen to
//! depart from ENDPOINT.md, the cell records the departure and why ([`Expect::departs`]); the
//! expectation itself stays ENDPOINT.md's. T04 and T10 run in a network namespace of their own
//! ([`Netns`]), so their non-loopback addresses never leave the machine.

use std::sync::Arc;
use std::time::Duration;

use super::clients::{Run, Sdk};
use super::double::{Behaviour, Double};
use super::matrix::{Against, Case, Cell, Expect};
use super::netns::{self, Netns};
use super::phrases::{cell, outcome, requests};
use super::stack::{Agent, AgentOptions, Ctx};

const fn case(id: &'static str, title: &'static str) -> Case {
    Case {
        id,
        title,
        against: Against::Agent,
        waits: false,
    }
}

/// Calls the client makes in T08, 300 ms apart.
const RESTART_CALLS: u32 = 30;

pub const CASES: &[Case] = &[
    case(
        "T01",
        "happy path: GetCallerIdentity with the vended credentials",
    ),
    case("T02", "`http://localhost:P` (agent on 127.0.0.1)"),
    case("T03", "`http://[::1]:P` (agent on ::1)"),
    case(
        "T04",
        "`http://192.0.2.10:P`, not loopback (the agent behind it, in a namespace of its own)",
    ),
    case(
        "T05",
        "TOKEN env and TOKEN_FILE both set (env holds a wrong token)",
    ),
    case("T06", "token file ends in a newline"),
    case("T07", "TOKEN env with CR/LF, no file"),
    case(
        "T08",
        "agent restarted while the client runs, 15 min credentials (the token file survives, §2)",
    ),
    case("T09", "token file missing"),
    case(
        "T10",
        "RELATIVE `/v1/credentials` with FULL_URI set (169.254.170.2 on the namespace's own lo)",
    ),
    case("T11", "request shape (URI with `?a=1`)"),
    case(
        "T19",
        "AccountId in the response reaches the SDK's credentials",
    ),
];

pub async fn run(ctx: Arc<Ctx>, case: Case, sdk: Sdk) -> Cell {
    match case.id {
        "T01" => happy_path(&ctx, sdk).await,
        "T02" => localhost(&ctx, sdk).await,
        "T03" => ipv6_loopback(&ctx, sdk).await,
        "T04" => non_loopback_host(&ctx, sdk).await,
        "T05" => env_token_and_file(&ctx, sdk).await,
        "T06" => trailing_newline(&ctx, sdk).await,
        "T07" => crlf_in_env_token(&ctx, sdk).await,
        "T08" => agent_restart(&ctx, sdk).await,
        "T09" => missing_token_file(&ctx, sdk).await,
        "T10" => relative_and_full(&ctx, sdk).await,
        "T11" => request_shape(&ctx, sdk).await,
        "T19" => account_id(&ctx, sdk).await,
        other => unreachable!("no case {other}"),
    }
}

async fn happy_path(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let run = ctx
        .run(sdk, &agent.pod_env().calls(2, Duration::ZERO))
        .await;
    let served = agent.served().await;
    let mut observed = outcome(&run, &served);
    if run.report.ok {
        let arn = run.report.arn.clone().unwrap_or_default();
        let role = if arn.ends_with(&agent.assumed_role()) {
            "assumed-role ARN"
        } else {
            "unexpected ARN"
        };
        observed = format!("{observed}, {role}");
    }
    cell(
        &run,
        observed,
        Expect::endpoint_md("ok, 1 fetch, assumed-role ARN"),
    )
}

async fn localhost(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let uri = agent.credentials_url().replace("127.0.0.1", "localhost");
    let run = ctx
        .run(
            sdk,
            &agent
                .pod_env()
                .set("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
        )
        .await;
    let served = agent.served().await;
    cell(
        &run,
        outcome(&run, &served),
        Expect::endpoint_md("ok, 1 fetch"),
    )
}

async fn ipv6_loopback(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(
        &ctx.sts,
        AgentOptions {
            ipv6: true,
            ..AgentOptions::default()
        },
    )
    .await;
    let run = ctx.run(sdk, &agent.pod_env()).await;
    let served = agent.served().await;
    cell(
        &run,
        outcome(&run, &served),
        Expect::endpoint_md("ok, 1 fetch"),
    )
}

/// Java reads AWS_CONTAINER_AUTHORIZATION_TOKEN before the file, against the spec: with a stale
/// value in the env it sends that, and the agent refuses it. Why the webhook never sets the env.
async fn env_token_and_file(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let env = agent
        .pod_env()
        .set("AWS_CONTAINER_AUTHORIZATION_TOKEN", "envtok");
    let run = ctx.run(sdk, &env).await;
    let served = agent.served().await;
    // ENDPOINT.md: Java sends the env value; the agent's part (§3) is the 401.
    let expected = match sdk {
        Sdk::Java => "fails after 1×401",
        _ => "ok, 1 fetch",
    };
    let mut cell = cell(&run, outcome(&run, &served), Expect::endpoint_md(expected));
    if sdk == Sdk::Js {
        // The JS SDK says on stderr which of the two it uses.
        let warned = run
            .stderr
            .contains("awsContainerAuthorizationTokenFile will take precedence");
        cell.note = Some(format!(
            "warning on stderr that the file takes precedence: {}",
            if warned { "yes" } else { "no" }
        ));
    }
    cell
}

/// Why the agent writes its token without a newline: every SDK refuses or mangles it.
async fn trailing_newline(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    let token = std::fs::read_to_string(agent.auth_token_file()).expect("agent wrote its token");
    std::fs::write(&file, format!("{token}\n")).expect("write token copy");
    let env = agent.pod_env().set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        &file.display().to_string(),
    );
    let run = ctx.run(sdk, &env).await;
    let served = agent.served().await;
    let expected = match sdk {
        // Node's http refuses the header value; the JS chain then tries a fallback request
        // without any Authorization, which the agent answers 401 (§3).
        Sdk::Js => "fails after 1×401",
        _ => "fails, no request",
    };
    cell(&run, outcome(&run, &served), Expect::endpoint_md(expected))
}

async fn crlf_in_env_token(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let token = std::fs::read_to_string(agent.auth_token_file()).expect("agent wrote its token");
    let env = agent
        .pod_env()
        .unset("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        .set("AWS_CONTAINER_AUTHORIZATION_TOKEN", &format!("{token}\r\n"));
    let run = ctx.run(sdk, &env).await;
    let served = agent.served().await;
    let expected = match sdk {
        Sdk::Java => Expect::departs(
            "fails, no request",
            "ok, 1 fetch",
            "the Java SDK trims every setting it reads from the environment, so the CR/LF is gone before it is sent",
        ),
        _ => Expect::endpoint_md("fails, no request"),
    };
    cell(&run, outcome(&run, &served), expected)
}

async fn missing_token_file(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-token");
    let env = agent.pod_env().set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        &missing.display().to_string(),
    );
    let run = ctx.run(sdk, &env).await;
    let served = agent.served().await;
    cell(
        &run,
        outcome(&run, &served),
        Expect::endpoint_md("fails, no request"),
    )
}

/// ENDPOINT.md's T08 rotates the token file; the agent never rotates it (§2), so the case that
/// matters here is its restart: a sidecar crash or an OOM kill while an app keeps calling AWS.
/// The app must not notice: same port, same token file (reused, not rotated). With 15-minute
/// credentials botocore re-fetches on every call, so it talks to the restarted agent; the
/// others keep their cached credentials, which is what a real restart looks like to them.
async fn agent_restart(ctx: &Ctx, sdk: Sdk) -> Cell {
    let mut agent = Agent::start(
        &ctx.sts,
        AgentOptions {
            duration: Some("15m"),
            ..AgentOptions::default()
        },
    )
    .await;
    let token_before = std::fs::read(agent.auth_token_file()).expect("agent wrote its token");
    // About 9 s of calls after the first fetch: room for the restart even on a busy machine.
    let env = agent
        .pod_env()
        .calls(RESTART_CALLS, Duration::from_millis(300));
    let client = ctx.run(sdk, &env);
    let restart = async {
        // Restart only once the client has fetched, so the restart falls inside its run.
        let fetched = agent.wait_for_requests(1, Duration::from_secs(60)).await;
        agent.restart().await;
        fetched
    };
    let (run, fetched_before) = tokio::join!(client, restart);
    let token_after = std::fs::read(agent.auth_token_file()).expect("agent kept its token");
    let after = agent.served().await;
    let observed = if !fetched_before {
        "client never fetched".to_owned()
    } else if token_after != token_before {
        "agent rotated its token".to_owned()
    } else if !run.report.ok {
        format!(
            "{} of {RESTART_CALLS} calls failed",
            u64::from(RESTART_CALLS) - run.report.succeeded
        )
    } else if after.fetches() > 0 {
        "ok, re-fetched from the restarted agent".to_owned()
    } else {
        "ok, kept its cached credentials".to_owned()
    };
    // Which of the two follows from ENDPOINT.md's refetch windows: botocore's 900 s window
    // covers 15 min credentials, the others' do not; older Java's 900 s window may (see
    // `refresh_cases::expected_fetches`), so for Java either way is as ENDPOINT.md says, as long
    // as no call failed.
    let expected = match sdk {
        Sdk::Python => "ok, re-fetched from the restarted agent",
        Sdk::Java => "ok",
        _ => "ok, kept its cached credentials",
    };
    cell(&run, observed, Expect::endpoint_md(expected))
}

/// What each SDK sends, recorded by a pass-through proxy in front of the real agent.
async fn request_shape(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let upstream = agent
        .credentials_url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("agent URL has host:port");
    let proxy = Double::start(Behaviour::Proxy(upstream)).await;
    let env = agent.pod_env().set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        &proxy.url("/v1/credentials?a=1"),
    );
    let run = ctx.run(sdk, &env).await;
    let token = std::fs::read_to_string(agent.auth_token_file()).expect("agent wrote its token");
    let requests = proxy.requests();
    let Some(first) = requests.first() else {
        return cell(
            &run,
            "no request".to_owned(),
            Expect::endpoint_md("GET /v1/credentials?a=1, raw token"),
        );
    };
    let auth = match first.header("authorization") {
        Some(value) if value == token => "raw token",
        Some(_) => "other Authorization",
        None => "no Authorization",
    };
    let accept = match first.header("accept") {
        Some("application/json") => "Accept json",
        Some(_) => "Accept other",
        None => "no Accept",
    };
    let agent_name = match first.header("user-agent") {
        Some(ua) => format!("UA {}", ua.split('/').next().unwrap_or(ua)),
        None => "no UA".to_owned(),
    };
    let observed = format!(
        "{} {}, {auth}, {accept}, {agent_name}",
        first.method, first.target
    );
    // ENDPOINT.md: a GET with the query kept and the raw token (§3), headers as its T11 row
    // lists them (b: Accept, urllib3 UA; R: accept, no UA; J: neither; V: the SDK's UA; G: not
    // given); the recorded phrase holds the headers seen, so a change of them is noticed.
    let recorded = format!(
        "GET /v1/credentials?a=1, raw token, {}",
        match sdk {
            Sdk::Python => "Accept json, UA python-urllib3",
            Sdk::Rust => "Accept json, no UA",
            Sdk::Go => "Accept json, UA Go-http-client",
            // HttpURLConnection's default Accept, and the SDK's own User-Agent.
            Sdk::Java => "Accept other, UA aws-sdk-java",
            Sdk::Js => "no Accept, no UA",
        }
    );
    let headers: Vec<String> = first
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("authorization"))
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    let expected = Expect::detail("GET /v1/credentials?a=1, raw token", recorded);
    let mut cell = cell(&run, observed, expected);
    cell.note = Some(format!(
        "{} request(s); headers besides Authorization: {}",
        requests.len(),
        headers.join("; ")
    ));
    cell
}

/// The agent sends AccountId; which SDKs keep it on the credentials they hand out.
async fn account_id(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let served = agent.fetch_directly().await;
    let sent = served["AccountId"].as_str().unwrap_or_default().to_owned();
    let run = ctx
        .run(
            sdk,
            &agent.pod_env().set("CREDVEND_SDK_REPORT_ACCOUNT", "1"),
        )
        .await;
    let kept = |id: &str| {
        if id.is_empty() {
            "AccountId dropped".to_owned()
        } else {
            format!("AccountId {id}")
        }
    };
    let observed = match (&run.report.account_id, run.report.ok) {
        (_, false) => "fails".to_owned(),
        (Some(id), true) => kept(id),
        (None, true) => kept(""),
    };
    let expected = match sdk {
        // ENDPOINT.md: the JS HTTP provider does not read the field.
        Sdk::Js => Expect::endpoint_md(kept("")),
        Sdk::Java => Expect::departs(
            kept(&sent),
            kept(""),
            "2.57's HttpCredentialsLoader reads only AccessKeyId, SecretAccessKey, Token and Expiration",
        ),
        _ => Expect::endpoint_md(kept(&sent)),
    };
    cell(&run, observed, expected)
}

/// T04's host: TEST-NET-1, put on the namespace's own `lo`, so it is no loopback address to the
/// SDK and yet nothing sent to it could leave the machine.
const FOREIGN_HOST: &str = "192.0.2.10";

/// The real agent reached through a recording proxy listening on `addr` inside `ns`, and moto
/// through a tunnel, so a client in the namespace has what a pod has.
struct Inside {
    door: Double,
    sts: netns::Tunnel,
}

fn inside(ctx: &Ctx, ns: &Netns, agent: &Agent, addr: &str) -> Inside {
    let upstream = netns::authority(&agent.credentials_url()).expect("agent URL");
    let door = Double::serve(
        ns.listen(addr.parse().expect("address"))
            .expect("listen in the namespace"),
        Behaviour::Proxy(upstream),
    );
    let sts = netns::tunnel(
        ns.listen("127.0.0.1:0".parse().expect("address"))
            .expect("listen in the namespace"),
        netns::authority(ctx.sts.endpoint()).expect("moto URL"),
    )
    .expect("tunnel to moto");
    Inside { door, sts }
}

/// `ok` or `fails`, and how many requests reached the door (`no request` when none did).
fn sent(run: &Run, door: &Double) -> String {
    match door.requests().len() {
        0 if run.report.ok => "ok, no request".to_owned(),
        0 => "fails, no request".to_owned(),
        n => requests(run, n),
    }
}

/// Every SDK refuses plain http to a host that is not loopback (nor an ECS/EKS address) before
/// sending anything; the agent behind the address would have answered.
async fn non_loopback_host(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let ns = Netns::new(&[&format!("{FOREIGN_HOST}/32")]).expect("a network namespace");
    let inside = inside(ctx, &ns, &agent, &format!("{FOREIGN_HOST}:8080"));
    let env = agent
        .pod_env()
        .set(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &inside.door.url("/v1/credentials"),
        )
        .set(
            "AWS_ENDPOINT_URL_STS",
            &format!("http://{}", inside.sts.addr),
        );
    let run = ctx.run_in(sdk, &env, &ns).await;
    cell(
        &run,
        sent(&run, &inside.door),
        Expect::endpoint_md("fails, no request"),
    )
}

/// Which URI wins when both are set: the reason the webhook never sets RELATIVE (§1). Each URI
/// leads to the agent, through its own recording proxy; the cell says which one was asked.
async fn relative_and_full(ctx: &Ctx, sdk: Sdk) -> Cell {
    let agent = Agent::start(&ctx.sts, AgentOptions::default()).await;
    let ns = Netns::new(&["169.254.170.2/32"]).expect("a network namespace");
    let full = inside(ctx, &ns, &agent, "127.0.0.1:0");
    let relative = Double::serve(
        ns.listen("169.254.170.2:80".parse().expect("address"))
            .expect("listen in the namespace"),
        Behaviour::Proxy(netns::authority(&agent.credentials_url()).expect("agent URL")),
    );
    let env = agent
        .pod_env()
        .set(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &full.door.url("/v1/credentials"),
        )
        .set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v1/credentials")
        .set("AWS_ENDPOINT_URL_STS", &format!("http://{}", full.sts.addr));
    let run = ctx.run_in(sdk, &env, &ns).await;
    let asked = match (
        relative.requests().is_empty(),
        full.door.requests().is_empty(),
    ) {
        (false, true) => "asks RELATIVE",
        (true, false) => "asks FULL",
        (false, false) => "asks both",
        (true, true) => "asks neither",
    };
    let result = if run.report.ok { "ok" } else { "fails" };
    // ENDPOINT.md: RELATIVE wins everywhere but in Go.
    let expected = match sdk {
        Sdk::Go => Expect::departs(
            "asks FULL",
            "asks RELATIVE, ok",
            "aws-sdk-go-v2's config (resolve_credentials.go) checks AWS_CONTAINER_CREDENTIALS_RELATIVE_URI before FULL_URI, as the other SDKs do",
        ),
        _ => Expect::endpoint_md("asks RELATIVE"),
    };
    cell(&run, format!("{asked}, {result}"), expected)
}
