//! Proves the test control plane (tests/support/k8s.rs) is a real Kubernetes API server in the
//! ways the rest of the suite depends on: it serves custom resources, signs service-account
//! tokens through TokenRequest, and calls mutating webhooks registered with a `url:` client
//! config, storing their patches. If one of these fails, the product's integration tests
//! cannot be trusted either.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::wait::{await_condition, conditions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use support::k8s::{self, ControlPlane};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DEADLINE: Duration = Duration::from_secs(30);
const MUTATED_ANNOTATION: &str = "credvend.test/mutated";

#[tokio::test]
async fn control_plane_serves_custom_resources_and_leaves_nothing_behind() -> anyhow::Result<()> {
    // A private control plane, because this test shuts it down.
    let control_plane = ControlPlane::start().await?;
    eprintln!(
        "private control plane started in {:.1}s",
        control_plane.startup_time().as_secs_f64()
    );
    let client = control_plane.client()?;

    // The version ldflags of scripts/k8s-bins.sh reach /version, which clients use for feature
    // detection; it must name the release pinned in tests/k8s/go.mod.
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, pinned_kubernetes_version()?);

    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.test.credvend.io" },
        "spec": {
            "group": "test.credvend.io",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer" } }
                    }}
                }}
            }]
        }
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    tokio::time::timeout(
        DEADLINE,
        await_condition(
            crds,
            "widgets.test.credvend.io",
            conditions::is_crd_established(),
        ),
    )
    .await
    .context("CRD not established in time")??;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.credvend.io", "v1", "Widget"),
        "widgets",
    );
    let widgets = Api::<DynamicObject>::namespaced_with(client, "default", &resource);
    let widget = DynamicObject::new("small", &resource).data(json!({ "spec": { "size": 3 } }));
    widgets.create(&PostParams::default(), &widget).await?;
    let stored = widgets.get("small").await?;
    assert_eq!(stored.data["spec"]["size"], json!(3));
    assert!(
        stored.metadata.uid.is_some(),
        "the API server assigns a uid"
    );

    let pids = control_plane.pids();
    let dir = control_plane.dir().to_owned();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(pids.iter().all(|pid| k8s::process_exists(*pid)));
    control_plane.shutdown()?;
    for pid in pids {
        assert!(!k8s::process_exists(pid), "process {pid} still exists");
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

#[tokio::test]
async fn token_request_returns_a_signed_jwt_for_the_service_account_and_audience()
-> anyhow::Result<()> {
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("token");
    k8s::create_namespace(&client, &namespace).await?;
    k8s::create_service_account(&client, &namespace, "app").await?;

    let before = unix_now();
    let token = k8s::request_token(
        &client,
        &namespace,
        "app",
        "sts.amazonaws.com",
        Duration::from_secs(3600),
    )
    .await?;
    let after = unix_now();

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {token}");
    let header = decode_segment(parts[0])?;
    assert_eq!(header["alg"], json!("ES256"), "signed with the P-256 key");
    assert!(header["kid"].is_string(), "names its key: {header}");
    let claims = decode_segment(parts[1])?;
    assert_eq!(claims["iss"], json!(control_plane.issuer()));
    assert_eq!(
        claims["sub"],
        json!(format!("system:serviceaccount:{namespace}:app"))
    );
    assert_eq!(claims["aud"], json!(["sts.amazonaws.com"]));
    let iat = claims["iat"].as_i64().context("iat")?;
    let exp = claims["exp"].as_i64().context("exp")?;
    assert!(
        (before - 1..=after + 1).contains(&iat),
        "iat {iat} not in [{before}, {after}]"
    );
    assert_eq!(exp - iat, 3600, "expires after the requested hour");

    // The API server verifies its own signature: a forged or unsigned token would not pass.
    let review = Api::<TokenReview>::all(client)
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec!["sts.amazonaws.com".to_owned()]),
                },
                ..TokenReview::default()
            },
        )
        .await?;
    let status = review.status.context("TokenReview has no status")?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.and_then(|user| user.username),
        Some(format!("system:serviceaccount:{namespace}:app"))
    );
    Ok(())
}

