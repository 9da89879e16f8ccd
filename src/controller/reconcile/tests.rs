//! Reconcile against a mocked API server (tower-test), in the `ApiServerVerifier` style: every
//! request the reconciler makes is checked for method, URI and body, in order, and a test ends
//! by proving that no further request was made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::aws::StsEndpointAllowlist;
use crate::controller::ControllerMetrics;
use crate::inject::LABEL_BINDING;

use super::*;
use crate::controller::Stores;
use crate::controller::status::desired_status;
use crate::crd::AWSRoleBindingSpec;

/// What the controller observed: `pods` pods, no other binding of the service account.
fn observed(pods: i32) -> Observed<'static> {
    static AWS: std::sync::LazyLock<StsEndpointAllowlist> =
        std::sync::LazyLock::new(StsEndpointAllowlist::aws);
    Observed {
        pods,
        same_service_account: &[],
        allowed: &AWS,
    }
}

const NS: &str = "team-a";
const NAME: &str = "s3";
/// A mocked API server never makes a test wait; this only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// The next request, which must have this method and URI; returns its JSON body and the
    /// means to answer it.
    async fn expect(
        &mut self,
        method: Method,
        uri: &str,
    ) -> (Value, mock::SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(DEADLINE, self.0.next_request())
            .await
            .expect("the reconciler made no further request")
            .expect("the client was dropped before the expected request");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().to_string(), uri);
        let body = request.into_body().collect_bytes().await.unwrap();
        (serde_json::from_slice(&body).unwrap(), send)
    }

    /// An Event created through events.k8s.io/v1 in the binding's namespace, echoed back.
    async fn event_created(&mut self) -> Value {
        let (event, send) = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
            )
            .await;
        send.send_response(json_response(StatusCode::CREATED, &event));
        event
    }

    /// The status applied with server-side apply, answered with the binding carrying it.
    async fn status_applied(&mut self, binding: &AWSRoleBinding) -> Value {
        let (patch, send) = self.status_patch().await;
        let mut stored = binding.clone();
        stored.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
        send.send_response(json_response(StatusCode::OK, &stored));
        patch
    }

    async fn status_patch(&mut self) -> (Value, mock::SendResponse<Response<Body>>) {
        self.expect(
            Method::PATCH,
            &format!(
                "/apis/credvend.io/v1alpha1/namespaces/{NS}/awsrolebindings/{NAME}/status?&force=true&fieldManager=credvend-operator"
            ),
        )
        .await
    }

    /// Proves there was no other request: once the reconciler's client is gone, the mock
    /// reports the end of requests instead of one more.
    async fn no_more_requests(mut self) {
        let next = tokio::time::timeout(DEADLINE, self.0.next_request())
            .await
            .expect("the client was not dropped");
        assert!(next.is_none(), "unexpected request {:?}", next.map(|r| r.0));
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn forbidden() -> Response<Body> {
    json_response(
        StatusCode::FORBIDDEN,
        &json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "forbidden", "reason": "Forbidden", "code": 403
        }),
    )
}

struct Fixture {
    ctx: Arc<Context>,
    api: ApiServerVerifier,
    bindings: Writer<AWSRoleBinding>,
    leading: watch::Sender<bool>,
}

impl Fixture {
    fn new() -> Self {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (stores, bindings) = Stores::for_tests();
        let (leading, leading_rx) = watch::channel(true);
        let ctx = Context::new(
            client.clone(),
            Recorder::new(
                client,
                Reporter {
                    controller: "credvend-operator".into(),
                    instance: Some("test".into()),
                },
            ),
            ControllerMetrics::unregistered(),
            stores,
            leading_rx,
            StsEndpointAllowlist::aws(),
        );
        Fixture {
            ctx: Arc::new(ctx),
            api: ApiServerVerifier(handle),
            bindings,
            leading,
        }
    }

    fn add_binding(&mut self, binding: &AWSRoleBinding) {
        self.bindings
            .apply_watcher_event(&watcher::Event::Apply(binding.clone()));
    }

