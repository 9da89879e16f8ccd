//! Self-signed mode: the CA and serving certificate live in a Secret that all replicas share,
//! and the CA is written into the MutatingWebhookConfiguration's caBundle.
//!
//! Replicas start together and renew together, so every write is optimistic: a create that
//! loses the race (409 AlreadyExists) or a replace whose resourceVersion is stale (409
//! Conflict) re-reads the Secret and adopts what the winner wrote if it is usable. The Secret is
//! the single source of truth; each replica periodically re-reads it and serves what it holds.
//!
//! Order matters during a CA rotation: the caBundle is patched to trust the new CA *before*
//! this replica serves a certificate signed by it, and the old CA stays in the bundle (see
//! [`certs::Material`]) for the replicas that have not switched yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use rustls::sign::CertifiedKey;
use secrecy::{ExposeSecret as _, SecretString};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::certs::{self, Decision, Material, Validity};
use super::{CertResolver, TlsError, TlsMetrics, TlsSettings};

/// Secret keys: the `kubernetes.io/tls` ones plus the CA's key, which only this operator reads.
pub(super) const TLS_CRT: &str = "tls.crt";
pub(super) const TLS_KEY: &str = "tls.key";
pub(super) const CA_CRT: &str = "ca.crt";
pub(super) const CA_KEY: &str = "ca.key";

/// Writes that lose a race are retried this often before giving up (until the next check).
const MAX_ATTEMPTS: u32 = 5;
/// After a failed check, try again this soon rather than after a full check interval.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

pub(super) async fn start(
    client: Client,
    settings: TlsSettings,
    metrics: TlsMetrics,
) -> Result<(Arc<CertResolver>, JoinHandle<()>), TlsError> {
    let manager = Manager::new(client, settings);
    let material = manager.prepare(OffsetDateTime::now_utc()).await?;
    let (certified, validity) = manager.serving(&material)?;
    info!(
        secret = %manager.secret_ref(),
        not_after = %validity.not_after,
        "serving the self-signed webhook certificate"
    );
    metrics.served(validity);
    let resolver = Arc::new(CertResolver::new(Arc::new(certified)));
    let task = tokio::spawn(manager.run(resolver.clone(), metrics, material));
    Ok((resolver, task))
}

pub(super) struct Manager {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    settings: TlsSettings,
    sans: Vec<String>,
}

impl Manager {
    pub(super) fn new(client: Client, settings: TlsSettings) -> Self {
        Manager {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            configs: Api::all(client),
            sans: settings.sans(),
            settings,
        }
    }

