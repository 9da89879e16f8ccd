//! Loopback ports for the servers a test starts.
//!
//! A port found by binding port 0 and letting go comes from the kernel's ephemeral range, the
//! same range every outgoing connection of every parallel test draws its source port from:
//! between the check and the server's own bind, a test's client can take it, and the server
//! fails with "Address already in use". These ports come from below that range instead
//! (32768–60999 unless the machine was told otherwise), so only another server can hold one;
//! a counter keeps the tests of one binary apart, and the bind check skips whatever a process
//! still running from an earlier binary holds.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out; below it sit well-known and registered services.
const LOWEST: u32 = 12_000;
/// How many ports there are to hand out: up to 32000, below the ephemeral range.
const SPAN: u32 = 20_000;

/// A loopback port nothing listens on now, and that no outgoing connection will take.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test binary starts at its own place, so two binaries' agents (one lingering after
    // its test) seldom meet even before the bind check.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOWEST + (start + offset) % SPAN).expect("port below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{}", LOWEST + SPAN)
}

/// `N` distinct free ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    [(); N].map(|()| free_port())
}
