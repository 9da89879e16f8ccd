//! One table for the terminal and BENCHMARKS.md: every row with its same-run baseline, the
//! ratio, the spread over repeats and the command that reproduces it.

use std::fmt::Write as _;

use crate::stats::Spread;

/// One measured quantity next to its baseline.
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub unit: &'static str,
    pub credvend: Spread,
    pub baseline_name: &'static str,
    pub baseline: Spread,
    /// How the run is reproduced.
    pub command: String,
}

impl Row {
    /// credvend / baseline, on medians.
    pub fn ratio(&self) -> f64 {
        self.credvend.median / self.baseline.median
    }
}

/// Rows as they are measured, printed as they come so a long run shows progress.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn add(&mut self, row: Row) {
        println!(
            "  {:<10} {:<46} {:>10} {:<7} {:>10} ({}) {:>6}",
            row.section,
            row.measure,
            number(row.credvend.median),
            row.unit,
            number(row.baseline.median),
            row.baseline_name,
            ratio(row.ratio())
        );
        self.rows.push(row);
    }

    /// The whole table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| section | measure | credvend | spread | baseline | baseline value | ratio | reproduce |\n\
             |---|---|---:|---:|---|---:|---:|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | ±{:.0}% | {} | {} {} | {} | `{}` |",
                r.section,
                r.measure,
                number(r.credvend.median),
                r.unit,
                r.credvend.spread_percent(),
                r.baseline_name,
                number(r.baseline.median),
                r.unit,
                ratio(r.ratio()),
                r.command.replace('|', "\\|"),
            );
        }
        out
    }

    /// The table as plain text, for the end of the run.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<10} {:<46} {:>12} {:>6} {:>12}  {:<22} {:>7}\n",
            "section", "measure", "credvend", "spread", "baseline", "(baseline)", "ratio"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<10} {:<46} {:>12} {:>5.0}% {:>12}  {:<22} {:>7}",
                r.section,
                format!("{} [{}]", r.measure, r.unit),
                number(r.credvend.median),
                r.credvend.spread_percent(),
                number(r.baseline.median),
                r.baseline_name,
                ratio(r.ratio())
            );
        }
        out
    }
}

/// Three significant figures, without exponent notation.
pub fn number(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "n/a".into()
    }
}
