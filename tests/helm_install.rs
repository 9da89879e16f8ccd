//! `helm install` for real: the helm CLI installs `charts/credvend` with its default values
//! (plus only what this cluster needs: the imported image, and the API server's address
//! because no kube-proxy programs the `kubernetes` Service) on the test node. The operator runs
//! as pods of its Deployment from the credvend image, behind its Service, with the webhook TLS
//! it manages itself; an annotated pod is injected through it and runs. A rollout of the
//! operator while annotated pods are being created admits every one of them; `helm upgrade`
//! with changed values and `helm uninstall` work.
//!
//! One test, in order, because the steps share one release (two releases in one cluster would
//! both reconcile the same bindings).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use credvend::crd::AWSRoleBinding;
use support::http::eventually;
use support::image;
use support::k8s;
use support::node::Node;
use support::operator::{binding_yaml, wait_binding_ready};
use support::pods::{self, app_report, finished, sdk_pod, wait_pod};

const RELEASE: &str = "credvend";
const NAMESPACE: &str = "credvend-system";

async fn ready_replicas(deployments: &Api<Deployment>, want: i32) {
    eventually(
        &format!("{want} ready operator replicas, rollout done"),
        Duration::from_secs(180),
        || async {
            let d = deployments.get(RELEASE).await.ok()?;
            let generation = d.metadata.generation;
            let s = d.status?;
            (s.observed_generation == generation
                && s.ready_replicas == Some(want)
                && s.updated_replicas == Some(want)
                && s.replicas == Some(want))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_the_operator_as_pods_that_inject_running_pods_through_rollout_upgrade_and_uninstall()
 {
    let node = Node::start().await.expect("the test node starts");
    pods::import_images(&node).unwrap();
    let sts = pods::start_sts(&node).unwrap();
    let client = node.client().unwrap();

    // Install with the chart's defaults.
    let started = Instant::now();
    let values = pods::node_values(&node, sts.pod_endpoint());
    pods::helm(&node, "install", RELEASE, NAMESPACE, &values, &[]).unwrap();
    eprintln!("helm install --wait took {:.1?}", started.elapsed());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    ready_replicas(&deployments, 2).await;
    let operators: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = operators.list(&ListParams::default()).await.unwrap();
    for pod in &list.items {
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some(image::CREDVEND_IMAGE));
    }
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = mwcs.get(RELEASE).await.unwrap();
    let hook = &mwc.webhooks.as_ref().unwrap()[0];
    assert!(hook.client_config.url.is_none(), "no webhook.url mode");
    assert!(
        hook.client_config.service.is_some(),
        "behind the chart's Service"
    );

    // An annotated pod, injected by the operator pods, runs and gets its role.
    let ns = k8s::unique_name("helm");
    k8s::create_namespace(&client, &ns).await.unwrap();
    k8s::create_service_account(&client, &ns, "app")
        .await
        .unwrap();
    let bindings: Api<AWSRoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &binding_yaml("s3-reader", &ns, "app", sts.pod_endpoint()),
        )
        .await
        .unwrap();
    wait_binding_ready(&bindings, "s3-reader", 0).await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods::wait_webhook(&pods_api, "app").await;
    pods_api
        .create(
            &PostParams::default(),
            &sdk_pod("web-0", "app", sts.pod_endpoint(), 1, 0, json!({})),
        )
        .await
        .unwrap();
    let phase = wait_pod(&pods_api, "web-0", "end", &node, finished).await;
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        pods::diagnostics(&pods_api, "web-0").await
    );
    let report = app_report(&pods_api, "web-0").await;
    assert_eq!(
        report["arn"],
        format!("arn:aws:sts::111122223333:assumed-role/s3-reader/{ns}.web-0")
    );

    // A rollout of the operator while annotated pods are being created: every one is admitted
    // and injected (two replicas, maxUnavailable 0, PDB; the webhook fails closed). The pods
    // are dry runs — admission, webhook included, runs in full, but the node is spared a few
    // dozen pods.
    let started = Instant::now();
    deployments
        .patch(
            RELEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "credvend.test/restartedAt": format!("{:?}", std::time::SystemTime::now()),
            }}}}})),
        )
        .await
        .unwrap();
    let mut created = 0;
    let mut failures = Vec::new();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    loop {
        let name = format!("during-rollout-{created}");
        let pod = sdk_pod(&name, "app", sts.pod_endpoint(), 1, 0, json!({}));
        match pods_api.create(&dry, &pod).await {
            Ok(p)
                if p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("credvend.io/status")) => {}
            Ok(_) => failures.push(format!("{name}: admitted without injection")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        created += 1;
        let d = deployments.get(RELEASE).await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        let done = s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(2)
            && s.ready_replicas == Some(2)
            && s.replicas == Some(2);
        if done && created >= 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{created} annotated pods created during the rollout ({:.1?})",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "admission failed during the rollout:\n{}",
        failures.join("\n")
    );
    // The new leader is one of the new pods, and status keeps being written.
    let current: Vec<String> = operators
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("a new leader", Duration::from_secs(120), || async {
        let lease = leases.get(&format!("{RELEASE}-leader")).await.ok()?;
        let holder = lease.spec?.holder_identity?;
        current
            .iter()
            .any(|p| holder.contains(p.as_str()))
            .then_some(())
    })
    .await;
    // A spec change is observed (status.observedGeneration follows) by the new leader.
    let counted = bindings
        .get("s3-reader")
        .await
        .unwrap()
        .status
        .unwrap()
        .pods;
    bindings
        .patch(
            "s3-reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sessionDuration": "45m"}})),
        )
        .await
        .unwrap();
    wait_binding_ready(&bindings, "s3-reader", counted).await;

    // helm upgrade with a changed value reaches the pods injected afterwards.
    pods::helm(
        &node,
        "upgrade",
        RELEASE,
        NAMESPACE,
        &values,
        &["agent.resources.memoryLimit=48Mi"],
    )
    .unwrap();
    ready_replicas(&deployments, 2).await;
    eventually(
        "the upgraded agent limit",
        Duration::from_secs(120),
        || async {
            let pod = sdk_pod("after-upgrade", "app", sts.pod_endpoint(), 1, 0, json!({}));
            let p = pods_api.create(&dry, &pod).await.ok()?;
            let agent = p.spec?.init_containers?.into_iter().next()?;
            let limit = agent.resources?.limits?.get("memory")?.0.clone();
            (limit == "48Mi").then_some(())
        },
    )
    .await;

    // helm uninstall removes the operator and its webhook configuration.
    pods::helm(&node, "uninstall", RELEASE, NAMESPACE, "", &[]).unwrap();
    eventually("the operator gone", Duration::from_secs(120), || async {
        let gone = deployments.get_opt(RELEASE).await.ok()?.is_none()
            && mwcs.get_opt(RELEASE).await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    drop(sts);
    node.shutdown().unwrap();
}
