//! The short phrases a matrix cell is made of, shared by the case modules: what happened, in
//! words that can be compared with what should have happened.

use super::clients::Run;
use super::matrix::{Cell, Expect};
use super::stack::Served;

/// Success and the fetch count, or failure and what the agent answered (`fails after 1×401`).
pub fn outcome(run: &Run, served: &Served) -> String {
    if run.report.ok {
        return format!("ok, {}", fetches(served.fetches()));
    }
    if served.total() == 0 {
        return "fails, no request".to_owned();
    }
    let statuses: Vec<String> = served
        .0
        .iter()
        .map(|(status, n)| format!("{n}×{status}"))
        .collect();
    format!("fails after {}", statuses.join(" + "))
}

pub fn fetches(n: u64) -> String {
    if n == 1 {
        "1 fetch".to_owned()
    } else {
        format!("{n} fetches")
    }
}

/// Success or failure and how many requests the scripted endpoint saw.
pub fn requests(run: &Run, requests: usize) -> String {
    let requests = if requests == 1 {
        "1 request".to_owned()
    } else {
        format!("{requests} requests")
    };
    if run.report.ok {
        format!("ok, {requests}")
    } else {
        format!("fails after {requests}")
    }
}

/// A cell judged against `expect`; its note is the error the SDK reported, if any, because
/// that is the documentation a reader of the matrix wants.
pub fn cell(run: &Run, observed: String, expect: Expect) -> Cell {
    let error = run.report.error_text();
    let mut cell = Cell::new(observed, expect);
    cell.note = (!error.is_empty()).then(|| shorten(error, 220));
    cell.version = run.report.version.clone();
    cell
}

/// One line of at most `max` characters.
pub fn shorten(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}
