//! The Rust conformance client: aws-config's default credential chain against the agent.
//!
//! Built as a Cargo example (`sdk-client-rust`) so it uses exactly the aws-config and
//! aws-sdk-sts the crate pins. Nothing here configures credentials or the endpoint: the chain
//! finds the container endpoint from `AWS_CONTAINER_CREDENTIALS_*` and STS from
//! `AWS_ENDPOINT_URL_STS`, as it would in a pod. It calls STS GetCallerIdentity
//! `CREDVEND_SDK_CALLS` times and prints one JSON line for `tests/sdk_conformance.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sts::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, ProvideCredentials as _, RuntimeComponents};
use aws_sdk_sts::error::{BoxError, DisplayErrorContext};
use serde_json::json;

/// Notes the access key id of every signed request. Reading it from the wire rather than
/// asking the provider keeps the probe from adding fetches of its own.
#[derive(Debug, Default, Clone)]
struct RecordSigningKey(Arc<Mutex<String>>);

impl Intercept for RecordSigningKey {
    fn name(&self) -> &'static str {
        "RecordSigningKey"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let auth = context
            .request()
            .headers()
            .get("authorization")
            .unwrap_or("");
        if let Some(key) = auth
            .split_once("Credential=")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(key, _)| key)
        {
            *self.0.lock().map_err(|_| "poisoned")? = key.to_owned();
        }
        Ok(())
    }
}

fn env_u64(name: &str, fallback: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(fallback)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let calls = env_u64("CREDVEND_SDK_CALLS", 1);
    let pause = Duration::from_millis(env_u64("CREDVEND_SDK_SLEEP_MS", 0));

    let shared = aws_config::load_from_env().await;
    let signed_with = RecordSigningKey::default();
    let config = aws_sdk_sts::config::Builder::from(&shared)
        .interceptor(signed_with.clone())
        .build();
    let client = aws_sdk_sts::Client::from_conf(config);

    let (mut arn, mut key, mut keys, mut errors) = (None, None, Vec::<String>::new(), Vec::new());
    let mut succeeded = 0;
    for i in 0..calls {
        if i > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        match client.get_caller_identity().send().await {
            Ok(identity) => {
                succeeded += 1;
                arn = identity.arn;
                let current = signed_with.0.lock().map(|k| k.clone()).unwrap_or_default();
                if keys.last() != Some(&current) {
                    keys.push(current.clone());
                }
                key = Some(current);
            }
            // DisplayErrorContext prints the whole source chain: the provider's reason is deep.
            Err(err) => errors.push(format!("{}", DisplayErrorContext(&err))),
        }
    }

    let mut account_id = None;
    // Asks the chain itself (one more fetch): aws-config's identity cache is not public.
    if std::env::var("CREDVEND_SDK_REPORT_ACCOUNT").as_deref() == Ok("1")
        && succeeded > 0
        && let Some(provider) = shared.credentials_provider()
        && let Ok(credentials) = provider.provide_credentials().await
    {
        account_id = Some(credentials.account_id().map(|a| a.as_str().to_owned()));
    }

    let ok = succeeded == calls;
    let mut out = json!({
        "sdk": "rust", "ok": ok, "access_key_ids": keys, "calls": calls,
        "succeeded": succeeded, "errors": errors,
    });
    if let Some(arn) = arn {
        out["arn"] = json!(arn);
        out["access_key_id"] = json!(key);
    }
    if let Some(account_id) = account_id {
        out["account_id"] = json!(account_id);
    }
    if !ok && let Some(first) = errors.first() {
        out["error"] = json!(first);
    }
    println!("{out}");
    std::process::exit(if ok { 0 } else { 1 });
}
