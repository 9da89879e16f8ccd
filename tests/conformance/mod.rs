//! The SDK conformance suite: five real AWS SDKs, each through its default credential chain,
//! against the real agent (and, for the misbehaviour cases, a scripted endpoint).
//!
//! Read it in this order: [`clients`] runs one SDK client program (tests/sdk/*) with the env a
//! pod would get and parses the one JSON line it prints; [`agent_cases`] are ENDPOINT.md's cases
//! that must hold against the real agent, [`refresh_cases`] the fetch counts (T20) against it;
//! [`double_cases`] document how each SDK reacts to an
//! endpoint that misbehaves, using [`double`]; [`matrix`] turns every outcome into the table
//! printed by the test, written to `target/sdk-matrix.md` and spliced into the README by
//! `scripts/sdk-matrix.sh`. [`netns`] is the network namespace T04 and T10 run in. [`stack`] is the thin layer over `tests/support` (moto and the
//! agent process), so a change of that API touches one file.

// Test code: a broken precondition (a temp dir, a socket) should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent_cases;
pub mod clients;
pub mod double;
pub mod double_cases;
pub mod matrix;
pub mod netns;
pub mod phrases;
pub mod refresh_cases;
pub mod stack;
