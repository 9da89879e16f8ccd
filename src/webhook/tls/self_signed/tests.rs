//! The self-signed mode's Kubernetes conversation, against a mocked API server that asserts
//! each request's method, path and body (in the style of kube-rs controller-rs's
//! ApiServerVerifier) and answers like the real one.

use std::time::Duration as StdDuration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
use kube::client::Body;
use serde_json::{Value, json};
use time::Duration;
use time::macros::datetime;
use tower_test::mock;

use super::*;
use crate::webhook::tls::DEFAULT_CHECK_INTERVAL;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);
const SECRET_PATH: &str = "/api/v1/namespaces/credvend/secrets/credvend-webhook-tls";
const SECRETS_PATH: &str = "/api/v1/namespaces/credvend/secrets";
const CONFIG_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/credvend";

fn settings() -> TlsSettings {
    TlsSettings {
        namespace: "credvend".into(),
        service_name: "credvend-webhook".into(),
        secret_name: "credvend-webhook-tls".into(),
        webhook_config_name: "credvend".into(),
        extra_sans: vec!["127.0.0.1".into()],
        // Long enough that the timer never fires during a test.
        check_interval: DEFAULT_CHECK_INTERVAL,
        file_poll_interval: StdDuration::from_secs(10),
    }
}

fn manager() -> (Manager, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "credvend");
    (Manager::new(client, settings()), handle)
}

fn fresh(now: OffsetDateTime) -> Material {
    match certs::decide(None, &settings().sans(), now).unwrap() {
        Decision::Replace { material, .. } => material,
        Decision::Keep(_) => panic!("nothing stored, yet kept"),
    }
}

fn secret_json(material: &Material, resource_version: &str) -> Value {
    let mut secret = new_secret(&settings(), material);
    secret.metadata.resource_version = Some(resource_version.into());
    serde_json::to_value(secret).unwrap()
}

fn config_json(bundles: &[Option<&str>]) -> Value {
    let webhooks = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| MutatingWebhook {
            name: format!("hook{i}.credvend.io"),
            client_config: WebhookClientConfig {
                ca_bundle: bundle.map(|b| ByteString(b.as_bytes().to_vec())),
                url: Some("https://127.0.0.1:8443/mutate".into()),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        })
        .collect();
    let mut config = MutatingWebhookConfiguration {
        webhooks: Some(webhooks),
        ..MutatingWebhookConfiguration::default()
    };
    config.metadata.name = Some("credvend".into());
    config.metadata.resource_version = Some("42".into());
    serde_json::to_value(config).unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

/// Waits for the next request, asserts its method and path, and returns its JSON body (Null
/// when empty) with the responder.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Value, mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(StdDuration::from_secs(10), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} arrived"))
        .expect("the client was dropped");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    if method == Method::PATCH {
        assert_eq!(
            request.headers()[http::header::CONTENT_TYPE],
            "application/json-patch+json"
        );
    }
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, send)
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    let response = Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send.send_response(response);
}

async fn not_found(handle: &mut Handle, path: &str) {
    let (_, send) = expect(handle, Method::GET, path).await;
    respond(
        send,
        StatusCode::NOT_FOUND,
        &status(404, "NotFound", "not found"),
    );
}

fn data(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let encoded = secret["data"][key].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

fn b64(s: &str) -> String {
    BASE64.encode(s)
}

#[tokio::test]
async fn a_missing_secret_is_created_and_every_ca_bundle_set() {
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        not_found(&mut handle, SECRET_PATH).await;
        let (secret, send) = expect(&mut handle, Method::POST, SECRETS_PATH).await;
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["name"], "credvend-webhook-tls");
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "credvend"
        );
        for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
            assert!(data(&secret, key).starts_with("-----BEGIN"), "{key}");
        }
        respond(send, StatusCode::CREATED, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config_json(&[None, Some("stale")]));
        let (patch, send) = expect(&mut handle, Method::PATCH, CONFIG_PATH).await;
        let bundle = b64(&data(&secret, "ca.crt"));
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "hook0.credvend.io"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
                {"op": "test", "path": "/webhooks/1/name", "value": "hook1.credvend.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
            ])
        );
        respond(send, StatusCode::OK, &config_json(&[None, None]));
        secret
    });
    let material = manager.prepare(NOW).await.unwrap();
    let written = api.await.unwrap();
    assert_eq!(material.cert, data(&written, "tls.crt"));
    assert_eq!(material.ca_bundle, data(&written, "ca.crt"));
}

#[tokio::test]
async fn a_valid_secret_is_used_as_is_and_a_matching_ca_bundle_left_alone() {
    let stored = fresh(NOW);
    let secret = secret_json(&stored, "7");
    let config = config_json(&[Some(&stored.ca_bundle)]);
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config);
        handle
    });
    let material = manager.prepare(NOW + Duration::days(30)).await.unwrap();
    let mut handle = api.await.unwrap();
    assert!(material.same_as(&stored));
    // Nothing else was sent: no create, no replace, no patch.
    drop(manager);
    assert!(handle.next_request().await.is_none());
}

