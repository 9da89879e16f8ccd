//! Opening a listener with room for bursts.
//!
//! `TcpListener::bind` listens with a backlog of 128: a burst of a thousand new connections
//! (a Deployment scaled up, a load test) overflows the accept queue and a third of the
//! clients wait for a one-second SYN retransmit. 1024 absorbs such bursts; the kernel caps it
//! at `net.core.somaxconn` (4096 by default).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

const BACKLOG: u32 = 1024;

/// A listener that could not be opened, named for the user ("metrics", "webhook", …).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// Binds `addr`; `what` names the listener in the error.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    let open = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // What `TcpListener::bind` does too: a restarted process rebinds at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    open().map_err(|source| BindError { addr, what, source })
}
