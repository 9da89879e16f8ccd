//! Logging set-up shared by every subcommand.
//!
//! Logs go to stderr as human-readable text or as one JSON object per line (for log
//! pipelines). Verbosity follows `RUST_LOG` when set, else `info`. Nothing in credvend logs a
//! credential, a session token, a web identity token or the endpoint's authorization token:
//! those travel in `secrecy` types whose `Debug` output is redacted.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// Installs the global tracing subscriber. Calling it twice is harmless (the second call is
/// ignored), which keeps tests that run several entry points in one process simple.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// An error and its causes on one line, `outer: cause: root cause`.
///
/// Many errors already print their source inside their own message (`thiserror`'s `{0}`), so a
/// cause whose text is already on the line is not repeated: each cause appears once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in causes(err) {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// `err` and everything that caused it, outermost first.
///
/// `std::io::Error::source()` skips the error an `io::Error` wraps (it returns that error's
/// source), and connectors nest their errors in `io::Error`s, so this walks into each
/// `io::Error`'s payload instead.
pub fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}

/// Logs the error that ends a subcommand, through the subscriber [`init`] installed, so that
/// with `--log-format json` it is one JSON object like every other line.
pub fn report_fatal(command: &str, err: &(dyn std::error::Error + 'static)) {
    tracing::error!(error = %error_chain(err), "credvend {command} stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot bind the metrics listener: {0}")]
        Includes(#[source] std::io::Error),
        #[error("cannot start")]
        Omits(#[source] std::io::Error),
    }

    #[test]
    fn every_cause_appears_exactly_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let included = error_chain(&Outer::Includes(io()));
        assert_eq!(included, "cannot bind the metrics listener: address in use");
        assert_eq!(included.matches("address in use").count(), 1);
        assert_eq!(
            error_chain(&Outer::Omits(io())),
            "cannot start: address in use"
        );
    }
}
