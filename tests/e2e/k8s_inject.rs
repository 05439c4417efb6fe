//! `picket inject` as a user runs it: manifests on standard input, manifests on standard
//! output. Golden files under `tests/golden/inject/` hold the input (`<case>.yaml`) and the
//! expected output (`<case>.injected.yaml`) for every workload kind and the opt-outs; every
//! output is valid for Kubernetes 1.30 (`kubernetes-validate --strict`).

use anyhow::{Context, Result, ensure};
use picket_k8s::inject::{
    ADMIN_PORT, CONFIG_ANNOTATION, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER,
    STATUS_ANNOTATION,
};
use picket_tests::k8s::{
    assert_golden, documents, golden_path, kubernetes_validate, picket_inject, picket_inject_ok,
};
use serde_json::Value;

/// Every case: one workload kind each, plus a `List`, the opt-outs and port exclusions.
const CASES: &[&str] = &[
    "pod",
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "job",
    "cronjob",
    "list",
    "opt-outs",
    "port-opt-outs",
    "probes",
];

/// Non-default settings, as the chart's `full` values pass them.
const SETTINGS: &[&str] = &[
    "--image",
    "registry.example.org/mesh/picket:0.1.0",
    "--init-image",
    "registry.example.org/mesh/picket-init:0.1.0",
    "--image-pull-policy",
    "Always",
    "--ca-url",
    "https://ca.mesh.svc:7443",
    "--trust-domain",
    "prod.example.org",
    "--token-audience",
    "mesh-ca",
    "--proxy-uid",
    "2102",
    "--exclude-outbound-cidrs",
    "10.96.0.1/32,fd00::/8",
    "--exclude-inbound-ports",
    "9100",
    "--meshed-cidrs",
    "10.244.0.0/16,10.96.0.0/12",
    "--egress",
    "deny",
    "--controller-address",
    "picket-controller.mesh.svc:7150",
    "--controller-identity",
    "spiffe://prod.example.org/ns/mesh/sa/picket-controller",
    "--unmeshed",
    "plaintext",
];

