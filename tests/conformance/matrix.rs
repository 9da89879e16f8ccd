//! The result tables: one row per case, one column per SDK, each cell the behaviour observed
//! (a short phrase) judged against ENDPOINT.md's expectation for that SDK and against the
//! behaviour recorded where the SDK departs from it (or ENDPOINT.md says nothing). Rendered as
//! Markdown for the test output, `target/sdk-matrix.md` and the README's compatibility section:
//! one table for the cases against the real agent (what credvend guarantees), one for the
//! cases against the scripted double (how each SDK reacts to a misbehaving endpoint).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::clients::Sdk;

/// What a case runs against, which decides its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// The real agent: ENDPOINT.md's contract, so these cases are what credvend guarantees.
    Agent,
    /// The scripted double: documentation of the SDKs, not a verdict on credvend.
    Double,
}

/// A case of ENDPOINT.md as it appears in the table.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// ENDPOINT.md's id (`T01`…), with a letter for variants (`T20b`).
    pub id: &'static str,
    pub title: &'static str,
    pub against: Against,
    /// The case mostly waits (a client calling slowly for half a minute): it runs outside the
    /// concurrency limit rather than hold a slot idle.
    pub waits: bool,
}

/// What a cell should show: ENDPOINT.md's expectation, and the behaviour recorded for this SDK
/// where it departs from ENDPOINT.md, where ENDPOINT.md says nothing, or where ENDPOINT.md
/// gives less detail (an outcome but no request count).
#[derive(Clone, Debug)]
pub struct Expect {
    /// ENDPOINT.md's expectation as a phrase like the observed one; `None` where it is silent.
    /// A shorter phrase matches an observation that begins with it (`fails` matches
    /// `fails after 3 requests`).
    pub endpoint_md: Option<String>,
    pub recorded: Option<Recorded>,
}

/// Behaviour seen and written down here, so that a change of it is noticed.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub phrase: String,
    /// Why the SDK departs from ENDPOINT.md (shown in the notes); `None` for a detail that
    /// ENDPOINT.md leaves open.
    pub why: Option<&'static str>,
}

impl Expect {
    /// ENDPOINT.md says `phrase`, and that is what the SDK does.
    pub fn endpoint_md(phrase: impl Into<String>) -> Expect {
        Expect {
            endpoint_md: Some(phrase.into()),
            recorded: None,
        }
    }

    /// ENDPOINT.md says `expected`; the SDK was seen doing `recorded` instead, for reason `why`.
    pub fn departs(
        expected: impl Into<String>,
        recorded: impl Into<String>,
        why: &'static str,
    ) -> Expect {
        Expect {
            endpoint_md: Some(expected.into()),
            recorded: Some(Recorded {
                phrase: recorded.into(),
                why: Some(why),
            }),
        }
    }

    /// ENDPOINT.md gives the outcome `expected`; `recorded` is the detail seen (a count).
    pub fn detail(expected: impl Into<String>, recorded: impl Into<String>) -> Expect {
        Expect {
            endpoint_md: Some(expected.into()),
            recorded: Some(Recorded {
                phrase: recorded.into(),
                why: None,
            }),
        }
    }

    /// ENDPOINT.md says nothing for this SDK; `recorded` is what it was seen doing.
    pub fn unstated(recorded: impl Into<String>) -> Expect {
        Expect {
            endpoint_md: None,
            recorded: Some(Recorded {
                phrase: recorded.into(),
                why: None,
            }),
        }
    }

    /// Whether `observed` is what ENDPOINT.md says.
    pub fn as_endpoint_md(&self, observed: &str) -> bool {
        self.endpoint_md
            .as_deref()
            .is_some_and(|e| phrase_matches(e, observed))
    }

    /// Whether `observed` is the recorded behaviour (`None` when nothing is recorded).
    pub fn as_recorded(&self, observed: &str) -> Option<bool> {
        self.recorded.as_ref().map(|r| r.phrase == observed)
    }
}

/// `expected` equals `observed`, or is a leading part of it that ends at a word boundary.
fn phrase_matches(expected: &str, observed: &str) -> bool {
    observed == expected
        || observed
            .strip_prefix(expected)
            .is_some_and(|rest| rest.starts_with(|c: char| !c.is_alphanumeric() && c != '_'))
}

/// How a cell reads, and whether the suite fails on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As ENDPOINT.md says, and the SDK works.
    Works,
    /// As ENDPOINT.md says, and the SDK fails (a pod or endpoint that it must, or does, refuse).
    FailsAsDocumented,
    /// The SDK departs from ENDPOINT.md, exactly as recorded here.
    Departs,
    /// ENDPOINT.md says nothing; the SDK does what is recorded here.
    Unstated,
    /// Neither what ENDPOINT.md says nor what is recorded: credvend broke its contract, or the
    /// SDK changed. The only verdict that fails the suite.
    Unexpected,
}

