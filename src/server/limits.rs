//! What one listening port lets its clients hold: connections, time per phase, body bytes.
//!
//! One value per port, chosen where the port is opened (the presets below), so each port's
//! budget is its own and a flood on one port never costs another its connections: the
//! agent's probes are answered whatever happens on its credentials port, and the operator's
//! probes whatever happens on its webhook port.

use std::time::Duration;

use super::table::Phase;

/// The bounds of one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once. A new connection beyond it evicts the oldest connection of
    /// the busiest peer (see `table`), so the cap never makes a new client wait.
    pub max_connections: usize,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From the connection's start, or the first byte after an idle keep-alive pause, to a
    /// complete request head.
    pub head_timeout: Duration,
    /// How long a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Request bodies read for the handler; `None`: bodies are never read (the handler
    /// answers from the head).
    pub body: Option<BodyLimits>,
    /// After shutdown, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_head_bytes: usize,
}

/// How much request body a port reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body of one request; larger ones get 413.
    pub max_bytes: usize,
    /// Body bytes held by all requests of the port together, until their responses are
    /// sent; this is what bounds the port's memory whatever the number of senders.
    pub budget_bytes: usize,
    /// From the complete head to the complete body.
    pub timeout: Duration,
    /// A body still arriving after this long is from a slow sender: when the budget is
    /// short, such bodies are dropped to make room for new ones.
    pub slow_after: Duration,
}

/// Head timeout of every port: a client has 5 s to send a request head, far more than any
/// client on a pod network needs.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive idle time of every port: 120 s, above the idle times of the clients' pools
/// (Go's `http.Transport`, which the API server and the Go SDK use: 90 s; hyper-util and the
/// Rust SDK: 90 s; the Java SDK v2: 60 s; Node's agent and the JDK: 5 s; botocore: none),
/// so the client, not the server, closes an idle connection and never sends a request
/// into a close. Idle connections cost little and are the first to go when a port is full.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A request head is at most 16 KiB (hyper's read buffer never grows beyond it).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// In-flight requests get 10 s after shutdown: twice the API server's webhook timeout in
/// the chart, far more than any handler here takes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Limits {
    /// The agent's loopback credentials endpoint: only the pod's own containers reach it,
    /// each SDK with one or a few connections; 128 is room for any app, and at about 20 KiB
    /// a connection it keeps the port under 3 MiB.
    pub fn agent_credentials() -> Limits {
        Limits::plain(128)
    }

    /// A health and metrics port (the agent's, on all addresses, and the operator's): the
    /// kubelet's probes and a scraper need a handful of connections.
    pub fn health(max_connections: usize) -> Limits {
        Limits::plain(max_connections)
    }

    /// The operator's TLS webhook. The API server is its only real client, with a pool of
    /// a few dozen connections per API server; 512 leaves room for several API servers and
    /// stays near 25 MiB of connection state.
    ///
    /// Bodies: an AdmissionReview carries the pod once, and the API server refuses request
    /// bodies over 3 MiB, so 4 MiB holds the largest pod a user can send plus the review's
    /// envelope. 32 MiB in total is eight such reviews at once (hundreds of ordinary ones),
    /// a bounded part of the operator's 256 MiB limit even with the decoded review, while
    /// the API server sends at most as many reviews as pods are created. The body is sent
    /// right after the head, so 5 s (the chart's webhook timeout, after which the API server
    /// has given up) is ample; the TLS handshake gets 3 s, inside the same 5 s.
    pub fn webhook() -> Limits {
        Limits {
            body: Some(BodyLimits {
                max_bytes: 4 * 1024 * 1024,
                budget_bytes: 32 * 1024 * 1024,
                timeout: Duration::from_secs(5),
                slow_after: Duration::from_secs(1),
            }),
            ..Limits::plain(512)
        }
    }

    fn plain(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            handshake_timeout: Duration::from_secs(3),
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body: None,
            drain_timeout: DRAIN_TIMEOUT,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }

    /// The shortest of the phases' timeouts: the longest a connection's watchdog sleeps
    /// (see `conn::watchdog`).
    pub fn shortest_timeout(&self) -> Duration {
        [Phase::Handshake, Phase::Head, Phase::Idle, Phase::Body]
            .into_iter()
            .filter_map(|p| self.phase_timeout(p))
            .min()
            .unwrap_or(self.handshake_timeout)
            // A zero timeout closes at once; it must not make the watchdog spin.
            .max(Duration::from_millis(1))
    }

    /// How long a connection may stay in `phase` before it is closed; `None` while the
    /// handler works (our own code, not the client's pace).
    pub fn phase_timeout(&self, phase: Phase) -> Option<Duration> {
        match phase {
            Phase::Handshake => Some(self.handshake_timeout),
            Phase::Head => Some(self.head_timeout),
            Phase::Idle => Some(self.idle_timeout),
            // The body reader answers 408 at its own deadline; this only backs it up.
            Phase::Body => self
                .body
                .as_ref()
                .map(|b| b.timeout + Duration::from_secs(1)),
            Phase::Handler => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_answers_inside_the_api_servers_timeout() {
        let webhook = Limits::webhook();
        let api_server_timeout = Duration::from_secs(5);
        assert!(webhook.handshake_timeout < api_server_timeout);
        assert!(webhook.head_timeout <= api_server_timeout);
        let body = webhook.body.expect("the webhook reads bodies");
        assert!(body.max_bytes < body.budget_bytes);
        assert!(body.timeout <= api_server_timeout);
    }

    #[test]
    fn idle_connections_outlive_the_clients_pools() {
        // Go's http.Transport (the API server, the Go SDK) and hyper-util keep 90 s.
        for limits in [
            Limits::webhook(),
            Limits::agent_credentials(),
            Limits::health(8),
        ] {
            assert!(limits.idle_timeout > Duration::from_secs(90));
            assert!(limits.idle_timeout > limits.head_timeout);
        }
    }

    #[test]
    fn only_the_handler_has_no_deadline() {
        let limits = Limits::webhook();
        assert_eq!(limits.phase_timeout(Phase::Handler), None);
        for phase in [Phase::Handshake, Phase::Head, Phase::Idle, Phase::Body] {
            assert!(limits.phase_timeout(phase).is_some(), "{phase:?}");
        }
    }
}
