//! The AWSRoleBinding CRD's structural schema, evaluated the way the API server evaluates it
//! before it stores a binding: types, bounds, patterns, and the CEL rules the CRD uses.
//!
//! CEL itself is not implemented. The rules the CRD carries today are of these shapes, each
//! evaluated here exactly: `self.matches('RE')` (RE2 syntax, which the regex crate shares) and
//! `self.all(x, x.matches('RE'))` on lists of strings, the session-duration range rule (Go
//! durations of `h`/`m`/`s` parts), the stsEndpoint rule, whose scheme/hostname test is
//! evaluated but whose `isURL(self)` (Go's `url.ParseRequestURI`) is not, the `aws:` tag-key
//! prefix rule, and the chain hop's two tag rules (unique keys, transitive keys among them). A
//! keyword or rule of any other shape panics, so that a new rule in the CRD cannot pass the fuzz
//! target unchecked: teach this module the shape.

use std::collections::HashMap;

use credvend::crd::AWSRoleBinding;
use kube::CustomResourceExt;
use regex::Regex;
use serde_json::Value;

/// The `spec` part of the schema, with its regular expressions compiled once.
pub struct SpecSchema {
    schema: Value,
    regexes: HashMap<String, Regex>,
}

/// One bound or rule a value breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub what: String,
}

const MATCHES: &str = r"^self\.matches\('([^']*)'\)$";
const EACH_MATCHES: &str = r"^self\.all\(x, x\.matches\('([^']*)'\)\)$";
const DURATION_RANGE: &str = r"^!self\.matches\('([^']*)'\) \|\| \(duration\(self\) >= duration\('([0-9hms]+)'\) && duration\(self\) <= duration\('([0-9hms]+)'\)\)$";
const STS_URL: &str = r"^isURL\(self\) && \(url\(self\)\.getScheme\(\) == 'https' \|\| \(url\(self\)\.getScheme\(\) == 'http' && \(url\(self\)\.getHostname\(\) == '::1' \|\| self\.matches\('([^']*)'\)\)\)\)$";

