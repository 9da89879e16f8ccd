//! One connection from accept to close: the TLS handshake, hyper's HTTP/1.1, and the
//! deadline of whatever phase the connection is in.
//!
//! hyper's own `header_read_timeout` starts when hyper begins waiting for a head, which on a
//! keep-alive connection is right after the previous response: it would close idle
//! connections at the head timeout. So it is off, and a watchdog next to the connection
//! enforces one deadline per [`Phase`] instead: the head deadline runs from the first byte
//! of a head, the idle deadline between requests, and the watchdog also ends the connection
//! when the table evicts it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::Either;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::body::Budget;
use super::limits::Limits;
use super::shutdown::Leaving;
use super::table::{Entry, Phase, Slot, Table};

/// What every connection of a port shares.
pub struct Shared<S> {
    pub name: &'static str,
    pub metrics: super::ServerMetrics,
    pub limits: Limits,
    pub tls: Option<TlsAcceptor>,
    pub service: S,
    pub table: Arc<Table>,
    pub budget: Option<Budget>,
    pub leaving: Leaving,
}

/// Serves one accepted connection until it closes, times out or is evicted.
///
/// The connection runs in a task of its own and this one only watches it: a `select!` of the
/// two in one task would poll the watchdog (its timer and its eviction signal) at every wake
/// of the connection, that is several times a request. Here the watchdog wakes for its
/// deadline, an eviction or the connection's end, and aborts the connection when it must go.
/// The place in the table is left only once the connection's task, and so its socket, is gone.
pub async fn run<S, Fut>(port: Arc<Shared<S>>, stream: TcpStream, entry: Entry, watcher: Watcher)
where
    S: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slot = entry.slot.clone();
    let mut work = tokio::spawn(connection(port.clone(), stream, slot.clone(), watcher));
    tokio::select! {
        biased;
        _ = &mut work => {}
        reason = watchdog(&slot, &port.limits) => {
            work.abort();
            let _ = work.await;
            port.metrics.closed.with_label_values(&[port.name, reason]).inc();
            tracing::debug!(listener = port.name, reason, "connection closed by the server");
        }
    }
    drop(entry);
}

/// The connection itself: the TLS handshake if the port has TLS, then HTTP/1.1.
async fn connection<S, Fut>(
    port: Arc<Shared<S>>,
    stream: TcpStream,
    slot: Arc<Slot>,
    watcher: Watcher,
) where
    S: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    match port.tls.clone() {
        None => http(port, slot, stream, watcher).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => {
                slot.enter(Phase::Head);
                http(port, slot, tls, watcher).await;
            }
            Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
        },
    }
}

/// Resolves when the connection must end, with the reason (a metric label): its phase's
/// deadline passed, or the table evicted it (for a new connection or a body's budget).
///
/// A request moves its connection through three phases, and waking the connection's task at
/// each change cost about a microsecond a request (a sixth of the endpoint's own work), so phase
/// changes wake nobody. Instead the watchdog never sleeps longer than the shortest timeout of
/// any phase and, waking, reads the phase again. That is still exact: a phase entered after the
/// watchdog armed ends at least that shortest timeout after its start, so no earlier than the
/// watchdog's next wake, which then arms for it.
async fn watchdog(slot: &Slot, limits: &Limits) -> &'static str {
    let step = limits.shortest_timeout();
    loop {
        // `now` before the phase: a phase entered after this read starts at or after `now`.
        let now = Instant::now();
        let (phase, since) = slot.phase();
        let wake = match limits.phase_timeout(phase) {
            Some(timeout) if since + timeout <= now => {
                return match phase {
                    Phase::Handshake => "handshake_timeout",
                    Phase::Head => "head_timeout",
                    Phase::Idle => "idle_timeout",
                    Phase::Body | Phase::Handler => "body_timeout",
                };
            }
            Some(timeout) => (since + timeout).min(now + step),
            None => now + step,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = slot.evicted.notified() => return "evicted",
        }
    }
}

async fn http<S, Fut, IO>(port: Arc<Shared<S>>, slot: Arc<Slot>, io: IO, watcher: Watcher)
where
    S: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Tracked {
        inner: io,
        slot: slot.clone(),
    });
    let svc = {
        let (port, slot) = (port.clone(), slot.clone());
        hyper::service::service_fn(move |req| {
            let (port, slot) = (port.clone(), slot.clone());
            let answer = answer(&port, &slot, req);
            async move {
                let mut resp = answer.await;
                finish(&port, &slot, &mut resp);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog owns every deadline (see the module doc).
        .header_read_timeout(None)
        .max_buf_size(port.limits.max_head_bytes);
    if let Err(err) = watcher.watch(builder.serve_connection(io, svc)).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// One request's answer. A port without a body budget answers from the head, and its handler
/// is called here, before hyper polls the answer: hyper reads ahead on a keep-alive connection
/// while an answer is pending, and a request still alive then (its head's bytes are slices of
/// the connection's read buffer) makes that read allocate a new buffer, once per request.
fn answer<S, Fut>(
    port: &Arc<Shared<S>>,
    slot: &Arc<Slot>,
    req: Request<Incoming>,
) -> Either<Fut, impl Future<Output = Response<Full<Bytes>>> + use<S, Fut>>
where
    S: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Response<Full<Bytes>>>,
{
    let (parts, body) = req.into_parts();
    match &port.budget {
        None => {
            // This port's handlers answer from the head; hyper discards any body.
            drop(body);
            slot.enter(Phase::Handler);
            Either::Left((port.service)(Request::from_parts(parts, Bytes::new())))
        }
        Some(budget) => Either::Right(with_body(
            port.clone(),
            slot.clone(),
            budget.clone(),
            parts,
            body,
        )),
    }
}

/// A request whose body is read within the port's budget before the handler sees it.
async fn with_body<S, Fut>(
    port: Arc<Shared<S>>,
    slot: Arc<Slot>,
    budget: Budget,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<Full<Bytes>>
where
    S: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Response<Full<Bytes>>>,
{
    slot.enter(Phase::Body);
    let declared = hyper::body::Body::size_hint(&body).exact();
    match budget.read(body, declared, &port.table, &slot).await {
        Ok((bytes, held)) => {
            slot.enter(Phase::Handler);
            let resp = (port.service)(Request::from_parts(parts, bytes)).await;
            drop(held);
            resp
        }
        Err(err) => {
            port.metrics
                .bodies_refused
                .with_label_values(&[port.name, err.label()])
                .inc();
            tracing::debug!(listener = port.name, error = %err, "request body refused");
            let mut resp = super::text(err.status(), err.to_string());
            close(&mut resp);
            resp
        }
    }
}

/// After the handler: retire the connection when shutting down, and mark it idle.
fn finish<S>(port: &Shared<S>, slot: &Slot, resp: &mut Response<Full<Bytes>>) {
    if port.leaving.is_set() {
        // Shutting down: a pooled connection is retired by an answer, never closed under a
        // client that may be sending on it.
        close(resp);
    }
    slot.enter(Phase::Idle);
}

fn close(resp: &mut Response<Full<Bytes>>) {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
}

/// The connection's stream, telling its slot when bytes arrive.
struct Tracked<IO> {
    inner: IO,
    slot: Arc<Slot>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.on_bytes();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
