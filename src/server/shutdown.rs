//! How a process leaves: the signal, the "leaving" state, and the stop every task waits on.
//!
//! A replica behind a Service leaves in three steps: on SIGTERM it is [`Leaving`] (readiness
//! fails, responses carry `Connection: close`, yet new requests are still answered, because
//! the endpoints and the clients' pooled connections take a moment to move away); after the
//! caller's delay it stops accepting; then in-flight requests drain (hyper-util's
//! `GracefulShutdown`, in `serve`) and the process exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the process has been asked to stop and is waiting for clients to move away.
#[derive(Clone, Debug, Default)]
pub struct Leaving(Arc<AtomicBool>);

impl Leaving {
    pub fn new() -> Leaving {
        Leaving::default()
    }

    /// From now on readiness fails and every response closes its connection.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
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
