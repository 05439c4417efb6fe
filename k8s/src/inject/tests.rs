#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn settings() -> Settings {
    Settings::new("cluster.local".parse().unwrap())
}

fn pod(extra_metadata: Value, spec: Value) -> Value {
    let mut metadata = json!({"name": "web", "namespace": "shop"});
    if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
        m.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn app_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}]})
}

fn injected(mut value: Value) -> Value {
    inject(&mut value, &settings()).unwrap();
    value
}

fn init_args(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn adds_init_step_then_native_sidecar_before_the_apps_init_containers() {
    let mut spec = app_spec();
    spec["initContainers"] = json!([{"name": "migrate", "image": "migrate:1"}]);
    let pod = injected(pod(json!({}), spec));
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["port"], ADMIN_PORT);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    let env = sidecar["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({"name": "MIMALLOC_PURGE_EXTEND_DELAY", "value": "0"})),
        "{env:?}"
    );
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(pod["metadata"]["annotations"][STATUS_ANNOTATION], VERSION);
    assert_eq!(pod["spec"]["containers"], app_spec()["containers"]);
}

#[test]
fn injecting_twice_equals_injecting_once_and_uninject_restores() {
    let original = pod(json!({"labels": {"app": "web"}}), app_spec());
    let once = injected(original.clone());
    let twice = injected(once.clone());
    assert_eq!(once, twice);
    let mut back = twice;
    let reports = uninject(&mut back).unwrap();
    assert_eq!(reports[0].outcome, Outcome::Uninjected);
    assert_eq!(back, original);
    let reports = uninject(&mut back).unwrap();
    assert_eq!(reports[0].outcome, Outcome::NotInjected);
}

#[test]
fn reinjecting_with_new_settings_replaces_the_sidecar() {
    let once = injected(pod(json!({}), app_spec()));
    let mut again = once.clone();
    let settings = Settings {
        image: "picket/picket:9.9.9".to_owned(),
        ..settings()
    };
    inject(&mut again, &settings).unwrap();
    assert_eq!(again["spec"]["initContainers"].as_array().unwrap().len(), 2);
    assert_eq!(
        again["spec"]["initContainers"][1]["image"],
        "picket/picket:9.9.9"
    );
}

#[test]
fn port_and_cidr_opt_outs_reach_the_iptables_step() {
    let annotations = json!({"annotations": {
        EXCLUDE_INBOUND_PORTS_ANNOTATION: "9090, 7191",
        EXCLUDE_OUTBOUND_PORTS_ANNOTATION: "5432",
        EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: "169.254.169.254/32,fd00::/8",
    }});
    let pod = injected(pod(annotations, app_spec()));
    assert_eq!(
        init_args(&pod)[7..],
        [
            "--exclude-inbound-ports",
            "7191,9090",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,fd00::/8"
        ]
    );
    let plain = injected(pod_without_annotations());
    assert_eq!(init_args(&plain)[7..], ["--exclude-inbound-ports", "7191"]);
}

fn pod_without_annotations() -> Value {
    pod(json!({}), app_spec())
}

#[test]
fn bad_opt_out_annotations_are_errors_naming_the_workload() {
    for (key, value) in [
        (EXCLUDE_INBOUND_PORTS_ANNOTATION, "http"),
        (EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "0"),
        (EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "70000"),
        (EXCLUDE_OUTBOUND_CIDRS_ANNOTATION, "10.0.0.0/33"),
        // Parsed as policy ipBlocks are: host bits set is an error (a bare address is one host).
        (EXCLUDE_OUTBOUND_CIDRS_ANNOTATION, "10.0.0.1/8"),
    ] {
        let mut pod = pod(json!({"annotations": {key: value}}), app_spec());
        let err = inject(&mut pod, &settings()).unwrap_err();
        assert!(
            err.to_string().starts_with("Pod shop/web: annotation"),
            "{err}"
        );
    }
}

