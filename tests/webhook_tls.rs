//! The webhook's self-signed TLS against a real kube-apiserver: the Secret it writes, the
//! caBundle it patches, that the API server really trusts what it serves (a pod creation goes
//! through the webhook with `failurePolicy: Fail`), that restarts and concurrent replicas keep
//! the CA, and that a caBundle reset (as by `helm upgrade`) is repaired while running.
// Helpers panic with a message when a step fails; in a test that is their error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use credvend::webhook::tls::{
    self, CertResolver, DEFAULT_CHECK_INTERVAL, TlsMetrics, TlsMode, TlsSettings,
};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::k8s;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DEADLINE: Duration = Duration::from_secs(30);
const SECRET: &str = "credvend-webhook-tls";

fn settings(namespace: &str, config: &str) -> TlsSettings {
    TlsSettings {
        namespace: namespace.to_owned(),
        service_name: "credvend-webhook".to_owned(),
        secret_name: SECRET.to_owned(),
        webhook_config_name: config.to_owned(),
        extra_sans: vec!["127.0.0.1".to_owned()],
        check_interval: DEFAULT_CHECK_INTERVAL,
        file_poll_interval: Duration::from_secs(10),
    }
}

fn metrics() -> TlsMetrics {
    TlsMetrics::register(&prometheus::Registry::new()).unwrap()
}

/// A webhook configuration without caBundle, scoped to `namespace` (the control plane is shared
/// with other tests), calling `address` and failing the request if it cannot.
async fn create_webhook_config(
    client: &Client,
    name: &str,
    namespace: &str,
    address: SocketAddr,
) -> anyhow::Result<()> {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [{
            "name": "pods.credvend.io",
            "clientConfig": { "url": format!("https://{address}/mutate") },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"],
            }],
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }]
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .context("creating the MutatingWebhookConfiguration")?;
    Ok(())
}

/// Serves `resolver` on `listener`, allowing every AdmissionReview and counting them.
fn serve(listener: TcpListener, resolver: Arc<CertResolver>, calls: Arc<AtomicUsize>) {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver).unwrap()));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| allow(request, calls.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn allow(
    request: Request<hyper::body::Incoming>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let review: Value = serde_json::from_slice(&body).unwrap();
    calls.fetch_add(1, Ordering::SeqCst);
    let response = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": { "uid": review["request"]["uid"], "allowed": true },
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&response).unwrap(),
        )))
        .unwrap())
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn ca_bundles(client: &Client, config: &str) -> anyhow::Result<Vec<Option<String>>> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(config)
        .await?;
    Ok(config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .map(|b| String::from_utf8(b.0).unwrap())
        })
        .collect())
}

fn served_pem(resolver: &CertResolver) -> Vec<u8> {
    resolver.current().cert[0].to_vec()
}

fn first_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn create_pod(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] },
    }))?;
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await?)
}

