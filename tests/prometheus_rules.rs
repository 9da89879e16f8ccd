//! The chart's PrometheusRule, checked and unit-tested by Prometheus's own promtool.
//!
//! The rules are taken from the chart as helm renders it (not from the template file), written
//! as a Prometheus rule file, and evaluated by `promtool test rules` against the scenarios in
//! `tests/prometheus/credvend_rules_test.yaml`: alerts are checked as Prometheus evaluates
//! them, `for` durations and templates included. promtool is built from its Go module by
//! `scripts/promtool-bin.sh` (cached, keyed by version); `CREDVEND_PROMTOOL` overrides it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::manifests::render_chart;

const TESTS: &str = "tests/prometheus/credvend_rules_test.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `CREDVEND_PROMTOOL`, else what `scripts/promtool-bin.sh` builds or finds. Never a skip.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("CREDVEND_PROMTOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = repo().join("scripts/promtool-bin.sh");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed; CREDVEND_PROMTOOL is unset",
        script.display()
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The `spec` of the chart's PrometheusRule: `{"groups": [...]}`, which is a rule file.
fn rendered_rules() -> Value {
    let docs = render_chart(
        "credvend",
        "credvend",
        &[("prometheusRule.enabled", "true")],
    )
    .unwrap();
    let rule = docs
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule");
    rule["spec"].clone()
}

fn alerts(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_alerts_pass_promtool_check_and_their_unit_tests() {
    let rules = rendered_rules();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_saphyr::to_string(&rules).unwrap(),
    )
    .unwrap();
    std::fs::copy(repo().join(TESTS), dir.path().join("tests.yaml")).unwrap();

    assert_ok(
        "promtool check rules",
        &run(dir.path(), &["check", "rules", "rules.yaml"]),
    );
    assert_ok(
        "promtool test rules",
        &run(dir.path(), &["test", "rules", "tests.yaml"]),
    );
}

#[test]
fn every_chart_alert_has_a_promtool_test_that_fires_it() {
    let rules = rendered_rules();
    let tests: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join(TESTS)).unwrap()).unwrap();
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|case| case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| case["alertname"].as_str().map(str::to_owned))
        .collect();
    let all = alerts(&rules);
    assert!(!all.is_empty());
    let missing: Vec<_> = all.difference(&fired).collect();
    assert!(
        missing.is_empty(),
        "alerts without a firing case in {TESTS}: {missing:?}"
    );
}