/// Keywords that do not constrain a value once the API server has defaulted and pruned it.
const DESCRIPTIVE: &[&str] = &[
    "description",
    "title",
    "default",
    "format",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

impl SpecSchema {
    /// The schema of `spec` in the CRD that `credvend crd` prints.
    pub fn generated() -> Self {
        let crd = AWSRoleBinding::crd();
        let root = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema");
        let root = serde_json::to_value(root).expect("a schema serializes");
        let schema = root["properties"]["spec"].clone();
        let mut regexes = HashMap::new();
        collect_regexes(&schema, &mut regexes);
        SpecSchema { schema, regexes }
    }

    /// Every violation of the schema by `spec` (serialized as the controller would store it).
    pub fn violations(&self, spec: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check(&self.schema, spec, "spec", &mut out);
        out
    }

    fn check(&self, schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let mut fail = |what: String| {
            out.push(Violation {
                path: path.to_owned(),
                what,
            })
        };
        let Some(keywords) = schema.as_object() else {
            panic!("schema at {path} is not an object");
        };
        if value.is_null() {
            if schema["nullable"] != Value::Bool(true) {
                fail("null where the schema is not nullable".into());
            }
            return;
        }
        let mut nested = Vec::new();
        for (keyword, arg) in keywords {
            match keyword.as_str() {
                k if DESCRIPTIVE.contains(&k) => {}
                "nullable" => {}
                "type" => {
                    let ok = match arg.as_str() {
                        Some("string") => value.is_string(),
                        Some("integer") => value.is_i64() || value.is_u64(),
                        Some("number") => value.is_number(),
                        Some("boolean") => value.is_boolean(),
                        Some("object") => value.is_object(),
                        Some("array") => value.is_array(),
                        other => panic!("type {other:?} at {path}"),
                    };
                    if !ok {
                        fail(format!("not of type {arg}"));
                    }
                }
                "minLength" | "maxLength" => {
                    let Some(s) = value.as_str() else { continue };
                    // Kubernetes counts characters (runes), not bytes.
                    let len = s.chars().count() as u64;
                    let bound = arg.as_u64().expect("length bound");
                    let ok = if keyword == "minLength" {
                        len >= bound
                    } else {
                        len <= bound
                    };
                    if !ok {
                        fail(format!("{keyword} {bound}, has {len} characters"));
                    }
                }
                "minimum" | "maximum" => {
                    let Some(n) = value.as_f64() else { continue };
                    let bound = arg.as_f64().expect("numeric bound");
                    let ok = if keyword == "minimum" {
                        n >= bound
                    } else {
                        n <= bound
                    };
                    if !ok {
                        fail(format!("{keyword} {bound}, is {n}"));
                    }
                }
                "pattern" => {
                    let Some(s) = value.as_str() else { continue };
                    let re = arg.as_str().expect("pattern string");
                    if !self.regexes[re].is_match(s) {
                        fail(format!("does not match pattern {re}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().is_some_and(|a| a.contains(value)) {
                        fail(format!("not one of {arg}"));
                    }
                }
                "required" => {
                    for name in arg.as_array().into_iter().flatten() {
                        let name = name.as_str().expect("required names");
                        if value.get(name).is_none() {
                            fail(format!("required field {name} missing"));
                        }
                    }
                }
                "properties" => {
                    let Some(obj) = value.as_object() else {
                        continue;
                    };
                    for (name, sub) in arg.as_object().expect("properties") {
                        if let Some(v) = obj.get(name) {
                            nested.push((sub, v, format!("{path}.{name}")));
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    let Some(items) = value.as_array() else {
                        continue;
                    };
                    let bound = arg.as_u64().expect("item bound");
                    let len = items.len() as u64;
                    let ok = if keyword == "minItems" {
                        len >= bound
                    } else {
                        len <= bound
                    };
                    if !ok {
                        fail(format!("{keyword} {bound}, has {len} items"));
                    }
                }
                "items" => {
                    for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                        nested.push((arg, v, format!("{path}[{i}]")));
                    }
                }
                "x-kubernetes-validations" => {
                    for rule in arg.as_array().expect("rules") {
                        let text = rule["rule"].as_str().expect("rule text");
                        if !self.rule_holds(text, value) {
                            fail(format!("CEL rule {text}"));
                        }
                    }
                }
                other => panic!(
                    "schema keyword {other} at {path} is not evaluated: teach fuzz/src/schema.rs"
                ),
            }
        }
        for (sub, v, p) in nested {
            self.check(sub, v, &p, out);
        }
    }

    fn rule_holds(&self, rule: &str, value: &Value) -> bool {
        let re = |text: &str| &self.regexes[text];
        if rule == credvend::sts_fields::CEL_TAG_KEY {
            let key = value.as_str().expect("a tag key");
            return !key.to_ascii_lowercase().starts_with("aws:");
        }
        if rule == credvend::crd::CEL_UNIQUE_TAG_KEYS {
            let keys: Vec<String> = value
                .as_array()
                .expect("tags")
                .iter()
                .map(|t| t["key"].as_str().unwrap_or_default().to_ascii_lowercase())
                .collect();
            return keys
                .iter()
                .all(|k| keys.iter().filter(|other| *other == k).count() == 1);
        }
        if rule == credvend::crd::CEL_TRANSITIVE_KEYS {
            let Some(transitive) = value.get("transitiveTagKeys").and_then(Value::as_array) else {
                return true;
            };
            let tags = value.get("sessionTags").and_then(Value::as_array);
            return transitive
                .iter()
                .all(|k| tags.is_some_and(|tags| tags.iter().any(|t| &t["key"] == k)));
        }
        if let Some(c) = cached(EACH_MATCHES).captures(rule) {
            let items = value.as_array().expect("a list");
            return items
                .iter()
                .all(|item| item.as_str().is_some_and(|s| re(&c[1]).is_match(s)));
        }
        let Some(s) = value.as_str() else {
            panic!("rule {rule} on a non-string is not evaluated: teach fuzz/src/schema.rs");
        };
        if let Some(c) = cached(MATCHES).captures(rule) {
            return re(&c[1]).is_match(s);
        }
        if let Some(c) = cached(DURATION_RANGE).captures(rule) {
            if !re(&c[1]).is_match(s) {
                return true;
            }
            let (d, lo, hi) = (go_seconds(s), go_seconds(&c[2]), go_seconds(&c[3]));
            return lo <= d && d <= hi;
        }
        if let Some(c) = cached(STS_URL).captures(rule) {
            let (scheme, hostname) = scheme_and_hostname(s);
            return scheme == "https"
                || (scheme == "http" && (hostname == "::1" || re(&c[1]).is_match(s)));
        }
        panic!("CEL rule {rule:?} is not evaluated: teach fuzz/src/schema.rs");
    }
}

fn cached(shape: &'static str) -> &'static Regex {
    use std::sync::LazyLock;
    static SHAPES: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
        [MATCHES, EACH_MATCHES, DURATION_RANGE, STS_URL]
            .into_iter()
            .map(|s| (s, Regex::new(s).expect("rule shape")))
            .collect()
    });
    &SHAPES[shape]
}

fn collect_regexes(schema: &Value, out: &mut HashMap<String, Regex>) {
    match schema {
        Value::Object(m) => {
            if let Some(p) = m.get("pattern").and_then(Value::as_str) {
                out.insert(
                    p.to_owned(),
                    Regex::new(p).expect("schema pattern compiles"),
                );
            }
            for rule in m
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = rule["rule"].as_str().unwrap_or_default();
                for shape in [MATCHES, EACH_MATCHES, DURATION_RANGE, STS_URL] {
                    if let Some(c) = Regex::new(shape).expect("shape").captures(text) {
                        out.insert(
                            c[1].to_owned(),
                            Regex::new(&c[1]).expect("rule regex compiles"),
                        );
                    }
                }
            }
            m.values().for_each(|v| collect_regexes(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_regexes(v, out)),
        _ => {}
    }
}

/// Seconds of a Go duration made of integer `h`, `m` and `s` parts (what the rules' format
/// regex admits before `duration()` is called).
fn go_seconds(s: &str) -> u64 {
    let mut total = 0;
    let mut n = 0u64;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => n = n * 10 + u64::from(b - b'0'),
            b'h' => (total, n) = (total + n * 3600, 0),
            b'm' => (total, n) = (total + n * 60, 0),
            b's' => (total, n) = (total + n, 0),
            _ => panic!("go_seconds({s:?}): not an h/m/s duration"),
        }
    }
    total
}

/// What CEL's `url(self).getScheme()` and `.getHostname()` return, for a URL that parses.
fn scheme_and_hostname(s: &str) -> (String, String) {
    let Some((scheme, rest)) = s.split_once("://") else {
        return (String::new(), String::new());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hostname = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    (scheme.to_ascii_lowercase(), hostname.to_owned())
}

/// Checks the oracle itself on one good and one bad spec; the fuzz target calls it once, so a
/// broken evaluator cannot make the target vacuous.
pub fn self_check(schema: &SpecSchema) {
    let good = serde_json::json!({
        "serviceAccountName": "app",
        "roleArn": "arn:aws:iam::111122223333:role/s3-reader",
        "sessionDuration": "1h",
        "region": "eu-west-1",
        "stsEndpoint": "http://127.0.0.1:5000",
        "audience": "sts.amazonaws.com"
    });
    assert_eq!(schema.violations(&good), []);
    let bad = serde_json::json!({
        "serviceAccountName": "App",
        "roleArn": "arn:aws:iam::1:role/r",
        "sessionDuration": "13h",
        "region": "eu-west-1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "stsEndpoint": "http://10.0.0.1",
        "audience": ""
    });
    let found = schema.violations(&bad);
    assert_eq!(found.len(), 7, "{found:?}");
    let chained = serde_json::json!({
        "serviceAccountName": "app",
        "roleArn": "arn:aws:iam::111122223333:role/s3-reader",
        "sessionName": "{namespace}.{pod}",
        "sessionPolicy": "{\"Statement\":{}}",
        "sessionPolicyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
        "chain": [{
            "roleArn": "arn:aws:iam::444455556666:role/x",
            "externalId": "partner-42",
            "sessionTags": [{"key": "team", "value": "a"}],
            "transitiveTagKeys": ["team"],
            "sourceIdentity": "team-a"
        }]
    });
    assert_eq!(schema.violations(&chained), []);
    let bad_chain = serde_json::json!({
        "serviceAccountName": "app",
        "roleArn": "arn:aws:iam::111122223333:role/s3-reader",
        "sessionName": "{podname}",
        "sessionPolicy": "allow",
        "sessionPolicyArns": ["ReadOnlyAccess"],
        "chain": [{
            "roleArn": "x",
            "externalId": "has space",
            "sessionTags": [{"key": "aws:team", "value": "a"}, {"key": "AWS:TEAM", "value": "b"}],
            "transitiveTagKeys": ["cost"],
            "sourceIdentity": "a b"
        }]
    });
    // Template, policy, ARN (length and pattern); hop: role (length and pattern), external id,
    // tag keys (2), unique keys, transitive keys, source identity.
    let found = schema.violations(&bad_chain);
    assert_eq!(found.len(), 12, "{found:#?}");
}