fn input(case: &str) -> Result<String> {
    let path = golden_path(&format!("inject/{case}.yaml"));
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// The pod templates of every workload in a document, wherever its kind keeps them.
fn pod_templates(document: &Value) -> Vec<&Value> {
    match document["kind"].as_str() {
        Some("List") => document["items"]
            .as_array()
            .map(|items| items.iter().flat_map(pod_templates).collect())
            .unwrap_or_default(),
        Some("Pod") => vec![document],
        Some("CronJob") => vec![&document["spec"]["jobTemplate"]["spec"]["template"]],
        Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job") => {
            vec![&document["spec"]["template"]]
        }
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn every_workload_kind_matches_its_golden_file_and_validates() -> Result<()> {
    let mut differences = Vec::new();
    for case in CASES {
        let injected = picket_inject_ok(&[], &input(case)?).await?;
        kubernetes_validate(&format!("picket inject of {case}.yaml"), &injected).await?;
        // Every case is compared before failing, so one run shows (and saves) every change.
        if let Err(e) = assert_golden(&format!("inject/{case}.injected.yaml"), &injected) {
            differences.push(format!("{e:#}"));
        }
    }
    ensure!(differences.is_empty(), "{}", differences.join("\n\n"));
    Ok(())
}

#[tokio::test]
async fn settings_flags_reach_the_pod_and_validate() -> Result<()> {
    let injected = picket_inject_ok(SETTINGS, &input("deployment")?).await?;
    assert_golden("inject/deployment.settings.injected.yaml", &injected)?;
    kubernetes_validate("picket inject with settings", &injected).await?;
    Ok(())
}

#[tokio::test]
async fn injecting_twice_equals_injecting_once() -> Result<()> {
    for case in CASES {
        let once = picket_inject_ok(&[], &input(case)?).await?;
        let twice = picket_inject_ok(&[], &once).await?;
        ensure!(
            once == twice,
            "{case}: a second injection changed the output"
        );
    }
    Ok(())
}

#[tokio::test]
async fn uninject_reverses_inject_exactly() -> Result<()> {
    for case in CASES {
        let original = input(case)?;
        let injected = picket_inject_ok(&[], &original).await?;
        let uninjected = picket_inject_ok(&["--uninject"], &injected).await?;
        ensure!(
            documents(&uninjected)? == documents(&original)?,
            "{case}: uninject did not restore the original:\n{uninjected}"
        );
        // Uninjecting a manifest that was never injected changes nothing either.
        let untouched = picket_inject_ok(&["--uninject", "-f", "-"], &original).await?;
        ensure!(documents(&untouched)? == documents(&original)?, "{case}");
    }
    Ok(())
}

#[tokio::test]
async fn every_injected_pod_has_the_sidecar_contract() -> Result<()> {
    for case in CASES {
        let injected = picket_inject_ok(&[], &input(case)?).await?;
        for document in documents(&injected)? {
            for template in pod_templates(&document) {
                let annotations = &template["metadata"]["annotations"];
                if annotations[STATUS_ANNOTATION].is_null() {
                    continue;
                }
                let init = template["spec"]["initContainers"]
                    .as_array()
                    .context("no init containers")?;
                ensure!(
                    init[0]["name"] == INIT_CONTAINER,
                    "{case}: iptables step first"
                );
                let sidecar = &init[1];
                ensure!(sidecar["name"] == PROXY_CONTAINER, "{case}: sidecar second");
                ensure!(
                    sidecar["restartPolicy"] == "Always",
                    "{case}: native sidecar"
                );
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    ensure!(
                        sidecar[probe]["httpGet"]["port"] == ADMIN_PORT,
                        "{case}: {probe} on the admin port"
                    );
                }
                let security = &sidecar["securityContext"];
                ensure!(security["runAsUser"] == 1337 && security["runAsNonRoot"] == true);
                ensure!(security["readOnlyRootFilesystem"] == true);
                ensure!(security["allowPrivilegeEscalation"] == false);
                ensure!(security["capabilities"]["drop"] == serde_json::json!(["ALL"]));
                let caps = &init[0]["securityContext"]["capabilities"];
                ensure!(caps["add"] == serde_json::json!(["NET_ADMIN", "NET_RAW"]));
                let args: Vec<&str> = init[0]["args"]
                    .as_array()
                    .context("no args")?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let inbound = INBOUND_PORT.to_string();
                let outbound = OUTBOUND_PORT.to_string();
                ensure!(
                    args[..7]
                        == [
                            "iptables",
                            "--proxy-uid",
                            "1337",
                            "--inbound-port",
                            inbound.as_str(),
                            "--outbound-port",
                            outbound.as_str()
                        ],
                    "{case}: {args:?}"
                );
                let config = annotations[CONFIG_ANNOTATION]
                    .as_str()
                    .context("no sidecar config")?;
                for listen in [
                    format!("0.0.0.0:{INBOUND_PORT}"),
                    format!("127.0.0.1:{OUTBOUND_PORT}"),
                    format!("0.0.0.0:{ADMIN_PORT}"),
                ] {
                    ensure!(config.contains(&listen), "{case}: {listen} in {config}");
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_annotation_fails_the_whole_run_and_prints_nothing() -> Result<()> {
    let manifest = input("port-opt-outs")?.replace("\"5432, 6379\"", "\"postgres\"");
    let injected = picket_inject(&[], &manifest).await?;
    ensure!(!injected.success, "picket inject accepted a bad annotation");
    ensure!(injected.stdout.is_empty(), "printed {}", injected.stdout);
    ensure!(
        injected
            .stderr
            .contains("Deployment shop/orders: annotation picket.dev/exclude-outbound-ports"),
        "{}",
        injected.stderr
    );
    let latest = picket_inject(&["--image", "picket/picket:latest"], &manifest).await?;
    ensure!(!latest.success && latest.stderr.contains("latest"));
    Ok(())
}

#[tokio::test]
async fn controller_settings_outside_the_mesh_are_refused_with_the_reason() -> Result<()> {
    let manifest = input("deployment")?;
    // An identity the sidecars would refuse at startup (another trust domain) is refused
    // at injection, as is an address that is not host:port.
    for (args, expect) in [
        (
            &[
                "--controller-address",
                "picket-controller.picket.svc:7150",
                "--controller-identity",
                "spiffe://elsewhere.example/ns/picket/sa/picket-controller",
            ][..],
            "is outside the trust domain cluster.local",
        ),
        (
            &["--controller-address", "picket-controller.picket.svc"][..],
            "is not host:port",
        ),
        (
            &[
                "--controller-identity",
                "spiffe://cluster.local/ns/picket/sa/c",
            ][..],
            "--controller-address",
        ),
    ] {
        let out = picket_inject(args, &manifest).await?;
        ensure!(!out.success, "{args:?} accepted");
        ensure!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
        ensure!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
    }
    // The default identity is the controller's in the mesh's trust domain.
    let injected = picket_inject_ok(
        &[
            "--trust-domain",
            "prod.example.org",
            "--controller-address",
            "10.96.0.20:7150",
        ],
        &manifest,
    )
    .await?;
    ensure!(
        injected.contains("identity: spiffe://prod.example.org/ns/picket/sa/picket-controller"),
        "{injected}"
    );
    Ok(())
}