    fn add_pod(&mut self, namespace: &str, name: &str, binding: &str, deleting: bool) {
        let pod = PartialObjectMeta::<Pod> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some([(LABEL_BINDING.to_owned(), binding.to_owned())].into()),
                deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        };
        self.ctx.stores.pods.apply(&watcher::Event::Apply(pod));
    }

    /// Starts a reconcile of `binding`; the test answers its requests, then awaits it.
    fn reconcile(&self, binding: &AWSRoleBinding) -> JoinHandle<Result<Action, Error>> {
        tokio::spawn(reconcile(Arc::new(binding.clone()), self.ctx.clone()))
    }

    fn counter(&self, metric: &str, label: &str) -> u64 {
        let vec = match metric {
            "reconciles" => &self.ctx.metrics.reconciles,
            _ => &self.ctx.metrics.reconcile_errors,
        };
        vec.with_label_values(&[label]).get()
    }

    /// Drops every handle on the client, so [`ApiServerVerifier::no_more_requests`] can tell.
    async fn finish(self) {
        let Fixture { ctx, api, .. } = self;
        drop(ctx);
        api.no_more_requests().await;
    }
}

fn binding(spec: Value, generation: i64) -> AWSRoleBinding {
    AWSRoleBinding {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NS.into()),
            generation: Some(generation),
            ..ObjectMeta::default()
        },
        spec: serde_json::from_value::<AWSRoleBindingSpec>(spec).unwrap(),
        status: None,
    }
}

fn valid() -> AWSRoleBinding {
    binding(
        json!({"serviceAccountName": "app", "roleArn": "arn:aws:iam::111122223333:role/s3-reader"}),
        1,
    )
}

#[tokio::test]
async fn new_valid_binding_gets_a_ready_event_and_its_status_applied() {
    let mut f = Fixture::new();
    let b = valid();
    f.add_binding(&b);
    f.add_pod(NS, "p1", NAME, false);
    f.add_pod(NS, "p2", NAME, false);
    f.add_pod(NS, "p3", NAME, true); // being deleted
    f.add_pod(NS, "p4", "other", false);
    f.add_pod("team-b", "p5", NAME, false);

    let running = f.reconcile(&b);
    let event = f.api.event_created().await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "Ready");
    assert_eq!(event["action"], "Validate");
    assert_eq!(event["reportingController"], "credvend-operator");
    assert_eq!(event["regarding"]["kind"], "AWSRoleBinding");
    assert_eq!(event["regarding"]["name"], NAME);
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("arn:aws:iam::111122223333:role/s3-reader")
    );

    let patch = f.api.status_applied(&b).await;
    assert_eq!(patch["apiVersion"], "credvend.io/v1alpha1");
    assert_eq!(patch["kind"], "AWSRoleBinding");
    assert_eq!(
        patch.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["apiVersion", "kind", "status"],
        "only the status is applied"
    );
    let status = &patch["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["pods"], 2);
    let ready = &status["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "Valid");
    assert_eq!(ready["observedGeneration"], 1);
    assert!(ready["lastTransitionTime"].is_string());

    let action = running.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(REQUEUE_AFTER));
    assert_eq!(f.counter("reconciles", "success"), 1);
    f.finish().await;
}

#[tokio::test]
async fn invalid_binding_gets_ready_false_with_the_errors_reason_and_message() {
    let mut f = Fixture::new();
    let b = binding(
        json!({"serviceAccountName": "app", "roleArn": "arn:aws:iam::1234:role/x"}),
        4,
    );
    f.add_binding(&b);

    let running = f.reconcile(&b);
    let event = f.api.event_created().await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidRoleArn");
    let patch = f.api.status_applied(&b).await;
    let ready = &patch["status"]["conditions"][0];
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidRoleArn");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("the account id must be 12 digits")
    );
    assert_eq!(patch["status"]["observedGeneration"], 4);
    assert_eq!(patch["status"]["pods"], 0);
    running.await.unwrap().unwrap();
    f.finish().await;
}

#[tokio::test]
async fn unchanged_status_makes_no_request() {
    let mut f = Fixture::new();
    let mut b = valid();
    f.add_pod(NS, "p1", NAME, false);
    let earlier = Time(Timestamp::from_second(1_700_000_000).unwrap());
    b.status = Some(desired_status(&b, &observed(1), None, earlier));
    f.add_binding(&b);

    let mut running = f.reconcile(&b);
    let action = tokio::select! {
        done = &mut running => done.unwrap().unwrap(),
        request = f.api.0.next_request() => {
            panic!("unexpected request {:?}", request.map(|r| r.0))
        }
    };
    assert_eq!(action, Action::requeue(REQUEUE_AFTER));
    assert_eq!(f.counter("reconciles", "success"), 1);
    assert_eq!(
        f.ctx.metrics.bindings.with_label_values(&["true"]).get(),
        1,
        "the gauge follows the cache"
    );
    f.finish().await;
}

