//! What both baseline servers share: reading their fixed answer and flags, and one listener
//! opened the way credvend opens its own (backlog 1024), so only the request path differs.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpSocket};

/// credvend's listen backlog (src/server/listen.rs).
const BACKLOG: u32 = 1024;

/// `--listen ADDR --body FILE [--token FILE] [--cert FILE --key FILE]`, nothing else.
pub struct Flags {
    pub listen: SocketAddr,
    pub body: Vec<u8>,
    pub token: Option<Vec<u8>>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A flag that is missing, unknown or unreadable, with what was wrong.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Flags {
    pub fn parse() -> Result<Flags, Error> {
        let mut args = std::env::args().skip(1);
        let (mut listen, mut body, mut token, mut cert, mut key) = (None, None, None, None, None);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--listen" => listen = Some(value.parse()?),
                "--body" => body = Some(std::fs::read(&value)?),
                // The agent's token file is one line; a trailing newline is not part of it.
                "--token" => {
                    token = Some(std::fs::read_to_string(&value)?.trim().as_bytes().to_vec())
                }
                "--cert" => cert = Some(PathBuf::from(value)),
                "--key" => key = Some(PathBuf::from(value)),
                other => return Err(format!("unknown flag {other}").into()),
            }
        }
        Ok(Flags {
            listen: listen.ok_or("--listen is required")?,
            body: body.ok_or("--body is required")?,
            token,
            cert,
            key,
        })
    }
}

/// Binds `addr` with credvend's backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Equal without an early exit, as the agent compares its token.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
