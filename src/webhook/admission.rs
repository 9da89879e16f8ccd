//! AdmissionReview in, AdmissionReview out: the webhook's decision around [`inject::decide`].
//!
//! Pod creations are decided by [`inject::decide`]; pod updates only by
//! [`inject::label_change`], which refuses adding or changing the `credvend.io/binding` label
//! (the chart sends only such updates), so a label a user writes never counts a pod for a
//! binding.
//!
//! The bindings come from the operator's in-memory cache, by namespace; only when the decision
//! is "no such binding" does the webhook list the namespace's bindings on the API server once
//! and decide again, because a binding applied a moment before its pods may not have reached
//! the cache yet (the race users of other injectors hit most). A review that cannot be read
//! gets a clear error instead of a panic; a pod that cannot be decoded is denied with the
//! reason, so nothing is ever half-injected.
//!
//! The review is decoded once, with the pod typed; only a review whose pod our types cannot
//! read is decoded a second time, loosely, to answer it with its uid and the reason. The
//! answer is written by [`wire`] (the patch as base64, not as kube-core's array of numbers).
//! Decisions go through one [`Injector`], so the agent's part of the patch is rendered once
//! per version of the pod's bindings, not once per pod.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client, Resource};

use super::metrics::AdmissionMetrics;
use crate::controller::BindingsByNamespace;
use crate::crd::AWSRoleBinding;
use crate::inject::{self, Candidates, Decision, Injector};

/// A request body that is not an AdmissionReview we can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("cannot encode the AdmissionReview response: {0}")]
    Encode(serde_json::Error),
}

/// How an admission ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `injected`, `skipped`, `denied` or `error`.
    pub result: &'static str,
    /// A stable reason label.
    pub reason: &'static str,
}

/// Where the webhook finds bindings.
pub trait BindingSource: Send + Sync {
    /// The bindings of `namespace` the operator already knows.
    fn cached(&self, namespace: &str) -> Vec<Arc<AWSRoleBinding>>;
    /// The bindings of `namespace` as the API server has them now.
    fn live(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<AWSRoleBinding>, kube::Error>> + Send;
}

/// Bindings from the operator's cache (indexed by namespace, so a lookup costs the
/// namespace's bindings, not the cluster's), with a live list on a miss.
pub struct StoreAndApi {
    pub by_namespace: BindingsByNamespace,
    pub client: Client,
}

impl BindingSource for StoreAndApi {
    fn cached(&self, namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
        self.by_namespace.get(namespace)
    }

    async fn live(&self, namespace: &str) -> Result<Vec<AWSRoleBinding>, kube::Error> {
        let api: Api<AWSRoleBinding> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.list(&Default::default()).await?.items)
    }
}

/// The webhook's request handler.
pub struct Admission<B> {
    pub bindings: B,
    /// The operator's settings, and the agent renders they gave.
    pub injector: Injector,
    pub metrics: AdmissionMetrics,
}

