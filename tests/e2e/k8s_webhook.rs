//! The admission webhook as the API server uses it: `AdmissionReview` JSON over HTTPS, the
//! webhook's certificate from the Picket CA verified by its Service's DNS name against the
//! trust bundle (the webhook configuration's `caBundle`), and the JSON patch in the answer,
//! applied with an independent RFC 6902 implementation, giving exactly the pod that
//! `picket inject` gives.

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use picket_common::crypto::KxGroup;
use picket_tests::clients::{curl, tls_client_config, tls_connect};
use picket_tests::k8s::{
    INJECTOR_HOST, KubeCa, TestInjector, admission_review, documents, golden_path,
    picket_inject_ok, print_yaml,
};
use serde_json::{Value, json};

/// The pods a controller would create from the golden workloads (and the bare pod).
fn pods() -> Result<Vec<(String, Value)>> {
    let mut pods = Vec::new();
    for case in [
        "pod",
        "deployment",
        "statefulset",
        "job",
        "cronjob",
        "port-opt-outs",
    ] {
        let path = golden_path(&format!("inject/{case}.yaml"));
        let text = std::fs::read_to_string(&path)?;
        for document in documents(&text)? {
            let template = match document["kind"].as_str() {
                Some("Pod") => document.clone(),
                Some("CronJob") => document["spec"]["jobTemplate"]["spec"]["template"].clone(),
                _ => document["spec"]["template"].clone(),
            };
            let mut metadata = template["metadata"].clone();
            if metadata.is_null() {
                metadata = json!({});
            }
            if document["kind"] != "Pod" {
                metadata["generateName"] = json!(format!(
                    "{}-",
                    document["metadata"]["name"].as_str().unwrap_or("pod")
                ));
            }
            pods.push((
                case.to_owned(),
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}),
            ));
        }
    }
    Ok(pods)
}

fn apply_patch(pod: &Value, response: &Value) -> Result<Value> {
    let encoded = response["patch"]
        .as_str()
        .context("no patch in the answer")?;
    ensure!(response["patchType"] == "JSONPatch");
    let patch: json_patch::Patch = serde_json::from_slice(&STANDARD.decode(encoded)?)?;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch)?;
    Ok(patched)
}

#[tokio::test]
async fn patched_pods_equal_picket_inject_output() -> Result<()> {
    let ca = KubeCa::start(None).await?;
    let injector = TestInjector::start(&ca, &[]).await?;
    for (index, (case, pod)) in pods()?.into_iter().enumerate() {
        let uid = format!("0000000{index}-aaaa-bbbb-cccc-dddddddddddd");
        let answer = injector
            .review(
                &ca,
                "/inject",
                &admission_review(&uid, "shop", "CREATE", &pod),
            )
            .await?;
        ensure!(answer["apiVersion"] == "admission.k8s.io/v1");
        ensure!(answer["kind"] == "AdmissionReview");
        let response = &answer["response"];
        ensure!(response["uid"] == uid.as_str(), "{case}: uid {response}");
        ensure!(response["allowed"] == true, "{case}: {response}");
        let patched = apply_patch(&pod, response)?;
        // The webhook's --ca-url (the test CA) is also what its sidecars are given.
        let ca_url = ca.url();
        let expected = picket_inject_ok(&["--ca-url", &ca_url], &print_yaml(&pod)?).await?;
        ensure!(
            documents(&expected)? == vec![patched.clone()],
            "{case}: the webhook's pod differs from picket inject's:\n{}",
            print_yaml(&patched)?
        );
    }
    Ok(())
}

#[tokio::test]
async fn settings_given_to_the_webhook_reach_the_patch() -> Result<()> {
    let settings = [
        "--image",
        "registry.example.org/mesh/picket:0.1.0",
        "--trust-domain",
        "prod.example.org",
        "--exclude-outbound-ports",
        "5432",
    ];
    let ca = KubeCa::start(None).await?;
    let injector = TestInjector::start(&ca, &settings).await?;
    let (_, pod) = pods()?.remove(0);
    let answer = injector
        .review(
            &ca,
            "/inject",
            &admission_review("u-1", "shop", "CREATE", &pod),
        )
        .await?;
    let patched = apply_patch(&pod, &answer["response"])?;
    let ca_url = ca.url();
    let mut cli = settings.to_vec();
    cli.extend(["--ca-url", &ca_url]);
    let expected = picket_inject_ok(&cli, &print_yaml(&pod)?).await?;
    ensure!(documents(&expected)? == vec![patched]);
    Ok(())
}

#[tokio::test]
async fn opted_out_updates_and_bad_pods() -> Result<()> {
    let ca = KubeCa::start(None).await?;
    let injector = TestInjector::start(&ca, &[]).await?;
    let (_, pod) = pods()?.remove(0);

    let mut opted_out = pod.clone();
    opted_out["metadata"]["labels"]["picket.dev/inject"] = json!("false");
    let answer = injector
        .review(
            &ca,
            "/inject",
            &admission_review("u-2", "shop", "CREATE", &opted_out),
        )
        .await?;
    ensure!(answer["response"]["allowed"] == true);
    ensure!(answer["response"].get("patch").is_none(), "{answer}");

    let update = injector
        .review(
            &ca,
            "/inject",
            &admission_review("u-3", "shop", "UPDATE", &pod),
        )
        .await?;
    ensure!(update["response"]["allowed"] == true);
    ensure!(update["response"].get("patch").is_none(), "{update}");

    let mut bad = pod.clone();
    bad["metadata"]["annotations"] = json!({"picket.dev/exclude-inbound-ports": "metrics"});
    let refused = injector
        .review(
            &ca,
            "/inject",
            &admission_review("u-4", "shop", "CREATE", &bad),
        )
        .await?;
    ensure!(refused["response"]["allowed"] == false, "{refused}");
    ensure!(refused["response"]["uid"] == "u-4");
    let message = refused["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    ensure!(message.contains("exclude-inbound-ports"), "{message}");
    Ok(())
}

#[tokio::test]
async fn the_webhook_certificate_names_only_its_service() -> Result<()> {
    let ca = KubeCa::start(None).await?;
    let injector = TestInjector::start(&ca, &[]).await?;
    let port = injector.addr().port();
    let bundle = ca.bundle_path();
    let bundle = bundle.to_str().context("bundle path")?;
    let health = curl(&[
        "--cacert",
        bundle,
        "--resolve",
        &format!("{INJECTOR_HOST}:{port}:127.0.0.1"),
        &format!("https://{INJECTOR_HOST}:{port}/healthz"),
    ])
    .await?;
    ensure!(
        health.status == 200 && health.body.trim() == "ok",
        "{health:?}"
    );
    let other = curl(&[
        "--cacert",
        bundle,
        "--resolve",
        &format!("other.picket.svc:{port}:127.0.0.1"),
        &format!("https://other.picket.svc:{port}/healthz"),
    ])
    .await?;
    // curl 60 (51 in older versions): the certificate does not match the name.
    ensure!(matches!(other.exit_code, Some(51 | 60)), "{other:?}");

    // A client that offers the post-quantum hybrid (as a current API server does) gets it.
    let tls = tls_connect(injector.addr(), tls_client_config(None, &[])?).await?;
    let kx = KxGroup::of(tls.get_ref().1);
    ensure!(kx == Some(KxGroup::X25519Mlkem768), "key exchange {kx:?}");
    Ok(())
}