#[test]
fn opted_out_and_host_network_pods_are_left_alone() {
    for original in [
        pod(
            json!({"annotations": {INJECT_ANNOTATION: "false"}}),
            app_spec(),
        ),
        pod(json!({"labels": {INJECT_ANNOTATION: "false"}}), app_spec()),
        pod(json!({}), {
            let mut spec = app_spec();
            spec["hostNetwork"] = json!(true);
            spec
        }),
    ] {
        let mut pod = original.clone();
        let reports = inject(&mut pod, &settings()).unwrap();
        assert!(matches!(reports[0].outcome, Outcome::Skipped(_)));
        assert_eq!(pod, original);
    }
}

#[test]
fn a_foreign_container_with_a_reserved_name_is_a_conflict() {
    let mut spec = app_spec();
    spec["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": PROXY_CONTAINER, "image": "x:1"}));
    let mut pod = pod(json!({}), spec);
    assert!(matches!(
        inject(&mut pod, &settings()),
        Err(InjectError::Conflict { .. })
    ));
}

#[test]
fn other_kinds_pass_through_and_lists_are_walked() {
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    let mut same = service.clone();
    assert!(inject(&mut same, &settings()).unwrap().is_empty());
    assert_eq!(same, service);
    let mut list =
        json!({"apiVersion": "v1", "kind": "List", "items": [service, pod(json!({}), app_spec())]});
    let reports = inject(&mut list, &settings()).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].workload, "Pod shop/web");
}

#[test]
fn yaml_round_trip_keeps_kubectl_meanings() {
    let text = "a: 0644\nb: \"0644\"\nc: yes\nd: \"yes\"\ne: \"1337\"\nf: ~\ng: \"on\"\n---\n---\nh: [1, 2.5]\n";
    let docs = parse_manifests("input", text).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["a"], 420);
    assert_eq!(docs[0]["b"], "0644");
    assert_eq!(docs[0]["c"], true);
    assert_eq!(docs[0]["d"], "yes");
    assert_eq!(docs[0]["e"], "1337");
    assert!(docs[0]["f"].is_null());
    let printed = print_manifests(&docs).unwrap();
    assert_eq!(parse_manifests("printed", &printed).unwrap(), docs);
}

/// The config annotation with the identity the sidecar gets from its environment.
fn rendered_config(pod: &Value) -> String {
    let config = pod["metadata"]["annotations"][CONFIG_ANNOTATION]
        .as_str()
        .unwrap();
    config.replace(
        "identity:\n  trust_domain: cluster.local\n",
        "identity:\n  trust_domain: cluster.local\n  namespace: shop\n  service_account: web\n",
    )
}

