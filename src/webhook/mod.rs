//! The mutating admission webhook: HTTPS on rustls, `POST /mutate`, AdmissionReview v1.
//!
//! Every operator replica serves it (leader or not). The decision is made from memory by
//! [`admission`]; TLS certificates are made and rotated by [`tls`]. Bodies are capped (the API
//! server never sends more than a few MiB for a pod), and anything that is not a readable
//! AdmissionReview gets a 400 with the reason rather than a panic.

pub mod admission;
pub mod metrics;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::admission::{Admission, BindingSource};

/// Largest AdmissionReview accepted: pods are limited by etcd's 1.5 MiB object size, and the
/// review carries the object once (twice for updates, which we do not register for).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// Serves the webhook until `shutdown` resolves.
pub async fn serve<B: BindingSource + 'static>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    admission: Arc<Admission<B>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let service = move |req: Request<Incoming>| {
        let admission = admission.clone();
        async move { handle(req, &admission).await }
    };
    crate::server::serve(listener, Some(TlsAcceptor::from(tls)), service, shutdown).await;
}

async fn handle<B: BindingSource>(
    req: Request<Incoming>,
    admission: &Admission<B>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != MUTATE_PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path; the webhook is served at {MUTATE_PATH}"),
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the webhook accepts POST only".into(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body: {err}"),
            );
        }
    };
    match admission.review(&body).await {
        Ok(json) => {
            let mut resp = Response::new(Full::new(Bytes::from(json)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(err) => {
            tracing::warn!(error = %err, "rejected a malformed AdmissionReview");
            text(StatusCode::BAD_REQUEST, err.to_string())
        }
    }
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
