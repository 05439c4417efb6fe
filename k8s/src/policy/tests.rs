#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

/// An object as the API server stores it: server-written fields included.
fn stored(spec: Value) -> Value {
    json!({
        "apiVersion": "picket.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "orders-read", "namespace": "shop",
            "uid": "0c8b", "resourceVersion": "42", "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": spec,
    })
}

fn good_spec() -> Value {
    json!({
        "selector": {"matchLabels": {"app": "orders"}},
        "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}],
    })
}

#[test]
fn a_stored_object_renders_without_server_fields_and_loads() {
    let rendered = render(&stored(good_spec())).unwrap();
    assert_eq!(
        rendered.source,
        "picket.dev/v1 AuthorizationPolicy shop/orders-read"
    );
    for server_field in ["uid", "resourceVersion", "managedFields", "last-applied"] {
        assert!(!rendered.text.contains(server_field), "{}", rendered.text);
    }
    check(&stored(good_spec()), &LoadOptions::default()).unwrap();
}

#[test]
fn the_dry_run_annotation_is_kept() {
    let mut object = stored(good_spec());
    object["metadata"]["annotations"]["istio.io/dry-run"] = json!("true");
    let rendered = render(&object).unwrap();
    assert!(rendered.text.contains("\"istio.io/dry-run\": \"true\""));
    let set = picket_policy::load(
        &[Source {
            name: &rendered.source,
            text: &rendered.text,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(set.policies().count(), 1);
}

#[test]
fn every_problem_names_its_field_and_place_with_the_loaders_message() {
    let spec = json!({
        "rules": [{"to": [{"operation": {"methods": ["GET"], "pathz": ["/x"]}}]}],
        "provider": {"name": "ext"},
    });
    let problems = check(&stored(spec.clone()), &LoadOptions::default()).unwrap_err();
    // The same messages as the loader gives the same document as a file.
    let rendered = render(&stored(spec)).unwrap();
    let direct = picket_policy::load(
        &[Source {
            name: "f",
            text: &rendered.text,
        }],
        &LoadOptions::default(),
    )
    .unwrap_err();
    let messages: Vec<&str> = direct.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>(),
        messages
    );
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"spec.rules[0].to[0].operation.pathz"),
        "{problems:?}"
    );
    assert!(paths.contains(&"spec.provider"), "{problems:?}");
    // Each line:column is where that field is written in the rendered text.
    for p in &problems {
        let line = rendered
            .text
            .lines()
            .nth(usize::try_from(p.line - 1).unwrap());
        let key = p.path.rsplit('.').next().unwrap();
        assert!(line.unwrap().contains(key), "{p:?} {line:?}");
    }
}

#[test]
fn paths_name_list_items_and_odd_keys() {
    let object = json!({"apiVersion": "v", "kind": "k",
        "metadata": {"name": "n", "namespace": "s", "labels": {"a.b/c": "d"}},
        "spec": {"rules": [{}, {"when": [{"key": "source.ip", "values": ["x"]}]}]}});
    let r = render(&object).unwrap();
    let find = |needle: &str| {
        let (i, line) = r
            .text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        let column = line.chars().take_while(|c| *c == ' ').count() + 1;
        r.path_at(
            u64::try_from(i + 1).unwrap(),
            u64::try_from(column).unwrap(),
        )
        .to_owned()
    };
    assert_eq!(find("\"a.b/c\""), "metadata.labels[\"a.b/c\"]");
    assert_eq!(find("\"x\""), "spec.rules[1].when[0].values[0]");
}

fn admission(kind: (&str, &str), operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "namespace": "shop", "name": "orders-read",
            "operation": operation,
            "object": object,
        },
    }))
    .unwrap()
}

#[test]
fn the_review_refuses_a_bad_policy_and_allows_a_good_one() {
    let bad = stored(json!({"action": "MAYBE"}));
    let answer = review(
        &admission(("picket.dev", KIND), "CREATE", bad.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "u-1");
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.action"), "{message}");
    assert!(
        message.contains("picket.dev/v1 AuthorizationPolicy shop/orders-read:"),
        "{message}"
    );
    assert_eq!(
        response["status"]["details"]["causes"][0]["field"],
        "spec.action"
    );

    // The Istio kind is checked the same way; deletions and other kinds are not checked.
    let mut istio = bad.clone();
    istio["apiVersion"] = json!("security.istio.io/v1");
    let answer = review(
        &admission(("security.istio.io", KIND), "UPDATE", istio),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    for (kind, op) in [(("picket.dev", KIND), "DELETE"), (("", "Pod"), "CREATE")] {
        let answer = review(&admission(kind, op, bad.clone()), &LoadOptions::default()).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{kind:?} {op}");
    }
    let answer = review(
        &admission(("picket.dev", KIND), "CREATE", stored(good_spec())),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(review(b"{}", &LoadOptions::default()).is_err());
}
