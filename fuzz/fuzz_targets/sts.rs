//! STS response bodies (from STS, or from whatever `stsEndpoint` points at) → credentials or a
//! mapped error, through aws-sdk-sts's own deserializer and credvend's mapping
//! (`exchange::exchange_token`), with an HTTP client that answers every request from the input.
//!
//! The first input byte picks the HTTP status, the rest is the body. Properties: credentials
//! come only from a 2xx answer, are complete (no empty key, secret or session token: an SDK
//! would fail on them far from the cause), and render to the document the endpoint serves,
//! field for field; `Debug` never shows the secret. A failure carries one of credvend's
//! codes: a 5xx or 429 answer is never `Other`, and a code that stops quick retries is only
//! reported when the body names it.
#![no_main]

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_smithy_http_client::test_util::infallible_client_fn;
use credvend::agent::credentials::format_expiration;
use credvend::agent::exchange::{self, ExchangeError, ExchangeRequest, StepRequest, Trust};
use credvend::agent::sts::StsErrorCode;
use credvend::agent::token::{self, WebIdentityToken};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

const STATUSES: [u16; 12] = [200, 200, 200, 200, 400, 403, 429, 500, 503, 204, 302, 404];

/// What the fake STS answers next.
static ANSWER: Mutex<(u16, Vec<u8>)> = Mutex::new((200, Vec::new()));

struct Sts {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_sts::Client,
    request: ExchangeRequest,
    token: WebIdentityToken,
}

static STS: LazyLock<Sts> = LazyLock::new(|| {
    let http = infallible_client_fn(|_req| {
        let (status, body) = ANSWER.lock().expect("lock").clone();
        http::Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .body(body)
            .expect("response")
    });
    // As the agent's client (src/agent/sts.rs): unsigned, no SDK retries.
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .endpoint_url("http://127.0.0.1:9")
        .http_client(http)
        .build();
    Sts {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
        client: aws_sdk_sts::Client::from_conf(config),
        request: ExchangeRequest {
            first: StepRequest {
                role_arn: "arn:aws:iam::111122223333:role/s3-reader".into(),
                session_name: "team-a.web-0".into(),
                duration: Duration::from_secs(3600),
                policy: None,
                policy_arns: Vec::new(),
            },
            token_file: "/var/run/secrets/credvend.io/serviceaccount/token".into(),
            hops: Vec::new(),
            trust: Trust {
                subject: "system:serviceaccount:team-a:app".into(),
                audience: "sts.amazonaws.com".into(),
            },
        },
        token: token::parse("eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(), "/t".as_ref()).expect("token"),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(pick) % STATUSES.len()];
    *ANSWER.lock().expect("lock") = (status, body.to_vec());
    let sts = &*STS;
    let result = sts.runtime.block_on(exchange::exchange_token(
        &sts.client,
        &sts.request,
        &sts.token,
    ));
    match result {
        Ok(out) => {
            assert!((200..300).contains(&status), "credentials from a {status}");
            let c = &out.credentials;
            let secret = c.secret_access_key.expose_secret();
            let session = c.session_token.expose_secret();
            assert!(
                !c.access_key_id.is_empty() && !secret.is_empty() && !session.is_empty(),
                "incomplete credentials accepted: key {:?}, secret {} bytes, token {} bytes",
                c.access_key_id,
                secret.len(),
                session.len()
            );
            let served: serde_json::Value =
                serde_json::from_slice(&c.render().bytes()).expect("the served document is JSON");
            assert_eq!(served["AccessKeyId"], c.access_key_id.as_str());
            assert_eq!(served["SecretAccessKey"], secret);
            assert_eq!(served["Token"], session);
            assert_eq!(
                served["Expiration"],
                format_expiration(c.expiration).as_str()
            );
            assert!(c.expiration >= UNIX_EPOCH);
            if secret.len() >= 16 && !c.access_key_id.contains(secret) {
                let arn = c.assumed_role_arn.as_deref().unwrap_or_default();
                if !arn.contains(secret) {
                    assert!(
                        !format!("{out:?}").contains(secret),
                        "Debug shows the secret"
                    );
                }
            }
        }
        Err(ExchangeError::Sts { code, message, .. }) => {
            assert!(!message.is_empty());
            if status == 429 || status >= 500 {
                assert_ne!(code, StsErrorCode::Other, "{status} mapped to Other");
            }
            if !code.is_transient() && code != StsErrorCode::Other {
                // A character reference could spell the code without its letters.
                let named = contains(body, code.as_str().as_bytes())
                    || (code == StsErrorCode::InvalidParameter
                        && contains(body, b"ValidationError"))
                    || body.contains(&b'&');
                assert!(named, "{code:?} reported for a body that does not name it");
            }
        }
        Err(other) => panic!("the token was read already, yet: {other}"),
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