impl Verdict {
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Works => "✅",
            Verdict::FailsAsDocumented => "🚫",
            Verdict::Departs => "⚠️",
            Verdict::Unstated => "ℹ️",
            Verdict::Unexpected => "❌",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Cell {
    /// What happened, in a few words (`ok, 1 fetch`, `fails, no request`).
    pub observed: String,
    pub expect: Expect,
    /// Whether `observed` agrees with ENDPOINT.md; normally [`Expect::as_endpoint_md`], set by a
    /// case whose SDK behaves randomly within a range ENDPOINT.md allows.
    pub as_endpoint_md: bool,
    /// Whether `observed` is the recorded behaviour, when one is recorded; likewise.
    pub as_recorded: Option<bool>,
    /// Detail worth reading under the table (an error message, a header list).
    pub note: Option<String>,
    /// The SDK version the client reported, for the column heading.
    pub version: Option<String>,
}

impl Cell {
    pub fn new(observed: String, expect: Expect) -> Cell {
        Cell {
            as_endpoint_md: expect.as_endpoint_md(&observed),
            as_recorded: expect.as_recorded(&observed),
            observed,
            expect,
            note: None,
            version: None,
        }
    }

    pub fn verdict(&self) -> Verdict {
        match (self.as_recorded, self.as_endpoint_md) {
            (Some(false), _) | (None, false) => Verdict::Unexpected,
            (_, true) if fails(&self.observed) => Verdict::FailsAsDocumented,
            (_, true) => Verdict::Works,
            (Some(true), false) if self.expect.endpoint_md.is_none() => Verdict::Unstated,
            (Some(true), false) => Verdict::Departs,
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict() != Verdict::Unexpected
    }

    /// What the cell should have been, for a failure message.
    fn expectation(&self) -> String {
        let endpoint = self.expect.endpoint_md.as_deref().unwrap_or("nothing said");
        match &self.expect.recorded {
            Some(r) => format!("ENDPOINT.md: {endpoint}; recorded: {}", r.phrase),
            None => format!("ENDPOINT.md: {endpoint}"),
        }
    }
}

/// The SDK ended up without credentials in every variant of the case.
fn fails(observed: &str) -> bool {
    let words: Vec<&str> = observed
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.contains(&"fails") && !words.contains(&"ok")
}

#[derive(Default)]
pub struct Matrix {
    cases: Vec<Case>,
    cells: BTreeMap<(&'static str, Sdk), Cell>,
    versions: BTreeMap<Sdk, String>,
}

impl Matrix {
    pub fn add(&mut self, case: Case, sdk: Sdk, cell: Cell) {
        if let Some(v) = cell
            .version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "unknown")
        {
            self.versions.entry(sdk).or_insert_with(|| v.to_owned());
        }
        if !self.cases.iter().any(|c| c.id == case.id) {
            self.cases.push(case);
            self.cases.sort_by_key(|c| c.id);
        }
        self.cells.insert((case.id, sdk), cell);
    }