impl<B: BindingSource> Admission<B> {
    /// Answers one AdmissionReview body with the encoded response review.
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
        let started = Instant::now();
        let result = self.review_inner(body).await;
        let outcome = match &result {
            Ok((_, outcome)) => outcome.clone(),
            Err(_) => Outcome {
                result: "error",
                reason: "malformed_review",
            },
        };
        self.metrics
            .admissions
            .with_label_values(&[outcome.result, outcome.reason])
            .inc();
        self.metrics
            .admission_duration
            .with_label_values(&[outcome.result])
            .observe(started.elapsed().as_secs_f64());
        let (response, _) = result?;
        super::wire::encode(&response).map_err(ReviewError::Encode)
    }

    async fn review_inner(&self, body: &[u8]) -> Result<(AdmissionResponse, Outcome), ReviewError> {
        // Nearly every review: one pass, straight into the typed pod.
        if let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(body) {
            let req: AdmissionRequest<Pod> =
                review.try_into().map_err(|_| ReviewError::NoRequest)?;
            return Ok(self.admit(&req).await);
        }
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
        let req: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| ReviewError::NoRequest)?;
        Ok(self.admit(&req).await)
    }

    async fn admit<K: UnderReview>(
        &self,
        req: &AdmissionRequest<K>,
    ) -> (AdmissionResponse, Outcome) {
        let allow = AdmissionResponse::from(req);
        if req.kind.kind != "Pod" || !req.sub_resource.as_deref().unwrap_or_default().is_empty() {
            return (allow, outcome("skipped", "not_a_pod_create"));
        }
        match req.operation {
            Operation::Create => {}
            Operation::Update => return update(allow, req),
            _ => return (allow, outcome("skipped", "not_a_pod_create")),
        }
        let pod = match req
            .object
            .as_ref()
            .ok_or("the request has no object".to_owned())
            .and_then(K::pod)
        {
            Ok(pod) => pod,
            Err(why) => {
                tracing::warn!(uid = %req.uid, error = %why, "cannot decode the pod under admission");
                let msg = format!("credvend cannot read this pod: {why}");
                return (allow.deny(msg), outcome("error", "undecodable_pod"));
            }
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let decision = match self.decide(&pod, &namespace).await {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(namespace, error = %err, "cannot list AWSRoleBindings");
                let msg = format!(
                    "credvend cannot look up the AWSRoleBindings of namespace {namespace}: {err}; retry, or check the operator's RBAC"
                );
                return (allow.deny(msg), outcome("error", "binding_lookup_failed"));
            }
        };
        let pod_name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default();
        respond(allow, decision, &namespace, &pod_name)
    }

    /// Decides from the store; on "no such binding", once more from the API server.
    async fn decide(&self, pod: &Pod, namespace: &str) -> Result<Decision, kube::Error> {
        let cached = self.bindings.cached(namespace);
        let refs: Vec<&AWSRoleBinding> = cached.iter().map(Arc::as_ref).collect();
        let first = self.injector.decide(
            pod,
            &Candidates {
                namespace,
                bindings: &refs,
            },
        );
        match &first {
            Decision::Deny { reason } if reason.binding_missing() => {
                let live = self.bindings.live(namespace).await?;
                let refs: Vec<&AWSRoleBinding> = live.iter().collect();
                Ok(self.injector.decide(
                    pod,
                    &Candidates {
                        namespace,
                        bindings: &refs,
                    },
                ))
            }
            _ => Ok(first),
        }
    }
}

/// A pod update: only changes of the `credvend.io/binding` label matter (see the module
/// documentation). Labels are read loosely, so an update we cannot fully decode is still judged.
fn update<K: UnderReview>(
    allow: AdmissionResponse,
    req: &AdmissionRequest<K>,
) -> (AdmissionResponse, Outcome) {
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| o.meta().labels.as_ref());
    let new = req.object.as_ref().and_then(|o| o.meta().labels.as_ref());
    match inject::label_change(old, new) {
        Ok(()) => (allow, outcome("skipped", "update")),
        Err(reason) => {
            tracing::info!(
                namespace = req.namespace.as_deref().unwrap_or_default(),
                pod = %req.name,
                reason = reason.metric_label(),
                "pod update denied"
            );
            (
                allow.deny(reason.to_string()),
                outcome("denied", reason.metric_label()),
            )
        }
    }
}

fn outcome(result: &'static str, reason: &'static str) -> Outcome {
    Outcome { result, reason }
}

/// The object of a review as decoded: a typed pod (nearly always), or a loose object when
/// our types could not read the pod, so that it still gets an answer carrying the request's uid.
trait UnderReview: Resource + Sync {
    /// The pod under admission, typed, or why it cannot be.
    fn pod(&self) -> Result<Cow<'_, Pod>, String>;
}

impl UnderReview for Pod {
    fn pod(&self) -> Result<Cow<'_, Pod>, String> {
        Ok(Cow::Borrowed(self))
    }
}

