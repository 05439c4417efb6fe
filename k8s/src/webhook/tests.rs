#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn settings() -> Settings {
    Settings::new("cluster.local".parse().unwrap())
}

fn admission(operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "object": object,
        },
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "web-", "namespace": "shop"},
               "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}})
}

/// Applies `patch` with an independent RFC 6902 implementation.
fn apply(mut doc: Value, patch: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

#[test]
fn patch_turns_the_pod_into_the_injected_pod() {
    let answer = review(&admission("CREATE", pod()), &settings()).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Vec<Value> = serde_json::from_slice(
        &STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut expected = pod();
    inject::inject(&mut expected, &settings()).unwrap();
    assert_eq!(apply(pod(), &patch), expected);
}

#[test]
fn other_operations_and_opted_out_pods_get_no_patch() {
    let update = review(&admission("UPDATE", pod()), &settings()).unwrap();
    assert_eq!(update["response"]["allowed"], true);
    assert!(update["response"].get("patch").is_none());
    let mut opted_out = pod();
    opted_out["metadata"]["labels"] = json!({"picket.dev/inject": "false"});
    let answer = review(&admission("CREATE", opted_out), &settings()).unwrap();
    assert!(answer["response"].get("patch").is_none());
}

#[test]
fn a_pod_with_a_bad_annotation_is_refused_with_the_reason() {
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"picket.dev/exclude-inbound-ports": "http"});
    let answer = review(&admission("CREATE", bad), &settings()).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("exclude-inbound-ports")
    );
}

#[test]
fn not_a_review_is_an_error() {
    assert!(review(b"{}", &settings()).is_err());
    assert!(review(b"not json", &settings()).is_err());
}

#[test]
fn list_diff_keeps_common_ends_and_escapes_keys() {
    let from = json!({"a/b": 1, "l": [1, 2, 3, 4], "gone": true});
    let to = json!({"a/b": 2, "l": [0, 1, 9, 4, 5], "new~": null});
    let patch = json_patch(&from, &to);
    assert!(patch.iter().any(|op| op["path"] == "/a~1b"));
    assert!(patch.iter().any(|op| op["path"] == "/new~0"));
    assert_eq!(apply(from, &patch), to);
}
