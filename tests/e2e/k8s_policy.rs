//! Policies as resources, end to end: AuthorizationPolicy objects applied through the
//! in-process API-server double reach running sidecars through the real `picket controller`
//! (over the mesh's mTLS) and are enforced together with the sidecar's policy files; Istio's
//! kind is honoured when its CRD is installed; a namespace's policies reach only sidecars of
//! that namespace (plus the root namespace's, which reach all); and the validating webhook of
//! the real `picket injector serve` refuses a policy that does not load, naming its place.

use std::time::Duration;

use crate::policy::metric_sum;
use anyhow::{Context, Result, ensure};
use http::{StatusCode, Version};
use picket_common::policies::ClusterPolicies;
use picket_tests::controller::{
    TestController, controller_yaml, sidecar_credentials, sources, subscribe_policies,
};
use picket_tests::k8s::{KubeCa, TestInjector};
use picket_tests::kube_api::{ISTIO_GROUP, KubeApiDouble};
use picket_tests::mesh::frontend_to_orders;
use picket_tests::{App, Sidecar, TestCa, TestProxy, eventually};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a policy applied through the API may take to reach a sidecar.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// The orders sidecar's own policy file: nobody may read `/file-denied`, whatever the
/// cluster's policies allow.
const FILE_POLICY: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: file-deny, namespace: shop }
spec:
  action: DENY
  rules:
  - to: [{ operation: { paths: ["/file-denied"] } }]
"#;

/// An AuthorizationPolicy object of `api_version` that lets the frontend GET `/api/*`.
fn allow_frontend(api_version: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": name,
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {
            "selector": {"matchLabels": {"app": "orders"}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*", "/file-denied"]}}],
            }],
        },
    })
}

/// frontend -> orders, where the orders sidecar takes its policies from the files and the
/// controller.
struct Cluster {
    api: KubeApiDouble,
    _controller: TestController,
    _app: App,
    orders: TestProxy,
    frontend: TestProxy,
    _ca: TestCa,
}

impl Cluster {
    async fn start(api: KubeApiDouble) -> Result<Self> {
        let ca = TestCa::start().await?;
        let controller = TestController::start(&ca, &api).await?;
        let app = App::http("orders").await?;
        let orders = TestProxy::spawn(
            &ca,
            Sidecar::new("shop", "orders", app.addr())
                .label("app", "orders")
                .policy(FILE_POLICY)
                .yaml(&controller_yaml(controller.listen)),
        )
        .await?;
        let frontend =
            TestProxy::spawn(&ca, frontend_to_orders(orders.addrs().inbound).await?).await?;
        Ok(Self {
            api,
            _controller: controller,
            _app: app,
            orders,
            frontend,
            _ca: ca,
        })
    }

    /// The status of `GET path` from the frontend to orders.
    async fn status(&self, path: &str) -> Result<StatusCode> {
        let outbound = self.frontend.addrs().outbound;
        Ok(
            picket_tests::clients::get(outbound, Version::HTTP_11, "orders", path)
                .await?
                .status(),
        )
    }

    /// Waits until `GET path` answers `want`.
    async fn until(&self, path: &str, want: StatusCode) -> Result<()> {
        eventually(APPLY_DEADLINE, async || {
            let status = self.status(path).await?;
            ensure!(status == want, "GET {path} answered {status}, not {want}");
            Ok(())
        })
        .await
    }
}

