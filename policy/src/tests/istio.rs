//! Istio AuthorizationPolicy documents, as Istio's own documentation writes them, load
//! unchanged; the fields Picket does not implement are refused by name.

use std::collections::BTreeMap;

use super::{Req, load_text};
use crate::{Action, Mode, Reason, Verdict, Workload};

const HTTPBIN_V1: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[version]
      values: ["v1", "v2"]
"#;

const DENY_V1BETA1: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: httpbin-deny
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["/admin*"]
        ports: ["8000"]
  - from:
    - source:
        ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
        notIpBlocks: ["5.6.7.8"]
"#;

const ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec:
  {}
"#;

const ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: bar
spec:
  rules:
  - {}
"#;

const TCP_V1: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
  labels:
    team: data
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: ["9000", "9001"]
    when:
    - key: source.ip
      notValues: ["10.0.0.0/8"]
"#;

fn httpbin() -> Workload {
    Workload {
        namespace: "foo".into(),
        labels: BTreeMap::from([
            ("app".to_owned(), "httpbin".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]),
    }
}

#[test]
fn istio_documents_load_unchanged() {
    let all = [HTTPBIN_V1, DENY_V1BETA1, ALLOW_NOTHING, ALLOW_ALL, TCP_V1].join("---\n");
    let set = load_text(&all).unwrap_or_else(|e| panic!("{e}"));
    let summary: Vec<(String, Action, Mode, usize)> = set
        .policies()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                p.action,
                p.mode,
                p.rules,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("bar/allow-all".to_owned(), Action::Allow, Mode::Enforce, 1),
            (
                "foo/allow-nothing".to_owned(),
                Action::Allow,
                Mode::Enforce,
                0
            ),
            ("foo/httpbin".to_owned(), Action::Allow, Mode::Enforce, 1),
            (
                "foo/httpbin-deny".to_owned(),
                Action::Deny,
                Mode::Enforce,
                2
            ),
            ("foo/tcp-policy".to_owned(), Action::Allow, Mode::Enforce, 1),
        ]
    );
    // The printed form keeps each document's apiVersion.
    let printed = set.to_yaml();
    assert_eq!(
        printed
            .matches("apiVersion: security.istio.io/v1\n")
            .count(),
        3
    );
    assert_eq!(
        printed
            .matches("apiVersion: security.istio.io/v1beta1\n")
            .count(),
        2
    );
}

#[test]
fn istio_semantics_hold() {
    let text = [HTTPBIN_V1, DENY_V1BETA1].join("---\n");
    let set = load_text(&text).unwrap();
    let p = set.for_workload(&httpbin());
    let curl = "cluster.local/ns/default/sa/curl";
    let ok = Req::http(curl).header("version", "v2");
    assert_eq!(ok.evaluate(&p).verdict, Verdict::Allow);
    assert_eq!(
        ok.clone().method("POST").evaluate(&p).verdict,
        Verdict::Deny
    );
    let dev = Req::http("cluster.local/ns/dev/sa/any").header("version", "v1");
    assert_eq!(dev.evaluate(&p).verdict, Verdict::Allow);
    // DENY: outside `foo`, POST /admin* on 8000.
    let post_admin = dev.clone().method("POST").path("/admin/x").port(8000);
    let d = post_admin.evaluate(&p);
    assert_eq!(
        (d.verdict, d.reason, d.rule),
        (Verdict::Deny, Reason::ExplicitDeny, Some(0))
    );
    // DENY rule 1: the listed blocks, except 5.6.7.8.
    assert_eq!(
        dev.clone().ip("5.6.7.9").evaluate(&p).reason,
        Reason::ExplicitDeny
    );
    assert_eq!(
        dev.clone().ip("5.6.7.8").evaluate(&p).verdict,
        Verdict::Allow
    );
    assert_eq!(dev.ip("1.2.3.4").evaluate(&p).reason, Reason::ExplicitDeny);
}

#[test]
fn unsupported_istio_fields_are_refused_by_name() {
    let jwt = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: foo
spec:
  targetRef:
    kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://example.com/jwks.json"
    fromCookies: ["session"]
"#;
    let custom = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: CUSTOM
  provider:
    name: sample-ext-authz-grpc
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"#;
    let gateway = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: gateway-policy
  namespace: foo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: DENY
  rules:
  - from:
    - source:
        remoteIpBlocks: ["1.2.3.4"]
"#;
    let cases: [(&str, &[&str]); 3] = [
        (
            jwt,
            &[
                "`spec.targetRef` is not supported by Picket",
                "`spec.jwtRules[0].fromCookies` is not supported by Picket",
            ],
        ),
        (
            custom,
            &[
                "`spec.action: CUSTOM` is not supported by Picket",
                "`spec.provider` is not supported by Picket",
            ],
        ),
        (
            gateway,
            &[
                "`spec.targetRefs` is not supported by Picket",
                "`spec.rules[0].from[0].source.remoteIpBlocks` is not supported by Picket",
            ],
        ),
    ];
    for (text, wanted) in cases {
        let errors = load_text(text).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), wanted.len(), "{errors}");
        for (got, want) in messages.iter().zip(wanted) {
            assert!(got.contains(want), "{got:?} does not say {want:?}");
        }
    }
}
