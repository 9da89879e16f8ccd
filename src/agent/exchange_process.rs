//! The production exchanger: each refresh runs the STS calls in a child process,
//! `credvend agent-exchange` ([`exchange_child`](super::exchange_child)), that lives only as
//! long as the calls.
//!
//! Why a process: the agent is paid for in every pod, and what it runs between refreshes (one
//! HTTP server answering from memory) is a small part of what a refresh needs (the AWS SDK,
//! TLS, the system's CA bundle, XML). Run in the agent itself, a refresh leaves all of that in
//! its memory for the rest of the pod's life; run in a child, it is gone when the child exits,
//! and the agent keeps only what serving needs (BENCHMARKS.md has the numbers). A refresh costs
//! a process start, once per session lifetime.
//!
//! The agent reads the token itself (so token errors and the token's expiry stay local), hands
//! the job over the child's stdin, and reads one answer from its stdout; the child's log lines
//! go to the same stderr as the agent's. A child that cannot be started, dies, overruns its
//! time or answers nonsense is an `ExchangeProcessFailed` (or `Timeout`) failure of the first
//! call, retried with backoff like any other; it is killed when the refresh is abandoned.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::exchange::{self, ExchangeError, ExchangeRequest, Exchanged};
use super::exchange_job::{Answer, JobRef};
use super::sts::{OPERATION_TIMEOUT, StsErrorCode};
use crate::telemetry::LogFormat;

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "agent-exchange";

/// An answer is a few KiB (credentials, or an error message); anything longer is not one.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Time for the child to start and build its client, beyond its STS calls' own timeouts.
const START_ALLOWANCE: Duration = Duration::from_secs(10);

/// The program a job runs in, and how long it may take.
#[derive(Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
}

impl Program {
    /// This very binary's exchange subcommand, logging as the agent does, with time for
    /// `calls` STS calls.
    pub fn this_binary(log_format: LogFormat, calls: usize) -> std::io::Result<Program> {
        // The flag's value as clap spells it, so a renamed variant cannot drift from the
        // parser the child runs.
        let format = log_format
            .to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default();
        Ok(Program {
            path: std::env::current_exe()?,
            args: vec![SUBCOMMAND.into(), "--log-format".into(), format.into()],
            timeout: timeout_for(calls),
        })
    }

    /// Runs the program with `job` on its stdin and reads its answer.
    pub async fn run(&self, job: &[u8]) -> Result<Answer, ProcessError> {
        let mut child = Command::new(&self.path)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                path: self.path.clone(),
                source,
            })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(ProcessError::Pipes);
        };
        let talk = async {
            let write = async {
                let written = stdin.write_all(job).await;
                drop(stdin);
                written
            };
            let read = async {
                let mut answer = Vec::new();
                let limit = u64::try_from(MAX_ANSWER).unwrap_or(u64::MAX) + 1;
                stdout
                    .take(limit)
                    .read_to_end(&mut answer)
                    .await
                    .map(|_| answer)
            };
            let (written, answer) = tokio::join!(write, read);
            let status = child.wait().await.map_err(ProcessError::Io)?;
            Ok::<_, ProcessError>((status, written, answer))
        };
        // Dropping `talk` on a timeout drops the child, which kills it.
        let (status, written, answer) = tokio::time::timeout(self.timeout, talk)
            .await
            .map_err(|_| ProcessError::TimedOut(self.timeout))??;
        decode(status, written, answer)
    }
}

/// How long a job of `calls` STS calls may take: each call has its own timeout.
pub fn timeout_for(calls: usize) -> Duration {
    let calls = u32::try_from(calls.max(1)).unwrap_or(u32::MAX);
    OPERATION_TIMEOUT.saturating_mul(calls) + START_ALLOWANCE
}

/// The answer of a child that has exited: a failed exit is reported as such even when the
/// child printed something, and a write error matters only when the child then said nothing.
fn decode(
    status: ExitStatus,
    written: std::io::Result<()>,
    answer: std::io::Result<Vec<u8>>,
) -> Result<Answer, ProcessError> {
    if !status.success() {
        return Err(ProcessError::Exited(status));
    }
    let answer = answer.map_err(ProcessError::Io)?;
    if answer.len() > MAX_ANSWER {
        return Err(ProcessError::TooLarge);
    }
    if answer.is_empty() {
        written.map_err(ProcessError::Io)?;
    }
    serde_json::from_slice(&answer).map_err(ProcessError::Unreadable)
}

/// Why a child gave no answer. The messages never quote what it printed (credentials, maybe).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start the exchange process {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the exchange process has no stdin or stdout pipe")]
    Pipes,
    #[error("talking to the exchange process failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("the exchange process exited with {0} without an answer")]
    Exited(ExitStatus),
    #[error("the exchange process printed more than {MAX_ANSWER} bytes, which is no answer")]
    TooLarge,
    #[error("the exchange process printed an unreadable answer ({0})")]
    Unreadable(#[source] serde_json::Error),
    #[error("the exchange process gave no answer within {}s and was killed", .0.as_secs())]
    TimedOut(Duration),
}

