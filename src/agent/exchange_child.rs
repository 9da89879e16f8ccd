//! `credvend agent-exchange`: the child process of one refresh (see
//! [`exchange_process`](super::exchange_process) for why it is a process). It reads one job
//! on stdin, builds the STS client, runs the exchange and the chain, prints one answer on
//! stdout and exits. It is started by the agent, never by hand, and so is hidden from `--help`.
//!
//! Its exit status says only whether an answer was printed: an STS failure is an answer (the
//! agent counts and logs it), while a job it cannot read is an error on stderr and a failed
//! exit, which the agent reports as `ExchangeProcessFailed`.

use std::io::{Read, Write};

use clap::Args;

use super::exchange::{self, first_call};
use super::exchange_job::{Answer, Job};
use super::sts;
use super::token::{MAX_TOKEN_LEN, TokenError};
use crate::telemetry::LogFormat;

/// A job is a token (at most [`MAX_TOKEN_LEN`]) and a binding's plan: session policies are
/// at most a few KiB each, so this leaves room for a long chain and refuses a runaway input.
const MAX_JOB: usize = MAX_TOKEN_LEN + 256 * 1024;

/// Flags of `credvend agent-exchange`.
#[derive(Args, Clone, Debug)]
pub struct ExchangeArgs {
    /// Log line format, as the agent's.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why the child printed no answer.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot read the job on stdin: {0}")]
    Read(#[source] std::io::Error),
    #[error("the job on stdin is longer than {MAX_JOB} bytes")]
    TooLarge,
    #[error(
        "the job on stdin is not readable ({0}); this command is run by `credvend agent`, not by hand"
    )]
    Job(#[source] serde_json::Error),
    #[error("the job's token is not usable: {0}")]
    Token(#[source] TokenError),
    #[error("cannot write the answer: {0}")]
    Write(#[source] std::io::Error),
}

/// Reads the job from stdin, runs it and prints the answer.
pub async fn run() -> Result<(), ChildError> {
    let mut input = Vec::new();
    let limit = u64::try_from(MAX_JOB).unwrap_or(u64::MAX) + 1;
    std::io::stdin()
        .take(limit)
        .read_to_end(&mut input)
        .map_err(ChildError::Read)?;
    if input.len() > MAX_JOB {
        return Err(ChildError::TooLarge);
    }
    let mut job: Job = serde_json::from_slice(&input).map_err(ChildError::Job)?;
    let token = job.take_token().map_err(ChildError::Token)?;
    let client = sts::client(job.region, job.sts_endpoint).await;
    let result = exchange::exchange_token(&client, &job.request, &token).await;
    let answer = Answer::from_result(result, &first_call(&job.request));
    let text = serde_json::to_vec(&answer).map_err(|e| ChildError::Write(e.into()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&text)
        .and_then(|()| out.flush())
        .map_err(ChildError::Write)
}
