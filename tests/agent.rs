//! The real `credvend agent` binary against moto's STS and a real SDK (boto3).
//!
//! Each test starts its own STS peer and agent on free loopback ports. The peer records what
//! the agent sent, because moto itself accepts any role, duration and token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::agent::{AgentOptions, AgentProcess, ROLE_ARN, SESSION_NAME};
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
    let out = app_python(BOTO3_APP, sts.endpoint())
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            agent.credentials_url(),
        )
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
        .metric("credvend_credentials_expiration_timestamp_seconds")
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

    let missing = r#"credvend_token_errors_total{reason="missing"}"#;
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
    let empty = r#"credvend_token_errors_total{reason="empty"}"#;
    eventually("an empty-token error", READY, || async {
        agent.metric(empty).await
    })
    .await;
    assert!(agent.log().contains("is empty"));

    std::fs::remove_file(agent.token_file()).unwrap();
    std::fs::create_dir(agent.token_file()).unwrap();
    let unreadable = r#"credvend_token_errors_total{reason="unreadable"}"#;
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
    let throttled = r#"credvend_sts_errors_total{code="Throttling"}"#;
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
            .metric(r#"credvend_credentials_refresh_total{result="failure"}"#)
            .await
            >= Some(1.0)
    );

    sts.recover().await;
    eventually("a new access key", READY, || async {
        let doc = agent.fetch().await.json();
        (doc["AccessKeyId"] != first["AccessKeyId"]).then_some(())
    })
    .await;
    assert!(
        agent.log().contains("Throttling"),
        "the failure is logged with its code"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_sts_is_survived_until_expiry_then_answered_with_503() {
    let mut sts = StsPeer::start();
    sts.set_lifetime(20).await;
    let agent = ready_agent(&sts).await;

    sts.stop();
    let unreachable = r#"credvend_sts_errors_total{code="Unreachable"}"#;
    eventually("an unreachable STS", READY, || async {
        agent.metric(unreachable).await
    })
    .await;
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
    assert!(
        log.contains("credentials refreshed"),
        "debug logging was on:\n{log}"
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
