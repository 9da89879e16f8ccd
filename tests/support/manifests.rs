//! The Helm chart as the tests install it: rendered by the real helm CLI, applied to the real
//! API server with server-side apply, object by object (CRDs first, then waiting until they
//! are established), the way `helm install` would.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};

use super::python::repo_path;

/// The helm CLI: `CREDVEND_HELM` (set by `make test`), else what `scripts/helm-bin.sh` builds.
pub fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("CREDVEND_HELM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(repo_path("scripts/helm-bin.sh"))
        .output()
        .expect("run scripts/helm-bin.sh (or `make helm-bin`)");
    assert!(
        out.status.success(),
        "scripts/helm-bin.sh failed; run `make helm-bin`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `helm template RELEASE charts/credvend --namespace NS --set k=v ...`.
pub fn render_chart(
    release: &str,
    namespace: &str,
    set: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", release])
        .arg(repo_path("charts/credvend"))
        .args(["--namespace", namespace, "--include-crds"]);
    for (k, v) in set {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    let out = cmd.output().context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Splits a multi-document YAML stream into objects, skipping empty documents.
pub fn documents(yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).context("parsing rendered YAML")?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            serde_json::from_value(d).context("a rendered document is not a Kubernetes object")
        })
        .collect()
}

/// Server-side applies every object (CRDs first, waiting for them to be established);
/// `dry_run` asks the API server to validate and admit without storing.
pub async fn apply_all(
    client: &Client,
    objects: &[DynamicObject],
    dry_run: bool,
) -> anyhow::Result<()> {
    let (crds, rest): (Vec<_>, Vec<_>) = objects.iter().partition(|o| {
        o.types
            .as_ref()
            .is_some_and(|t| t.kind == "CustomResourceDefinition")
    });
    for obj in &crds {
        apply(client, obj, dry_run).await?;
    }
    if !dry_run {
        for obj in &crds {
            wait_established(client, &obj.name_any()).await?;
        }
    }
    for obj in rest {
        apply(client, obj, dry_run).await?;
    }
    Ok(())
}

async fn apply(client: &Client, obj: &DynamicObject, dry_run: bool) -> anyhow::Result<()> {
    let types = obj
        .types
        .as_ref()
        .ok_or_else(|| anyhow!("object without apiVersion/kind"))?;
    let gvk = kube::api::GroupVersionKind::try_from(types)?;
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {}", types.kind))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj
                .namespace()
                .ok_or_else(|| anyhow!("{} {} has no namespace", types.kind, obj.name_any()))?;
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("credvend-test").force();
    params.dry_run = dry_run;
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {} {}", types.kind, obj.name_any()))?;
    Ok(())
}

async fn wait_established(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("CRD {name} not established after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