    fn secret_ref(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.secret_name)
    }

    /// What startup waits for: a usable certificate in the Secret and its CA in the caBundle.
    /// A MutatingWebhookConfiguration that does not exist yet is only a warning — the watch
    /// patches it when it appears — while anything else (RBAC above all) fails startup loudly.
    pub(super) async fn prepare(&self, now: OffsetDateTime) -> Result<Material, TlsError> {
        let material = self.sync_secret(now).await?;
        self.ensure_ca_bundle(&material.ca_bundle).await?;
        Ok(material)
    }

    /// Reads the Secret and makes sure it holds a certificate good for `now`, writing a new
    /// one if not; returns what the Secret holds afterwards.
    pub(super) async fn sync_secret(&self, now: OffsetDateTime) -> Result<Material, TlsError> {
        let name = &self.settings.secret_name;
        for _ in 0..MAX_ATTEMPTS {
            let existing = self
                .secrets
                .get_opt(name)
                .await
                .map_err(|e| self.kube_error("read Secret", "get", e))?;
            let stored = existing.as_ref().map(material_of);
            let (material, reason) = match certs::decide(stored, &self.sans, now)? {
                Decision::Keep(material) => return Ok(material),
                Decision::Replace { material, reason } => (material, reason),
            };
            let written = match existing {
                None => {
                    let secret = new_secret(&self.settings, &material);
                    self.secrets.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // Keep everything else on the object (labels, annotations, other keys);
                    // the resourceVersion it carries makes the replace fail if it is stale.
                    let data = secret.data.get_or_insert_with(BTreeMap::new);
                    data.extend(data_of(&material));
                    self.secrets
                        .replace(name, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => {
                    info!(secret = %self.secret_ref(), %reason, "wrote a new webhook certificate");
                    return Ok(material);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    debug!(secret = %self.secret_ref(), "another replica wrote the webhook certificate first; re-reading it");
                }
                Err(e) => return Err(self.kube_error("write Secret", "create/update", e)),
            }
        }
        Err(TlsError::Contention {
            namespace: self.settings.namespace.clone(),
            name: name.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Makes every webhook in the configuration trust `ca_bundle`; touches nothing when they
    /// all do already.
    pub(super) async fn ensure_ca_bundle(&self, ca_bundle: &str) -> Result<(), TlsError> {
        let name = &self.settings.webhook_config_name;
        for _ in 0..MAX_ATTEMPTS {
            let config = match self.configs.get_opt(name).await {
                Ok(Some(config)) => config,
                Ok(None) => {
                    warn!(
                        webhook_configuration = %name,
                        "MutatingWebhookConfiguration not found; its caBundle will be set when it is created"
                    );
                    return Ok(());
                }
                Err(e) => return Err(self.config_error(e)),
            };
            let Some(patch) = ca_bundle_patch(&config, ca_bundle) else {
                return Ok(());
            };
            let patched = self
                .configs
                .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await;
            match patched {
                Ok(_) => {
                    info!(webhook_configuration = %name, "set the caBundle of the webhook configuration");
                    return Ok(());
                }
                // A failed `test` (the webhooks were reordered since our GET) or a conflict:
                // look again.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                    debug!(webhook_configuration = %name, "webhook configuration changed while patching; retrying");
                }
                Err(e) => return Err(self.config_error(e)),
            }
        }
        Err(self.config_error(kube::Error::Api(
            kube::core::Status::failure("the configuration kept changing", "Conflict")
                .with_code(409)
                .boxed(),
        )))
    }

    /// The certificate the Secret holds, ready for rustls.
    fn serving(&self, material: &Material) -> Result<(CertifiedKey, Validity), TlsError> {
        let what = |key: &str| format!("Secret {} {key}", self.secret_ref());
        let certified = certs::certified_key(
            &material.cert,
            material.key.expose_secret(),
            &what(TLS_CRT),
            &what(TLS_KEY),
        )?;
        let validity = certs::validity_of_pem(&material.cert, &what(TLS_CRT))?;
        Ok((certified, validity))
    }

    /// Keeps the served certificate equal to the Secret's and the caBundle trusting it: on a
    /// timer, and whenever the webhook configuration stops trusting what we serve (a `helm
    /// upgrade` re-applies it with an empty caBundle, which would otherwise break admission
    /// until the next check). A mismatch triggers a full round from the Secret rather than a
    /// patch with what this replica serves: during a CA rotation another replica may have
    /// moved the bundle on, and patching our older view back would make the two fight.
    async fn run(self, resolver: Arc<CertResolver>, metrics: TlsMetrics, mut served: Material) {
        let fields = format!("metadata.name={}", self.settings.webhook_config_name);
        let configs = watcher(
            self.configs.clone(),
            watcher::Config::default().fields(&fields),
        )
        .default_backoff()
        .applied_objects();
        let mut configs = std::pin::pin!(configs);
        let mut watching = true;
        let mut next_check = Instant::now() + self.settings.check_interval;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_check) => {}
                event = configs.next(), if watching => match event {
                    Some(Ok(config)) if ca_bundle_patch(&config, &served.ca_bundle).is_some() => {
                        info!(webhook_configuration = %self.settings.webhook_config_name, "the webhook configuration does not trust the served CA; checking");
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        warn!(error = %e, "watch of the webhook configuration failed; retrying");
                        continue;
                    }
                    None => {
                        watching = false;
                        continue;
                    }
                },
            }
            let now = OffsetDateTime::now_utc();
            match self.check(now, &resolver, &metrics, &mut served).await {
                Ok(()) => next_check = Instant::now() + self.settings.check_interval,
                Err(e) => {
                    metrics.failed("renew");
                    error!(error = %e, "cannot renew the webhook certificate or update the caBundle; still serving the current certificate");
                    next_check =
                        Instant::now() + self.settings.check_interval.min(RETRY_AFTER_FAILURE);
                }
            }
        }
    }

    /// One periodic round: adopt or renew the Secret's certificate, repair the caBundle, then
    /// serve. When the caBundle cannot be updated the current certificate is kept (it is still
    /// valid for a third of its lifetime when renewal starts) unless it has already expired.
    async fn check(
        &self,
        now: OffsetDateTime,
        resolver: &CertResolver,
        metrics: &TlsMetrics,
        served: &mut Material,
    ) -> Result<(), TlsError> {
        let material = self.sync_secret(now).await?;
        let bundle = self.ensure_ca_bundle(&material.ca_bundle).await;
        if material.same_as(served) {
            return bundle;
        }
        let served_expired = certs::validity_of_pem(&served.cert, TLS_CRT)
            .map(|v| v.expired(now))
            .unwrap_or(true);
        if bundle.is_ok() || served_expired {
            let (certified, validity) = self.serving(&material)?;
            resolver.set(Arc::new(certified));
            metrics.served(validity);
            info!(secret = %self.secret_ref(), not_after = %validity.not_after, "now serving the renewed webhook certificate");
            *served = material;
        }
        bundle
    }

    fn kube_error(&self, verb: &str, rbac_verbs: &str, source: kube::Error) -> TlsError {
        let name = &self.settings.secret_name;
        let hint = format!("the operator's Role must allow {rbac_verbs} on secrets named {name}");
        kube_error(format!("{verb} {}", self.secret_ref()), &hint, source)
    }

    fn config_error(&self, source: kube::Error) -> TlsError {
        let name = &self.settings.webhook_config_name;
        let hint = format!(
            "the operator's ClusterRole must allow get, list, watch and patch on mutatingwebhookconfigurations named {name}"
        );
        kube_error(
            format!("update the caBundle of MutatingWebhookConfiguration {name}"),
            &hint,
            source,
        )
    }
}

