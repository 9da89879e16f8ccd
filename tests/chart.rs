//! The Helm chart (charts/credvend), checked with the real helm CLI and a real API server.
//!
//! helm lints and renders the chart; the tests then read the rendered objects and check the
//! promises the chart makes to operators of a cluster: only annotated pods reach the webhook,
//! kube-system and credvend's own namespace never do, the operator runs locked down with
//! least-privilege RBAC, and values.schema.json turns typos into errors. Finally every rendered
//! object is server-side applied (dry-run, then for real) to kube-apiserver, which validates
//! it against the real schemas, including the CEL of the webhook's matchConditions and the
//! schemas of the cert-manager and Prometheus Operator CRDs the optional features use.
//!
//! helm comes from `CREDVEND_HELM` (set by `make test`) or from `scripts/helm-bin.sh`, which
//! builds it once; without helm these tests fail rather than skip, because a chart that is
//! never rendered is a chart that is never tested. The third-party CRDs come the same way from
//! `CREDVEND_CHART_CRDS` or `scripts/chart-crds.sh`, so no test downloads anything.
// A test that cannot run its tool has nothing better to do than stop with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use credvend::agent::metrics::AgentMetrics;
use credvend::operator::metrics::OperatorMetrics;
use credvend::server::ServerMetrics;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::Value;
use support::k8s;
use support::manifests::{API_DEADLINE, apply_all, run_helm};

const CHART: &str = "charts/credvend";

/// Every optional feature switched on, and every default that has an alternative flipped.
const ALL_OPTIONS: &[&str] = &[
    "certManager.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
    "webhook.url=https://127.0.0.1:8443/mutate",
    "webhook.failurePolicy=Ignore",
    "webhook.excludeNamespaces={monitoring,istio-system}",
    "agent.defaultRegion=eu-west-1",
    "agent.allowedStsEndpoints={https://sts.*.internal.example,http://127.0.0.1:5000}",
];

// ---------------------------------------------------------------------------------------------
// helm

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn template_args<'a>(release: &'a str, namespace: &'a str, sets: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    args
}