#[tokio::test]
async fn self_signed_tls_is_trusted_by_the_api_server_and_a_restart_keeps_the_ca()
-> anyhow::Result<()> {
    k8s::install_crypto_provider();
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("webhook-tls");
    k8s::create_namespace(&client, &namespace).await?;
    let config = k8s::unique_name("credvend-tls");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    create_webhook_config(&client, &config, &namespace, listener.local_addr()?).await?;

    let metrics = metrics();
    let (resolver, task) = tls::start(
        client.clone(),
        TlsMode::SelfSigned,
        settings(&namespace, &config),
        metrics.clone(),
    )
    .await?;

    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let secret = secrets.get(SECRET).await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: BTreeSet<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        BTreeSet::from(["ca.crt", "ca.key", "tls.crt", "tls.key"].map(String::from))
    );
    let ca = data(&secret, "ca.crt");
    assert_eq!(ca_bundles(&client, &config).await?, vec![Some(ca.clone())]);
    assert_eq!(served_pem(&resolver), first_der(&data(&secret, "tls.crt")));
    assert!(metrics.expiration.get() > 0.0);

    // The API server itself trusts it: with failurePolicy Fail, the pod is only stored if the
    // TLS call to https://127.0.0.1:PORT/mutate succeeded.
    let calls = Arc::new(AtomicUsize::new(0));
    serve(listener, resolver.clone(), calls.clone());
    create_pod(&client, &namespace, "first").await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    task.abort();

    // A restart (or another replica) with the same names reuses everything as is.
    let (again, task) = tls::start(
        client.clone(),
        TlsMode::SelfSigned,
        settings(&namespace, &config),
        metrics.clone(),
    )
    .await?;
    let unchanged = secrets.get(SECRET).await?;
    assert_eq!(
        unchanged.metadata.resource_version,
        secret.metadata.resource_version
    );
    assert_eq!(served_pem(&again), served_pem(&resolver));
    task.abort();

    // A new name forces a new serving certificate, signed by the same CA: caBundle unchanged.
    let mut more = settings(&namespace, &config);
    more.extra_sans.push("localhost".to_owned());
    let (renamed, task) = tls::start(client.clone(), TlsMode::SelfSigned, more, metrics).await?;
    let reissued = secrets.get(SECRET).await?;
    assert_eq!(data(&reissued, "ca.crt"), ca);
    assert_eq!(data(&reissued, "ca.key"), data(&secret, "ca.key"));
    assert_ne!(data(&reissued, "tls.crt"), data(&secret, "tls.crt"));
    assert_eq!(served_pem(&renamed), first_der(&data(&reissued, "tls.crt")));
    assert_eq!(ca_bundles(&client, &config).await?, vec![Some(ca)]);
    task.abort();

    Api::<MutatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn replicas_starting_together_converge_on_one_certificate() -> anyhow::Result<()> {
    k8s::install_crypto_provider();
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("webhook-tls-race");
    k8s::create_namespace(&client, &namespace).await?;
    let config = k8s::unique_name("credvend-tls-race");
    create_webhook_config(&client, &config, &namespace, "127.0.0.1:9".parse()?).await?;

    let starts = (0..3).map(|_| {
        tls::start(
            client.clone(),
            TlsMode::SelfSigned,
            settings(&namespace, &config),
            metrics(),
        )
    });
    let started = futures::future::try_join_all(starts).await?;
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get(SECRET)
        .await?;
    for (resolver, task) in &started {
        assert_eq!(served_pem(resolver), first_der(&data(&secret, "tls.crt")));
        task.abort();
    }
    assert_eq!(
        ca_bundles(&client, &config).await?,
        vec![Some(data(&secret, "ca.crt"))]
    );
    Api::<MutatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_ca_bundle_reset_by_an_upgrade_is_restored_while_running() -> anyhow::Result<()> {
    k8s::install_crypto_provider();
    let control_plane = k8s::shared().await?;
    let client = control_plane.client()?;
    let namespace = k8s::unique_name("webhook-tls-reset");
    k8s::create_namespace(&client, &namespace).await?;
    let config = k8s::unique_name("credvend-tls-reset");
    create_webhook_config(&client, &config, &namespace, "127.0.0.1:9".parse()?).await?;
    let (_resolver, task) = tls::start(
        client.clone(),
        TlsMode::SelfSigned,
        settings(&namespace, &config),
        metrics(),
    )
    .await?;
    let expected = ca_bundles(&client, &config).await?;
    ensure!(expected[0].is_some(), "caBundle was not set at start");

    // What `helm upgrade` does to a chart that renders no caBundle.
    let reset = json!([{ "op": "remove", "path": "/webhooks/0/clientConfig/caBundle" }]);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            &config,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(reset)?),
        )
        .await?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let bundles = ca_bundles(&client, &config).await?;
        if bundles == expected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "caBundle not restored: {bundles:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    Api::<MutatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await?;
    Ok(())
}
