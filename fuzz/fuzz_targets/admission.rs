//! AdmissionReview bytes (any pod creation in the cluster) → the webhook's answer, through
//! `Admission::review`, the very function the webhook's HTTP handler calls, with bindings
//! from memory.
//!
//! Properties: a body is refused with an error exactly when it is not an AdmissionReview with
//! a request (read with the pod typed, or as a generic object); every answer carries the
//! request's uid; a denial has a message; a patch is a
//! JSON patch of `add`s only, that applies to the pod as the API server sent it, leaves every
//! field the user wrote in place (except the webhook's own markers, which it sets to the
//! truth), yields an object that still reads as a Pod, and, sent back through admission
//! (reinvocation), is not patched again.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use credvend::crd::{AWSRoleBinding, AWSRoleBindingSpec};
use credvend::inject::{
    ANNOTATION_BINDING_GENERATION, ANNOTATION_STATUS, InjectSettings, Injector, LABEL_BINDING,
    STATUS_INJECTED,
};
use credvend::operator::metrics::OperatorMetrics;
use credvend::webhook::admission::{Admission, BindingSource};
use credvend_fuzz::json::{first_loss, self_check};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// What the webhook writes into the pod's metadata: (map, key).
const MARKERS: &[(&str, &str)] = &[
    ("labels", LABEL_BINDING),
    ("annotations", ANNOTATION_STATUS),
    ("annotations", ANNOTATION_BINDING_GENERATION),
];

/// The namespace's bindings: one per service account `app` and `batch`, an invalid one for
/// `legacy`, and two for `shared` (ambiguous).
struct Memory(Vec<Arc<AWSRoleBinding>>);

