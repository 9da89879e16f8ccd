//! The agent's two HTTP listeners: which handler answers a request, from memory.
//!
//! Both listeners answer synchronously from the request head and never read a request body,
//! so a slow or hostile client costs a connection, not a task waiting on I/O. The credentials
//! endpoint's decision lives in [`endpoint`](super::endpoint); this file adds the metrics and
//! the health port (`/metrics`, `/healthz/live`, `/healthz/ready`), which is reachable from the
//! whole cluster and therefore answers only `GET` and `HEAD` (405 with `Allow` otherwise).
//! Serving itself is the crate's shared [`server`](crate::server).

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::{Method, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::Full;
use prometheus::{IntCounter, IntCounterVec};
use tokio::net::TcpListener;

use super::auth::AuthToken;
use super::cache::Caches;
use super::endpoint;
use super::metrics::AgentMetrics;

/// Answers one request from its head.
pub type Handler = Arc<dyn Fn(&::http::request::Parts) -> Response<Full<Bytes>> + Send + Sync>;

/// The methods the health port answers; `Allow` of its 405 responses.
pub const HEALTH_ALLOW: &str = "GET, HEAD";

/// Connections of the health port (on all addresses): the kubelet's probes and a scraper
/// need a handful; any pod can reach the port, and with eviction a flood of connections
/// costs the probes nothing but memory, which this bounds (about 20 KiB a connection).
pub const HEALTH_CONNECTIONS: usize = 64;

/// Serves `handler` on `listener` as `port` says, until `shutdown` completes. SIGTERM reaches
/// a native sidecar only after the pod's app containers have exited, so there is no one to
/// wait for: the agent stops accepting at once and drains.
pub async fn serve_sync(
    listener: TcpListener,
    port: crate::server::Port,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    let service = move |req: ::http::Request<Bytes>| {
        let (parts, _body) = req.into_parts();
        let resp = handler(&parts);
        std::future::ready(resp)
    };
    crate::server::serve(
        listener,
        port,
        crate::server::Leaving::new(),
        service,
        shutdown,
    )
    .await;
}

/// The loopback credentials endpoint, counting every answer by status.
pub fn credentials(auth: AuthToken, caches: Arc<Caches>, metrics: AgentMetrics) -> Handler {
    let counters = StatusCounters::new(metrics.endpoint_requests);
    Arc::new(move |parts| {
        let req = endpoint::EndpointRequest::from_parts(parts);
        let resp = endpoint::respond(req, &auth, &caches, SystemTime::now());
        counters.count(resp.status());
        resp
    })
}

/// The endpoint's answers by status. The statuses it gives are resolved once, so a request
/// increments an atomic instead of hashing its label under the vector's lock (measurable at
/// tens of thousands of requests a second); they show as 0 until they happen.
struct StatusCounters {
    ok: IntCounter,
    unauthorized: IntCounter,
    not_found: IntCounter,
    method_not_allowed: IntCounter,
    unavailable: IntCounter,
    all: IntCounterVec,
}

impl StatusCounters {
    fn new(all: IntCounterVec) -> Self {
        let of = |status: StatusCode| all.with_label_values(&[status.as_str()]);
        StatusCounters {
            ok: of(StatusCode::OK),
            unauthorized: of(StatusCode::UNAUTHORIZED),
            not_found: of(StatusCode::NOT_FOUND),
            method_not_allowed: of(StatusCode::METHOD_NOT_ALLOWED),
            unavailable: of(StatusCode::SERVICE_UNAVAILABLE),
            all,
        }
    }

    fn count(&self, status: StatusCode) {
        match status {
            StatusCode::OK => self.ok.inc(),
            StatusCode::UNAUTHORIZED => self.unauthorized.inc(),
            StatusCode::NOT_FOUND => self.not_found.inc(),
            StatusCode::METHOD_NOT_ALLOWED => self.method_not_allowed.inc(),
            StatusCode::SERVICE_UNAVAILABLE => self.unavailable.inc(),
            other => self.all.with_label_values(&[other.as_str()]).inc(),
        }
    }
}

/// The metrics and health port.
pub fn health(caches: Arc<Caches>, metrics: AgentMetrics) -> Handler {
    Arc::new(move |parts| {
        health_response(
            &parts.method,
            parts.uri.path(),
            &caches,
            SystemTime::now(),
            || crate::server::metrics_page(&metrics.registry),
        )
    })
}

/// The health port's decision: unknown path → 404, a method other than GET or HEAD → 405,
/// ready when every binding's cache holds valid credentials at `now` (the startup probe holds
/// the apps back until then). `metrics_page` renders `/metrics` only when asked for.
pub fn health_response(
    method: &Method,
    path: &str,
    caches: &Caches,
    now: SystemTime,
    metrics_page: impl FnOnce() -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz/live" | "/healthz/ready");
    if !known {
        return crate::server::plain(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = crate::server::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET",
        );
        resp.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static(HEALTH_ALLOW),
        );
        return resp;
    }
    match path {
        "/metrics" => metrics_page(),
        "/healthz/live" => crate::server::plain(StatusCode::OK, "ok"),
        _ => match caches.unavailable_at(now).as_slice() {
            [] => crate::server::plain(StatusCode::OK, "ready"),
            waiting => crate::server::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: no valid credentials cached for binding {}",
                    waiting.join(", ")
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::agent::cache::{Cached, CredentialCache};
    use crate::agent::credentials::tests::sample;

    fn answer(method: Method, path: &str, cache: &Arc<CredentialCache>) -> Response<Full<Bytes>> {
        answer_all(method, path, &Caches::single("s3", cache.clone()))
    }

    fn answer_all(method: Method, path: &str, caches: &Caches) -> Response<Full<Bytes>> {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        health_response(&method, path, caches, now, || {
            crate::server::plain(StatusCode::OK, "metrics")
        })
    }

    #[test]
    fn health_port_answers_only_get_and_head() {
        let cache = Arc::new(CredentialCache::default());
        cache.store(Cached::new(&sample(
            UNIX_EPOCH + Duration::from_secs(5_000),
        )));
        for path in ["/metrics", "/healthz/live", "/healthz/ready"] {
            for method in [Method::GET, Method::HEAD] {
                assert_eq!(
                    answer(method.clone(), path, &cache).status(),
                    200,
                    "{method} {path}"
                );
            }
            for method in [
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
                Method::OPTIONS,
            ] {
                let resp = answer(method.clone(), path, &cache);
                assert_eq!(resp.status(), 405, "{method} {path}");
                assert_eq!(resp.headers()[header::ALLOW], HEALTH_ALLOW);
            }
        }
        assert_eq!(answer(Method::POST, "/nope", &cache).status(), 404);
    }

    #[test]
    fn readiness_follows_the_cache() {
        let cache = Arc::new(CredentialCache::default());
        assert_eq!(answer(Method::GET, "/healthz/ready", &cache).status(), 503);
        assert_eq!(answer(Method::GET, "/healthz/live", &cache).status(), 200);
        cache.store(Cached::new(&sample(
            UNIX_EPOCH + Duration::from_secs(5_000),
        )));
        assert_eq!(answer(Method::GET, "/healthz/ready", &cache).status(), 200);
    }

    #[test]
    fn ready_only_when_every_binding_has_credentials() {
        let first = Arc::new(CredentialCache::default());
        let second = Arc::new(CredentialCache::default());
        let caches = Caches::new(vec![
            ("s3".into(), first.clone()),
            ("queue".into(), second.clone()),
        ])
        .unwrap();
        let valid = || Cached::new(&sample(UNIX_EPOCH + Duration::from_secs(5_000)));
        first.store(valid());
        let resp = answer_all(Method::GET, "/healthz/ready", &caches);
        assert_eq!(resp.status(), 503);
        second.store(valid());
        assert_eq!(
            answer_all(Method::GET, "/healthz/ready", &caches).status(),
            200
        );
    }
}
