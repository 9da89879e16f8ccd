//! The result table: one row per case, one column per SDK, each cell the behaviour observed
//! (a short phrase) and whether it is the behaviour expected. Rendered as Markdown for the test
//! output, `target/sdk-matrix.md` and the README's compatibility section.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::clients::Sdk;

/// A case of ENDPOINT.md as it appears in the table.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// ENDPOINT.md's id (`T01`…), with a letter for variants (`T20b`).
    pub id: &'static str,
    pub title: &'static str,
    /// `agent` for the real agent, `double` for the scripted endpoint.
    pub against: &'static str,
    /// The case mostly waits (a client calling slowly for half a minute): it runs outside the
    /// concurrency limit rather than hold a slot idle.
    pub waits: bool,
}

#[derive(Clone, Debug)]
pub struct Cell {
    /// What happened, in a few words (`ok, 1 fetch`, `fails, no request`).
    pub observed: String,
    /// What should have happened, as a phrase like `observed`.
    pub expected: String,
    /// Whether `observed` is what was expected: normally the two phrases are equal; a case
    /// whose SDK behaves randomly within a known range decides for itself.
    pub passed: bool,
    /// Detail worth reading under the table (an error message, a header list).
    pub note: Option<String>,
    /// The SDK version the client reported, for the column heading.
    pub version: Option<String>,
}

impl Cell {
    pub fn passed(&self) -> bool {
        self.passed
    }
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

    /// One line per cell that did not behave as expected.
    pub fn failures(&self) -> Vec<String> {
        self.cells
            .iter()
            .filter(|(_, cell)| !cell.passed())
            .map(|((id, sdk), cell)| {
                format!(
                    "{id} {}: observed `{}`, expected `{}`{}",
                    sdk.title(),
                    cell.observed,
                    cell.expected,
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
        out.push_str("| case | against |");
        for sdk in Sdk::ALL {
            let version = self
                .versions
                .get(&sdk)
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            let _ = write!(out, " {}{version} |", sdk.title());
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---|".repeat(Sdk::ALL.len()));
        let mut notes = Vec::new();
        for case in &self.cases {
            let _ = write!(out, "\n| {} {} | {} |", case.id, case.title, case.against);
            for sdk in Sdk::ALL {
                match self.cells.get(&(case.id, sdk)) {
                    Some(cell) => {
                        let mark = if cell.passed() { "✅" } else { "❌" };
                        let mut text = format!("{mark} {}", cell.observed);
                        if !cell.passed() {
                            let _ = write!(text, " (expected: {})", cell.expected);
                        }
                        if let Some(note) = &cell.note {
                            notes.push(format!("{} {}: {}", case.id, sdk.title(), note));
                            let _ = write!(text, " [{}]", notes.len());
                        }
                        let _ = write!(out, " {} |", escape(&text));
                    }
                    None => out.push_str(" – |"),
                }
            }
        }
        out.push('\n');
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for (i, note) in notes.iter().enumerate() {
                let _ = writeln!(out, "{}. {}", i + 1, escape(note));
            }
        }
        out
    }
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
    use super::redact;

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
