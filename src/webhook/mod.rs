//! The mutating admission webhook: HTTPS on rustls, `POST /mutate`, AdmissionReview v1.
//!
//! Every operator replica serves it (leader or not). The decision is made from memory by
//! [`admission`]; TLS certificates are made and rotated by [`tls`]. Connections, deadlines and
//! body sizes are the shared server's, with the webhook's bounds
//! ([`Limits::webhook`](crate::server::Limits::webhook)); anything that is not a readable
//! AdmissionReview gets a 400 with the reason rather than a panic.

pub mod admission;
pub mod metrics;
pub mod tls;
mod wire;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::admission::{Admission, BindingSource};
use crate::server::text;

/// Path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// Serves the webhook until `shutdown` resolves (closing connections while `leaving`).
pub async fn serve<B: BindingSource + 'static>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    admission: Arc<Admission<B>>,
    server_metrics: crate::server::ServerMetrics,
    leaving: crate::server::Leaving,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let service = move |req: Request<Bytes>| {
        let admission = admission.clone();
        async move { handle(req, &admission).await }
    };
    let port = crate::server::Port {
        name: "webhook",
        limits: crate::server::Limits::webhook(),
        tls: Some(TlsAcceptor::from(tls)),
        metrics: server_metrics,
    };
    crate::server::serve(listener, port, leaving, service, shutdown).await;
}

async fn handle<B: BindingSource>(
    req: Request<Bytes>,
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
    let body = req.into_body();
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
