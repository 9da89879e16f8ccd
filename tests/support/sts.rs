//! moto's STS server as the agent's peer, with request recording and failure switches
//! (see `tests/python/sts_peer.py`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::http;
use super::python::{python, repo_path};

/// A running STS peer on 127.0.0.1; killed on drop.
pub struct StsPeer {
    child: Child,
    endpoint: String,
    /// The https endpoint for pods, when started with [`StsPeer::start_for_pods`].
    pod_endpoint: Option<String>,
    tls: Option<PodListener>,
    _dir: tempfile::TempDir,
}

/// Where and with what certificate the peer also serves pods over https.
#[derive(Clone)]
pub struct PodListener {
    pub address: std::net::Ipv4Addr,
    pub cert_pem: String,
    pub key_pem: String,
}

impl StsPeer {
    /// Starts the peer on a free port and waits until it listens.
    pub fn start() -> StsPeer {
        Self::start_on(0, None)
    }

    /// Starts the peer on 127.0.0.1 (the test's control and plain-http endpoint) and also on
    /// `listener.address` over https with `listener`'s certificate, for pods.
    pub fn start_for_pods(listener: PodListener) -> StsPeer {
        Self::start_on(0, Some((listener, 0)))
    }

    /// Stops the peer (STS becomes unreachable) and starts a fresh one on the same port(s).
    pub fn restart(&mut self) {
        self.stop();
        let port_of = |url: &str| -> u16 { url.rsplit(':').next().unwrap().parse().unwrap() };
        let port = port_of(&self.endpoint);
        let tls = self
            .tls
            .clone()
            .map(|l| (l, port_of(self.pod_endpoint.as_deref().unwrap())));
        *self = Self::start_on(port, tls);
    }

    /// `https://ADDR:PORT` on the pods' side (see [`StsPeer::start_for_pods`]).
    pub fn pod_endpoint(&self) -> &str {
        self.pod_endpoint
            .as_deref()
            .expect("the peer was started with start_for_pods")
    }

    /// Kills the peer; connections to its port are refused from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start_on(port: u16, tls: Option<(PodListener, u16)>) -> StsPeer {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("sts-peer.log")).expect("log file");
        let mut command = Command::new(python());
        command
            .arg(repo_path("tests/python/sts_peer.py"))
            .args(["--port", &port.to_string()]);
        if let Some((listener, tls_port)) = &tls {
            let cert = dir.path().join("sts.crt");
            let key = dir.path().join("sts.key");
            std::fs::write(&cert, &listener.cert_pem).unwrap();
            std::fs::write(&key, &listener.key_pem).unwrap();
            command
                .args(["--tls-host", &listener.address.to_string()])
                .args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start tests/python/sts_peer.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the peer's first line");
        let endpoint = line
            .strip_prefix("listening ")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(dir.path().join("sts-peer.log")).unwrap_or_default();
                panic!("STS peer did not start: {line:?}\n{log}")
            });
        let pod_endpoint = tls.as_ref().map(|_| {
            let mut line = String::new();
            stdout
                .read_line(&mut line)
                .expect("read the peer's tls line");
            line.strip_prefix("tls ")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| panic!("STS peer did not serve https: {line:?}"))
        });
        StsPeer {
            child,
            endpoint,
            pod_endpoint,
            tls: tls.map(|(listener, _)| listener),
            _dir: dir,
        }
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every STS request received so far, oldest first.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        let reply = http::get(&format!("{}/__credvend/requests", self.endpoint))
            .await
            .expect("peer answers");
        serde_json::from_slice(&reply.body).expect("JSON list")
    }

    /// The recorded AssumeRoleWithWebIdentity calls' form fields.
    pub async fn web_identity_calls(&self) -> Vec<serde_json::Value> {
        self.requests()
            .await
            .into_iter()
            .map(|r| r["form"].clone())
            .filter(|f| f["Action"] == "AssumeRoleWithWebIdentity")
            .collect()
    }

    /// Makes every STS call fail with `code` and HTTP `status` until [`recover`](Self::recover).
    pub async fn fail(&self, code: &str, status: u16) {
        self.control(&format!("fail?code={code}&status={status}"))
            .await;
    }

    pub async fn recover(&self) {
        self.control("recover").await;
    }

    /// Issued credentials expire `seconds` after issue (0: as requested).
    pub async fn set_lifetime(&self, seconds: u64) {
        self.control(&format!("lifetime?seconds={seconds}")).await;
    }

    /// Issued credentials have already expired `seconds` ago when they arrive.
    pub async fn issue_expired(&self, seconds: u64) {
        self.control(&format!("lifetime?seconds=-{seconds}")).await;
    }

    /// Every STS call answers 200 with a body that is not an STS reply, until
    /// [`recover`](Self::recover).
    pub async fn garble(&self) {
        self.control("garble").await;
    }

    /// Holds every STS answer back for `seconds` (0: answer at once).
    pub async fn delay(&self, seconds: u64) {
        self.control(&format!("delay?seconds={seconds}")).await;
    }

    /// How many STS requests the peer is holding back right now (see [`delay`](Self::delay)).
    pub async fn in_flight(&self) -> u64 {
        let reply = http::get(&format!("{}/__credvend/in_flight", self.endpoint))
            .await
            .expect("peer answers");
        serde_json::from_slice(&reply.body).expect("a number")
    }

    /// When each recorded AssumeRoleWithWebIdentity call arrived (Unix seconds).
    pub async fn web_identity_call_times(&self) -> Vec<f64> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["form"]["Action"] == "AssumeRoleWithWebIdentity")
            .filter_map(|r| r["time"].as_f64())
            .collect()
    }

    async fn control(&self, action: &str) {
        let reply = http::post(&format!("{}/__credvend/{action}", self.endpoint))
            .await
            .expect("peer answers");
        assert_eq!(reply.status, 200, "control {action}: {}", reply.text());
    }
}

impl Drop for StsPeer {
    fn drop(&mut self) {
        self.stop();
    }
}
