//! The real parts each case runs against — moto as STS and the agent process — reached only
//! through `tests/support` (which owns how they start), plus the bits of glue the cases share:
//! the pod's env for an agent, and the agent's request counts from its own metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::clients::{Clients, PodEnv, Run, Sdk};
use super::netns::Netns;
use crate::support::agent::{self, AgentProcess};
use crate::support::http;
use crate::support::sts::StsPeer;

/// Cases running at once. Two cores are shared by the clients (a JVM is hungry), the agents and
/// moto; more parallelism only makes every run slower.
const CONCURRENT_CASES: usize = 3;

/// What every case gets: the client programs, STS peers and the concurrency limit.
pub struct Ctx {
    pub clients: Clients,
    /// moto answering as STS does, shared by the cases that need nothing special.
    pub sts: StsPeer,
    /// Peers that issue credentials with a fixed short lifetime, by lifetime in seconds. One
    /// per lifetime, because the lifetime is a switch of the whole peer.
    short_lived: BTreeMap<u64, StsPeer>,
    limit: Semaphore,
}

impl Ctx {
    /// Starts the STS peers (in parallel: each is a Python process that takes a moment).
    pub async fn new(clients: Clients, lifetimes: &[u64]) -> Arc<Ctx> {
        let start = || tokio::task::spawn_blocking(StsPeer::start);
        let shared = start();
        let mut short_lived = BTreeMap::new();
        let pending: Vec<_> = lifetimes.iter().map(|&l| (l, start())).collect();
        for (lifetime, peer) in pending {
            let peer = peer.await.expect("start STS peer");
            peer.set_lifetime(lifetime).await;
            short_lived.insert(lifetime, peer);
        }
        let sts = shared.await.expect("start STS peer");
        Arc::new(Ctx {
            clients,
            sts,
            short_lived,
            limit: Semaphore::new(CONCURRENT_CASES),
        })
    }

    /// The peer issuing credentials that live `lifetime` seconds (one given to [`Ctx::new`]).
    pub fn peer(&self, lifetime: u64) -> &StsPeer {
        &self.short_lived[&lifetime]
    }

    /// Waits for one of the [`CONCURRENT_CASES`] slots; the case runs while it holds it.
    pub async fn slot(&self) -> SemaphorePermit<'_> {
        self.limit
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    pub async fn run(&self, sdk: Sdk, env: &PodEnv) -> Run {
        self.clients.run(sdk, env).await
    }

    /// [`Ctx::run`] inside a network namespace of the test's own.
    pub async fn run_in(&self, sdk: Sdk, env: &PodEnv, netns: &Netns) -> Run {
        self.clients.run_in(sdk, env, Some(netns)).await
    }
}

/// How long an agent may take to become ready (its first STS exchange included). Generous:
/// the two cores are busy with clients, JVMs and moto while agents start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a case wants its agent.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentOptions {
    /// `--duration`; the agent's default (1h) when `None`.
    pub duration: Option<&'static str>,
    /// Listen on `[::1]` instead of 127.0.0.1.
    pub ipv6: bool,
}

/// The agent under test, with what the cases ask of it.
pub struct Agent {
    process: AgentProcess,
    sts_endpoint: String,
}

impl Agent {
    /// Starts an agent against `sts` and waits until it serves credentials.
    pub async fn start(sts: &StsPeer, options: AgentOptions) -> Agent {
        let mut setup = agent::AgentOptions::new(sts.endpoint());
        if let Some(duration) = options.duration {
            setup
                .extra_args
                .extend(["--duration".to_owned(), duration.to_owned()]);
        }
        if options.ipv6 {
            setup.listen_host = "[::1]".to_owned();
        }
        let process = AgentProcess::start(setup);
        process.wait_ready(READY_TIMEOUT).await;
        Agent {
            process,
            sts_endpoint: sts.endpoint().to_owned(),
        }
    }

    /// The env the webhook would give an app container for this agent.
    pub fn pod_env(&self) -> PodEnv {
        PodEnv::new(
            &self.credentials_url(),
            &self.auth_token_file(),
            &self.sts_endpoint,
        )
    }

    pub fn credentials_url(&self) -> String {
        self.process.credentials_url()
    }

    pub fn auth_token_file(&self) -> PathBuf {
        self.process.auth_token_file()
    }

    /// `assumed-role/<role>/<session>`, the tail of the ARN GetCallerIdentity must return.
    pub fn assumed_role(&self) -> String {
        let role = agent::ROLE_ARN.rsplit('/').next().unwrap_or_default();
        format!("assumed-role/{role}/{}", agent::SESSION_NAME)
    }

    /// Stops the agent (SIGTERM) and starts it again with the same flags and files, then
    /// waits until it serves again.
    pub async fn restart(&mut self) {
        self.process.restart();
        self.process.wait_ready(READY_TIMEOUT).await;
    }

    /// The agent's credentials response, fetched with its token as an SDK would (this counts
    /// as one served request).
    pub async fn fetch_directly(&self) -> serde_json::Value {
        self.process.fetch().await.json()
    }

    /// Requests the endpoint answered since the agent (re)started, by status code, from the
    /// agent's own `credvend_endpoint_requests_total` counter.
    pub async fn served(&self) -> Served {
        let reply = http::get(&self.process.metrics_url("/metrics"))
            .await
            .expect("agent metrics answer");
        Served::parse(&reply.text())
    }
    /// Waits until the agent has answered at least `n` credential requests (with any status).
    pub async fn wait_for_requests(&self, n: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.served().await.total() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Credential-endpoint requests by HTTP status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served(pub BTreeMap<u16, u64>);

impl Served {
    const METRIC: &'static str = "credvend_endpoint_requests_total{";

    /// Reads the counter's samples from Prometheus text, whatever other labels it carries.
    pub fn parse(metrics: &str) -> Served {
        let mut counts = BTreeMap::new();
        for line in metrics.lines().filter(|l| l.starts_with(Self::METRIC)) {
            let Some((labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let status = labels
                .split_once("status=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .and_then(|(code, _)| code.parse::<u16>().ok());
            if let (Some(status), Ok(value)) = (status, value.trim().parse::<f64>()) {
                *counts.entry(status).or_default() += value as u64;
            }
        }
        // The agent exports each status it can answer from its start, at 0: only answers count.
        counts.retain(|_, n| *n > 0);
        Served(counts)
    }

    /// Credentials handed out (200s): the SDK's fetches.
    pub fn fetches(&self) -> u64 {
        self.0.get(&200).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Served;

    #[test]
    fn served_counts_requests_by_status_from_prometheus_text() {
        let page = "# HELP credvend_endpoint_requests_total Requests.\n\
                    # TYPE credvend_endpoint_requests_total counter\n\
                    credvend_endpoint_requests_total{status=\"200\"} 3\n\
                    credvend_endpoint_requests_total{path=\"/x\",status=\"401\"} 1\n\
                    credvend_endpoint_requests_total{status=\"503\"} 0\n\
                    credvend_endpoint_requests_seconds_count 4\n";
        let served = Served::parse(page);
        assert_eq!(served.fetches(), 3);
        assert_eq!(served.total(), 4);
        assert_eq!(
            served.0.keys().copied().collect::<Vec<_>>(),
            [200, 401],
            "no 503 answered"
        );
    }
}
