//! The real `credvend agent` binary against moto's STS and a real SDK (boto3).
//!
//! Each test starts its own STS peer and agent on free loopback ports. The peer records what
//! the agent sent, because moto itself accepts any role, duration and token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::agent::{AgentOptions, AgentProcess, ROLE_ARN, SESSION_NAME, fake_jwt};
use support::http::{self, eventually};
use support::python::app_python;
use support::sts::StsPeer;

const READY: Duration = Duration::from_secs(30);

/// What an app container runs: boto3 with only the env the webhook injects, resolving
/// credentials through its default chain and calling GetCallerIdentity on moto.
const BOTO3_APP: &str = r#"
import boto3, json
arn = boto3.client("sts").get_caller_identity()["Arn"]
creds = boto3.Session().get_credentials().get_frozen_credentials()
print(json.dumps({"arn": arn, "access_key_id": creds.access_key}))
"#;

fn run_boto3(agent: &AgentProcess, sts: &StsPeer) -> serde_json::Value {
    run_boto3_at(agent, sts, &agent.credentials_url())
}

/// boto3 with `AWS_CONTAINER_CREDENTIALS_FULL_URI` set to `uri`.
fn run_boto3_at(agent: &AgentProcess, sts: &StsPeer, uri: &str) -> serde_json::Value {
    let out = app_python(BOTO3_APP, sts.endpoint())
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
        .env(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            agent.auth_token_file(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn ready_agent(sts: &StsPeer) -> AgentProcess {
    let agent = AgentProcess::start(AgentOptions::new(sts.endpoint()));
    agent.wait_ready(READY).await;
    agent
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_gets_credentials_and_sees_the_assumed_role() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;

    let result = run_boto3(&agent, &sts);
    assert_eq!(
        result["arn"],
        format!("arn:aws:sts::111122223333:assumed-role/s3-reader/{SESSION_NAME}")
    );
    assert!(
        result["access_key_id"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
    );

    // moto accepts anything, so check what the agent actually asked for.
    let calls = sts.web_identity_calls().await;
    assert_eq!(
        calls.len(),
        1,
        "one exchange for any number of requests: {calls:?}"
    );
    let call = &calls[0];
    assert_eq!(call["RoleArn"], ROLE_ARN);
    assert_eq!(call["RoleSessionName"], SESSION_NAME);
    assert_eq!(call["DurationSeconds"], "3600");
    let token = std::fs::read_to_string(agent.token_file()).unwrap();
    assert_eq!(call["WebIdentityToken"], token.as_str());
    assert!(agent.requests_served().await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_the_exact_document_and_headers_sdks_expect() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let reply = agent.fetch().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["cache-control"], "no-store");
    let doc = reply.json();
    let mut keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "AccountId",
            "Expiration",
            "SecretAccessKey",
            "Token"
        ]
    );
    assert_eq!(doc["AccountId"], "111122223333");
    let exp = doc["Expiration"].as_str().unwrap();
    assert!(
        exp.ends_with('Z') && exp.len() == 20 && !exp.contains('.'),
        "{exp}"
    );
    // The expiry metric matches what is served.
    let gauge = agent
        .metric(r#"credvend_credentials_expiration_timestamp_seconds{binding="default"}"#)
        .await
        .unwrap();
    let served =
        time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(gauge as i64, served.unix_timestamp());
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_bad_requests_with_json_errors() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let token = agent.auth_token();
    let url = agent.credentials_url();
    let base = url.trim_end_matches("/v1/credentials");
    type Case<'a> = (&'a str, String, Option<&'a [u8]>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", url.clone(), None, 401, "Unauthorized"),
        (
            "GET",
            url.clone(),
            Some(b"not-the-token"),
            401,
            "Unauthorized",
        ),
        (
            "GET",
            url.clone(),
            Some(format!("Bearer {token}").as_bytes().to_vec().leak()),
            401,
            "Unauthorized",
        ),
        (
            "GET",
            format!("{base}/latest/meta-data"),
            Some(token.as_bytes()),
            404,
            "NotFound",
        ),
        (
            "POST",
            url.clone(),
            Some(token.as_bytes()),
            405,
            "MethodNotAllowed",
        ),
        (
            "DELETE",
            url.clone(),
            Some(token.as_bytes()),
            405,
            "MethodNotAllowed",
        ),
    ];
    for (method, target, authz, status, code) in cases {
        let headers: Vec<(&str, &[u8])> = authz.map(|a| ("authorization", a)).into_iter().collect();
        let reply = http::request(method, &target, &headers).await.unwrap();
        assert_eq!(reply.status, status, "{method} {target}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let body = reply.json();
        assert_eq!(body["code"], code);
        assert!(body.get("AccessKeyId").is_none());
    }
    let rejected = agent
        .metric(r#"credvend_endpoint_requests_total{status="401"}"#)
        .await;
    assert_eq!(rejected, Some(3.0));
    // A query string does not change the answer (some SDKs keep the URI's query).
    let reply = http::request(
        "GET",
        &format!("{url}?a=1"),
        &[("authorization", token.as_bytes())],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_are_refused_without_harm() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let huge = vec![b'a'; 64 * 1024];
    let result = http::request("GET", &agent.credentials_url(), &[("x-padding", &huge)]).await;
    // The server answers 431 or just closes the connection; either way nothing is served.
    if let Ok(reply) = result {
        assert_eq!(reply.status, 431, "{}", reply.text());
    }
    assert_eq!(
        agent.fetch().await.status,
        200,
        "the agent still serves after a bad client"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_empty_or_unreadable_token_keeps_the_agent_unready_and_says_why() {
    let sts = StsPeer::start();
    let mut opts = AgentOptions::new(sts.endpoint());
    opts.token = None;
    let agent = AgentProcess::start(opts);
    agent.wait_up(READY).await;

    let missing = r#"credvend_token_errors_total{binding="default",reason="missing"}"#;
    eventually("a missing-token error", READY, || async {
        agent.metric(missing).await
    })
    .await;
    assert_eq!(
        http::get(&agent.metrics_url("/healthz/ready"))
            .await
            .unwrap()
            .status,
        503
    );
    let reply = agent.fetch().await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["code"], "CredentialsUnavailable");
    assert!(
        agent.log().contains("does not exist"),
        "log:\n{}",
        agent.log()
    );

    std::fs::write(agent.token_file(), "").unwrap();
    let empty = r#"credvend_token_errors_total{binding="default",reason="empty"}"#;
    eventually("an empty-token error", READY, || async {
        agent.metric(empty).await
    })
    .await;
    assert!(agent.log().contains("is empty"));

    std::fs::remove_file(agent.token_file()).unwrap();
    std::fs::create_dir(agent.token_file()).unwrap();
    let unreadable = r#"credvend_token_errors_total{binding="default",reason="unreadable"}"#;
    eventually("an unreadable-token error", READY, || async {
        agent.metric(unreadable).await
    })
    .await;

    // The kubelet writes the token: the agent recovers by itself.
    std::fs::remove_dir(agent.token_file()).unwrap();
    std::fs::write(
        agent.token_file(),
        support::agent::fake_jwt(Duration::from_secs(3600)),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(agent.fetch().await.status, 200);
    assert!(
        sts.web_identity_calls().await.len() == 1,
        "no STS call was made without a token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keeps_serving_cached_credentials_while_sts_fails_and_recovers() {
    let sts = StsPeer::start();
    // STS hands out 20-second credentials, so the agent renews every 10 seconds.
    sts.set_lifetime(20).await;
    let agent = ready_agent(&sts).await;
    let first = agent.fetch().await.json();

    sts.fail("Throttling", 400).await;
    let throttled = r#"credvend_sts_errors_total{binding="default",code="Throttling"}"#;
    eventually("a failed refresh", READY, || async {
        agent.metric(throttled).await
    })
    .await;
    let during = agent.fetch().await;
    assert_eq!(
        during.status, 200,
        "cached credentials must still be served"
    );
    assert_eq!(during.json()["AccessKeyId"], first["AccessKeyId"]);
    assert!(
        agent
            .metric(r#"credvend_credentials_refresh_total{binding="default",result="failure"}"#)
            .await
            >= Some(1.0)
    );

    sts.recover().await;
    eventually("a new access key", READY, || async {
        let doc = agent.fetch().await.json();
        (doc["AccessKeyId"] != first["AccessKeyId"]).then_some(())
    })
    .await;
    let log = agent.log();
    assert!(
        log.contains("Throttling"),
        "the failure is logged with its code"
    );
    // The first retries come after 0.5-1 s: logged in milliseconds, never as "0s".
    assert!(
        log.contains("retry_in=") && !log.contains("retry_in=0s"),
        "{log}"
    );
    assert!(log.contains("ms still_serving_cached=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_sts_is_survived_until_expiry_then_answered_with_503() {
    let mut sts = StsPeer::start();
    sts.set_lifetime(20).await;
    let agent = ready_agent(&sts).await;

    sts.stop();
    // The cause survives into the metric's code and the log (was "Unreachable" and
    // "connection failed" for every cause).
    let refused = r#"credvend_sts_errors_total{binding="default",code="ConnectionRefused"}"#;
    eventually("a refused connection to STS", READY, || async {
        agent.metric(refused).await
    })
    .await;
    assert!(
        agent.log().contains("Connection refused"),
        "the OS error is in the log:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.fetch().await.status,
        200,
        "still within the cached lifetime"
    );

    // Never serve expired credentials: once they lapse, the answer is 503 and not ready.
    eventually("expiry of the cached credentials", READY, || async {
        (agent.fetch().await.status == 503).then_some(())
    })
    .await;
    assert_eq!(
        http::get(&agent.metrics_url("/healthz/ready"))
            .await
            .unwrap()
            .status,
        503
    );

    sts.restart();
    sts.set_lifetime(0).await;
    agent.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(agent.fetch().await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_listen_beyond_loopback() {
    let sts = StsPeer::start();
    let mut opts = AgentOptions::new(sts.endpoint());
    opts.listen_host = "0.0.0.0".into();
    let mut agent = AgentProcess::start(opts);
    let status = agent.wait_exit(READY);
    assert!(!status.success());
    assert!(
        agent.log().contains("is not a loopback address"),
        "log:\n{}",
        agent.log()
    );
    assert!(sts.web_identity_calls().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_reuses_the_auth_token_and_sigterm_exits_cleanly() {
    let sts = StsPeer::start();
    let mut agent = ready_agent(&sts).await;
    let before = agent.auth_token();
    assert_eq!(before.len(), 43);
    assert!(!before.ends_with('\n'));

    agent.restart();
    agent.wait_ready(READY).await;
    assert_eq!(
        agent.auth_token(),
        before,
        "clients that read the file once keep working"
    );
    assert_eq!(agent.fetch().await.status, 200);
    assert!(agent.log().contains("auth_token_reused=true"));

    let status = agent.terminate();
    assert!(
        status.success(),
        "SIGTERM should end the agent with status 0, got {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    let doc = agent.fetch().await.json();
    // Provoke error paths too.
    http::request(
        "GET",
        &agent.credentials_url(),
        &[("authorization", b"wrong")],
    )
    .await
    .unwrap();
    let log = agent.log();
    // Debug logging was on, and the debug lines that format each secret-holding value (with
    // its redacting Debug) ran: the web identity token, the credentials, the endpoint token.
    for event in [
        "read the web identity token",
        "new credentials",
        "endpoint authorization token ready",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(" DEBUG ") && l.contains(event) && l.contains("[redacted]")),
            "no debug line {event:?} with a redacted value:\n{log}"
        );
    }
    // Nothing of a credential is logged, the access key id included (README "Security model").
    let access_key_id = doc["AccessKeyId"].as_str().unwrap();
    assert!(
        !log.contains(access_key_id),
        "the access key id appears in the log"
    );
    let token = std::fs::read_to_string(agent.token_file()).unwrap();
    for (what, secret) in [
        (
            "secret access key",
            doc["SecretAccessKey"].as_str().unwrap(),
        ),
        ("session token", doc["Token"].as_str().unwrap()),
        ("web identity token", token.as_str()),
        ("auth token", agent.auth_token().as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_arrive_expired_are_retried_with_backoff_and_blamed_on_the_clock() {
    let sts = StsPeer::start();
    // What an agent on a node whose clock is an hour fast sees.
    sts.issue_expired(3600).await;
    let agent = AgentProcess::start(AgentOptions::new(sts.endpoint()));
    agent.wait_up(READY).await;
    let expired =
        r#"credvend_sts_errors_total{binding="default",code="CredentialsExpiredOnArrival"}"#;
    eventually("four expired answers", READY, || async {
        agent.metric(expired).await.filter(|n| *n >= 4.0)
    })
    .await;
    // Exponential backoff with equal jitter: the n-th retry waits at least half of 2^n s
    // (0.5, 1, 2 s), where the agent used to call again at once (192 calls in 10 s).
    let times = sts.web_identity_call_times().await;
    for (n, pair) in times.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = 0.5 * f64::from(1u32 << n);
        assert!(
            gap >= floor * 0.95,
            "retry {n} came after {gap:.3}s: {times:?}"
        );
    }
    assert_eq!(
        agent.fetch().await.status,
        503,
        "expired credentials are never served"
    );
    assert_eq!(
        http::get(&agent.metrics_url("/healthz/ready"))
            .await
            .unwrap()
            .status,
        503
    );
    let log = agent.log();
    assert!(log.contains("the node's clock is wrong"), "{log}");
    assert!(
        log.contains("before the node's clock says it is now"),
        "{log}"
    );

    // Once STS answers properly, the agent recovers by itself.
    sts.set_lifetime(0).await;
    agent.wait_ready(Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unparseable_sts_reply_is_an_invalid_response_retried_soon() {
    let sts = StsPeer::start();
    sts.set_lifetime(20).await;
    let agent = ready_agent(&sts).await;
    let first = agent.fetch().await.json();
    sts.garble().await;
    // Two failed attempts within the wait: the reply is treated as transient, with backoff
    // from 0.5-1 s, not as a permanent error waiting a fixed 60 s.
    let invalid = r#"credvend_sts_errors_total{binding="default",code="InvalidResponse"}"#;
    eventually("two invalid responses", READY, || async {
        agent.metric(invalid).await.filter(|n| *n >= 2.0)
    })
    .await;
    assert_eq!(
        agent
            .metric(r#"credvend_sts_errors_total{binding="default",code="Other"}"#)
            .await,
        None
    );
    assert_eq!(
        agent.fetch().await.status,
        200,
        "cached credentials still served"
    );
    sts.recover().await;
    eventually("a new access key", READY, || async {
        let doc = agent.fetch().await.json();
        (doc["AccessKeyId"] != first["AccessKeyId"]).then_some(())
    })
    .await;
    assert!(agent.log().contains("could not be read as an STS reply"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_larger_than_any_token_is_refused_without_calling_sts() {
    let sts = StsPeer::start();
    let mut opts = AgentOptions::new(sts.endpoint());
    // A 10 MB file where the token should be (a wrong mount).
    opts.token = Some("a".repeat(10 << 20));
    let agent = AgentProcess::start(opts);
    agent.wait_up(READY).await;
    let too_large = r#"credvend_token_errors_total{binding="default",reason="too_large"}"#;
    eventually("three too-large errors", READY, || async {
        agent.metric(too_large).await.filter(|n| *n >= 3.0)
    })
    .await;
    assert!(
        sts.web_identity_calls().await.is_empty(),
        "the file was sent to STS"
    );
    assert!(
        agent.log().contains("more than 20000 bytes"),
        "{}",
        agent.log()
    );
    // For the record (the file used to be read whole and sent on every attempt).
    eprintln!(
        "peak RSS with a 10 MB token file: {} kB",
        agent.proc_status("VmHWM")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_an_sts_call_in_flight() {
    let sts = StsPeer::start();
    sts.set_lifetime(20).await;
    let mut agent = ready_agent(&sts).await;
    // The next renewal (about 10 s from now) hangs at STS for longer than the agent's timeout.
    sts.delay(60).await;
    eventually("an STS call in flight", READY, || async {
        (sts.in_flight().await >= 1).then_some(())
    })
    .await;
    let exchanging: Vec<u32> = agent.children().into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(exchanging.len(), 1, "one exchange process: {exchanging:?}");
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let log = agent.log();
    assert!(
        log.contains("the STS exchange in flight was cancelled"),
        "{log}"
    );
    // Had it waited, the call would have ended as a timeout first.
    assert!(!log.contains("(Timeout)"), "{log}");
    // The exchange process went with it (a zombie left for init to reap counts as gone).
    let child = exchanging[0];
    eventually("the exchange process killed", READY, || async {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        matches!(state, None | Some("Z")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_refresh_runs_its_sts_calls_in_a_child_process_that_exits_with_the_answer() {
    let sts = StsPeer::start();
    sts.set_lifetime(20).await;
    let agent = ready_agent(&sts).await;
    let first = agent.fetch().await.json();
    assert!(agent.children().is_empty(), "{:?}", agent.children());
    // The next renewal (about 10 s from now) is held at STS for 3 s: long enough to look.
    sts.delay(3).await;
    eventually("an STS call in flight", READY, || async {
        (sts.in_flight().await >= 1).then_some(())
    })
    .await;
    let during = agent.children();
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(
        during[0].1.contains(" agent-exchange --log-format text"),
        "{during:?}"
    );
    // Cached credentials are served meanwhile, by the agent itself.
    assert_eq!(agent.fetch().await.json(), first);
    eventually("new credentials", READY, || async {
        let doc = agent.fetch().await.json();
        (doc["AccessKeyId"] != first["AccessKeyId"]).then_some(())
    })
    .await;
    eventually("the exchange process reaped", READY, || async {
        agent.children().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_serves_its_persisted_credentials_while_sts_is_down() {
    let mut sts = StsPeer::start();
    let mut agent = ready_agent(&sts).await;
    let before = agent.fetch().await.json();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.cache_file()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    sts.stop();
    agent.restart();
    // Only the cache file can make it ready: STS refuses every connection.
    agent.wait_ready(READY).await;
    let after = agent.fetch().await.json();
    assert_eq!(after, before, "the same credentials, served at once");
    assert!(
        agent
            .log()
            .contains("serving the credentials a previous run")
    );

    // A garbled copy is ignored with a log line, and nothing is served from it.
    std::fs::write(agent.cache_file(), b"{\"version\":1,\"accessKeyId\":").unwrap();
    agent.restart();
    agent.wait_up(READY).await;
    let garbled = r#"credvend_cache_file_errors_total{binding="default",reason="garbled"}"#;
    assert_eq!(agent.metric(garbled).await, Some(1.0));
    assert_eq!(agent.fetch().await.status, 503);
    let log = agent.log();
    assert!(log.contains("ignoring the credentials cache file"), "{log}");
    for secret in [
        before["SecretAccessKey"].as_str().unwrap(),
        before["Token"].as_str().unwrap(),
    ] {
        assert!(
            !log.contains(secret),
            "a secret from the cache file reached the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_port_answers_only_get_and_head() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    for path in ["/metrics", "/healthz/live", "/healthz/ready"] {
        for method in ["POST", "PUT", "DELETE"] {
            let reply = http::request(method, &agent.metrics_url(path), &[])
                .await
                .unwrap();
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.headers["allow"], "GET, HEAD", "{method} {path}");
        }
        let head = http::request("HEAD", &agent.metrics_url(path), &[])
            .await
            .unwrap();
        assert_eq!(head.status, 200, "HEAD {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_failure_towards_sts_is_named_as_such() {
    let sts = StsPeer::start();
    // moto speaks plain http: an https endpoint on its port fails in the TLS handshake.
    let endpoint = sts.endpoint().replace("http://", "https://");
    let agent = AgentProcess::start(AgentOptions::new(&endpoint));
    agent.wait_up(READY).await;
    eventually("a TLS error", READY, || async {
        agent
            .metric(r#"credvend_sts_errors_total{binding="default",code="TlsError"}"#)
            .await
    })
    .await;
    let log = agent.log();
    assert!(log.contains("the TLS handshake with STS failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fatal_start_up_errors_follow_the_log_format_and_name_each_cause_once() {
    let sts = StsPeer::start();
    // The metrics port is taken: the bind error has an OS error as its cause.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut opts = AgentOptions::new(sts.endpoint());
    opts.metrics_port = Some(port);
    opts.extra_args = vec!["--log-format".into(), "json".into()];
    let mut agent = AgentProcess::start(opts);
    assert!(!agent.wait_exit(READY).success());
    let log = agent.log();
    let last = log.lines().last().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the fatal error is not JSON ({e}): {log}"));
    assert_eq!(line["level"], "ERROR", "{last}");
    assert_eq!(line["message"], "credvend agent stopped", "{last}");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains(&port.to_string()), "{error}");
    assert_eq!(
        error.matches("in use").count(),
        1,
        "the cause once: {error}"
    );
    // Every line is JSON: nothing printed beside the log format.
    for l in log.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_a_handful_of_threads_whatever_the_node_size() {
    let sts = StsPeer::start();
    let mut opts = AgentOptions::new(sts.endpoint());
    // What a multi-threaded tokio runtime would size itself to on a 96-core node.
    opts.env = vec![("TOKIO_WORKER_THREADS".into(), "96".into())];
    let agent = AgentProcess::start(opts);
    agent.wait_ready(READY).await;
    assert_eq!(agent.fetch().await.status, 200);
    let threads = agent.proc_status("Threads");
    // The main thread plus at most two for blocking work (token reads, DNS).
    assert!(threads <= 3, "{threads} threads");
    eprintln!(
        "agent: {threads} threads, RSS {} kB",
        agent.proc_status("VmRSS")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_serving_the_agent_gives_back_its_start_up_pages_and_serves_the_same() {
    let sts = StsPeer::start();
    let agent = ready_agent(&sts).await;
    // The log line of the pass that followed the first refresh (README: "Memory").
    let given_back_kib = eventually("the pass after the first refresh", READY, || async {
        agent.log().lines().find_map(|line| {
            line.contains("gave back the pages of start-up")
                .then(|| {
                    line.split("resident_kib=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .flatten()
        })
    })
    .await;
    let first = agent.fetch().await;
    assert_eq!(first.status, 200);
    for _ in 0..50 {
        let again = agent.fetch().await;
        assert_eq!((again.status, &again.body), (200, &first.body));
    }
    let file_kib = agent.proc_status("RssFile");
    eprintln!(
        "gave back {given_back_kib} KiB of file pages; RssFile after 51 requests {file_kib} KiB"
    );
    // Serving brings back far less than start-up had mapped: that is the point of the pass.
    assert!(
        file_kib < given_back_kib,
        "RssFile {file_kib} KiB after serving, {given_back_kib} KiB given back"
    );
}

// ----- session policies, chains, several bindings, session names -----------------------------

const CROSS_A: &str = "arn:aws:iam::444455556666:role/cross-a";
const CROSS_B: &str = "arn:aws:iam::777788889999:role/cross-b";

/// The recorded STS calls of `action`, whole (form, headers, SigV4 verdict, issued key).
async fn calls(sts: &StsPeer, action: &str) -> Vec<serde_json::Value> {
    sts.requests()
        .await
        .into_iter()
        .filter(|r| r["form"]["Action"] == action)
        .collect()
}

fn chained_plan() -> serde_json::Value {
    serde_json::json!({
        "name": "cross",
        "roleArn": ROLE_ARN,
        "duration": "2h",
        "sessionName": "{namespace}.{pod}",
        "audience": "sts.amazonaws.com",
        "policy": r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#,
        "policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
        "chain": [
            {
                "roleArn": CROSS_A,
                "sessionName": "{binding}.{pod}",
                "externalId": "partner-42",
                "tags": [{"key": "team", "value": "a"}, {"key": "cost-center", "value": "42"}],
                "transitiveTagKeys": ["team"],
                "sourceIdentity": "team-a"
            },
            {"roleArn": CROSS_B, "sessionName": "{namespace}.{pod}"}
        ]
    })
}

/// A binding plan with the defaults the webhook would write for a binding of `role`.
fn plan(name: &str, role: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "roleArn": role, "duration": "1h",
        "sessionName": "{namespace}.{pod}", "audience": "sts.amazonaws.com"
    })
}

fn pod_env(pod: &str) -> Vec<(String, String)> {
    [
        ("POD_NAMESPACE", "team-a"),
        ("POD_NAME", pod),
        ("POD_SERVICE_ACCOUNT", "app"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chained_binding_serves_the_last_role_and_signs_each_hop_with_the_previous_key() {
    let sts = StsPeer::start();
    let agent = AgentProcess::start(AgentOptions {
        bindings: vec![chained_plan()],
        env: pod_env("web-0"),
        ..AgentOptions::new(sts.endpoint())
    });
    agent.wait_ready(READY).await;

    // The app's SDK sees the last role of the chain.
    let result = run_boto3(&agent, &sts);
    assert_eq!(
        result["arn"],
        "arn:aws:sts::777788889999:assumed-role/cross-b/team-a.web-0"
    );

    let exchange = calls(&sts, "AssumeRoleWithWebIdentity").await;
    let hops = calls(&sts, "AssumeRole").await;
    assert_eq!((exchange.len(), hops.len()), (1, 2), "{hops:#?}");
    let first = &exchange[0];
    assert_eq!(first["form"]["RoleArn"], ROLE_ARN);
    assert_eq!(
        first["form"]["DurationSeconds"], "900",
        "intermediate sessions are short"
    );
    assert!(
        first["form"].get("Policy").is_none(),
        "the policy narrows the served session"
    );
    assert!(first["sigv4"].is_null(), "the exchange is unsigned");

    let hop1 = &hops[0]["form"];
    assert_eq!(hop1["RoleArn"], CROSS_A);
    assert_eq!(hop1["RoleSessionName"], "cross.web-0");
    assert_eq!(hop1["DurationSeconds"], "900");
    assert_eq!(hop1["ExternalId"], "partner-42");
    assert_eq!(hop1["SourceIdentity"], "team-a");
    assert_eq!(hop1["Tags.member.1.Key"], "team");
    assert_eq!(hop1["Tags.member.1.Value"], "a");
    assert_eq!(hop1["Tags.member.2.Key"], "cost-center");
    assert_eq!(hop1["Tags.member.2.Value"], "42");
    assert_eq!(hop1["TransitiveTagKeys.member.1"], "team");
    assert!(hop1.get("Policy").is_none());

    let hop2 = &hops[1]["form"];
    assert_eq!(hop2["RoleArn"], CROSS_B);
    assert_eq!(hop2["RoleSessionName"], "team-a.web-0");
    assert_eq!(
        hop2["DurationSeconds"], "3600",
        "a chained session is clamped to 1h"
    );
    assert_eq!(
        hop2["PolicyArns.member.1.arn"],
        "arn:aws:iam::aws:policy/ReadOnlyAccess"
    );
    let policy: serde_json::Value = serde_json::from_str(hop2["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "s3:GetObject");
    for tag in ["ExternalId", "SourceIdentity", "Tags.member.1.Key"] {
        assert!(hop2.get(tag).is_none(), "{tag} is the first hop's only");
    }

    // Each hop is signed (a valid SigV4 signature) with the key the previous call issued.
    for (hop, previous) in [(&hops[0], first), (&hops[1], &hops[0])] {
        let sigv4 = &hop["sigv4"];
        assert_eq!(sigv4["valid"], true, "{hop:#?}");
        assert_eq!(sigv4["access_key_id"], previous["issued_access_key_id"]);
    }
    // What is served is the last hop's credentials.
    let served = agent.fetch().await.json();
    assert_eq!(served["AccessKeyId"], hops[1]["issued_access_key_id"]);
    assert_eq!(served["AccountId"], "777788889999");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_agent_serves_each_binding_at_its_own_path_with_its_own_role() {
    let sts = StsPeer::start();
    let agent = AgentProcess::start(AgentOptions {
        bindings: vec![
            plan("s3-reader", ROLE_ARN),
            plan(
                "queue-reader",
                "arn:aws:iam::111122223333:role/queue-reader",
            ),
        ],
        env: pod_env("web-0"),
        ..AgentOptions::new(sts.endpoint())
    });
    agent.wait_ready(READY).await;
    let default = run_boto3(&agent, &sts);
    assert_eq!(
        default["arn"],
        "arn:aws:sts::111122223333:assumed-role/s3-reader/team-a.web-0"
    );
    let queue_uri = format!("{}/queue-reader", agent.credentials_url());
    let queue = run_boto3_at(&agent, &sts, &queue_uri);
    assert_eq!(
        queue["arn"],
        "arn:aws:sts::111122223333:assumed-role/queue-reader/team-a.web-0"
    );
    assert_ne!(default["access_key_id"], queue["access_key_id"]);
    let token = agent.auth_token();
    let other = http::request(
        "GET",
        &format!("{}/nope", agent.credentials_url()),
        &[("authorization", token.as_bytes())],
    )
    .await
    .unwrap();
    assert_eq!(other.status, 404);
    // Each binding is refreshed on its own and measured on its own.
    assert_eq!(sts.web_identity_calls().await.len(), 2);
    for binding in ["s3-reader", "queue-reader"] {
        let sample = format!(
            r#"credvend_credentials_refresh_total{{binding="{binding}",result="success"}}"#
        );
        assert_eq!(agent.metric(&sample).await, Some(1.0), "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_every_binding() {
    let sts = StsPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let second_token = dir.path().join("second-token");
    let agent = AgentProcess::start(AgentOptions {
        bindings: vec![plan("s3-reader", ROLE_ARN), {
            let mut second = plan("queue-reader", ROLE_ARN);
            second["tokenFile"] = second_token.to_str().unwrap().into();
            second
        }],
        env: pod_env("web-0"),
        ..AgentOptions::new(sts.endpoint())
    });
    // The second binding's token file is missing: not ready, and it says which binding.
    let ready = agent.metrics_url("/healthz/ready");
    let not_ready = eventually(
        "the first binding served, the second not",
        Duration::from_secs(20),
        || async {
            let reply = http::get(&ready).await.ok()?;
            (reply.status == 503 && agent.fetch().await.status == 200).then_some(reply)
        },
    )
    .await;
    assert!(
        not_ready.text().contains("queue-reader"),
        "{}",
        not_ready.text()
    );
    std::fs::write(&second_token, fake_jwt(Duration::from_secs(3600))).unwrap();
    agent.wait_ready(READY).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_names_keep_long_pods_distinct_and_stay_the_same_across_refreshes_and_restarts() {
    let sts = StsPeer::start();
    // Credentials that live 30 s: the agent renews them within seconds.
    sts.set_lifetime(30).await;
    let prefix = "p".repeat(60);
    let mut plan = plan("s3-reader", ROLE_ARN);
    plan["duration"] = "15m".into();
    let start = |pod: String| {
        AgentProcess::start(AgentOptions {
            bindings: vec![plan.clone()],
            env: pod_env(&pod),
            cache_dir: false,
            ..AgentOptions::new(sts.endpoint())
        })
    };
    let mut a = start(format!("{prefix}-a"));
    let b = start(format!("{prefix}-b"));
    a.wait_ready(READY).await;
    b.wait_ready(READY).await;
    // Two renewals of the first agent, then a restart of it.
    eventually("two renewals", Duration::from_secs(60), || async {
        (sts.web_identity_calls().await.len() >= 4).then_some(())
    })
    .await;
    a.restart();
    a.wait_ready(READY).await;
    let names: Vec<String> = sts
        .web_identity_calls()
        .await
        .iter()
        .map(|c| c["RoleSessionName"].as_str().unwrap().to_owned())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        2,
        "one name per pod, whatever the refreshes: {names:#?}"
    );
    for name in distinct {
        assert_eq!(name.len(), 64, "{name}");
        assert!(name.starts_with("team-a.pppp"), "{name}");
    }
    assert!(names.len() >= 5, "{names:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_names_the_subject_and_audience_the_trust_policy_must_allow() {
    let sts = StsPeer::start();
    sts.fail("AccessDenied", 403).await;
    let agent = AgentProcess::start(AgentOptions {
        bindings: vec![plan("s3-reader", ROLE_ARN)],
        env: pod_env("web-0"),
        ..AgentOptions::new(sts.endpoint())
    });
    let log = eventually(
        "the AccessDenied log line",
        Duration::from_secs(20),
        || async {
            let log = agent.log();
            log.contains("AccessDenied").then_some(log)
        },
    )
    .await;
    for words in [
        "sub = system:serviceaccount:team-a:app",
        "aud = sts.amazonaws.com",
        "credvend trust-policy",
    ] {
        assert!(log.contains(words), "{words:?} in {log}");
    }
    let sample = r#"credvend_sts_errors_total{binding="s3-reader",code="AccessDenied"}"#;
    assert!(agent.metric(sample).await >= Some(1.0));
}
