//! HTTP/1.1 serving shared by the agent (its loopback credentials port and its health port on
//! all addresses) and the operator (its TLS webhook and its health port).
//!
//! Anyone who can reach a port can open connections to it, so each port bounds what its
//! clients can make it hold ([`Limits`], one per port): a cap on connections where a new one
//! evicts the oldest connection of the busiest peer instead of waiting itself (`table`), a deadline for each phase of a connection — TLS handshake, request head, idle
//! keep-alive, request body (`conn`) — and a per-request size and a per-port budget of body
//! bytes (`body`). Memory is therefore bounded by the limits, not by the clients.
//!
//! hyper drives each connection; hyper-util's `GracefulShutdown` drains them (each connection
//! task holds a `Watcher`, so the drain waits for every one): on shutdown the listener
//! closes, idle connections close, in-flight requests finish (with `Connection: close`)
//! within the drain timeout. The accept loop itself is ours because no library offers what
//! it does: hyper-util serves one connection at a time, tower's limits queue or refuse
//! instead of evicting, and kubert would bring its own TLS, runtime and flags to the agent as
//! well. What to answer is the caller's business: a handler from a request with its whole
//! body to a response.
//!
//! Modules: `limits` (the bounds and their presets), `table` (the connections and eviction),
//! `conn` (one connection: handshake, phases, watchdog), `body` (reading a body within
//! bounds), `listen` (binding with a backlog for bursts), `shutdown` (signal and leaving).

mod body;
mod conn;
pub mod limits;
mod listen;
mod metrics;
mod shutdown;
mod table;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use self::limits::{BodyLimits, Limits};
pub use self::listen::{BindError, bind};
pub use self::metrics::ServerMetrics;
pub use self::shutdown::{Leaving, stopped, termination_signal};

use self::body::Budget;
use self::conn::Shared;
use self::table::{Phase, Table};

/// One listening port as the caller describes it.
pub struct Port {
    /// Names the port in metrics and logs (`credentials`, `health`, `webhook`).
    pub name: &'static str,
    pub limits: Limits,
    /// Serve over TLS with this acceptor.
    pub tls: Option<TlsAcceptor>,
    pub metrics: ServerMetrics,
}

/// Serves `service` on `listener` as `port` says until `shutdown` resolves, then drains
/// in-flight requests for up to the drain timeout. While `leaving` is set, every response
/// closes its connection.
pub async fn serve<S, Fut>(
    listener: TcpListener,
    port: Port,
    leaving: Leaving,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let Port {
        name,
        limits,
        tls,
        metrics,
    } = port;
    let first_phase = if tls.is_some() {
        Phase::Handshake
    } else {
        Phase::Head
    };
    let drain_timeout = limits.drain_timeout;
    let port = Arc::new(Shared {
        name,
        metrics,
        table: Table::new(limits.max_connections),
        budget: limits.body.clone().map(Budget::new),
        limits,
        tls,
        service,
        leaving,
    });
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: pause instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let entry = loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = port.table.freed.notified();
            if let Some((entry, evicted)) = port.table.admit(peer.ip(), first_phase) {
                if evicted {
                    tracing::debug!(
                        listener = name,
                        "port full: evicted the oldest connection of the busiest peer"
                    );
                }
                break Some(entry);
            }
            // Every connection is in its handler, which ends on its own.
            tokio::select! {
                () = &mut shutdown => break None,
                () = freed => {}
            }
        };
        let Some(entry) = entry else { break };
        let watcher = graceful.watcher();
        tokio::spawn(conn::run(port.clone(), stream, entry, watcher));
    }
    drop(listener);
    tracing::debug!(
        listener = name,
        connections = graceful.count(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; closing them"
        );
    }
}

/// A short plain-text response (health endpoints, 404s).
pub fn plain(status: http::StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(text.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A plain-text response with a message made at run time (errors that name their cause).
pub fn text(status: http::StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message)));
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
