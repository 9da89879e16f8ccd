//! A network namespace of the suite's own, for the cases whose addresses must not be the
//! machine's: T04 (an http host that is not loopback) and T10 (the RELATIVE URI, whose host is
//! hard-wired to 169.254.170.2). The namespace has only `lo`, with the extra addresses a case
//! asks for put on it, so every packet of those cases stays inside it: nothing is sent off the
//! machine, and 169.254.170.2 is never targeted outside it.
//!
//! The namespace is held by a small `unshare --net` process that also brings `lo` up; it lives
//! until its stdin closes (on drop, or when the test process dies), and the namespace with it.
//! Listeners are bound inside it from a thread that joins it for the bind (a socket belongs to
//! the namespace it was made in, whichever thread uses it afterwards), and the SDK clients run
//! inside it through `nsenter`. What must reach the real agent or moto on the machine's
//! loopback goes through [`Double`](super::double::Double)'s proxy or [`tunnel`], both of which
//! accept inside the namespace and connect from outside it.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context as _, ensure};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Netns {
    holder: Child,
    /// Closing it ends the holder.
    stdin: Option<ChildStdin>,
    ns: std::fs::File,
}

impl Netns {
    /// A new namespace with `lo` up and `addresses` (`a.b.c.d/32`) on it. Needs root (or
    /// CAP_SYS_ADMIN and CAP_NET_ADMIN), as CI has.
    pub fn new(addresses: &[&str]) -> anyhow::Result<Netns> {
        let mut setup = String::from("ip link set lo up");
        for address in addresses {
            setup.push_str(&format!(" && ip addr add {address} dev lo"));
        }
        // `read` returns when stdin closes: the holder never outlives its test.
        setup.push_str(" && echo ready && read _");
        let mut holder = Command::new("unshare")
            .args(["--net", "sh", "-c", &setup])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running `unshare --net` for a network namespace")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let output = holder.wait_with_output()?;
            anyhow::bail!(
                "could not make a network namespace ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", holder.id()))
            .context("opening the namespace")?;
        Ok(Netns {
            stdin: holder.stdin.take(),
            holder,
            ns,
        })
    }

    /// `nsenter` arguments that run a program inside the namespace: prefix the program with
    /// them.
    pub fn nsenter_args(&self) -> Vec<OsString> {
        vec![
            format!("--net=/proc/{}/ns/net", self.holder.id()).into(),
            "--".into(),
        ]
    }

    /// Binds `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let listener = std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<std::net::TcpListener> {
                    move_into_link_name_space(self.ns.as_fd(), Some(LinkNameSpaceType::Network))
                        .context("joining the network namespace")?;
                    std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))
        })??;
        listener.set_nonblocking(true)?;
        Ok(TcpListener::from_std(listener)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A plain TCP relay: every connection accepted on `listener` (inside a namespace) is joined
/// to a new connection to `upstream` (outside it). For moto, which the clients call after
/// resolving credentials.
pub struct Tunnel {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

pub fn tunnel(listener: TcpListener, upstream: SocketAddr) -> anyhow::Result<Tunnel> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outside) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    });
    Ok(Tunnel { addr, task })
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `http://127.0.0.1:P` → `127.0.0.1:P`.
pub fn authority(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL without scheme")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{url} has no host:port"))?;
    ensure!(addr.ip().is_loopback(), "{url} is not on loopback");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::Netns;

    /// A listener bound in the namespace is reachable from a process inside it and not from
    /// the machine's own loopback: the namespace really is separate.
    #[tokio::test]
    async fn the_namespace_has_a_loopback_of_its_own() {
        let ns = Netns::new(&["192.0.2.10/32"]).unwrap();
        let listener = ns.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let inside = tokio::process::Command::new("nsenter")
            .args(ns.nsenter_args())
            .args(["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
            .status()
            .await
            .unwrap();
        assert!(inside.success(), "a process in the namespace connects");
        accept.await.unwrap().unwrap();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the machine's loopback does not reach the namespace's"
        );
        let addresses = tokio::process::Command::new("nsenter")
            .args(ns.nsenter_args())
            .args(["ip", "-o", "addr", "show", "dev", "lo"])
            .output()
            .await
            .unwrap();
        let addresses = String::from_utf8_lossy(&addresses.stdout);
        assert!(addresses.contains("192.0.2.10/32"), "{addresses}");
    }
}