impl ProcessError {
    fn code(&self) -> StsErrorCode {
        match self {
            ProcessError::TimedOut(_) => StsErrorCode::Timeout,
            _ => StsErrorCode::ExchangeProcessFailed,
        }
    }
}

/// One binding's refreshes, each in a new child process.
pub struct ProcessExchanger {
    pub program: Program,
    pub region: String,
    pub sts_endpoint: Option<String>,
    pub request: ExchangeRequest,
}

impl super::refresh::Exchange for ProcessExchanger {
    async fn exchange(&self) -> Result<Exchanged, ExchangeError> {
        let token = exchange::read_token(&self.request).await?;
        let failed = |err: ProcessError| {
            let code = err.code();
            ExchangeError::sts(exchange::first_call(&self.request), code, err.to_string())
        };
        let job = serde_json::to_vec(&JobRef {
            region: &self.region,
            sts_endpoint: self.sts_endpoint.as_deref(),
            token: token.expose(),
            request: &self.request,
        })
        .map_err(|e| failed(ProcessError::Unreadable(e)))?;
        let answer = self.program.run(&job).await.map_err(failed)?;
        answer.into_result(token.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell standing in for the exchange process: the agent's side is what is tested here;
    /// the real child runs in the agent's integration tests.
    fn shell(script: &str, timeout: Duration) -> Program {
        Program {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// What the agent makes of a child running `script` (given ten seconds).
    async fn failure_of(script: &str) -> ProcessError {
        shell(script, 10 * SECOND).run(b"{}").await.unwrap_err()
    }

    #[tokio::test]
    async fn the_answer_on_stdout_is_read_and_the_job_reaches_stdin() {
        // The child echoes a field of its job back in the answer, proving it was handed over.
        let program = shell(
            r#"read -r job; code=${job#*\"code\":\"}; code=${code%%\"*}; printf '{"failed":{"step":0,"roleArn":"r","code":"%s","message":"m","hint":"h"}}' "$code""#,
            10 * SECOND,
        );
        let answer = program
            .run(br#"{"code":"Throttling"}"#)
            .await
            .unwrap()
            .into_result(None);
        assert_eq!(
            answer.unwrap_err().sts_code(),
            Some(StsErrorCode::Throttling)
        );
    }

    #[tokio::test]
    async fn a_failed_exit_is_reported_with_its_status_even_after_output() {
        let err = failure_of("cat >/dev/null; echo '{}'; exit 3").await;
        assert!(matches!(err, ProcessError::Exited(_)), "{err:?}");
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        assert_eq!(err.code(), StsErrorCode::ExchangeProcessFailed);
    }

    #[tokio::test]
    async fn a_child_killed_by_a_signal_is_named_so() {
        let err = failure_of("kill -9 $$").await;
        assert!(err.to_string().contains("SIGKILL"), "{err}");
    }

    #[tokio::test]
    async fn nonsense_on_stdout_is_unreadable_and_not_quoted() {
        let err = failure_of("cat >/dev/null; echo 'AKIA-secret-looking text'").await;
        assert!(matches!(err, ProcessError::Unreadable(_)), "{err:?}");
        assert!(!err.to_string().contains("secret-looking"), "{err}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_off() {
        let err = failure_of("cat >/dev/null; yes").await;
        // `yes` dies of SIGPIPE once the agent stops reading, or its output is too long.
        assert!(
            matches!(err, ProcessError::Exited(_) | ProcessError::TooLarge),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_child_that_hangs_is_killed_at_the_timeout() {
        let err = shell("exec sleep 600", Duration::from_millis(300))
            .run(b"{}")
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut(_)), "{err:?}");
        assert_eq!(err.code(), StsErrorCode::Timeout);
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_is_named() {
        let program = Program {
            path: "/nonexistent/credvend".into(),
            args: vec![],
            timeout: 10 * SECOND,
        };
        let err = program.run(b"{}").await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/credvend"), "{err}");
    }

    #[test]
    fn each_call_of_a_chain_gets_its_own_timeout() {
        assert_eq!(timeout_for(0), OPERATION_TIMEOUT + START_ALLOWANCE);
        assert_eq!(timeout_for(3), OPERATION_TIMEOUT * 3 + START_ALLOWANCE);
    }

    #[test]
    fn the_child_parses_the_arguments_the_agent_gives_it() {
        /// The child's command line as `main` parses it.
        #[derive(clap::Parser)]
        struct Child {
            #[command(subcommand)]
            command: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            #[command(name = SUBCOMMAND)]
            Exchange(crate::agent::exchange_child::ExchangeArgs),
        }
        for format in [LogFormat::Text, LogFormat::Json] {
            let program = Program::this_binary(format, 1).unwrap();
            let argv = std::iter::once("credvend".into()).chain(program.args);
            let parsed = <Child as clap::Parser>::try_parse_from(argv).unwrap();
            let Sub::Exchange(args) = parsed.command;
            assert_eq!(args.log_format, format);
        }
    }
}
