//! The container-credentials endpoint's decision: request in, response out, no I/O.
//!
//! `/v1/credentials` serves the pod's default binding and `/v1/credentials/<binding>` each
//! binding the agent serves (a pod whose containers use different roles).
//!
//! The order of checks is path, method, authorization, then availability, so a caller learns
//! about its own mistake (wrong URL, wrong method, missing token) before anything about the
//! credentials. Every error is JSON `{"code","message"}` with `Content-Type: application/json`
//! exactly (the Go SDK parses error bodies only then), and every response says
//! `Cache-Control: no-store`.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;

use super::auth::AuthToken;
use super::cache::{Caches, CredentialCache};

/// The path of the default binding's credentials; `<this>/<binding>` serves the others.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";

/// The path of `binding`'s credentials.
pub fn binding_path(binding: &str) -> String {
    format!("{CREDENTIALS_PATH}/{binding}")
}

/// The cache a path names: the default for [`CREDENTIALS_PATH`], a named binding's below it.
fn route<'c>(path: &str, caches: &'c Caches) -> Result<&'c CredentialCache, String> {
    if path == CREDENTIALS_PATH {
        return Ok(caches.default_cache());
    }
    let unknown = || format!("no such path; credentials are served at {CREDENTIALS_PATH}");
    let name = path
        .strip_prefix(CREDENTIALS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .ok_or_else(unknown)?;
    caches.named(name).ok_or_else(|| {
        format!("this agent serves no binding named {name:?}; the default binding is at {CREDENTIALS_PATH}")
    })
}

/// The parts of a request the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct EndpointRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub authorization: Option<&'a [u8]>,
}

impl<'a> EndpointRequest<'a> {
    /// The parts of a request head the decision reads: the path without the query, and the
    /// first `Authorization` header's raw bytes (a second one is never consulted, so sending
    /// two cannot turn a wrong token into a right one).
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        EndpointRequest {
            method: &parts.method,
            path: parts.uri.path(),
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        }
    }
}

/// Decides the response for one request at `now`.
pub fn respond(
    req: EndpointRequest<'_>,
    auth: &AuthToken,
    caches: &Caches,
    now: SystemTime,
) -> Response<Full<Bytes>> {
    let cache = match route(req.path, caches) {
        Ok(cache) => cache,
        Err(message) => return error(StatusCode::NOT_FOUND, "NotFound", &message),
    };
    if req.method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is supported",
        );
    }
    match req.authorization {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing Authorization header; send the contents of AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            );
        }
        Some(presented) if !auth.matches(presented) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the Authorization header does not match the token in AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            );
        }
        Some(_) => {}
    }
    match cache.valid_at(now) {
        Some(cached) => json(StatusCode::OK, cached.body.bytes()),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "CredentialsUnavailable",
            "no valid credentials yet: the exchange with STS has not succeeded (see the credvend-agent logs and credvend_sts_errors_total)",
        ),
    }
}

/// A JSON error body.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "code": code, "message": message });
    json(status, Bytes::from(body.to_string()))
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use http_body_util::BodyExt;

    use super::*;
    use crate::agent::cache::Cached;
    use crate::agent::credentials::tests::sample;

    const TOKEN: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn filled() -> Arc<CredentialCache> {
        let cache = CredentialCache::default();
        cache.store(Cached::new(&sample(now() + Duration::from_secs(3600))));
        Arc::new(cache)
    }

    fn filled_cache() -> Caches {
        Caches::single("s3", filled())
    }

    fn only(cache: CredentialCache) -> Caches {
        Caches::single("s3", Arc::new(cache))
    }

    async fn call(
        method: Method,
        path: &str,
        authz: Option<&str>,
        cache: &Caches,
    ) -> (StatusCode, serde_json::Value, http::HeaderMap) {
        let req = EndpointRequest {
            method: &method,
            path,
            authorization: authz.map(str::as_bytes),
        };
        let resp = respond(req, &AuthToken::new(TOKEN.into()), cache, now());
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            serde_json::from_slice(&bytes).unwrap(),
            parts.headers,
        )
    }

    #[tokio::test]
    async fn serves_cached_credentials_to_authorized_get() {
        let (status, body, headers) =
            call(Method::GET, CREDENTIALS_PATH, Some(TOKEN), &filled_cache()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(body["Expiration"], "2027-01-15T09:00:00Z");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn every_mistake_gets_its_status_and_a_json_error() {
        let cache = filled_cache();
        let cases = [
            (Method::GET, "/", Some(TOKEN), 404, "NotFound"),
            (
                Method::GET,
                "/v1/credentials/",
                Some(TOKEN),
                404,
                "NotFound",
            ),
            (
                Method::POST,
                CREDENTIALS_PATH,
                Some(TOKEN),
                405,
                "MethodNotAllowed",
            ),
            (
                Method::HEAD,
                CREDENTIALS_PATH,
                Some(TOKEN),
                405,
                "MethodNotAllowed",
            ),
            (Method::GET, CREDENTIALS_PATH, None, 401, "Unauthorized"),
            (
                Method::GET,
                CREDENTIALS_PATH,
                Some("wrong"),
                401,
                "Unauthorized",
            ),
            (
                Method::GET,
                CREDENTIALS_PATH,
                Some(&TOKEN[1..]),
                401,
                "Unauthorized",
            ),
        ];
        for (method, path, authz, want, code) in cases {
            let (status, body, headers) = call(method.clone(), path, authz, &cache).await;
            assert_eq!(status.as_u16(), want, "{method} {path} {authz:?}");
            assert_eq!(body["code"], code);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(body.get("AccessKeyId").is_none());
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        }
    }

    #[tokio::test]
    async fn answers_503_when_nothing_valid_is_cached() {
        let empty = only(CredentialCache::default());
        let (status, body, _) = call(Method::GET, CREDENTIALS_PATH, Some(TOKEN), &empty).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "CredentialsUnavailable");

        let expired = CredentialCache::default();
        expired.store(Cached::new(&sample(now())));
        let (status, _, _) = call(Method::GET, CREDENTIALS_PATH, Some(TOKEN), &only(expired)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn each_binding_is_served_at_its_own_path() {
        let waiting = Arc::new(CredentialCache::default());
        let caches = Caches::new(vec![
            ("s3".into(), filled()),
            ("queue-reader".into(), waiting.clone()),
        ])
        .unwrap();
        let (status, _, _) = call(Method::GET, CREDENTIALS_PATH, Some(TOKEN), &caches).await;
        assert_eq!(status, StatusCode::OK, "the default binding");
        let (status, _, _) = call(Method::GET, &binding_path("s3"), Some(TOKEN), &caches).await;
        assert_eq!(status, StatusCode::OK, "the default binding by name");
        let queue = binding_path("queue-reader");
        let (status, body, _) = call(Method::GET, &queue, Some(TOKEN), &caches).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        waiting.store(Cached::new(&sample(now() + Duration::from_secs(60))));
        let (status, _, _) = call(Method::GET, &queue, Some(TOKEN), &caches).await;
        assert_eq!(status, StatusCode::OK);
        for path in [
            "/v1/credentials/other",
            "/v1/credentials/s3/x",
            "/v1/credentialss3",
        ] {
            let (status, body, _) = call(Method::GET, path, Some(TOKEN), &caches).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body["code"], "NotFound");
        }
        // Authorization is checked for named paths too.
        let (status, _, _) = call(Method::GET, &queue, None, &caches).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
