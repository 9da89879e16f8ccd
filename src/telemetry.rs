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