#[tokio::test]
async fn a_policy_applied_through_the_api_takes_effect_in_a_running_sidecar() -> Result<()> {
    let cluster = Cluster::start(KubeApiDouble::start().await?).await?;
    // No ALLOW policy selects orders yet: the mesh default denies.
    ensure!(cluster.status("/api/orders").await? == StatusCode::FORBIDDEN);

    cluster
        .api
        .apply_custom(&allow_frontend("picket.dev/v1", "frontend-read"))?;
    cluster.until("/api/orders", StatusCode::OK).await?;
    // The union: the file's DENY still holds beside the object's ALLOW.
    ensure!(cluster.status("/file-denied").await? == StatusCode::FORBIDDEN);
    let (_, page) = cluster.orders.admin_get("/policy").await?;
    let page: Value = serde_json::from_str(&page)?;
    ensure!(
        page["cluster"] == json!(["picket.dev/v1 AuthorizationPolicy shop/frontend-read"]),
        "{page}"
    );

    // An object that does not load (applied past the webhook, say while it was not
    // installed): the set in force stays, and the failure is counted as a file's would be.
    let mut broken = allow_frontend("picket.dev/v1", "broken");
    broken["spec"]["action"] = json!("PERMIT");
    cluster.api.apply_custom(&broken)?;
    eventually(APPLY_DEADLINE, async || {
        let (_, text) = cluster.orders.admin_get("/metrics").await?;
        let failures = metric_sum(&text, "picket_policy_reload_failures_total", &[]);
        ensure!(failures >= 1.0, "no reload failure counted yet");
        Ok(())
    })
    .await?;
    ensure!(cluster.status("/api/orders").await? == StatusCode::OK);
    ensure!(cluster.status("/file-denied").await? == StatusCode::FORBIDDEN);

    // Once it is gone, sets load again: deleting the allowing object takes it away.
    cluster
        .api
        .delete_custom("picket.dev/v1", "shop", "broken")?;
    cluster
        .api
        .delete_custom("picket.dev/v1", "shop", "frontend-read")?;
    cluster.until("/api/orders", StatusCode::FORBIDDEN).await?;
    Ok(())
}

#[tokio::test]
async fn an_istio_policy_is_honoured_when_its_crd_is_installed() -> Result<()> {
    let api = KubeApiDouble::start().await?;
    api.install_crd(ISTIO_GROUP);
    let cluster = Cluster::start(api).await?;
    ensure!(cluster.status("/api/orders").await? == StatusCode::FORBIDDEN);
    cluster
        .api
        .apply_custom(&allow_frontend("security.istio.io/v1", "istio-read"))?;
    cluster.until("/api/orders", StatusCode::OK).await?;
    ensure!(cluster.status("/file-denied").await? == StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn an_istio_crd_installed_later_is_found_and_its_policies_sent() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    let controller = TestController::start_with(
        &ca,
        &api,
        "127.0.0.1:0".parse()?,
        &["--policy-discovery-interval", "200ms"],
    )
    .await?;
    let shop = sidecar_credentials(&ca, "shop", "orders").await?;
    let mut sets = subscribe_policies(controller.listen, &shop).await?;
    ensure!(sources(&next_set(&mut sets).await?).is_empty());
    // The controller started without the Istio CRD; it is installed now.
    api.install_crd(ISTIO_GROUP);
    api.apply_custom(&allow_frontend("security.istio.io/v1", "istio-read"))?;
    let set = next_set(&mut sets).await?;
    ensure!(
        sources(&set) == ["security.istio.io/v1 AuthorizationPolicy shop/istio-read"],
        "{set:?}\n{}",
        controller.log_text()
    );
    Ok(())
}

#[tokio::test]
async fn a_namespaces_policies_reach_only_its_own_sidecars() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    let mut in_bank = allow_frontend("picket.dev/v1", "bank-only");
    in_bank["metadata"]["namespace"] = json!("bank");
    api.apply_custom(&in_bank)?;
    let mut root = allow_frontend("picket.dev/v1", "mesh-wide");
    root["metadata"]["namespace"] = json!("picket-system");
    api.apply_custom(&root)?;
    let controller = TestController::start(&ca, &api).await?;

    let shop = sidecar_credentials(&ca, "shop", "orders").await?;
    let bank = sidecar_credentials(&ca, "bank", "teller").await?;
    let mut shop_sets = subscribe_policies(controller.listen, &shop).await?;
    let mut bank_sets = subscribe_policies(controller.listen, &bank).await?;
    let root_name = "picket.dev/v1 AuthorizationPolicy picket-system/mesh-wide";
    let bank_name = "picket.dev/v1 AuthorizationPolicy bank/bank-only";
    let shop_name = "picket.dev/v1 AuthorizationPolicy shop/frontend-read";
    ensure!(sources(&next_set(&mut shop_sets).await?) == [root_name]);
    ensure!(sources(&next_set(&mut bank_sets).await?) == [bank_name, root_name]);

    // A new policy in shop reaches shop's subscriber; bank's set does not change, so bank's
    // subscriber gets nothing.
    api.apply_custom(&allow_frontend("picket.dev/v1", "frontend-read"))?;
    ensure!(sources(&next_set(&mut shop_sets).await?) == [root_name, shop_name]);
    // A change in bank comes after: had shop's object reached bank, it would show here.
    let mut changed = in_bank.clone();
    changed["spec"]["action"] = json!("DENY");
    api.apply_custom(&changed)?;
    let set = next_set(&mut bank_sets).await?;
    ensure!(sources(&set) == [bank_name, root_name], "{set:?}");
    ensure!(
        set.policies.iter().all(|p| !p.text.contains("\"shop\"")),
        "a shop policy reached bank: {set:?}"
    );
    ensure!(shop_sets.try_recv().is_err(), "shop got bank's change");
    Ok(())
}