#[tokio::test]
async fn changed_pod_count_is_applied_without_an_event() {
    let mut f = Fixture::new();
    let mut b = valid();
    let earlier = Time(Timestamp::from_second(1_700_000_000).unwrap());
    b.status = Some(desired_status(&b, &observed(0), None, earlier.clone()));
    f.add_pod(NS, "p1", NAME, false);

    let running = f.reconcile(&b);
    let patch = f.api.status_applied(&b).await;
    assert_eq!(patch["status"]["pods"], 1);
    // The condition did not change, so neither did its transition time.
    let kept: Time =
        serde_json::from_value(patch["status"]["conditions"][0]["lastTransitionTime"].clone())
            .unwrap();
    assert_eq!(kept, earlier);
    running.await.unwrap().unwrap();
    f.finish().await;
}

#[tokio::test]
async fn status_is_written_even_when_the_event_is_refused() {
    let mut f = Fixture::new();
    let b = valid();
    let running = f.reconcile(&b);
    let (_, send) = f
        .api
        .expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        )
        .await;
    send.send_response(forbidden());
    f.api.status_applied(&b).await;
    running.await.unwrap().unwrap();
    assert_eq!(f.counter("reconcile_errors", "publish_event"), 1);
    assert_eq!(f.counter("reconciles", "success"), 1);
    f.finish().await;
}

#[tokio::test]
async fn failed_status_patch_is_an_error_counted_by_reason_and_retried_with_backoff() {
    let mut f = Fixture::new();
    let mut b = valid();
    b.status = Some(desired_status(
        &b,
        &observed(0),
        None,
        Time(Timestamp::UNIX_EPOCH),
    ));
    b.metadata.generation = Some(2); // spec changed: status must be rewritten, no Event

    let running = f.reconcile(&b);
    let (_, send) = f.api.status_patch().await;
    send.send_response(forbidden());
    let error = running.await.unwrap().unwrap_err();
    assert_eq!(error.metric_label(), "patch_status");
    assert!(error.to_string().contains("team-a/s3"), "{error}");

    let b = Arc::new(b);
    let delays: Vec<_> = (0..3)
        .map(|_| error_policy(b.clone(), &error, f.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert_eq!(f.counter("reconcile_errors", "patch_status"), 3);
    assert_eq!(f.counter("reconciles", "error"), 3);

    // A success resets the backoff.
    let running = f.reconcile(&b);
    f.api.status_applied(&b).await;
    running.await.unwrap().unwrap();
    assert_eq!(
        error_policy(b.clone(), &error, f.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    f.finish().await;
}

#[test]
fn retry_delay_doubles_up_to_the_requeue_interval() {
    let cases = [(1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (40, 300)];
    for (failures, seconds) in cases {
        assert_eq!(
            retry_delay(failures),
            Duration::from_secs(seconds),
            "{failures}"
        );
    }
}

#[tokio::test]
async fn a_follower_writes_nothing() {
    let mut f = Fixture::new();
    f.leading.send_replace(false);
    let b = valid();
    f.add_binding(&b);
    let mut running = f.reconcile(&b);
    let action = tokio::select! {
        done = &mut running => done.unwrap().unwrap(),
        request = f.api.0.next_request() => {
            panic!("unexpected request {:?}", request.map(|r| r.0))
        }
    };
    assert_eq!(action, Action::await_change());
    f.finish().await;
}

#[tokio::test]
async fn a_second_binding_for_the_service_account_is_named_in_the_status() {
    let mut f = Fixture::new();
    let b = valid();
    let mut other = valid();
    other.metadata.name = Some("dynamo".into());
    f.add_binding(&b);
    f.add_binding(&other);
    let running = f.reconcile(&b);
    let event = f.api.event_created().await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "AmbiguousServiceAccount");
    let patch = f.api.status_applied(&b).await;
    let ready = &patch["status"]["conditions"][0];
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "AmbiguousServiceAccount");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("AWSRoleBinding dynamo also names service account \"app\""),
        "{message}"
    );
    running.await.unwrap().unwrap();
    f.finish().await;
}
