//! A container-credentials endpoint that does what a test tells it to: answer from a script
//! (status, headers, body, delay — including the broken answers of ENDPOINT.md's T12–T23), or
//! pass requests through to the real agent. Either way it records every request's method,
//! target and headers, which is how the suite sees what each SDK sends.
//!
//! It speaks just enough HTTP/1.1 by hand: the point is full control of the bytes on the wire
//! (a body that is not JSON, a missing Content-Type, a stall before answering), which a real
//! server framework would tidy away.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: Some("application/json"),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// How the double answers.
#[derive(Clone)]
pub enum Behaviour {
    /// The n-th request gets the n-th reply from this function (0-based).
    Script(Arc<dyn Fn(usize) -> Reply + Send + Sync>),
    /// Forward every request to this address (the real agent) and relay its answer.
    Proxy(SocketAddr),
}

impl Behaviour {
    pub fn always(reply: Reply) -> Behaviour {
        Behaviour::Script(Arc::new(move |_| reply.clone()))
    }
}

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Double {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Double {
    pub async fn start(behaviour: Behaviour) -> Double {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test double");
        Double::serve(listener, behaviour)
    }

    /// The double on a listener of the caller's (one bound inside a network namespace).
    pub fn serve(listener: TcpListener, behaviour: Behaviour) -> Double {
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, behaviour.clone(), recorded.clone()));
            }
        });
        Double {
            addr,
            requests,
            task,
        }
    }

    /// `http://<address>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection: scripted replies keep it alive, as a real server would; proxied ones
/// close it after each answer, so the relay never has to parse the upstream's framing.
async fn serve(stream: TcpStream, behaviour: Behaviour, requests: Arc<Mutex<Vec<Recorded>>>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_head(&mut stream).await {
        let index = {
            let mut all = requests.lock().expect("requests lock");
            all.push(request.clone());
            all.len() - 1
        };
        let result = match &behaviour {
            Behaviour::Script(script) => answer(stream.get_mut(), &script(index)).await,
            Behaviour::Proxy(upstream) => {
                let _ = relay(stream.get_mut(), *upstream, &request).await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Reads a request line and headers; `None` at end of stream or on garbage. Bodies are not
/// expected (every SDK sends a GET) and are not read.
async fn read_head(stream: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            return Some(Recorded {
                method,
                target,
                headers,
            });
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

async fn answer(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    tokio::time::sleep(reply.delay).await;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if let Some(content_type) = reply.content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.flush().await
}

/// Sends the request to the agent as it came (but with `Connection: close`) and copies the
/// agent's answer back byte for byte.
async fn relay(
    client: &mut TcpStream,
    upstream: SocketAddr,
    request: &Recorded,
) -> std::io::Result<()> {
    let mut agent = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    agent.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    agent.read_to_end(&mut answer).await?;
    client.write_all(&answer).await?;
    client.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