#[tokio::test]
async fn a_valid_secret_with_a_stale_ca_bundle_patches_only_the_webhooks_that_differ() {
    let stored = fresh(NOW);
    let secret = secret_json(&stored, "7");
    let config = config_json(&[Some(&stored.ca_bundle), Some("old CA")]);
    let bundle = b64(&stored.ca_bundle);
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config);
        let (patch, send) = expect(&mut handle, Method::PATCH, CONFIG_PATH).await;
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "hook1.credvend.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
            ])
        );
        respond(send, StatusCode::OK, &config);
    });
    manager.prepare(NOW).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn losing_the_create_race_adopts_what_the_other_replica_wrote() {
    let theirs = fresh(NOW);
    let their_secret = secret_json(&theirs, "8");
    let config = config_json(&[Some(&theirs.ca_bundle)]);
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        not_found(&mut handle, SECRET_PATH).await;
        let (_, send) = expect(&mut handle, Method::POST, SECRETS_PATH).await;
        respond(
            send,
            StatusCode::CONFLICT,
            &status(
                409,
                "AlreadyExists",
                "secrets \"credvend-webhook-tls\" already exists",
            ),
        );
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &their_secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config);
    });
    let material = manager.prepare(NOW).await.unwrap();
    api.await.unwrap();
    assert!(material.same_as(&theirs));
}

#[tokio::test]
async fn a_due_certificate_is_replaced_with_the_read_resource_version_and_a_conflict_rereads() {
    let stored = fresh(NOW);
    let later = NOW + Duration::days(61);
    let ours_secret = secret_json(&stored, "7");
    // What the other replica renewed to in the meantime (same CA, new leaf).
    let ca = certs::Ca::from_pem(&stored.ca_bundle, stored.ca_key.expose_secret()).unwrap();
    let leaf = certs::issue_leaf(&ca, &settings().sans(), later).unwrap();
    let theirs = Material {
        ca_bundle: stored.ca_bundle.clone(),
        ca_key: stored.ca_key.clone(),
        cert: leaf.cert_pem,
        key: leaf.key_pem,
    };
    let their_secret = secret_json(&theirs, "9");
    let config = config_json(&[Some(&stored.ca_bundle)]);
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &ours_secret);
        let (replacement, send) = expect(&mut handle, Method::PUT, SECRET_PATH).await;
        assert_eq!(replacement["metadata"]["resourceVersion"], "7");
        assert_eq!(data(&replacement, "ca.crt"), data(&ours_secret, "ca.crt"));
        assert_eq!(data(&replacement, "ca.key"), data(&ours_secret, "ca.key"));
        assert_ne!(data(&replacement, "tls.crt"), data(&ours_secret, "tls.crt"));
        respond(
            send,
            StatusCode::CONFLICT,
            &status(409, "Conflict", "the object has been modified"),
        );
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &their_secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config);
    });
    let material = manager.prepare(later).await.unwrap();
    api.await.unwrap();
    assert!(material.same_as(&theirs));
}

#[tokio::test]
async fn a_forbidden_write_names_the_permission_the_role_lacks() {
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        not_found(&mut handle, SECRET_PATH).await;
        let (_, send) = expect(&mut handle, Method::POST, SECRETS_PATH).await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", "secrets is forbidden"),
        );
    });
    let err = manager.prepare(NOW).await.unwrap_err();
    api.await.unwrap();
    assert_eq!(
        err.to_string(),
        "cannot write Secret credvend/credvend-webhook-tls: forbidden; the operator's Role must allow create/update on secrets named credvend-webhook-tls"
    );
}

#[tokio::test]
async fn a_forbidden_patch_names_the_permission_the_cluster_role_lacks() {
    let stored = fresh(NOW);
    let secret = secret_json(&stored, "7");
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", "forbidden"),
        );
    });
    let err = manager.prepare(NOW).await.unwrap_err();
    api.await.unwrap();
    assert_eq!(
        err.to_string(),
        "cannot update the caBundle of MutatingWebhookConfiguration credvend: forbidden; the operator's ClusterRole must allow get, list, watch and patch on mutatingwebhookconfigurations named credvend"
    );
}

#[tokio::test]
async fn a_missing_webhook_configuration_does_not_stop_startup() {
    let stored = fresh(NOW);
    let secret = secret_json(&stored, "7");
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        not_found(&mut handle, CONFIG_PATH).await;
    });
    manager.prepare(NOW).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_reordered_configuration_is_read_again_before_patching() {
    let stored = fresh(NOW);
    let secret = secret_json(&stored, "7");
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config_json(&[None]));
        let (_, send) = expect(&mut handle, Method::PATCH, CONFIG_PATH).await;
        respond(
            send,
            StatusCode::UNPROCESSABLE_ENTITY,
            &status(422, "Invalid", "testing value /webhooks/0/name failed"),
        );
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config_json(&[None]));
        let (_, send) = expect(&mut handle, Method::PATCH, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config_json(&[None]));
    });
    manager.prepare(NOW).await.unwrap();
    api.await.unwrap();
}