impl BindingSource for Memory {
    fn cached(&self, namespace: &str) -> Vec<Arc<AWSRoleBinding>> {
        self.0
            .iter()
            .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    async fn live(&self, namespace: &str) -> Result<Vec<AWSRoleBinding>, kube::Error> {
        Ok(self
            .cached(namespace)
            .iter()
            .map(|b| (**b).clone())
            .collect())
    }
}

fn binding(name: &str, spec: Value) -> Arc<AWSRoleBinding> {
    let spec: AWSRoleBindingSpec = serde_json::from_value(spec).expect("binding spec");
    let mut b = AWSRoleBinding::new(name, spec);
    b.metadata.namespace = Some("team-a".into());
    b.metadata.generation = Some(2);
    // As the API server returns it, so the injector's remembered renders are fuzzed too.
    b.metadata.uid = Some(format!("uid-{name}"));
    b.metadata.resource_version = Some("7".into());
    Arc::new(b)
}

static ADMISSION: LazyLock<Admission<Memory>> = LazyLock::new(|| {
    self_check();
    let arn = "arn:aws:iam::111122223333:role/s3-reader";
    Admission {
        bindings: Memory(vec![
            binding(
                "s3-reader",
                json!({"serviceAccountName": "app", "roleArn": arn}),
            ),
            binding(
                "batch",
                json!({"serviceAccountName": "batch", "roleArn": arn, "region": "eu-west-1",
                       "sessionDuration": "20m", "stsEndpoint": "http://127.0.0.1:5000"}),
            ),
            binding(
                "broken",
                json!({"serviceAccountName": "legacy", "roleArn": "nope"}),
            ),
            binding(
                "one",
                json!({"serviceAccountName": "shared", "roleArn": arn}),
            ),
            binding(
                "two",
                json!({"serviceAccountName": "shared", "roleArn": arn}),
            ),
        ]),
        injector: Injector::new(InjectSettings::default()),
        metrics: OperatorMetrics::new().expect("metrics").admission,
    }
});

fuzz_target!(|data: &[u8]| {
    let admission = &*ADMISSION;
    let answer = futures::executor::block_on(admission.review(data));
    // The webhook reads a review with the pod typed, and only when that fails as a generic
    // object (so that an unreadable pod still gets an answer with its uid): a body is a review
    // when either reading takes it.
    let typed = serde_json::from_slice::<AdmissionReview<Pod>>(data)
        .ok()
        .and_then(|r| r.request)
        .map(|r| {
            (
                r.uid,
                r.object
                    .map(|o| serde_json::to_value(o).expect("a pod serializes")),
            )
        });
    let loose = || {
        serde_json::from_slice::<AdmissionReview<DynamicObject>>(data)
            .ok()
            .and_then(|r| r.request)
            .map(|r| {
                (
                    r.uid,
                    r.object
                        .map(|o| serde_json::to_value(o).expect("an object serializes")),
                )
            })
    };
    let parsed = typed.or_else(loose);
    let Ok(answer) = answer else {
        assert!(
            parsed.is_none(),
            "a readable review was refused: {answer:?}"
        );
        return;
    };
    let (uid, object) = parsed.expect("an answered body is a review with a request");
    let review: Value = serde_json::from_slice(&answer).expect("the answer is JSON");
    let response = &review["response"];
    assert_eq!(response["uid"], json!(uid));
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    let Some(patch) = response.get("patch") else {
        if !allowed {
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "a denial says why: {response}");
        }
        return;
    };
    assert!(allowed, "a patch comes only with an admission");
    assert_eq!(response["patchType"], "JSONPatch");
    // Base64, as Kubernetes' JSON writes a []byte field.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("the patch is a base64 string"))
        .expect("the patch is base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("the patch is a JSON array");
    assert!(
        !ops.is_empty() && ops.iter().all(|op| op["op"] == "add"),
        "{ops:?}"
    );
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");

    // The object as the API server holds it: the raw JSON of the request, which always has
    // metadata and spec objects (Go's ObjectMeta and PodSpec are structs, never omitted).
    // (A body kube reads may still not parse as a JSON value: kube skips unknown fields
    // without checking their escapes. Then the object is taken as kube read it.)
    let raw: Option<Value> = serde_json::from_slice(data).ok();
    let original = raw.as_ref().map(|r| r["request"]["object"].clone());
    let server_shaped = original
        .as_ref()
        .is_some_and(|o| o["metadata"].is_object() && o["spec"].is_object());
    let mut patched = if let Some(original) = original.filter(|_| server_shaped) {
        original
    } else {
        object.expect("an injected request has an object")
    };
    let before = patched.clone();
    json_patch::patch(&mut patched, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{ops:?}\n{before}"));
    // The markers the webhook writes are set to the truth even when the pod brought its own
    // value (a pod must not claim another binding to the controller that counts pods by the
    // label, nor a status it does not have); every other field survives untouched.
    let mut users = before.clone();
    for (map, key) in MARKERS {
        if let Some(m) = users["metadata"][map].as_object_mut() {
            m.remove(*key);
        }
    }
    if let Some(loss) = first_loss(&users, &patched, "") {
        panic!("the patch loses a user's field: {loss}");
    }
    assert_eq!(
        patched["metadata"]["annotations"][ANNOTATION_STATUS],
        STATUS_INJECTED
    );
    // (The webhook reads the object through kube's DynamicObject, which drops apiVersion and
    // kind when one is missing; only an object that reads as a Pod as sent must do so after.)
    if serde_json::from_value::<Pod>(before.clone()).is_ok() {
        serde_json::from_value::<Pod>(patched.clone()).expect("the patched object is a Pod");
    }

    // Reinvocation: the API server may call the webhook again with the patched pod.
    let Some(mut again) = raw else {
        return;
    };
    again["request"]["object"] = patched;
    let again = serde_json::to_vec(&again).expect("JSON");
    let second = futures::executor::block_on(admission.review(&again)).expect("a review");
    let second: Value = serde_json::from_slice(&second).expect("JSON");
    assert_eq!(second["response"]["allowed"], true, "{second}");
    assert!(
        second["response"].get("patch").is_none(),
        "patched twice: {second}"
    );
});