#[test]
fn the_metadata_setting_reaches_the_sidecar_config() {
    let mut settings = settings();
    settings.block_metadata = false;
    let mut pod = pod(json!({"labels": {"app": "web"}}), app_spec());
    inject(&mut pod, &settings).unwrap();
    let text = rendered_config(&pod);
    let config = picket_proxy::config::Config::parse("sidecar.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(!config.outbound.block_metadata, "{text}");
}

#[test]
fn rendered_config_is_a_valid_transparent_sidecar_config() {
    let mut spec = app_spec();
    spec["containers"][0]["ports"] = json!([{"containerPort": 8080, "protocol": "TCP"}]);
    let pod = injected(pod(json!({"labels": {"app": "web"}}), spec));
    let text = rendered_config(&pod);
    let config = picket_proxy::config::Config::parse("sidecar.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.inbound.listen.port(), INBOUND_PORT);
    assert_eq!(config.inbound.app.map(|a| a.port()), Some(8080));
    assert!(config.inbound.transparent && config.outbound.transparent);
    assert_eq!(config.outbound.listen.port(), OUTBOUND_PORT);
    assert_eq!(config.outbound.meshed.len(), 4);
    assert!(config.outbound.passthrough);
    assert!(config.outbound.block_metadata, "blocked by default");
    assert_eq!(config.admin.listen.port(), ADMIN_PORT);
    assert_eq!(
        config.policy.path.as_deref(),
        Some(std::path::Path::new("/etc/picket/policy/policy.yaml"))
    );
}

#[test]
fn the_controller_and_unmeshed_settings_reach_the_sidecar_config() {
    // Without them the sidecar stays in file mode and refuses unmeshed endpoints (its
    // defaults), and neither key is written.
    let text = rendered_config(&injected(pod(json!({}), app_spec())));
    assert!(
        !text.contains("controller") && !text.contains("unmeshed"),
        "{text}"
    );

    let mut settings = settings();
    settings.controller = Some(ControllerSettings {
        address: "picket-controller.picket.svc:7150".to_owned(),
        identity: "spiffe://cluster.local/ns/picket/sa/picket-controller"
            .parse()
            .unwrap(),
    });
    settings.unmeshed_plaintext = true;
    let mut pod = pod(json!({}), app_spec());
    inject(&mut pod, &settings).unwrap();
    let text = rendered_config(&pod);
    let config = picket_proxy::config::Config::parse("sidecar.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let controller = config.controller.expect("a controller section");
    assert_eq!(controller.address, "picket-controller.picket.svc:7150");
    assert_eq!(
        controller.identity.to_uri(),
        "spiffe://cluster.local/ns/picket/sa/picket-controller"
    );
    assert_eq!(
        config.outbound.unmeshed,
        picket_proxy::config::Unmeshed::Plaintext
    );
    // Addresses the controller does not know keep the meshed expectation.
    assert_eq!(config.outbound.meshed.len(), 4);
}

fn probed_spec() -> Value {
    json!({"containers": [{
        "name": "app",
        "image": "shop:1",
        "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9000}, {"containerPort": 9090}],
        "livenessProbe": {"httpGet": {"path": "/healthz?deep=1", "port": "http", "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}, "periodSeconds": 7, "timeoutSeconds": 3},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 5},
        "startupProbe": {"grpc": {"port": 9000, "service": "orders"}},
    }, {
        "name": "metrics",
        "image": "exporter:1",
        "livenessProbe": {"httpGet": {"path": "/", "port": 9090}},
        "readinessProbe": {"exec": {"command": ["true"]}},
    }]})
}

#[test]
fn probes_are_rewritten_to_the_health_listener_and_restored_exactly() {
    let original = pod(
        json!({"annotations": {EXCLUDE_INBOUND_PORTS_ANNOTATION: "9090"}}),
        probed_spec(),
    );
    let once = injected(original.clone());
    let app = &once["spec"]["containers"][0];
    for (kind, short) in PROBE_KINDS {
        assert_eq!(
            app[kind]["httpGet"],
            json!({"path": format!("/app-health/app/{short}"), "port": HEALTH_PORT, "scheme": "HTTP"}),
            "{kind}"
        );
        assert!(app[kind].get("tcpSocket").is_none() && app[kind].get("grpc").is_none());
    }
    // Other probe fields are kept.
    assert_eq!(app["livenessProbe"]["periodSeconds"], 7);
    assert_eq!(app["readinessProbe"]["failureThreshold"], 5);
    // An excluded port and an exec probe are left alone.
    assert_eq!(
        once["spec"]["containers"][1],
        probed_spec()["containers"][1]
    );
    // The health port is never intercepted, and the sidecar declares it.
    assert!(
        init_args(&once)
            .join(" ")
            .contains("--exclude-inbound-ports 7191,9090,7192")
    );
    let ports = &once["spec"]["initContainers"][1]["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"] == HEALTH_PORT)
    );

    let config =
        picket_proxy::config::Config::parse("sidecar.yaml", &rendered_config(&once)).unwrap();
    let health = config.health.expect("a health listener");
    assert_eq!(health.listen.port(), HEALTH_PORT);
    use picket_proxy::config::ProbeCheck;
    let live = &health.probes["app/livez"];
    assert_eq!(live.timeout, std::time::Duration::from_secs(3));
    match &live.check {
        ProbeCheck::Http {
            port,
            path,
            https,
            headers,
        } => {
            assert_eq!(
                (*port, path.as_str(), *https),
                (8080, "/healthz?deep=1", true)
            );
            assert_eq!(headers, &[("X-Probe".to_owned(), "yes".to_owned())]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        health.probes["app/readyz"].check,
        ProbeCheck::Tcp { port: 8080 }
    ));
    assert!(matches!(
        &health.probes["app/startupz"].check,
        ProbeCheck::Grpc { port: 9000, service } if service == "orders"
    ));
    assert_eq!(health.probes.len(), 3);

    assert_eq!(injected(once.clone()), once, "injecting twice equals once");
    let mut back = once;
    uninject(&mut back).unwrap();
    assert_eq!(back, original);
}

#[test]
fn the_health_path_is_the_one_the_sidecar_serves() {
    assert_eq!(HEALTH_PATH_PREFIX, picket_proxy::health::PATH_PREFIX);
}

#[test]
fn probe_rewriting_can_be_turned_off_per_pod_and_by_setting() {
    let original = pod(
        json!({"annotations": {REWRITE_PROBES_ANNOTATION: "false"}}),
        probed_spec(),
    );
    let pod1 = injected(original.clone());
    assert_eq!(pod1["spec"]["containers"], probed_spec()["containers"]);
    assert!(!rendered_config(&pod1).contains("health"));
    let mut pod2 = pod(json!({}), probed_spec());
    let settings = Settings {
        rewrite_probes: false,
        ..settings()
    };
    inject(&mut pod2, &settings).unwrap();
    assert_eq!(pod2["spec"]["containers"], probed_spec()["containers"]);
    let mut bad = pod(
        json!({"annotations": {REWRITE_PROBES_ANNOTATION: "no"}}),
        probed_spec(),
    );
    assert!(inject(&mut bad, &super::tests::settings()).is_err());
}

#[test]
fn a_probe_on_an_undeclared_named_port_is_an_error_naming_it() {
    let mut spec = app_spec();
    spec["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/", "port": "web"}});
    let err = inject(&mut pod(json!({}), spec), &settings()).unwrap_err();
    assert!(
        err.to_string()
            .contains("container \"app\" readinessProbe: port \"web\""),
        "{err}"
    );
}

#[test]
fn inbound_mode_comes_from_the_annotation_or_the_setting() {
    let mode = |annotations: Value, permissive: bool| {
        let mut p = pod(json!({"annotations": annotations}), app_spec());
        let settings = Settings {
            permissive,
            ..settings()
        };
        inject(&mut p, &settings).unwrap();
        picket_proxy::config::Config::parse("sidecar.yaml", &rendered_config(&p))
            .unwrap()
            .inbound
            .mode
    };
    use picket_proxy::config::InboundMode;
    assert_eq!(mode(json!({}), false), InboundMode::Strict);
    assert_eq!(mode(json!({}), true), InboundMode::Permissive);
    assert_eq!(
        mode(json!({INBOUND_MODE_ANNOTATION: "strict"}), true),
        InboundMode::Strict
    );
    assert_eq!(
        mode(json!({INBOUND_MODE_ANNOTATION: "permissive"}), false),
        InboundMode::Permissive
    );
    assert_eq!(
        mode(json!({PERMISSIVE_PORTS_ANNOTATION: "8080, 9000"}), false),
        InboundMode::PermissivePorts(vec![8080, 9000])
    );
    let mut bad = pod(
        json!({"annotations": {INBOUND_MODE_ANNOTATION: "open"}}),
        app_spec(),
    );
    assert!(inject(&mut bad, &settings()).is_err());
}

#[test]
fn scrape_annotations_are_added_unless_the_pod_has_its_own_and_removed_exactly() {
    let plain = injected(pod(json!({}), app_spec()));
    let a = &plain["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "7191");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    let own = pod(
        json!({"annotations": {"prometheus.io/port": "9100"}}),
        app_spec(),
    );
    let injected_own = injected(own.clone());
    assert!(
        injected_own["metadata"]["annotations"]
            .get("prometheus.io/scrape")
            .is_none()
    );
    let mut back = injected_own;
    uninject(&mut back).unwrap();
    assert_eq!(back, own);
    let mut off = pod(json!({}), app_spec());
    let settings = Settings {
        scrape_annotations: false,
        ..settings()
    };
    inject(&mut off, &settings).unwrap();
    assert!(
        off["metadata"]["annotations"]
            .get("prometheus.io/scrape")
            .is_none()
    );
}

#[test]
fn yaml_errors_say_where() {
    let err = parse_manifests("deploy.yaml", "a: 1\na: 2\n").unwrap_err();
    assert!(err.to_string().starts_with("deploy.yaml:"), "{err}");
}
