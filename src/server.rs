//! HTTP/1.1 serving shared by the agent (plain, loopback) and the operator (TLS webhook).
//!
//! The server bounds what a client can make it hold: request heads of at most 16 KiB, 5
//! seconds to send them, 10 seconds for a TLS handshake, and a cap on concurrent connections.
//! On shutdown it stops accepting, lets in-flight requests finish for a few seconds, then
//! returns. What to answer is the caller's business: a hyper `Service` per connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

const MAX_HEAD_BYTES: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` (over TLS when `tls` is given) until `shutdown` resolves.
pub async fn serve<S, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = Arc::new(GracefulShutdown::new());
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and similar: pause instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let tls = tls.clone();
        let graceful = graceful.clone();
        tokio::spawn(async move {
            connection(stream, tls, service, &graceful).await;
            drop(permit);
        });
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

async fn connection<S, Fut>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: S,
    graceful: &GracefulShutdown,
) where
    S: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let fut = service(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let builder = {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        b
    };
    // Client errors (resets, oversized or slow heads, failed handshakes) end only that
    // connection.
    let result = match tls {
        None => {
            graceful
                .watch(builder.serve_connection(TokioIo::new(stream), svc))
                .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    graceful
                        .watch(builder.serve_connection(TokioIo::new(tls_stream), svc))
                        .await
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A listener that could not be opened, named for the user ("metrics", "webhook", …).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// Binds `addr`; `what` names the listener in the error.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

/// Resolves once `rx` holds `true` (or its sender is gone): the shutdown signal every server
/// and background task of a process waits on.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).
pub async fn termination_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// A short plain-text response (health endpoints, 404s).
pub fn plain(status: http::StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The Prometheus page for `registry`.
pub fn metrics_page(registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render(registry))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static(crate::metrics::TEXT_CONTENT_TYPE),
    );
    resp
}
