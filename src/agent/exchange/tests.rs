//! The exchange and the chain through the SDK's own serializers and deserializers, against
//! canned STS answers: what each call sends, how each hop is signed, and the hints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;

use super::*;

/// One recorded request: its form fields and its Authorization header.
#[derive(Debug, Clone)]
struct Sent {
    form: Vec<(String, String)>,
    authorization: Option<String>,
}

impl Sent {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client whose transport answers `answers` in turn (status, body) and records each request.
fn client(answers: Vec<(u16, String)>) -> (aws_sdk_sts::Client, Arc<Mutex<Vec<Sent>>>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let http = aws_smithy_http_client::test_util::infallible_client_fn(move |req| {
        let body = req.body().bytes().unwrap_or_default().to_vec();
        let form = url_form(&String::from_utf8_lossy(&body));
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        record.lock().unwrap().push(Sent {
            form,
            authorization,
        });
        let (status, body) = answers
            .lock()
            .unwrap()
            .next()
            .unwrap_or((500, String::new()));
        http::Response::builder().status(status).body(body).unwrap()
    });
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .retry_config(RetryConfig::disabled())
        .endpoint_url("http://127.0.0.1:9")
        .http_client(http)
        .build();
    (aws_sdk_sts::Client::from_conf(config), sent)
}

/// `a=b&c=d` with percent-decoding, enough for the SDK's query protocol bodies.
fn url_form(body: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let escaped = (bytes[i] == b'%')
                .then(|| bytes.get(i + 1..i + 3))
                .flatten()
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
            match (escaped, bytes[i]) {
                (Some(b), _) => {
                    out.push(b);
                    i += 3;
                }
                (None, b'+') => {
                    out.push(b' ');
                    i += 1;
                }
                (None, b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn answer(operation: &str, access_key_id: &str, arn: &str, packed: Option<i32>) -> String {
    let packed = packed
        .map(|p| format!("<PackedPolicySize>{p}</PackedPolicySize>"))
        .unwrap_or_default();
    format!(
        "<{operation}Response><{operation}Result><Credentials>\
         <AccessKeyId>{access_key_id}</AccessKeyId><SecretAccessKey>secret-{access_key_id}</SecretAccessKey>\
         <SessionToken>token-{access_key_id}</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
         </Credentials><AssumedRoleUser><Arn>{arn}</Arn><AssumedRoleId>AROA:x</AssumedRoleId></AssumedRoleUser>\
         {packed}</{operation}Result></{operation}Response>"
    )
}

fn error(code: &str) -> String {
    format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>denied by the test</Message></Error></ErrorResponse>"
    )
}

fn step(role: &str, session: &str, duration: u64) -> StepRequest {
    StepRequest {
        role_arn: role.into(),
        session_name: session.into(),
        duration: Duration::from_secs(duration),
        policy: None,
        policy_arns: Vec::new(),
    }
}

const FIRST: &str = "arn:aws:iam::111122223333:role/first";
const SECOND: &str = "arn:aws:iam::444455556666:role/second";

fn request(hops: Vec<HopRequest>) -> ExchangeRequest {
    ExchangeRequest {
        first: step(
            FIRST,
            "team-a.web-0",
            if hops.is_empty() { 3600 } else { 900 },
        ),
        token_file: "/t".into(),
        hops,
        trust: Trust {
            subject: "system:serviceaccount:team-a:app".into(),
            audience: "sts.amazonaws.com".into(),
        },
    }
}

fn hop() -> HopRequest {
    HopRequest {
        step: StepRequest {
            policy: Some(
                r#"{"Statement":{"Effect":"Allow","Action":"s3:*","Resource":"*"}}"#.into(),
            ),
            policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()],
            ..step(SECOND, "team-a.web-0", 3600)
        },
        external_id: Some("partner-42".into()),
        tags: vec![("team".into(), "a".into()), ("cost".into(), "42".into())],
        transitive_tag_keys: vec!["team".into()],
        source_identity: Some("team-a".into()),
    }
}

async fn run(
    req: &ExchangeRequest,
    answers: Vec<(u16, String)>,
) -> (Result<Exchanged, ExchangeError>, Vec<Sent>) {
    let (client, sent) = client(answers);
    let token = token::parse("header.payload.sig".into(), "/t".as_ref()).unwrap();
    let result = exchange_token(&client, req, &token).await;
    let sent = sent.lock().unwrap().clone();
    (result, sent)
}

#[tokio::test]
async fn credentials_with_an_empty_field_are_an_invalid_response() {
    let req = request(Vec::new());
    let ok = answer("AssumeRoleWithWebIdentity", "ASIAFIRST", "arn:x", None);
    let (result, _) = run(&req, vec![(200, ok)]).await;
    assert_eq!(result.unwrap().credentials.access_key_id, "ASIAFIRST");
    let empty = answer("AssumeRoleWithWebIdentity", "", "arn:x", None);
    let (result, _) = run(&req, vec![(200, empty)]).await;
    let err = result.unwrap_err();
    assert_eq!(err.sts_code(), Some(StsErrorCode::InvalidResponse), "{err}");
}

#[tokio::test]
async fn the_exchange_sends_the_session_policies_unsigned() {
    let mut req = request(Vec::new());
    req.first.policy =
        Some(r#"{"Statement":{"Effect":"Deny","Action":"*","Resource":"*"}}"#.into());
    req.first.policy_arns = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()];
    let ok = answer("AssumeRoleWithWebIdentity", "ASIAFIRST", "arn:x", Some(12));
    let (result, sent) = run(&req, vec![(200, ok)]).await;
    assert_eq!(result.unwrap().packed_policy_sizes, [(0, 12)]);
    let call = &sent[0];
    assert_eq!(call.field("Action"), Some("AssumeRoleWithWebIdentity"));
    assert_eq!(call.field("Policy"), req.first.policy.as_deref());
    assert_eq!(
        call.field("PolicyArns.member.1.arn"),
        Some("arn:aws:iam::aws:policy/ReadOnlyAccess")
    );
    assert_eq!(call.field("DurationSeconds"), Some("3600"));
    assert_eq!(call.authorization, None, "the exchange is unsigned");
}

#[tokio::test]
async fn each_hop_is_signed_with_the_previous_sessions_key_and_sends_its_fields() {
    let req = request(vec![hop()]);
    let answers = vec![
        (
            200,
            answer(
                "AssumeRoleWithWebIdentity",
                "ASIAFIRST",
                "arn:first",
                Some(3),
            ),
        ),
        (
            200,
            answer(
                "AssumeRole",
                "ASIASECOND",
                "arn:aws:sts::444455556666:assumed-role/second/team-a.web-0",
                Some(95),
            ),
        ),
    ];
    let (result, sent) = run(&req, answers).await;
    let exchanged = result.unwrap();
    assert_eq!(exchanged.credentials.access_key_id, "ASIASECOND");
    assert_eq!(
        exchanged.credentials.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::444455556666:assumed-role/second/team-a.web-0")
    );
    assert_eq!(exchanged.packed_policy_sizes, [(0, 3), (1, 95)]);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].field("DurationSeconds"), Some("900"));
    let hop = &sent[1];
    assert_eq!(hop.field("Action"), Some("AssumeRole"));
    assert_eq!(hop.field("RoleArn"), Some(SECOND));
    assert_eq!(hop.field("DurationSeconds"), Some("3600"));
    assert_eq!(hop.field("ExternalId"), Some("partner-42"));
    assert_eq!(hop.field("SourceIdentity"), Some("team-a"));
    assert_eq!(hop.field("Tags.member.1.Key"), Some("team"));
    assert_eq!(hop.field("Tags.member.2.Value"), Some("42"));
    assert_eq!(hop.field("TransitiveTagKeys.member.1"), Some("team"));
    assert!(hop.field("Policy").is_some_and(|p| p.contains("s3:*")));
    let authorization = hop.authorization.as_deref().expect("the hop is signed");
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIAFIRST/"),
        "{authorization}"
    );
}