/// `helm template` output as one JSON value per rendered object.
fn render(release: &str, namespace: &str, sets: &[&str]) -> Rendered {
    let output = run_helm(&template_args(release, namespace, sets));
    assert!(
        output.status.success(),
        "helm template {sets:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("helm template {sets:?} printed invalid YAML: {e}\n{text}"));
    Rendered {
        release: release.to_owned(),
        docs,
    }
}

/// helm's error output for values the chart must refuse.
fn render_error(sets: &[&str]) -> String {
    let output = run_helm(&template_args("credvend", "credvend-system", sets));
    assert!(
        !output.status.success(),
        "helm template accepted {sets:?}, which the chart must refuse"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

struct Rendered {
    release: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one object of a kind; fails if there are none or several.
    fn one(&self, kind: &str) -> &Value {
        match self.all(kind).as_slice() {
            [doc] => doc,
            other => panic!("expected one {kind}, rendered {}", other.len()),
        }
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    fn fullname(&self) -> String {
        // `<release>-credvend` unless the release name already contains the chart name.
        if self.release.contains("credvend") {
            self.release.clone()
        } else {
            format!("{}-credvend", self.release)
        }
    }

    fn webhook(&self) -> &Value {
        let config = self.one("MutatingWebhookConfiguration");
        let webhooks = config["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), 1, "one webhook expected: {config}");
        &webhooks[0]
    }

    fn operator_container(&self) -> &Value {
        let containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    fn args(&self) -> Vec<&str> {
        self.operator_container()["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    fn rules(&self, kind: &str) -> &Vec<Value> {
        self.one(kind)["rules"].as_array().unwrap()
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The rule of a Role or ClusterRole that grants `verb` on `resource` in `group`.
fn rule_for<'a>(rules: &'a [Value], group: &str, resource: &str, verb: &str) -> Option<&'a Value> {
    rules.iter().find(|r| {
        strings(&r["apiGroups"]).contains(&group)
            && strings(&r["resources"]).contains(&resource)
            && strings(&r["verbs"]).contains(&verb)
    })
}

// ---------------------------------------------------------------------------------------------
// lint, drift, schema

#[test]
fn chart_passes_helm_lint_also_in_strict_mode() {
    let mut full = vec!["lint", CHART, "--strict"];
    for set in ALL_OPTIONS {
        full.extend(["--set", set]);
    }
    for args in [vec!["lint", CHART], vec!["lint", CHART, "--strict"], full] {
        let output = run_helm(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("0 chart(s) failed"),
            "helm {} failed:\n{stdout}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        // Warnings pass plain lint but would fail --strict in someone else's CI.
        assert!(!stdout.contains("[WARNING]"), "helm lint warns:\n{stdout}");
    }
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let generated = std::fs::read(repo().join("crds/awsrolebinding.yaml")).unwrap();
    let in_chart = std::fs::read(repo().join("charts/credvend/crds/awsrolebinding.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/credvend/crds/awsrolebinding.yaml differs from crds/awsrolebinding.yaml \
         (generated by `credvend crd`); helm installs the chart's copy, so refresh it with \
         `cp crds/awsrolebinding.yaml charts/credvend/crds/awsrolebinding.yaml`"
    );
}

#[test]
fn chart_versions_follow_the_crate() {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("charts/credvend/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion is the default image tag; keep it at the crate version"
    );
    let rendered = render("credvend", "credvend-system", &[]);
    let image = format!("credvend:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(rendered.operator_container()["image"], image.as_str());
    // The agent runs the operator's own image unless told otherwise, so the two always match.
    assert!(
        rendered
            .args()
            .contains(&format!("--agent-image={image}").as_str())
    );
}

#[test]
fn schema_rejects_invalid_values_naming_the_value() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["webhook.failurePolicy=Sometimes"],
            &["/webhook/failurePolicy", "'Fail', 'Ignore'"],
        ),
        (&["replicaCount=-1"], &["/replicaCount", "minimum"]),
        // A typo must fail, not silently leave the default in place.
        (
            &["webhook.failurPolicy=Ignore"],
            &["/webhook", "'failurPolicy' not allowed"],
        ),
        (&["replicaCont=3"], &["'replicaCont' not allowed"]),
        (
            &["agent.tokenExpirationSeconds=60"],
            &["/agent/tokenExpirationSeconds", "minimum"],
        ),
        (
            &["agent.resources.memoryLimit=lots"],
            &["/agent/resources/memoryLimit", "does not match pattern"],
        ),
        // The API server only calls webhooks over HTTPS.
        (
            &["webhook.url=http://127.0.0.1:8443/mutate"],
            &["/webhook/url", "does not match pattern"],
        ),
        (
            &["webhook.timeoutSeconds=31"],
            &["/webhook/timeoutSeconds", "maximum"],
        ),
        (
            &["operator.logFormat=xml"],
            &["/operator/logFormat", "'json', 'text'"],
        ),
        (
            &["image.pullPolicy=Sometimes"],
            &["/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"],
        ),
        (
            &["webhook.excludeNamespaces={Not_A_Namespace}"],
            &["/webhook/excludeNamespaces/0", "does not match pattern"],
        ),
        (
            &["certManager.enabled=yes"],
            &["/certManager/enabled", "boolean"],
        ),
    ];
    for (sets, expected) in cases {
        let error = render_error(sets);
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{sets:?} failed, but not through values.schema.json:\n{error}"
        );
        for text in *expected {
            assert!(
                error.contains(text),
                "{sets:?}: expected {text:?} in the error:\n{error}"
            );
        }
    }
}

#[test]
fn chart_refuses_clusters_without_native_sidecars() {
    let output = run_helm(&["template", "credvend", CHART, "--kube-version", "1.28.9"]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && error.contains("kubeVersion"),
        "Kubernetes 1.28 lacks native sidecars; the chart must refuse it:\n{error}"
    );
    let output = run_helm(&["template", "credvend", CHART, "--kube-version", "1.29.0"]);
    assert!(output.status.success());
}

#[test]
fn several_replicas_need_leader_election() {
    let error = render_error(&["leaderElection.enabled=false"]);
    assert!(
        error.contains("leaderElection.enabled=false needs replicaCount=1"),
        "{error}"
    );
    let single = render(
        "credvend",
        "credvend-system",
        &["leaderElection.enabled=false", "replicaCount=1"],
    );
    assert!(single.args().contains(&"--leader-election=false"));
    // minAvailable 1 of 1 would block node drains for good.
    assert!(single.all("PodDisruptionBudget").is_empty());
    // Without a Lease to manage, the Role holds only the TLS secret rules.
    assert!(
        single
            .rules("Role")
            .iter()
            .all(|r| !strings(&r["resources"]).contains(&"leases"))
    );
}

// ---------------------------------------------------------------------------------------------
// what the default values render

#[test]
fn webhook_sees_only_annotated_pods_outside_system_namespaces() {
    let rendered = render("credvend", "credvend-system", &[]);
    let config = rendered.one("MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], "credvend");
    let webhook = rendered.webhook();
    assert_eq!(webhook["name"], "inject.credvend.io");
    assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(webhook["timeoutSeconds"], 5);

    let rules = webhook["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    assert_eq!(strings(&rules[0]["operations"]), ["CREATE", "UPDATE"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);

    let conditions = webhook["matchConditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    let expression = conditions[0]["expression"].as_str().unwrap();
    for needle in [
        "has(object.metadata.annotations)",
        "'credvend.io/inject' in object.metadata.annotations",
        "'credvend.io/binding' in object.metadata.annotations",
        "'credvend.io/status' in object.metadata.annotations",
        "'credvend.io/binding' in object.metadata.labels",
        "oldObject.metadata.labels['credvend.io/binding'] == object.metadata.labels['credvend.io/binding']",
    ] {
        assert!(expression.contains(needle), "{needle} not in {expression}");
    }

    let selector = &webhook["namespaceSelector"]["matchExpressions"];
    let selector = selector.as_array().unwrap();
    assert_eq!(selector.len(), 1);
    assert_eq!(selector[0]["key"], "kubernetes.io/metadata.name");
    assert_eq!(selector[0]["operator"], "NotIn");
    assert_eq!(
        strings(&selector[0]["values"]),
        ["kube-system", "credvend-system"]
    );

    // In-cluster by default: through the chart's Service, to the path the operator serves.
    let client_config = &webhook["clientConfig"];
    assert!(client_config.get("url").is_none(), "{client_config}");
    let service = &client_config["service"];
    assert_eq!(service["name"], rendered.one("Service")["metadata"]["name"]);
    assert_eq!(service["namespace"], "credvend-system");
    assert_eq!(service["path"], "/mutate");
    assert_eq!(service["port"], 443);
    // The operator patches the CA in; a caBundle in the manifest would be reset on upgrade.
    assert!(client_config.get("caBundle").is_none());
    assert!(config["metadata"].get("annotations").is_none());
}

#[test]
fn operator_runs_locked_down_and_highly_available() {
    let rendered = render("credvend", "credvend-system", &[]);
    let deployment = rendered.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let anti_affinity =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti_affinity["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti_affinity["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    let container = rendered.operator_container();
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/healthz/live"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/healthz/ready"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");

    let ports = container["ports"].as_array().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .clone()
    };
    assert_eq!(port("webhook"), 8443);
    assert_eq!(port("metrics"), 8080);
    let service_ports = rendered.one("Service")["spec"]["ports"].as_array().unwrap();
    let webhook_port = service_ports
        .iter()
        .find(|p| p["name"] == "webhook")
        .unwrap();
    assert_eq!(webhook_port["port"], 443);
    assert_eq!(webhook_port["targetPort"], "webhook");
    assert!(service_ports.iter().any(|p| p["port"] == 8080));

    // The names the operator is told are the names of the objects the chart creates.
    let args = rendered.args();
    assert_eq!(args[0], "operator");
    for arg in [
        "--namespace=$(POD_NAMESPACE)",
        "--webhook-listen=0.0.0.0:8443",
        "--metrics-listen=0.0.0.0:8080",
        "--webhook-config-name=credvend",
        "--webhook-service=credvend",
        "--tls-mode=self-signed",
        "--tls-secret-name=credvend-tls",
        "--leader-election=true",
        "--lease-name=credvend-leader",
        "--agent-image-pull-policy=IfNotPresent",
        "--agent-cpu-request=10m",
        "--agent-memory-request=32Mi",
        "--agent-memory-limit=64Mi",
        "--token-expiration-seconds=3600",
        "--log-format=json",
        "--shutdown-delay=5s",
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    // The grace period covers the shutdown delay and the 10 s drain.
    assert_eq!(
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        20
    );
    // Unset defaults stay unset rather than becoming empty flags.
    assert!(!args.iter().any(|a| a.starts_with("--default-region")));
    assert!(!args.iter().any(|a| a.starts_with("--tls-cert-file")));
    let env = &container["env"][0];
    assert_eq!(env["name"], "POD_NAMESPACE");
    assert_eq!(
        env["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    let budget = rendered.one("PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn allowed_sts_endpoints_reach_the_operator_and_are_checked_by_the_schema() {
    let plain = render("credvend", "credvend-system", &[]);
    assert!(
        !plain
            .args()
            .iter()
            .any(|a| a.starts_with("--allowed-sts-endpoints")),
        "AWS's endpoints need no flag"
    );
    let rendered = render(
        "credvend",
        "credvend-system",
        &["agent.allowedStsEndpoints={https://sts.*.internal.example,http://127.0.0.1:5000}"],
    );
    assert!(
        rendered.args().contains(
            &"--allowed-sts-endpoints=https://sts.*.internal.example,http://127.0.0.1:5000"
        ),
        "{:?}",
        rendered.args()
    );
    let output = run_helm(&template_args(
        "credvend",
        "credvend-system",
        &["agent.allowedStsEndpoints={http://tokens.example.com}"],
    ));
    assert!(
        !output.status.success(),
        "plain http to a remote host is refused"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("allowedStsEndpoints"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rbac_grants_only_what_the_operator_uses() {
    let rendered = render("credvend", "credvend-system", &[]);
    for kind in ["ClusterRole", "Role"] {
        for rule in rendered.rules(kind) {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !strings(&rule[field]).contains(&"*"),
                    "{kind} has a wildcard: {rule}"
                );
            }
        }
    }

    let cluster = rendered.rules("ClusterRole");
    for verb in ["get", "list", "watch"] {
        assert!(rule_for(cluster, "credvend.io", "awsrolebindings", verb).is_some());
        assert!(rule_for(cluster, "", "pods", verb).is_some());
    }
    assert!(rule_for(cluster, "credvend.io", "awsrolebindings/status", "patch").is_some());
    assert!(rule_for(cluster, "events.k8s.io", "events", "create").is_some());
    assert!(rule_for(cluster, "", "events", "create").is_some());
    // Read-only on pods and bindings: the webhook mutates through its admission response.
    for verb in ["create", "update", "patch", "delete"] {
        assert!(rule_for(cluster, "", "pods", verb).is_none(), "pods {verb}");
        assert!(rule_for(cluster, "credvend.io", "awsrolebindings", verb).is_none());
    }
    assert!(
        rule_for(cluster, "", "secrets", "get").is_none(),
        "secrets cluster-wide"
    );
    let webhook_rule = rule_for(
        cluster,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
    )
    .unwrap();
    assert_eq!(
        strings(&webhook_rule["resourceNames"]),
        [
            rendered.one("MutatingWebhookConfiguration")["metadata"]["name"]
                .as_str()
                .unwrap()
        ]
    );

    let role = rendered.one("Role");
    assert_eq!(role["metadata"]["namespace"], "credvend-system");
    let namespaced = rendered.rules("Role");
    for (group, resource, name) in [
        ("coordination.k8s.io", "leases", "credvend-leader"),
        ("", "secrets", "credvend-tls"),
    ] {
        for verb in ["get", "update"] {
            let rule = rule_for(namespaced, group, resource, verb).unwrap();
            assert_eq!(strings(&rule["resourceNames"]), [name], "{resource} {verb}");
        }
        // RBAC cannot limit create by name; make sure it is not granted more than create.
        let create = rule_for(namespaced, group, resource, "create").unwrap();
        assert_eq!(strings(&create["verbs"]), ["create"]);
        assert!(rule_for(namespaced, group, resource, "list").is_none());
    }

    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let binding = rendered.one(kind);
        assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(
            binding["subjects"][0]["name"],
            rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        );
        assert_eq!(binding["subjects"][0]["namespace"], "credvend-system");
    }
}

#[test]
fn optional_objects_are_off_by_default() {
    let rendered = render("credvend", "credvend-system", &[]);
    let kinds = rendered.kinds();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected.into_iter().map(String::from).collect());
}

// ---------------------------------------------------------------------------------------------
// what the optional features render

#[test]
fn url_mode_and_failure_policy_reach_the_webhook() {
    let rendered = render("dev", "credvend-dev", ALL_OPTIONS);
    let webhook = rendered.webhook();
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(
        webhook["clientConfig"]["url"],
        "https://127.0.0.1:8443/mutate"
    );
    assert!(webhook["clientConfig"].get("service").is_none());
    let excluded = strings(&webhook["namespaceSelector"]["matchExpressions"][0]["values"]);
    assert_eq!(
        excluded,
        ["kube-system", "credvend-dev", "monitoring", "istio-system"]
    );
    assert!(rendered.args().contains(&"--default-region=eu-west-1"));
}

#[test]
fn cert_manager_mode_wires_certificate_secret_and_ca_injection() {
    let rendered = render("dev", "credvend-dev", ALL_OPTIONS);
    let fullname = rendered.fullname();
    let certificate = rendered.one("Certificate");
    let certificate_name = certificate["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        rendered.one("MutatingWebhookConfiguration")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("credvend-dev/{certificate_name}").as_str()
    );
    let service = rendered.one("Service")["metadata"]["name"]
        .as_str()
        .unwrap();
    let dns_names = strings(&certificate["spec"]["dnsNames"]);
    assert!(dns_names.contains(&format!("{service}.credvend-dev.svc").as_str()));
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        rendered.one("Issuer")["metadata"]["name"]
    );
    assert_eq!(
        rendered.one("Issuer")["spec"]["selfSigned"],
        serde_json::json!({})
    );

    // The operator serves cert-manager's files and leaves the secret alone.
    let secret = certificate["spec"]["secretName"].as_str().unwrap();
    let pod = &rendered.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], secret);
    let mount = &rendered.operator_container()["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/var/run/credvend/tls");
    assert_eq!(mount["readOnly"], true);
    let args = rendered.args();
    for arg in [
        "--tls-mode=files",
        "--tls-cert-file=/var/run/credvend/tls/tls.crt",
        "--tls-key-file=/var/run/credvend/tls/tls.key",
        &format!("--webhook-config-name={fullname}"),
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert!(!args.contains(&"--tls-mode=self-signed"));
    // No secrets access and no write access to the webhook configuration are needed.
    let namespaced = rendered.rules("Role");
    assert!(
        namespaced
            .iter()
            .all(|r| !strings(&r["resources"]).contains(&"secrets"))
    );
    let cluster = rendered.rules("ClusterRole");
    let webhook_rule = rule_for(
        cluster,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "get",
    )
    .unwrap();
    assert_eq!(strings(&webhook_rule["verbs"]), ["get"]);
}

#[test]
fn monitors_scrape_the_operator_and_every_injected_agent() {
    let rendered = render("dev", "credvend-dev", ALL_OPTIONS);
    let service_monitor = rendered.one("ServiceMonitor");
    let service = rendered.one("Service");
    for (key, value) in service_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key], value, "label {key}");
    }
    assert_eq!(service_monitor["spec"]["endpoints"][0]["port"], "metrics");

    let pod_monitor = rendered.one("PodMonitor");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["any"], true);
    let expression = &pod_monitor["spec"]["selector"]["matchExpressions"][0];
    assert_eq!(expression["key"], "credvend.io/binding");
    assert_eq!(expression["operator"], "Exists");
    // The port name is what the webhook gives the agent's metrics port.
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        credvend::inject::METRICS_PORT_NAME
    );
    // The agent labels its series with `binding` itself (a pod may serve several bindings);
    // a relabeling from the pod label would rename the agent's to `exported_binding`.
    assert!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]
            .get("relabelings")
            .is_none(),
        "{pod_monitor}"
    );
}

#[test]
fn alerts_and_dashboard_use_metrics_that_exist() {
    let rendered = render("dev", "credvend-dev", ALL_OPTIONS);
    let rule = rendered.one("PrometheusRule");
    let mut alerts = Vec::new();
    let mut queries = Vec::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts.push(rule["alert"].as_str().unwrap().to_owned());
            assert!(rule["labels"]["severity"].is_string(), "{rule}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule}");
            queries.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let expected_alerts = [
        "CredvendCredentialsExpiringSoon",
        "CredvendCredentialRefreshFailing",
        "CredvendSTSErrors",
        "CredvendWebhookErrors",
        "CredvendWebhookDenials",
        "CredvendWebhookCertificateExpiring",
    ];
    assert_eq!(alerts, expected_alerts);
    let expiring = &queries[0];
    assert!(expiring.contains("credvend_credentials_expiration_timestamp_seconds - time() < 600"));
    assert!(queries[1].contains(r#"result="failure""#) && queries[1].contains("unless"));
    assert!(queries[4].contains(r#"credvend_admissions_total{result="denied"}"#));

    let dashboard = rendered.one("ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["credvend.json"].as_str().unwrap()).unwrap();
    let mut panel_titles = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        panel_titles.push(panel["title"].as_str().unwrap().to_owned());
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for metric in [
        "credvend_credentials_expiration_timestamp_seconds",
        "credvend_credentials_refresh_total",
        "credvend_sts_errors_total",
        "credvend_endpoint_requests_total",
        "credvend_admissions_total",
        "credvend_admission_duration_seconds_bucket",
    ] {
        assert!(
            queries.iter().any(|q| q.contains(metric)),
            "no dashboard panel or alert uses {metric}; panels: {panel_titles:?}"
        );
    }

    // A renamed metric must break this test, not silently empty a panel or mute an alert.
    let known = known_metrics();
    for query in &queries {
        for name in metric_names(query) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|b| known.contains(*b)))
                .unwrap_or(name.as_str());
            assert!(
                known.contains(base),
                "{name} (in {query}) is not a credvend metric; known: {known:?}"
            );
        }
    }
}

/// The names the agent's and the operator's registries export (each labelled family touched
/// once, since an empty vector is not exported): the processes build these same registries.
fn known_metrics() -> BTreeSet<String> {
    let agent = AgentMetrics::new().unwrap();
    let binding = agent.for_binding("s3-reader");
    binding.refresh("success");
    binding.sts_error("AccessDenied");
    binding.token_error("missing");
    binding.cache_file_error("garbled");
    binding.packed_policy_size(0, 7);
    agent.endpoint_requests.with_label_values(&["200"]).inc();

    let operator = OperatorMetrics::new().unwrap();
    let server = ServerMetrics::register(&operator.registry).unwrap();
    let controller = &operator.controller;
    controller.reconciles.with_label_values(&["success"]).inc();
    controller
        .reconcile_errors
        .with_label_values(&["kube"])
        .inc();
    controller.bindings.with_label_values(&["true"]).set(1);
    operator
        .admission
        .admissions
        .with_label_values(&["injected", "injected"])
        .inc();
    operator
        .admission
        .admission_duration
        .with_label_values(&["injected"])
        .observe(0.001);
    operator.tls.errors.with_label_values(&["renew"]).inc();
    server
        .closed
        .with_label_values(&["webhook", "evicted"])
        .inc();
    server
        .bodies_refused
        .with_label_values(&["webhook", "too_large"])
        .inc();

    [agent.registry.gather(), operator.registry.gather()]
        .iter()
        .flatten()
        .map(|family| family.name().to_owned())
        .collect()
}

/// Every `credvend_...` identifier in a PromQL expression.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(start) = rest.find("credvend_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

// ---------------------------------------------------------------------------------------------
// against kube-apiserver

#[tokio::test]
async fn default_chart_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("credvend-chart");
    k8s::create_namespace(&client, &namespace).await?;
    let rendered = render(&k8s::unique_name("cv"), &namespace, &[]);
    apply_all(&client, &rendered.docs).await?;

    // Stored as rendered: an API server without matchConditions support would drop the field
    // silently, and then failurePolicy Fail would apply to every pod in the cluster.
    let name = rendered.fullname();
    let stored = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&name)
        .await?;
    let webhook = &stored.webhooks.unwrap()[0];
    assert_eq!(webhook.match_conditions.as_ref().map(Vec::len), Some(1));
    assert_eq!(webhook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    let excluded = webhook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0]
        .values
        .clone()
        .unwrap();
    assert!(excluded.contains(&namespace));
    Ok(())
}

#[tokio::test]
async fn chart_with_every_option_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("credvend-chart");
    k8s::create_namespace(&client, &namespace).await?;
    // The CRDs of cert-manager and the Prometheus Operator, so their objects are checked
    // against the real schemas rather than merely parsed.
    let mut docs = third_party_crds()?;
    docs.extend(render(&k8s::unique_name("cv"), &namespace, ALL_OPTIONS).docs);
    apply_all(&client, &docs).await
}

/// The matchConditions and namespaceSelector, evaluated by kube-apiserver itself: with the
/// webhook unreachable and failurePolicy Fail, exactly the pods that would reach the webhook
/// are rejected, so every pod that is admitted provably never reached it.
#[tokio::test]
async fn only_annotated_pods_outside_excluded_namespaces_reach_the_webhook() -> anyhow::Result<()> {
    // A private control plane: this webhook configuration fails every pod it selects, which
    // must not leak into the shared one (another test's webhook would also see these pods).
    let control_plane = k8s::ControlPlane::start().await?;
    let client = control_plane.client()?;
    let release_namespace = k8s::unique_name("credvend-system");
    let app_namespace = k8s::unique_name("team-a");
    k8s::create_namespace(&client, &release_namespace).await?;
    k8s::create_namespace(&client, &app_namespace).await?;
    // kube-system exists from the start; its default service account is the controller
    // manager's job, which this control plane does not run.
    k8s::create_service_account(&client, "kube-system", "default").await?;

    // A port nothing listens on: calling the webhook fails at once with "connection refused".
    let port = support::ports::free_port();
    let url = format!("webhook.url=https://127.0.0.1:{port}/mutate");
    let rendered = render(&k8s::unique_name("cv"), &release_namespace, &[&url]);
    apply_all(&client, &rendered.docs).await?;

    let inject = [("credvend.io/inject", "true")];
    let binding = [("credvend.io/binding", "s3-reader")];
    // The API server loads webhook configurations asynchronously; wait until ours is in force.
    let deadline = Instant::now() + API_DEADLINE;
    loop {
        match create_pod(&client, &app_namespace, &inject).await {
            Err(error) if error.to_string().contains("inject.credvend.io") => break,
            Err(error) => return Err(error),
            Ok(()) if Instant::now() > deadline => {
                bail!("the webhook configuration never took effect: annotated pods are admitted")
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let rejected = create_pod(&client, &app_namespace, &binding).await;
    assert!(
        rejected.is_err(),
        "a pod with credvend.io/binding must reach the webhook"
    );
    let forged = create_pod_labelled(&client, &app_namespace, &[], &binding).await;
    assert!(
        forged.is_err(),
        "a pod carrying the credvend.io/binding label must reach the webhook"
    );
    let forged = create_pod(
        &client,
        &app_namespace,
        &[("credvend.io/status", "injected")],
    )
    .await;
    assert!(
        forged.is_err(),
        "a pod carrying credvend.io/status must reach the webhook"
    );

    for (namespace, annotations, why) in [
        (app_namespace.as_str(), &[][..], "a pod without annotations"),
        (
            app_namespace.as_str(),
            &[("example.com/inject", "true")][..],
            "a pod with unrelated annotations",
        ),
        (
            "kube-system",
            &inject[..],
            "an annotated pod in kube-system",
        ),
        (
            release_namespace.as_str(),
            &inject[..],
            "an annotated pod in the release namespace",
        ),
    ] {
        create_pod(&client, namespace, annotations)
            .await
            .with_context(|| format!("{why} must never reach the webhook"))?;
    }
    control_plane.shutdown()
}

/// Creates (dry-run, so nothing is stored) a one-container pod with these annotations.
async fn create_pod(
    client: &Client,
    namespace: &str,
    annotations: &[(&str, &str)],
) -> anyhow::Result<()> {
    create_pod_labelled(client, namespace, annotations, &[]).await
}

/// [`create_pod`] with labels as well.
async fn create_pod_labelled(
    client: &Client,
    namespace: &str,
    annotations: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    };
    let (annotations, labels) = (map(annotations), map(labels));
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "generateName": "app-", "annotations": annotations, "labels": labels },
        "spec": { "containers": [{ "name": "app", "image": "example.com/app:1" }] },
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, &pod)
        .await?;
    Ok(())
}

/// The CRDs of the optional features (cert-manager, the Prometheus Operator): every YAML file
/// in `CREDVEND_CHART_CRDS`, the directory `scripts/chart-crds.sh` fills from the projects'
/// pinned Go modules. `make test` passes it; without it the script is run (it is cached, so
/// only its first run on a machine fetches anything).
fn third_party_crds() -> anyhow::Result<Vec<Value>> {
    let dir = match std::env::var_os("CREDVEND_CHART_CRDS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = repo().join("scripts/chart-crds.sh");
            let output = Command::new(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            ensure!(
                output.status.success(),
                "{} failed; CREDVEND_CHART_CRDS is unset (`make test` sets it)",
                script.display()
            );
            PathBuf::from(String::from_utf8(output.stdout)?.trim())
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading the third-party CRDs in {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(!files.is_empty(), "no CRD files in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        docs.extend(
            serde_saphyr::from_multiple::<Value>(&text)
                .with_context(|| format!("parsing {}", file.display()))?,
        );
    }
    Ok(docs)
}