    /// One line per cell that is neither what ENDPOINT.md says nor what is recorded.
    pub fn failures(&self) -> Vec<String> {
        self.cells
            .iter()
            .filter(|(_, cell)| !cell.passed())
            .map(|((id, sdk), cell)| {
                format!(
                    "{id} {}: observed `{}`, expected {}{}",
                    sdk.title(),
                    cell.observed,
                    cell.expectation(),
                    cell.note
                        .as_deref()
                        .map(|n| format!(" — {n}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let mut notes = Vec::new();
        out.push_str(
            "#### What credvend guarantees: the real agent, judged against ENDPOINT.md\n\n\
             Each SDK's default chain against the real agent in a pod's environment. A ❌ here is \
             credvend breaking its contract (or an SDK no longer doing what is recorded).\n\n",
        );
        self.table(&mut out, &mut notes, Against::Agent);
        out.push_str(
            "\n#### How each SDK reacts to a misbehaving endpoint: the scripted double\n\n\
             A double that answers what the case scripts (errors, broken bodies, stalls). The agent \
             never does these things; the rows document the SDKs, so that the agent's real \
             behaviour could be chosen against them. No cell is a verdict on credvend.\n\n",
        );
        self.table(&mut out, &mut notes, Against::Double);
        out.push_str(
            "\n✅ as ENDPOINT.md says, and the SDK works · 🚫 as ENDPOINT.md says, and the SDK \
             fails (a pod or an endpoint it must or does refuse) · ⚠️ departs from ENDPOINT.md \
             (what ENDPOINT.md says is in the cell, why in the note) · ℹ️ ENDPOINT.md says \
             nothing; the behaviour seen · ❌ neither what ENDPOINT.md says nor what is recorded: \
             the suite fails\n",
        );
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for (i, note) in notes.iter().enumerate() {
                let _ = writeln!(out, "{}. {}", i + 1, escape(note));
            }
        }
        out
    }

    fn table(&self, out: &mut String, notes: &mut Vec<String>, against: Against) {
        out.push_str("| case |");
        for sdk in Sdk::ALL {
            let version = self
                .versions
                .get(&sdk)
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            let _ = write!(out, " {}{version} |", sdk.title());
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(Sdk::ALL.len()));
        for case in self.cases.iter().filter(|c| c.against == against) {
            let _ = write!(out, "\n| {} {} |", case.id, case.title);
            for sdk in Sdk::ALL {
                match self.cells.get(&(case.id, sdk)) {
                    Some(cell) => {
                        let text = cell_text(cell, case, sdk, notes);
                        let _ = write!(out, " {} |", escape(&text));
                    }
                    None => out.push_str(" – |"),
                }
            }
        }
        out.push('\n');
    }
}

/// `mark observed`, with what ENDPOINT.md says where the cell is not that, and note numbers.
fn cell_text(cell: &Cell, case: &Case, sdk: Sdk, notes: &mut Vec<String>) -> String {
    let verdict = cell.verdict();
    let mut text = format!("{} {}", verdict.mark(), cell.observed);
    match verdict {
        Verdict::Departs | Verdict::Unexpected => {
            if let Some(expected) = &cell.expect.endpoint_md {
                let _ = write!(text, " (ENDPOINT.md: {expected})");
            }
        }
        _ => {}
    }
    let mut note = Vec::new();
    if let (Verdict::Departs, Some(why)) =
        (verdict, cell.expect.recorded.as_ref().and_then(|r| r.why))
    {
        note.push(format!("departs from ENDPOINT.md: {why}"));
    }
    if verdict == Verdict::Unexpected {
        note.push(format!("expected {}", cell.expectation()));
    }
    note.extend(cell.note.clone());
    if !note.is_empty() {
        notes.push(format!("{} {}: {}", case.id, sdk.title(), note.join(" — ")));
        let _ = write!(text, " [{}]", notes.len());
    }
    text
}

/// Keeps a cell on one table row: pipes and newlines would break the Markdown table.
fn escape(s: &str) -> String {
    redact(s).replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Removes what differs from run to run and machine to machine (temp paths, ports, the
/// Java User-Agent's OS details), so the README's copy changes only when behaviour does.
fn redact(s: &str) -> String {
    let temp = std::env::temp_dir().display().to_string();
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(after) = rest
            .strip_prefix(temp.as_str())
            .and_then(|r| r.strip_prefix("/.tmp"))
        {
            out.push_str("<tmp>");
            rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
        } else if let Some(after) = rest.strip_prefix("127.0.0.1:") {
            out.push_str("127.0.0.1:<port>");
            rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
        } else if let Some(after) = rest.strip_prefix(" os/") {
            // `aws-sdk-java/2.57.8 os/Linux#… lang/java#… md/…`: keep the SDK, drop the host.
            out.push_str(" …");
            rest = after.trim_start_matches(|c: char| c != ';');
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Cell, Expect, Verdict, phrase_matches, redact};

    #[test]
    fn a_shorter_expectation_matches_an_observation_that_begins_with_it() {
        assert!(phrase_matches("fails", "fails after 3 requests"));
        assert!(phrase_matches("fails", "fails, no request"));
        assert!(!phrase_matches("fails after 1", "fails after 10 requests"));
        assert!(!phrase_matches("ok, 1 fetch", "ok, 1 fetches"));
    }

    #[test]
    fn only_an_observation_that_is_neither_documented_nor_recorded_fails() {
        let verdict = |observed: &str, expect: Expect| Cell::new(observed.into(), expect).verdict();
        assert_eq!(
            verdict("ok, 1 fetch", Expect::endpoint_md("ok, 1 fetch")),
            Verdict::Works
        );
        assert_eq!(
            verdict(
                "fails, no request",
                Expect::endpoint_md("fails, no request")
            ),
            Verdict::FailsAsDocumented
        );
        let departs = || Expect::departs("fails, no request", "ok, 1 fetch", "trims the value");
        assert_eq!(verdict("ok, 1 fetch", departs()), Verdict::Departs);
        // An SDK that starts doing what ENDPOINT.md says has changed: the record must go.
        assert_eq!(verdict("fails, no request", departs()), Verdict::Unexpected);
        assert_eq!(verdict("ok, 2 fetches", departs()), Verdict::Unexpected);
        assert_eq!(verdict("ok", Expect::unstated("ok")), Verdict::Unstated);
        let detail = Expect::detail("fails", "fails after 1 request");
        assert_eq!(
            verdict("fails after 1 request", detail.clone()),
            Verdict::FailsAsDocumented
        );
        assert_eq!(
            verdict("fails after 2 requests", detail),
            Verdict::Unexpected
        );
    }

    #[test]
    fn redact_hides_temp_paths_ports_and_the_java_host_details() {
        let temp = std::env::temp_dir().display().to_string();
        let text = format!("open '{temp}/.tmpAbC123/no-such-token' at http://127.0.0.1:40553/v1");
        assert_eq!(
            redact(&text),
            "open '<tmp>/no-such-token' at http://127.0.0.1:<port>/v1"
        );
        let ua = "User-Agent: aws-sdk-java/2.57.8 os/Linux#6 lang/java#17 md/x; Host: h";
        assert_eq!(redact(ua), "User-Agent: aws-sdk-java/2.57.8 …; Host: h");
    }
}