impl UnderReview for DynamicObject {
    /// Decodes again to find the reason: only reviews the typed pass refused come here.
    fn pod(&self) -> Result<Cow<'_, Pod>, String> {
        let value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        serde_json::from_value(value)
            .map(Cow::Owned)
            .map_err(|e| e.to_string())
    }
}

/// Turns a decision into the response, logging it once.
fn respond(
    allow: AdmissionResponse,
    decision: Decision,
    namespace: &str,
    pod: &str,
) -> (AdmissionResponse, Outcome) {
    match decision {
        Decision::Skip { reason } => (allow, outcome("skipped", reason.metric_label())),
        Decision::Deny { reason } => {
            tracing::info!(namespace, pod, reason = reason.metric_label(), message = %reason, "pod denied");
            (
                allow.deny(reason.to_string()),
                outcome("denied", reason.metric_label()),
            )
        }
        Decision::Inject {
            patch,
            warnings,
            binding,
            kind,
        } => {
            // The patch's type is JSONPatch, the only one admission.k8s.io/v1 has, which
            // `wire` writes beside any patch.
            let mut resp = allow;
            resp.patch = Some(patch.into_bytes());
            // Debug, not info: the normal outcome of every annotated pod's creation, and
            // formatting and writing the line was a twentieth of the webhook's CPU per
            // review. credvend_admissions_total counts injections; denials stay at info.
            tracing::debug!(
                namespace,
                pod,
                binding,
                warnings = warnings.len(),
                result = kind.metric_label(),
                "agent injected"
            );
            if !warnings.is_empty() {
                resp.warnings = Some(warnings);
            }
            (resp, outcome(kind.metric_label(), kind.metric_label()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::crd::AWSRoleBindingSpec;
    use crate::inject::InjectSettings;

    /// Bindings in memory; `live` returns `live_bindings` and counts calls.
    struct Fixed {
        cached: Vec<Arc<AWSRoleBinding>>,
        live_bindings: Vec<AWSRoleBinding>,
        live_calls: Mutex<u32>,
    }

    impl BindingSource for Fixed {
        fn cached(&self, namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
            self.cached
                .iter()
                .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
                .cloned()
                .collect()
        }
        async fn live(&self, _namespace: &str) -> Result<Vec<AWSRoleBinding>, kube::Error> {
            *self.live_calls.lock().unwrap() += 1;
            Ok(self.live_bindings.clone())
        }
    }

    fn binding(name: &str, sa: &str) -> AWSRoleBinding {
        let spec: AWSRoleBindingSpec = serde_json::from_value(serde_json::json!({
            "serviceAccountName": sa,
            "roleArn": "arn:aws:iam::111122223333:role/s3-reader",
        }))
        .unwrap();
        let mut b = AWSRoleBinding::new(name, spec);
        b.metadata.namespace = Some("team-a".into());
        b.metadata.generation = Some(1);
        b
    }

    fn admission(cached: Vec<AWSRoleBinding>, live: Vec<AWSRoleBinding>) -> Admission<Fixed> {
        Admission {
            bindings: Fixed {
                cached: cached.into_iter().map(Arc::new).collect(),
                live_bindings: live,
                live_calls: Mutex::new(0),
            },
            injector: Injector::new(InjectSettings::default()),
            metrics: AdmissionMetrics::unregistered(),
        }
    }

    fn review(pod: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "userInfo": {"username": "dev"},
                "object": pod,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn pod(annotations: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "team-a", "annotations": annotations},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app:1"}]}
        })
    }

    async fn answer(a: &Admission<Fixed>, body: &[u8]) -> serde_json::Value {
        let out = a.review(body).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        v["response"].clone()
    }

    fn count(a: &Admission<Fixed>, result: &str, reason: &str) -> u64 {
        a.metrics
            .admissions
            .with_label_values(&[result, reason])
            .get()
    }

    #[tokio::test]
    async fn injects_an_annotated_pod_from_the_store_without_a_live_lookup() {
        let a = admission(vec![binding("s3", "app")], vec![]);
        let resp = answer(
            &a,
            &review(pod(serde_json::json!({"credvend.io/inject": "true"}))),
        )
        .await;
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        // The patch is base64, as Kubernetes' JSON writes a []byte field.
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().unwrap())
            .unwrap();
        let ops: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
        assert!(
            !ops.is_empty() && ops.iter().all(|op| op["op"] == "add"),
            "{ops:?}"
        );
        assert_eq!(*a.bindings.live_calls.lock().unwrap(), 0);
        assert_eq!(count(&a, "injected", "injected"), 1);
    }

    #[tokio::test]
    async fn a_binding_missing_from_the_store_is_looked_up_once_on_the_api_server() {
        let a = admission(vec![], vec![binding("s3", "app")]);
        let resp = answer(
            &a,
            &review(pod(serde_json::json!({"credvend.io/inject": "true"}))),
        )
        .await;
        assert_eq!(resp["allowed"], true, "{resp}");
        assert_eq!(*a.bindings.live_calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn denies_with_the_fix_when_no_binding_exists_anywhere() {
        let a = admission(vec![], vec![]);
        let resp = answer(
            &a,
            &review(pod(serde_json::json!({"credvend.io/binding": "nope"}))),
        )
        .await;
        assert_eq!(resp["allowed"], false);
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains("nope") && msg.contains("team-a"), "{msg}");
        assert_eq!(*a.bindings.live_calls.lock().unwrap(), 1);
        assert_eq!(count(&a, "denied", "unknown_binding"), 1);
    }

    #[tokio::test]
    async fn unannotated_pods_and_other_operations_pass_untouched() {
        let a = admission(vec![binding("s3", "app")], vec![]);
        let resp = answer(&a, &review(pod(serde_json::json!({})))).await;
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none());
        let mut update: serde_json::Value = serde_json::from_slice(&review(pod(
            serde_json::json!({"credvend.io/inject": "true"}),
        )))
        .unwrap();
        update["request"]["operation"] = "UPDATE".into();
        let resp = answer(&a, &serde_json::to_vec(&update).unwrap()).await;
        assert!(resp.get("patch").is_none());
        assert_eq!(count(&a, "skipped", "update"), 1);
        assert_eq!(count(&a, "skipped", "not_requested"), 1);
    }

    #[tokio::test]
    async fn a_pod_our_types_cannot_read_is_denied_not_half_injected() {
        let a = admission(vec![binding("s3", "app")], vec![]);
        let mut bad = pod(serde_json::json!({"credvend.io/inject": "true"}));
        bad["spec"]["containers"] = serde_json::json!("not a list");
        let resp = answer(&a, &review(bad)).await;
        assert_eq!(resp["allowed"], false);
        assert!(resp.get("patch").is_none());
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot read this pod")
        );
        assert_eq!(count(&a, "error", "undecodable_pod"), 1);
    }

    #[tokio::test]
    async fn malformed_reviews_get_an_error_not_a_panic() {
        let a = admission(vec![], vec![]);
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        ] {
            let err = a.review(body).await.unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(count(&a, "error", "malformed_review"), 3);
    }

    #[tokio::test]
    async fn warnings_reach_the_response() {
        let a = admission(vec![binding("s3", "app")], vec![]);
        let mut p = pod(serde_json::json!({"credvend.io/inject": "true"}));
        p["spec"]["containers"][0]["env"] =
            serde_json::json!([{"name": "AWS_PROFILE", "value": "dev"}]);
        let resp = answer(&a, &review(p)).await;
        assert_eq!(resp["allowed"], true);
        let warnings = resp["warnings"].as_array().unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("AWS_PROFILE")),
            "{warnings:?}"
        );
    }
}
