//! Raw bytes from any container of the pod → the credentials endpoint's answers.
//!
//! The bytes go through hyper's HTTP/1 server (the parser the agent serves with, with its
//! 16 KiB head limit) over an in-memory connection, and every request hyper hands over is
//! answered by the agent's own head extraction and decision (`EndpointRequest::from_parts`,
//! `endpoint::respond`) with valid credentials cached. Properties, per request: the answer is
//! 200 exactly for `GET /v1/credentials` whose first `Authorization` header is the exact
//! token, and only then carries the credentials; every other answer is a JSON error with a
//! code and a message; every answer is `application/json` and `no-store`; no answer echoes
//! the token. On the wire, no more 200s leave than were decided.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use credvend::agent::auth::AuthToken;
use credvend::agent::cache::{Cached, Caches, CredentialCache};
use credvend::agent::credentials::Credentials;
use credvend::agent::endpoint::{self, CREDENTIALS_PATH, EndpointRequest};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token in the fuzz dictionary and seeds, so the fuzzer can reach the 200 path.
const TOKEN: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The server's limit on a request head (see `credvend::server`).
const MAX_HEAD_BYTES: usize = 16 * 1024;

struct Agent {
    runtime: tokio::runtime::Runtime,
    auth: AuthToken,
    cache: Caches,
    now: SystemTime,
    body: Bytes,
}

static AGENT: LazyLock<Agent> = LazyLock::new(|| {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let creds = Credentials {
        access_key_id: "ASIAFUZZEXAMPLE".into(),
        secret_access_key: SECRET.to_owned().into(),
        session_token: "FwoGZXIvYXdzEFUZZ".to_owned().into(),
        expiration: now + Duration::from_secs(3600),
        assumed_role_arn: Some("arn:aws:sts::111122223333:assumed-role/r/s".into()),
    };
    let cache = CredentialCache::default();
    let cached = Cached::new(&creds);
    let body = cached.body.bytes();
    cache.store(cached);
    let cache = Caches::single("default", Arc::new(cache));
    Agent {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
        auth: AuthToken::new(TOKEN.to_owned()),
        cache,
        now,
        body,
    }
});

/// One request as hyper delivered it, and what the endpoint answered.
struct Exchange {
    parts: http::request::Parts,
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

fuzz_target!(|data: &[u8]| {
    let agent = &*AGENT;
    let seen: Arc<Mutex<Vec<Exchange>>> = Arc::default();
    let wire = agent.runtime.block_on(serve(agent, data, seen.clone()));
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let mut decided_ok = 0;
    for ex in &seen {
        check(agent, ex);
        decided_ok += usize::from(ex.status == StatusCode::OK);
    }
    let sent_ok = wire
        .windows(b"HTTP/1.1 200 ".len())
        .filter(|w| *w == b"HTTP/1.1 200 ")
        .count();
    assert!(
        sent_ok <= decided_ok,
        "{sent_ok} 200s on the wire, {decided_ok} decided"
    );
});

async fn serve(agent: &'static Agent, data: &[u8], seen: Arc<Mutex<Vec<Exchange>>>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, _body) = req.into_parts();
            let resp = endpoint::respond(
                EndpointRequest::from_parts(&parts),
                &agent.auth,
                &agent.cache,
                agent.now,
            );
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.body().clone().collect().await?.to_bytes();
            seen.lock().expect("lock").push(Exchange {
                parts,
                status,
                headers,
                body,
            });
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(server), service);
    let talk = async {
        // The connection may close before everything is written (a malformed head): fine.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let (_, out) = tokio::join!(conn, talk);
    out
}

fn check(agent: &Agent, ex: &Exchange) {
    let first_authorization = ex.parts.headers.get(header::AUTHORIZATION);
    let authorized = ex.parts.method == Method::GET
        && ex.parts.uri.path() == CREDENTIALS_PATH
        && first_authorization.is_some_and(|v| v.as_bytes() == TOKEN.as_bytes());
    assert_eq!(
        ex.status == StatusCode::OK,
        authorized,
        "{} {} authorization {first_authorization:?} → {}",
        ex.parts.method,
        ex.parts.uri,
        ex.status
    );
    assert_eq!(ex.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(ex.headers[header::CACHE_CONTROL], "no-store");
    assert!(
        !contains(&ex.body, TOKEN.as_bytes()),
        "the answer echoes the token"
    );
    if authorized {
        assert_eq!(ex.body, agent.body);
    } else {
        assert!(!contains(&ex.body, SECRET.as_bytes()));
        let error: serde_json::Value = serde_json::from_slice(&ex.body).expect("JSON error");
        assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