#[tokio::test]
async fn a_periodic_check_serves_what_another_replica_renewed() {
    let stored = fresh(NOW);
    let later = NOW + Duration::days(61);
    let ca = certs::Ca::from_pem(&stored.ca_bundle, stored.ca_key.expose_secret()).unwrap();
    let leaf = certs::issue_leaf(&ca, &settings().sans(), later).unwrap();
    let renewed = Material {
        ca_bundle: stored.ca_bundle.clone(),
        ca_key: stored.ca_key.clone(),
        cert: leaf.cert_pem,
        key: leaf.key_pem,
    };
    let secret = secret_json(&renewed, "9");
    let config = config_json(&[Some(&stored.ca_bundle)]);
    let (manager, mut handle) = manager();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
        respond(send, StatusCode::OK, &config);
    });
    let (served_key, _) = manager.serving(&stored).unwrap();
    let resolver = CertResolver::new(Arc::new(served_key));
    let registry = prometheus::Registry::new();
    let metrics = TlsMetrics::register(&registry).unwrap();
    let mut served = Material {
        ca_bundle: stored.ca_bundle.clone(),
        ca_key: stored.ca_key.clone(),
        cert: stored.cert.clone(),
        key: stored.key.clone(),
    };
    manager
        .check(later, &resolver, &metrics, &mut served)
        .await
        .unwrap();
    api.await.unwrap();
    assert!(served.same_as(&renewed));
    let (renewed_key, validity) = manager.serving(&renewed).unwrap();
    assert_eq!(resolver.current().cert, renewed_key.cert);
    assert_eq!(
        metrics.expiration.get(),
        validity.not_after.unix_timestamp() as f64
    );
}

#[test]
fn no_patch_when_every_webhook_already_trusts_the_bundle() {
    let config: MutatingWebhookConfiguration =
        serde_json::from_value(config_json(&[Some("CA"), Some("CA")])).unwrap();
    assert!(ca_bundle_patch(&config, "CA").is_none());
    let empty = MutatingWebhookConfiguration::default();
    assert!(ca_bundle_patch(&empty, "CA").is_none());
}

#[test]
fn the_patch_sets_every_differing_ca_bundle_and_nothing_else() {
    let before = config_json(&[None, Some("CA"), Some("old")]);
    let config: MutatingWebhookConfiguration = serde_json::from_value(before.clone()).unwrap();
    let patch = ca_bundle_patch(&config, "CA").unwrap();
    let mut after = before.clone();
    json_patch::patch(&mut after, &patch).unwrap();
    let expected = config_json(&[Some("CA"), Some("CA"), Some("CA")]);
    assert_eq!(after, expected);
    // A reordered list fails the guard instead of patching the wrong webhook.
    let mut reordered = config_json(&[Some("old"), None, Some("CA")]);
    reordered["webhooks"][0]["name"] = json!("hook2.credvend.io");
    assert!(json_patch::patch(&mut reordered, &patch).is_err());
}

#[tokio::test]
async fn a_reset_ca_bundle_is_restored_from_the_secret_while_running() {
    // `run` reads the real clock.
    let stored = fresh(OffsetDateTime::now_utc());
    let secret = secret_json(&stored, "7");
    let bundle = b64(&stored.ca_bundle);
    let (manager, mut handle) = manager();
    let (served_key, _) = manager.serving(&stored).unwrap();
    let resolver = Arc::new(CertResolver::new(Arc::new(served_key)));
    let registry = prometheus::Registry::new();
    let metrics = TlsMetrics::register(&registry).unwrap();
    let served = Material {
        ca_bundle: stored.ca_bundle.clone(),
        ca_key: stored.ca_key.clone(),
        cert: stored.cert.clone(),
        key: stored.key.clone(),
    };
    let task = tokio::spawn(manager.run(resolver, metrics, served));

    // The watch lists the configuration, as a `helm upgrade` left it: without a caBundle.
    let list_path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.method(), Method::GET);
    assert_eq!(request.uri().path(), list_path);
    assert!(
        request
            .uri()
            .query()
            .unwrap()
            .contains("fieldSelector=metadata.name%3Dcredvend"),
        "{}",
        request.uri()
    );
    let list = json!({
        "kind": "MutatingWebhookConfigurationList",
        "apiVersion": "admissionregistration.k8s.io/v1",
        "metadata": {"resourceVersion": "43"},
        "items": [config_json(&[None])],
    });
    respond(send, StatusCode::OK, &list);

    // A round from the Secret follows and puts the caBundle back.
    let (_, send) = expect(&mut handle, Method::GET, SECRET_PATH).await;
    respond(send, StatusCode::OK, &secret);
    let (_, send) = expect(&mut handle, Method::GET, CONFIG_PATH).await;
    respond(send, StatusCode::OK, &config_json(&[None]));
    let (patch, send) = expect(&mut handle, Method::PATCH, CONFIG_PATH).await;
    assert_eq!(patch[1]["value"], json!(bundle));
    respond(
        send,
        StatusCode::OK,
        &config_json(&[Some(&stored.ca_bundle)]),
    );
    task.abort();
}