#[tokio::test]
async fn access_denied_names_what_the_trust_policy_must_allow() {
    let req = request(Vec::new());
    let (result, _) = run(&req, vec![(403, error("AccessDenied"))]).await;
    let text = result.unwrap_err().to_string();
    for words in [
        "AssumeRoleWithWebIdentity of arn:aws:iam::111122223333:role/first",
        "AccessDenied",
        "sub = system:serviceaccount:team-a:app",
        "aud = sts.amazonaws.com",
        "credvend trust-policy",
    ] {
        assert!(text.contains(words), "{words:?} in {text}");
    }

    let req = request(vec![hop()]);
    let answers = vec![
        (
            200,
            answer("AssumeRoleWithWebIdentity", "ASIAFIRST", "arn:first", None),
        ),
        (403, error("AccessDenied")),
    ];
    let (result, _) = run(&req, answers).await;
    let text = result.unwrap_err().to_string();
    for words in [
        "AssumeRole of arn:aws:iam::444455556666:role/second (chain hop 1)",
        "must allow arn:aws:iam::111122223333:role/first to sts:AssumeRole, sts:TagSession, sts:SetSourceIdentity",
        "sts:ExternalId",
    ] {
        assert!(text.contains(words), "{words:?} in {text}");
    }
    assert!(
        !text.contains("partner-42"),
        "the external id stays out of logs: {text}"
    );
}
