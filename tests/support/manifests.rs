//! The Helm chart as the tests install it: rendered by the real helm CLI (built from its Go
//! module, run with a private home so a developer's settings cannot change the output) and
//! applied to the real API server with strict server-side apply, CRDs first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, TypeMeta};
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::Value;

/// How long the API server may take to establish CRDs and serve their kinds.
pub const API_DEADLINE: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "credvend-test";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary: `CREDVEND_HELM`, else whatever `scripts/helm-bin.sh` builds or finds.
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let path = match std::env::var_os("CREDVEND_HELM") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                let script = repo().join("scripts/helm-bin.sh");
                // stderr is inherited so the (slow) first build shows its progress.
                let output = Command::new(&script)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .unwrap_or_else(|e| {
                        panic!(
                            "running {} failed ({e}); CREDVEND_HELM is unset. \
                             Build helm with `make helm-bin`",
                            script.display()
                        )
                    });
                assert!(
                    output.status.success(),
                    "{} failed ({}); CREDVEND_HELM is unset. Build helm with `make helm-bin`",
                    script.display(),
                    output.status
                );
                PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
            }
        };
        assert!(
            path.is_file(),
            "helm not found at {}; build it with `make helm-bin`",
            path.display()
        );
        path
    })
}

/// Runs helm in the repository root with a private home, so a developer's repositories,
/// plugins and settings cannot change what the chart renders to.
pub fn run_helm(args: &[&str]) -> Output {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().unwrap()).path();
    Command::new(helm())
        .args(args)
        .current_dir(repo())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("HELM_NAMESPACE")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm().display()))
}

/// `helm template RELEASE charts/credvend --namespace NS --include-crds --set k=v ...`,
/// one JSON value per rendered object.
pub fn render_chart(
    release: &str,
    namespace: &str,
    set: &[(&str, &str)],
) -> anyhow::Result<Vec<Value>> {
    let sets: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        "template",
        release,
        "charts/credvend",
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = run_helm(&args);
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)
        .context("helm template printed invalid YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Server-side applies every object: CRDs first (and waits until they are served), then a
/// dry run of everything else, so a rejection names the object before anything is stored, and
/// finally the real apply.
pub async fn apply_all(client: &Client, docs: &[Value]) -> anyhow::Result<()> {
    let (crds, others): (Vec<&Value>, Vec<&Value>) = docs
        .iter()
        .partition(|d| d["kind"] == "CustomResourceDefinition");
    for crd in &crds {
        apply(client, crd, true).await?;
        apply(client, crd, false).await?;
    }
    let crd_api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in &crds {
        let name = object_name(crd)?;
        tokio::time::timeout(
            API_DEADLINE,
            await_condition(crd_api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established within {API_DEADLINE:?}"))??;
    }
    for doc in &others {
        apply(client, doc, true).await?;
    }
    for doc in &others {
        apply(client, doc, false).await?;
    }
    Ok(())
}

async fn apply(client: &Client, doc: &Value, dry_run: bool) -> anyhow::Result<DynamicObject> {
    let type_meta: TypeMeta = serde_json::from_value(doc.clone())?;
    let gvk = GroupVersionKind::try_from(&type_meta)?;
    let name = object_name(doc)?;
    let (resource, capabilities) = discover(client, &gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let namespace = doc["metadata"]["namespace"].as_str().ok_or_else(|| {
                // `kubectl apply` would put it wherever the user's context points.
                anyhow!(
                    "{} {name} is namespaced but the chart sets no namespace",
                    gvk.kind
                )
            })?;
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    // Strict: a field the API server does not know is an error, not a silently dropped value.
    let mut params = PatchParams::apply(FIELD_MANAGER).validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(doc))
        .await
        .with_context(|| {
            format!(
                "kube-apiserver rejected the {}apply of {} {name}:\n{}",
                if dry_run { "dry-run " } else { "" },
                gvk.kind,
                serde_json::to_string_pretty(doc).unwrap_or_default()
            )
        })
}

/// The API resource of a kind. Polls, because a new CRD reaches discovery a moment after it
/// is established.
async fn discover(
    client: &Client,
    gvk: &GroupVersionKind,
) -> anyhow::Result<(ApiResource, ApiCapabilities)> {
    let deadline = Instant::now() + API_DEADLINE;
    loop {
        match discovery::pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(error) if Instant::now() > deadline => {
                bail!("{gvk:?} not served by kube-apiserver: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn object_name(doc: &Value) -> anyhow::Result<&str> {
    doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("object without a name: {doc}"))
}