fn kube_error(action: String, rbac_hint: &str, source: kube::Error) -> TlsError {
    let detail = match &source {
        kube::Error::Api(status) if status.code == 403 => format!("forbidden; {rbac_hint}"),
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    };
    TlsError::Kube {
        action,
        detail,
        source,
    }
}

/// A JSON patch setting `caBundle` on every webhook that lacks it, each guarded by a `test` of
/// the webhook's name so a concurrent reorder cannot make us patch the wrong entry; `None` when
/// nothing needs to change. (A merge patch cannot address list items, and replacing the whole
/// object would drop fields this client does not know.)
pub(super) fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    ca_bundle: &str,
) -> Option<json_patch::Patch> {
    let mut ops = Vec::new();
    for (index, webhook) in config.webhooks.iter().flatten().enumerate() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current == Some(ca_bundle.as_bytes()) {
            continue;
        }
        let index = index.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
            value: serde_json::Value::String(webhook.name.clone()),
        }));
        // `add` replaces an existing member, so one operation covers set and unset alike.
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "clientConfig", "caBundle"]),
            // caBundle is `[]byte`, which Kubernetes' JSON carries as base64.
            value: serde_json::Value::String(BASE64.encode(ca_bundle)),
        }));
    }
    (!ops.is_empty()).then_some(json_patch::Patch(ops))
}

/// The Secret's four values; missing or non-UTF-8 ones become empty strings, which
/// [`certs::decide`] treats as unusable and replaces (reusing whatever part still is usable).
fn material_of(secret: &Secret) -> Material {
    let value = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .unwrap_or_default()
    };
    Material {
        ca_bundle: value(CA_CRT),
        ca_key: SecretString::from(value(CA_KEY)),
        cert: value(TLS_CRT),
        key: SecretString::from(value(TLS_KEY)),
    }
}

fn data_of(material: &Material) -> BTreeMap<String, ByteString> {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    BTreeMap::from([
        (TLS_CRT.to_owned(), bytes(&material.cert)),
        (TLS_KEY.to_owned(), bytes(material.key.expose_secret())),
        (CA_CRT.to_owned(), bytes(&material.ca_bundle)),
        (CA_KEY.to_owned(), bytes(material.ca_key.expose_secret())),
    ])
}

fn new_secret(settings: &TlsSettings, material: &Material) -> Secret {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "credvend".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "webhook-tls".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "credvend".to_owned(),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data_of(material)),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests;
