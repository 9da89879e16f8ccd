//! The response AdmissionReview as bytes, with the patch in base64.
//!
//! kube-core's `AdmissionResponse` keeps the patch as `Vec<u8>`, which serde writes as a JSON
//! array of numbers (kube-rs/kube#1781). The API server's decoder accepts that, but
//! Kubernetes' JSON for a `[]byte` field is base64: the array is about 2.5 times the size
//! (11.7 KB instead of 4.6 KB for a typical injection) and writing and parsing it was a good
//! part of the webhook's CPU. This writes exactly the fields kube-core writes, in the same
//! shape, with the patch as the API server's own clients would send it.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::core::Status;
use kube::core::admission::AdmissionResponse;
use serde::Serialize;

/// Everything of the response but the patch, which [`encode`] writes itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a Status,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    audit_annotations: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

/// The review that answers with `response`, as JSON.
///
/// The base64 of the patch is written straight into the answer: it is most of the answer's
/// bytes, its alphabet needs no JSON escaping, and handing it to serde as a string cost an
/// allocation, a zeroed copy and an escaping pass over every byte (a quarter of an injection's
/// review in instruction counts).
pub fn encode(response: &AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    let patch = response.patch.as_deref();
    let patch_len = patch.map_or(0, |p| base64::encoded_len(p.len(), true).unwrap_or(0));
    // Sized once for the patch and the few fields around it, instead of doubling from 128
    // bytes through every size up to the answer's.
    let mut out = Vec::with_capacity(512 + patch_len);
    out.extend_from_slice(br#"{"apiVersion":"#);
    serde_json::to_writer(&mut out, &response.types.api_version)?;
    out.extend_from_slice(br#","kind":"#);
    serde_json::to_writer(&mut out, &response.types.kind)?;
    out.extend_from_slice(br#","response":"#);
    serde_json::to_writer(
        &mut out,
        &Response {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_deref(),
        },
    )?;
    if let Some(patch) = patch {
        // Reopens the response object the serializer closed, to add the patch.
        out.pop();
        out.extend_from_slice(br#","patch":""#);
        let start = out.len();
        out.resize(start + patch_len, 0);
        STANDARD
            .encode_slice(patch, &mut out[start..])
            .map_err(|e| {
                <serde_json::Error as serde::ser::Error>::custom(format!(
                    "base64 of the patch: {e}"
                ))
            })?;
        // A patch is always a JSONPatch (the only type admission.k8s.io/v1 has), whether
        // kube-core's `with_patch` or the webhook put it in.
        out.extend_from_slice(br#"","patchType":"JSONPatch"}"#);
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use kube::core::DynamicObject;
    use kube::core::admission::{AdmissionRequest, AdmissionReview};
    use serde_json::{Value, json};

    use super::*;

    fn request() -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {}}
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    /// Everything but the patch is byte for byte what kube-core writes.
    fn kube_core(response: &AdmissionResponse) -> Value {
        serde_json::to_value(response.clone().into_review()).unwrap()
    }

    #[test]
    fn an_answer_without_a_patch_is_what_kube_core_writes() {
        let allow = AdmissionResponse::from(&request());
        let deny = allow.clone().deny("no");
        let mut warned = allow.clone();
        warned.warnings = Some(vec!["careful".into()]);
        for response in [allow, deny, warned] {
            let ours: Value = serde_json::from_slice(&encode(&response).unwrap()).unwrap();
            assert_eq!(ours, kube_core(&response));
        }
    }

    #[test]
    fn the_patch_is_base64_and_decodes_to_the_same_bytes() {
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}
        ]))
        .unwrap();
        let mut response = AdmissionResponse::from(&request())
            .with_patch(patch)
            .unwrap();
        // The fields written after the patch's are kept too.
        response.warnings = Some(vec!["careful".into()]);
        response
            .audit_annotations
            .insert("credvend.io/binding".into(), "s3".into());
        let ours: Value = serde_json::from_slice(&encode(&response).unwrap()).unwrap();
        let theirs = kube_core(&response);
        let decoded = STANDARD
            .decode(ours["response"]["patch"].as_str().unwrap())
            .unwrap();
        let numbers: Vec<u8> = serde_json::from_value(theirs["response"]["patch"].clone()).unwrap();
        assert_eq!(decoded, numbers);
        let (mut ours, mut theirs) = (ours, theirs);
        ours["response"]["patch"] = Value::Null;
        theirs["response"]["patch"] = Value::Null;
        assert_eq!(ours, theirs);
    }
}
