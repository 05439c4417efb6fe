//! The Helm chart, rendered by the real Helm engine for every `charts/picket/ci/*.values.yaml`:
//! lint clean, every manifest valid for Kubernetes 1.30, and the invariants that keep it safe
//! (no `latest`, probes, non-root read-only containers without capabilities, least-privilege
//! RBAC, ports matching the sidecar's defaults). The injector's own settings, given to
//! `picket inject`, produce pods that validate too.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use picket_k8s::inject::{ADMIN_PORT, CA_PORT, INBOUND_PORT, OUTBOUND_PORT};
use picket_tests::k8s::{
    chart_dir, documents, golden_path, helm_lint, helm_template, helm_template_error,
    kubernetes_validate, picket_inject_ok,
};
use serde_json::{Value, json};

fn ci_values() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.to_string_lossy().ends_with(".values.yaml"));
    files.sort();
    ensure!(
        files.len() >= 3,
        "expected the ci/*.values.yaml variants, found {files:?}"
    );
    Ok(files)
}

fn of_kind<'a>(manifests: &'a [Value], kind: &str) -> Vec<&'a Value> {
    manifests.iter().filter(|m| m["kind"] == kind).collect()
}

fn named<'a>(manifests: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    manifests
        .iter()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

fn check_containers(values: &str, workload: &Value) -> Result<()> {
    let name = workload["metadata"]["name"].as_str().unwrap_or("?");
    let pod = &workload["spec"]["template"]["spec"];
    ensure!(
        pod["securityContext"]["runAsNonRoot"] == true,
        "{values}: {name} pod runs as root"
    );
    ensure!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0);
    let main = pod["containers"].as_array().context("no containers")?;
    let init = pod["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (container, is_main) in main
        .iter()
        .map(|c| (c, true))
        .chain(init.iter().map(|c| (c, false)))
    {
        let cname = container["name"].as_str().unwrap_or("?");
        let image = container["image"].as_str().context("no image")?;
        ensure!(
            !image.ends_with(":latest")
                && image.rsplit('/').next().is_some_and(|n| n.contains(':')),
            "{values}: {name}/{cname} image {image} names no version"
        );
        let security = &container["securityContext"];
        ensure!(
            security["readOnlyRootFilesystem"] == true,
            "{values}: {name}/{cname} writable root"
        );
        ensure!(
            security["allowPrivilegeEscalation"] == false,
            "{values}: {name}/{cname}"
        );
        ensure!(security["privileged"] == false, "{values}: {name}/{cname}");
        ensure!(
            security["capabilities"]["drop"] == json!(["ALL"]),
            "{values}: {name}/{cname}"
        );
        ensure!(
            security["capabilities"].get("add").is_none(),
            "{values}: {name}/{cname} adds capabilities"
        );
        let requests = &container["resources"]["requests"];
        ensure!(
            !requests["cpu"].is_null() && !requests["memory"].is_null(),
            "{values}: {name}/{cname} has no requests"
        );
        if is_main {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                ensure!(
                    container[probe].is_object(),
                    "{values}: {name}/{cname} has no {probe}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_ci_variant_renders_lints_and_validates() -> Result<()> {
    for values in ci_values()? {
        let label = values
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        helm_lint(&values)
            .await
            .with_context(|| format!("helm lint with {label}"))?;
        let rendered = helm_template(&values).await?;
        kubernetes_validate(&format!("the chart with {label}"), &rendered).await?;
        let manifests = documents(&rendered)?;
        ensure!(!manifests.is_empty(), "{label}: nothing rendered");
        ensure!(
            !rendered.contains(":latest"),
            "{label}: an image is `latest`"
        );
    }
    Ok(())
}

#[tokio::test]
async fn workloads_are_non_root_read_only_probed_and_versioned() -> Result<()> {
    for values in ci_values()? {
        let label = values.display().to_string();
        let manifests = documents(&helm_template(&values).await?)?;
        let deployments = of_kind(&manifests, "Deployment");
        ensure!(
            deployments.len() == 3,
            "{label}: expected the CA, the injector and the controller"
        );
        for deployment in deployments {
            check_containers(&label, deployment)?;
        }
        let ca = named(&manifests, "Deployment", "picket-ca")?;
        // Replicas that survive a node loss, rolled one at a time, never all disrupted.
        let replicas = ca["spec"]["replicas"].as_u64().unwrap_or(0);
        ensure!(replicas >= 2, "{label}: {replicas} CA replica(s)");
        ensure!(ca["spec"]["strategy"]["type"] == "RollingUpdate");
        ensure!(ca["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0);
        let budget = named(&manifests, "PodDisruptionBudget", "picket-ca")?;
        ensure!(budget["spec"]["minAvailable"] == 1);
        ensure!(
            budget["spec"]["selector"]["matchLabels"] == ca["spec"]["selector"]["matchLabels"],
            "{label}: the CA's disruption budget selects other pods"
        );
        // No shared writable state: each replica's state is its own, the signing material a
        // Secret every replica mounts.
        ensure!(
            of_kind(&manifests, "PersistentVolumeClaim").is_empty(),
            "{label}: the CA still claims a volume"
        );
        let pod = &ca["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        ensure!(
            volumes
                .iter()
                .any(|v| v["name"] == "state" && v["emptyDir"].is_object()),
            "{label}: {volumes:?}"
        );
        ensure!(
            volumes.iter().any(|v| v["name"] == "signer"
                && v["secret"]["secretName"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("ca-signer"))),
            "{label}: {volumes:?}"
        );
        let init_args = strings(&pod["initContainers"][0]["args"]);
        ensure!(flag(&init_args, "--signer-dir") == Some("/etc/picket/signer"));
        let ca_container = &ca["spec"]["template"]["spec"]["containers"][0];
        ensure!(ca_container["ports"][0]["containerPort"] == CA_PORT);
        let ca_args = strings(&ca_container["args"]);
        ensure!(flag(&ca_args, "--listen") == Some(&format!("0.0.0.0:{CA_PORT}")[..]));
        ensure!(
            flag(&ca_args, "--kube-api").is_some(),
            "{label}: token review is off"
        );
        let service = named(&manifests, "Service", "picket-ca")?;
        ensure!(service["spec"]["ports"][0]["port"] == CA_PORT);
    }
    Ok(())
}

#[tokio::test]
async fn rbac_grants_tokenreview_create_and_the_controllers_reads_and_configmaps_only() -> Result<()>
{
    for values in ci_values()? {
        let manifests = documents(&helm_template(&values).await?)?;
        ensure!(of_kind(&manifests, "Role").is_empty());
        ensure!(of_kind(&manifests, "RoleBinding").is_empty());
        let roles = of_kind(&manifests, "ClusterRole");
        ensure!(roles.len() == 2, "two ClusterRoles, found {}", roles.len());
        let ca_role = named(&manifests, "ClusterRole", "picket-ca-tokenreview")?;
        ensure!(
            ca_role["rules"]
                == json!([{
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["tokenreviews"],
                    "verbs": ["create"],
                }]),
            "{}",
            ca_role["rules"]
        );
        // The controller lists and watches what it reads, creates ConfigMaps (RBAC cannot
        // limit create to names) and reads or updates only the two it distributes.
        let controller_role = named(&manifests, "ClusterRole", "picket-controller")?;
        ensure!(
            controller_role["rules"]
                == json!([
                    {"apiGroups": [""], "resources": ["pods", "services", "namespaces"], "verbs": ["list", "watch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                    {"apiGroups": ["picket.dev", "security.istio.io"], "resources": ["authorizationpolicies"], "verbs": ["list", "watch"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
                    {"apiGroups": [""], "resources": ["configmaps"],
                     "resourceNames": ["picket-trust-bundle", "picket-policy"], "verbs": ["get", "update"]},
                ]),
            "{}",
            controller_role["rules"]
        );
        let bindings = of_kind(&manifests, "ClusterRoleBinding");
        ensure!(bindings.len() == 2);
        for (binding, account) in [
            ("picket-ca-tokenreview", "picket-ca"),
            ("picket-controller", "picket-controller"),
        ] {
            let binding = named(&manifests, "ClusterRoleBinding", binding)?;
            ensure!(
                binding["subjects"]
                    == json!([{"kind": "ServiceAccount", "name": account, "namespace": "picket"}]),
                "{}",
                binding["subjects"]
            );
        }
        let injector_account = named(&manifests, "ServiceAccount", "picket-injector")?;
        ensure!(injector_account["automountServiceAccountToken"] == false);
        // The controller's identity and API access as the binary expects them.
        let controller = named(&manifests, "Deployment", "picket-controller")?;
        let container = &controller["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&container["args"]);
        ensure!(
            flag(&args, "--identity")
                .is_some_and(|id| id.starts_with("spiffe://")
                    && id.ends_with("/ns/picket/sa/picket-controller")),
            "{args:?}"
        );
        ensure!(flag(&args, "--kube-api").is_some(), "{args:?}");
        ensure!(container["ports"][0]["containerPort"] == 7150);
    }
    Ok(())
}

#[tokio::test]
async fn webhook_selects_labelled_namespaces_and_trusts_the_bundle() -> Result<()> {
    for values in ci_values()? {
        let values_doc = documents(&std::fs::read_to_string(&values)?)?;
        let bundle = values_doc[0]["trustBundle"]
            .as_str()
            .context("no trustBundle")?;
        let manifests = documents(&helm_template(&values).await?)?;
        let config = named(
            &manifests,
            "MutatingWebhookConfiguration",
            "picket-injector",
        )?;
        let webhook = &config["webhooks"][0];
        ensure!(["Fail", "Ignore"].contains(&webhook["failurePolicy"].as_str().unwrap_or("")));
        ensure!(webhook["sideEffects"] == "None");
        ensure!(
            webhook["namespaceSelector"]["matchLabels"] == json!({"picket.dev/inject": "enabled"})
        );
        ensure!(
            strings(&webhook["namespaceSelector"]["matchExpressions"][0]["values"])
                .contains(&"picket")
        );
        ensure!(webhook["objectSelector"]["matchExpressions"][0]["key"] == "picket.dev/inject");
        ensure!(webhook["clientConfig"]["service"]["path"] == "/inject");
        let ca_bundle = webhook["clientConfig"]["caBundle"]
            .as_str()
            .context("no caBundle")?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(ca_bundle)?;
        ensure!(
            String::from_utf8(decoded)?.trim() == bundle.trim(),
            "caBundle is not the trust bundle"
        );

        // Policy objects of both groups are checked by the injector's /validate, fail closed,
        // with the same CA bundle; the CRD is kept on uninstall.
        let validating = named(
            &manifests,
            "ValidatingWebhookConfiguration",
            "picket-injector-policy",
        )?;
        let check = &validating["webhooks"][0];
        ensure!(check["failurePolicy"] == "Fail", "{check}");
        ensure!(check["clientConfig"]["service"]["path"] == "/validate");
        ensure!(check["clientConfig"]["caBundle"] == ca_bundle);
        ensure!(
            check["rules"][0]["apiGroups"] == json!(["picket.dev", "security.istio.io"])
                && check["rules"][0]["resources"] == json!(["authorizationpolicies"])
                && check["rules"][0]["operations"] == json!(["CREATE", "UPDATE"]),
            "{check}"
        );
        let crd = named(
            &manifests,
            "CustomResourceDefinition",
            "authorizationpolicies.picket.dev",
        )?;
        ensure!(crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
        ensure!(crd["spec"]["versions"][0]["name"] == "v1");

        // Every meshed namespace gets the bundle and the policy the injected pods mount.
        let mut namespaces: Vec<&str> = strings(&values_doc[0]["mesh"]["namespaces"]);
        namespaces.push("picket");
        for namespace in namespaces {
            for name in ["picket-trust-bundle", "picket-policy"] {
                ensure!(
                    manifests.iter().any(|m| m["kind"] == "ConfigMap"
                        && m["metadata"]["name"] == name
                        && m["metadata"]["namespace"] == namespace),
                    "no ConfigMap {namespace}/{name}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_injectors_settings_make_valid_pods_with_the_default_ports() -> Result<()> {
    let workload = std::fs::read_to_string(golden_path("inject/deployment.yaml"))?;
    for values in ci_values()? {
        let manifests = documents(&helm_template(&values).await?)?;
        let injector = named(&manifests, "Deployment", "picket-injector")?;
        let args = strings(&injector["spec"]["template"]["spec"]["containers"][0]["args"]);
        ensure!(args[..2] == ["injector", "serve"]);
        let ca_url = flag(&args, "--ca-url").context("no --ca-url")?;
        ensure!(
            ca_url == format!("https://picket-ca.picket.svc:{CA_PORT}"),
            "{ca_url}"
        );
        // The same settings, minus what only the server takes, drive `picket inject`.
        let injected = picket_inject_ok(&inject_settings(&args)?, &workload).await?;
        kubernetes_validate("picket inject with the chart's settings", &injected).await?;
        let pod = &documents(&injected)?[0]["spec"]["template"];
        let sidecar = &pod["spec"]["initContainers"][1];
        let ports: Vec<u64> = sidecar["ports"]
            .as_array()
            .context("no ports")?
            .iter()
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        ensure!(ports == [u64::from(INBOUND_PORT), u64::from(ADMIN_PORT)]);
        // Scrape annotations point at the sidecar's metrics when the chart turns them on;
        // the workload's own prometheus.io annotation keeps them off (it has one).
        let annotations = &pod["metadata"]["annotations"];
        ensure!(annotations["prometheus.io/scrape"] == "true");
        ensure!(
            annotations.get("prometheus.io/port").is_none(),
            "{annotations}"
        );
        let config = pod["metadata"]["annotations"]["picket.dev/sidecar-config"]
            .as_str()
            .context("no config")?;
        ensure!(config.contains(&format!("127.0.0.1:{OUTBOUND_PORT}")));
        ensure!(config.contains(ca_url), "{config}");
        let image = sidecar["image"].as_str().unwrap_or("");
        let chart_image = flag(&args, "--image").context("no --image")?;
        ensure!(image == chart_image && !image.ends_with(":latest"));
        // Pods get the sidecar's own image (`sidecarImage`), not the CA's and injector's.
        ensure!(
            image
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("picket-sidecar:")),
            "the injected sidecar's image is {image}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_chart_refuses_latest_and_a_missing_trust_bundle() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let minimal = std::fs::read_to_string(chart_dir().join("ci").join("minimal.values.yaml"))?;
    let latest = dir.path().join("latest.yaml");
    std::fs::write(&latest, format!("{minimal}image:\n  tag: latest\n"))?;
    let missing = dir.path().join("missing.yaml");
    std::fs::write(&missing, "mesh:\n  namespaces: [shop]\n")?;
    // The values schema refuses both before any template runs.
    for (file, expect) in [(latest, "/image/tag"), (missing, "/trustBundle")] {
        let error = helm_template_error(&file).await?;
        if !error.contains(expect) {
            bail!("expected an error about {expect}, got:\n{error}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_ca_init_step_keeps_the_existing_ca_on_every_later_start() -> Result<()> {
    use picket_tests::process::{output, picket, run_ok};
    let dir = tempfile::tempdir()?;
    // The signer Secret, as the operator makes it from an offline CA.
    let offline = dir.path().join("offline");
    run_ok(
        picket()?
            .args([
                "ca",
                "init",
                "--trust-domain",
                "cluster.local",
                "--state-dir",
            ])
            .arg(&offline),
    )
    .await?;
    let signer = dir.path().join("signer");
    std::fs::create_dir(&signer)?;
    for file in ["issuer.pem", "issuer.key", "bundle.pem"] {
        std::fs::copy(offline.join(file), signer.join(file))?;
    }
    let state = dir.path().join("ca");
    let init = |trust_domain: &str| {
        let mut cmd = picket()?;
        cmd.args([
            "ca",
            "init",
            "--keep-existing",
            "--trust-domain",
            trust_domain,
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--signer-dir")
        .arg(&signer);
        Ok::<_, anyhow::Error>(cmd)
    };
    run_ok(&mut init("cluster.local")?).await?;
    let settings = std::fs::read(state.join("ca.json"))?;
    ensure!(
        !state.join("issuer.key").exists() && !state.join("root.key").exists(),
        "a replica made signing keys of its own"
    );
    // The container restarts: the replica's state stays as it was.
    run_ok(&mut init("cluster.local")?).await?;
    ensure!(
        std::fs::read(state.join("ca.json"))? == settings,
        "the CA was replaced"
    );
    let bundle = run_ok(picket()?.args(["ca", "bundle", "--state-dir"]).arg(&state)).await?;
    ensure!(bundle == std::fs::read_to_string(signer.join("bundle.pem"))?);
    let other = output(&mut init("other.example")?).await?;
    ensure!(!other.status.success(), "kept a CA of another trust domain");
    ensure!(String::from_utf8_lossy(&other.stderr).contains("trust domain"));
    Ok(())
}

#[tokio::test]
async fn the_policy_configmaps_hold_policies_the_sidecar_loads() -> Result<()> {
    use picket_tests::process::{picket, run_ok};
    let dir = tempfile::tempdir()?;
    for values in ci_values()? {
        let manifests = documents(&helm_template(&values).await?)?;
        let policies: Vec<&Value> = manifests
            .iter()
            .filter(|m| m["kind"] == "ConfigMap" && m["metadata"]["name"] == "picket-policy")
            .collect();
        ensure!(
            !policies.is_empty(),
            "{}: no picket-policy",
            values.display()
        );
        for policy in policies {
            let text = policy["data"]["policy.yaml"]
                .as_str()
                .context("no policy.yaml")?;
            let file = dir.path().join("policy.yaml");
            std::fs::write(&file, text)?;
            run_ok(picket()?.args(["policy", "check"]).arg(&file))
                .await
                .with_context(|| format!("the policy of {}", values.display()))?;
        }
    }
    Ok(())
}

fn chart_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(format!("{name}.values.yaml"))
}

fn check_placement(
    label: &str,
    deployment: &Value,
    priority: Option<&str>,
    spread: &[(&str, u64, &str)],
) -> Result<()> {
    let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
    let pod = &deployment["spec"]["template"];
    ensure!(
        pod["spec"]["priorityClassName"].as_str() == priority,
        "{label}: {name} priorityClassName {}",
        pod["spec"]["priorityClassName"]
    );
    let constraints = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        constraints.len() == spread.len(),
        "{label}: {name} spread {constraints:?}"
    );
    for (c, (key, skew, when)) in constraints.iter().zip(spread) {
        ensure!(
            c["topologyKey"] == *key && c["maxSkew"] == *skew && c["whenUnsatisfiable"] == *when,
            "{label}: {name} {c}"
        );
        // The constraint counts exactly this component's pods, of the same revision.
        ensure!(
            c["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"],
            "{label}: {name} spread selector {c}"
        );
        let selector = c["labelSelector"]["matchLabels"]
            .as_object()
            .context("no selector")?;
        for (k, v) in selector {
            ensure!(
                pod["metadata"]["labels"][k] == *v,
                "{label}: {name} pods lack {k}={v}"
            );
        }
        ensure!(
            c["matchLabelKeys"] == json!(["pod-template-hash"]),
            "{label}: {name} {c}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn placement_scrape_settings_and_pod_monitor_follow_the_values() -> Result<()> {
    // Defaults: both Deployments get the critical priority, one replica per node (hard) and
    // zone spread (soft); injected pods get scrape annotations, strict mode, probe rewriting;
    // no PodMonitor.
    let label = "minimal";
    let manifests = documents(&helm_template(&chart_values("minimal")).await?)?;
    let spread = [
        ("kubernetes.io/hostname", 1, "DoNotSchedule"),
        ("topology.kubernetes.io/zone", 1, "ScheduleAnyway"),
    ];
    for name in ["picket-ca", "picket-injector"] {
        check_placement(
            label,
            named(&manifests, "Deployment", name)?,
            Some("system-cluster-critical"),
            &spread,
        )?;
    }
    let injector = named(&manifests, "Deployment", "picket-injector")?;
    let args = strings(&injector["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(
        flag(&args, "--scrape-annotations") == Some("true"),
        "{args:?}"
    );
    ensure!(flag(&args, "--rewrite-probes") == Some("true"), "{args:?}");
    ensure!(flag(&args, "--inbound-mode") == Some("strict"), "{args:?}");
    ensure!(
        of_kind(&manifests, "PodMonitor").is_empty(),
        "{label}: PodMonitor is opt-in"
    );

    // Everything turned: no CA priority, zone-only CA spread, a custom injector priority and
    // no injector spread, no scrape annotations, permissive, no rewriting, a PodMonitor.
    let label = "full";
    let manifests = documents(&helm_template(&chart_values("full")).await?)?;
    check_placement(
        label,
        named(&manifests, "Deployment", "picket-ca")?,
        None,
        &[("topology.kubernetes.io/zone", 2, "DoNotSchedule")],
    )?;
    check_placement(
        label,
        named(&manifests, "Deployment", "picket-injector")?,
        Some("mesh-critical"),
        &[],
    )?;
    let injector = named(&manifests, "Deployment", "picket-injector")?;
    let args = strings(&injector["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(
        flag(&args, "--scrape-annotations") == Some("false"),
        "{args:?}"
    );
    ensure!(flag(&args, "--rewrite-probes") == Some("false"), "{args:?}");
    ensure!(
        flag(&args, "--inbound-mode") == Some("permissive"),
        "{args:?}"
    );
    let monitor = named(&manifests, "PodMonitor", "picket-sidecars")?;
    ensure!(monitor["apiVersion"] == "monitoring.coreos.com/v1");
    ensure!(
        monitor["metadata"]["labels"]["release"] == "prometheus",
        "{monitor}"
    );
    ensure!(
        monitor["spec"]["namespaceSelector"]["matchNames"] == json!(["shop", "payments"]),
        "{monitor}"
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    // The port name only injected sidecars declare, and the path the admin listener serves.
    ensure!(
        endpoint["port"] == "picket-admin" && endpoint["path"] == "/metrics",
        "{endpoint}"
    );
    ensure!(endpoint["interval"] == "15s", "{endpoint}");

    // What the injector does with those flags: the sidecar declares picket-admin on the
    // admin port the annotations and the PodMonitor name.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}});
    let text = picket_tests::k8s::print_yaml(&pod)?;
    let injected = documents(&picket_inject_ok(&[], &text).await?)?;
    let annotations = &injected[0]["metadata"]["annotations"];
    ensure!(
        annotations["prometheus.io/port"].as_str() == Some(ADMIN_PORT.to_string().as_str()),
        "{annotations}"
    );
    ensure!(annotations["prometheus.io/path"] == "/metrics");
    let sidecar = &injected[0]["spec"]["initContainers"][1];
    ensure!(
        sidecar["ports"]
            .as_array()
            .context("no ports")?
            .iter()
            .any(|p| p["name"] == "picket-admin" && p["containerPort"] == ADMIN_PORT),
        "{sidecar}"
    );
    let off = documents(
        &picket_inject_ok(
            &["--scrape-annotations", "false", "--rewrite-probes", "false"],
            &text,
        )
        .await?,
    )?;
    ensure!(
        off[0]["metadata"]["annotations"]
            .get("prometheus.io/scrape")
            .is_none()
    );
    ensure!(
        off[0]["spec"]["containers"][0]["readinessProbe"]
            == pod["spec"]["containers"][0]["readinessProbe"]
    );
    Ok(())
}

/// The injector's settings as `picket inject` flags: its args minus what only the server takes.
fn inject_settings<'a>(injector_args: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut settings = Vec::new();
    let mut rest = injector_args.get(2..).unwrap_or_default().iter();
    while let Some(arg) = rest.next() {
        let value = rest.next().context("a flag without a value")?;
        if ![
            "--log-format",
            "--listen",
            "--trust-bundle-file",
            "--token-file",
        ]
        .contains(arg)
        {
            settings.extend([*arg, *value]);
        }
    }
    Ok(settings)
}

/// The sidecar configuration `picket inject` with the chart's settings gives a Deployment,
/// read by the sidecar's own parser (the namespace and service account come from the
/// downward API in a pod, so they are filled in here).
async fn injected_config(manifests: &[Value]) -> Result<picket_proxy::config::Config> {
    let injector = named(manifests, "Deployment", "picket-injector")?;
    let args = strings(&injector["spec"]["template"]["spec"]["containers"][0]["args"]);
    let workload = std::fs::read_to_string(golden_path("inject/deployment.yaml"))?;
    let injected = picket_inject_ok(&inject_settings(&args)?, &workload).await?;
    let pod = &documents(&injected)?[0]["spec"]["template"];
    let text = pod["metadata"]["annotations"]["picket.dev/sidecar-config"]
        .as_str()
        .context("no config")?;
    let (head, tail) = text
        .split_once("identity:\n")
        .context("no identity section")?;
    let text = format!("{head}identity:\n  namespace: shop\n  service_account: web\n{tail}");
    picket_proxy::config::Config::parse("sidecar.yaml", &text)
        .map_err(|e| anyhow::anyhow!("{e}\n{text}"))
}

#[tokio::test]
async fn injected_sidecars_subscribe_to_the_charts_controller() -> Result<()> {
    for values in ci_values()? {
        let label = values.display().to_string();
        let manifests = documents(&helm_template(&values).await?)?;
        let config = injected_config(&manifests).await?;
        let controller = config
            .controller
            .with_context(|| format!("{label}: no controller section"))?;
        // The identity the controller presents is the one the sidecars pin, and the address
        // is its Service's name and port.
        let deployment = named(&manifests, "Deployment", "picket-controller")?;
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        ensure!(
            flag(&args, "--identity") == Some(&controller.identity.to_uri()[..]),
            "{label}: the sidecars pin {} but the controller is {:?}",
            controller.identity,
            flag(&args, "--identity")
        );
        let service = named(&manifests, "Service", "picket-controller")?;
        let port = service["spec"]["ports"][0]["port"].as_u64().unwrap_or(0);
        ensure!(
            controller.address == format!("picket-controller.picket.svc:{port}"),
            "{label}: {}",
            controller.address
        );
        ensure!(flag(&args, "--listen") == Some(&format!("0.0.0.0:{port}")[..]));
        let values_doc = documents(&std::fs::read_to_string(&values)?)?;
        let unmeshed = values_doc[0]["mesh"]["unmeshed"].as_str().unwrap_or("deny");
        let want = match unmeshed {
            "plaintext" => picket_proxy::config::Unmeshed::Plaintext,
            _ => picket_proxy::config::Unmeshed::Deny,
        };
        ensure!(
            config.outbound.unmeshed == want,
            "{label}: unmeshed {unmeshed}"
        );
    }

    // Without the controller the sidecars stay in file mode.
    let dir = tempfile::tempdir()?;
    let minimal = std::fs::read_to_string(chart_values("minimal"))?;
    let off = dir.path().join("no-controller.yaml");
    std::fs::write(&off, format!("{minimal}controller:\n  enabled: false\n"))?;
    let manifests = documents(&helm_template(&off).await?)?;
    ensure!(
        named(&manifests, "Deployment", "picket-controller").is_err(),
        "a controller without controller.enabled"
    );
    let config = injected_config(&manifests).await?;
    ensure!(
        config.controller.is_none(),
        "file mode has a controller section"
    );
    Ok(())
}