/// The next policy set a subscription receives.
async fn next_set(rx: &mut UnboundedReceiver<ClusterPolicies>) -> Result<ClusterPolicies> {
    tokio::time::timeout(APPLY_DEADLINE, rx.recv())
        .await
        .context("no policy set within the deadline")?
        .context("the policy stream ended")
}

/// A policy object that does not load: an unknown action, a method list that is not a list.
fn bad_policy(api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "bad", "uid": "0c8b", "resourceVersion": "7"},
        "spec": {
            "action": "PERMIT",
            "rules": [{"to": [{"operation": {"methods": "GET"}}]}],
        },
    })
}

fn policy_review(uid: &str, group: &str, object: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": "AuthorizationPolicy"},
            "resource": {"group": group, "version": "v1", "resource": "authorizationpolicies"},
            "namespace": "shop", "name": "bad",
            "operation": "CREATE",
            "object": object,
        },
    })
}

#[tokio::test]
async fn the_webhook_refuses_a_policy_that_does_not_load_naming_its_place() -> Result<()> {
    let ca = KubeCa::start(None).await?;
    let injector = TestInjector::start(&ca, &[]).await?;

    // What `picket policy check` says about the same document.
    let rendered = picket_k8s::policy::render(&bad_policy("picket.dev/v1"))?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, &rendered.text)?;
    let check = picket_tests::process::output(
        picket_tests::process::picket()?
            .args(["policy", "check", "-o", "json"])
            .arg(&file)
            .kill_on_drop(true),
    )
    .await?;
    ensure!(check.status.code() == Some(1), "{check:?}");
    let expected: Vec<Value> = serde_json::from_slice(&check.stdout)?;
    ensure!(expected.len() == 2, "{expected:?}");

    for (group, api_version) in [
        ("picket.dev", "picket.dev/v1"),
        (ISTIO_GROUP, "security.istio.io/v1"),
    ] {
        let answer = injector
            .review(
                &ca,
                "/validate",
                &policy_review("u-1", group, &bad_policy(api_version)),
            )
            .await?;
        let response = &answer["response"];
        ensure!(
            response["uid"] == "u-1" && response["allowed"] == false,
            "{answer}"
        );
        let message = response["status"]["message"]
            .as_str()
            .context("no message")?;
        let source = format!("{api_version} AuthorizationPolicy shop/bad");
        // Each of check's problems, word for word, at its line and column (and the field,
        // which the loader's messages mostly name themselves).
        for (problem, field) in expected
            .iter()
            .zip(["spec.action", "spec.rules[0].to[0].operation.methods"])
        {
            let at = format!("{source}:{}:{}: ", problem["line"], problem["column"]);
            let text = problem["message"].as_str().context("message")?;
            ensure!(
                message
                    .lines()
                    .any(|l| l.starts_with(&at) && l.ends_with(text) && l.contains(field)),
                "{at}... {text:?} ({field}) not in {message:?}"
            );
        }
        let causes: Vec<&str> = response["status"]["details"]["causes"]
            .as_array()
            .context("no causes")?
            .iter()
            .filter_map(|c| c["field"].as_str())
            .collect();
        ensure!(
            causes == ["spec.action", "spec.rules[0].to[0].operation.methods"],
            "{causes:?}"
        );
    }

    // A policy that loads is admitted.
    let answer = injector
        .review(
            &ca,
            "/validate",
            &policy_review(
                "u-2",
                "picket.dev",
                &allow_frontend("picket.dev/v1", "good"),
            ),
        )
        .await?;
    ensure!(answer["response"]["allowed"] == true, "{answer}");
    Ok(())
}