#[tokio::test]
async fn mutating_webhook_with_url_config_patches_created_pods() -> anyhow::Result<()> {
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("webhook");
    k8s::create_namespace(&client, &namespace).await?;

    let calls = Arc::new(AtomicUsize::new(0));
    let (address, ca_pem) = start_webhook_server(calls.clone()).await?;

    // Scoped to this test's namespace: other tests share the control plane.
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let webhook_name = k8s::unique_name("credvend-test");
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": webhook_name },
        "webhooks": [{
            "name": "pods.credvend.test",
            "clientConfig": {
                "url": format!("https://{address}/mutate"),
                "caBundle": BASE64.encode(&ca_pem),
            },
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
            }],
            "namespaceSelector": {
                "matchLabels": { "kubernetes.io/metadata.name": namespace }
            },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }]
    }))?;
    webhooks
        .create(&PostParams::default(), &configuration)
        .await?;

    let pods = Api::<Pod>::namespaced(client, &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "app", "annotations": { "team": "a" } },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] }
    }))?;

    // The API server learns about new webhook configurations through a watch, so the first
    // pods after the create may be admitted without it; dry runs probe until it is in effect.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + DEADLINE;
    while !is_mutated(&pods.create(&dry_run, &pod).await?) {
        ensure!(
            Instant::now() < deadline,
            "webhook not in effect after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let calls_before = calls.load(Ordering::SeqCst);
    pods.create(&PostParams::default(), &pod).await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_before + 1,
        "the webhook is called once for the pod's creation"
    );
    let stored = pods.get("app").await?;
    assert!(
        is_mutated(&stored),
        "patch not stored: {:?}",
        stored.metadata
    );
    assert_eq!(
        stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("team")),
        Some(&"a".to_owned()),
        "the patch adds without replacing"
    );

    webhooks
        .delete(&webhook_name, &DeleteParams::default())
        .await?;
    Ok(())
}

fn is_mutated(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(MUTATED_ANNOTATION))
        .is_some_and(|value| value == "true")
}

/// Starts an HTTPS admission webhook on 127.0.0.1 that adds [`MUTATED_ANNOTATION`] to every
/// object and counts its calls. Returns its address and the PEM CA for the `caBundle`.
async fn start_webhook_server(calls: Arc<AtomicUsize>) -> anyhow::Result<(SocketAddr, String)> {
    k8s::install_crypto_provider();
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&leaf_key, &ca)?;

    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request| mutate(request, calls.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((address, ca_cert.pem()))
}

async fn mutate(
    request: Request<hyper::body::Incoming>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let review = match admission_review(request, &calls).await {
        Ok(review) => review,
        Err(error) => AdmissionResponse::invalid(format!("{error:#}")).into_review(),
    };
    let body = serde_json::to_vec(&review).unwrap_or_default();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

async fn admission_review(
    request: Request<hyper::body::Incoming>,
    calls: &AtomicUsize,
) -> anyhow::Result<AdmissionReview<DynamicObject>> {
    let body = request.into_body().collect().await?.to_bytes();
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body)?;
    let request: AdmissionRequest<DynamicObject> = review.try_into()?;
    calls.fetch_add(1, Ordering::SeqCst);
    // The pod is created with annotations, so adding one key is a valid JSON-patch `add`.
    let patch: json_patch::Patch = serde_json::from_value(json!([{
        "op": "add",
        "path": format!("/metadata/annotations/{}", MUTATED_ANNOTATION.replace('/', "~1")),
        "value": "true",
    }]))?;
    Ok(AdmissionResponse::from(&request)
        .with_patch(patch)?
        .into_review())
}

/// The `k8s.io/kubernetes` version required by tests/k8s/go.mod, e.g. `v1.37.2`.
fn pinned_kubernetes_version() -> anyhow::Result<String> {
    let go_mod = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s/go.mod"))?;
    go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/kubernetes "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .context("no k8s.io/kubernetes requirement in tests/k8s/go.mod")
}

fn decode_segment(segment: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment)?)?)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}
