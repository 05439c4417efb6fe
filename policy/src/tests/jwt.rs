//! End-user identity: `RequestAuthentication` documents, `requestPrincipals` /
//! `notRequestPrincipals` and the `request.auth.*` condition keys. The Istio documents below are
//! written out from Istio's RequestAuthentication reference and its JWT authorization task, and
//! load unchanged.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Req, doc, load_text, orders_policies};
use crate::{JwksSource, Reason, Verdict, Workload};

/// Istio's RequestAuthentication reference: the first example, with its companion
/// AuthorizationPolicy that requires a valid token ("requestPrincipals: ['*']").
const ISTIO_REQUIRE_JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - from:
    - source:
        requestPrincipals: ["*"]
"#;

/// The reference's example with token locations and claim output.
const ISTIO_LOCATIONS: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
    fromHeaders:
    - name: x-jwt-assertion
      prefix: "Bearer "
    fromParams:
    - "my_token"
    outputClaimToHeaders:
    - header: "x-jwt-claim-foo"
      claim: "foo"
"#;

/// Istio's JWT authorization task: a token from `testing@secure.istio.io` is required, and a
/// second policy requires the claim `groups` to contain `group1`.
const ISTIO_TASK: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: "jwt-example"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"#;

/// The reference's DENY form: requests without a request principal are refused, on any path
/// but `/healthz`.
const ISTIO_DENY_NO_JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
    to:
    - operation:
        notPaths: ["/healthz"]
"#;

fn httpbin() -> Workload {
    Workload {
        namespace: "foo".into(),
        labels: BTreeMap::from([("app".to_owned(), "httpbin".to_owned())]),
    }
}

#[test]
fn istio_request_authentication_examples_load_unchanged() {
    for text in [
        ISTIO_REQUIRE_JWT,
        ISTIO_LOCATIONS,
        ISTIO_TASK,
        ISTIO_DENY_NO_JWT,
    ] {
        let set = load_text(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Printing and loading again gives the same set.
        let again = load_text(&set.to_yaml()).unwrap_or_else(|e| panic!("{e}\n{}", set.to_yaml()));
        assert_eq!(set, again, "{}", set.to_yaml());
    }
    let set = load_text(ISTIO_LOCATIONS).unwrap();
    let authn = &set.authentications()[0];
    assert_eq!(authn.reference(), "foo/httpbin");
    let rule = &authn.rules[0];
    assert_eq!(rule.issuer, "issuer-foo");
    assert_eq!(
        rule.jwks,
        JwksSource::Uri("https://example.com/.well-known/jwks.json".into())
    );
    assert_eq!(rule.token_headers()[0].name, "x-jwt-assertion");
    assert_eq!(rule.token_headers()[0].prefix, "Bearer ");
    assert_eq!(rule.token_params(), vec!["my_token".to_owned()]);
    assert_eq!(rule.output_claim_to_headers[0].header, "x-jwt-claim-foo");
    assert!(!rule.forward_original_token);
    // Without locations, Istio's defaults.
    let set = load_text(ISTIO_REQUIRE_JWT).unwrap();
    let rule = &set.authentications()[0].rules[0];
    assert_eq!(rule.token_headers()[0].name, "authorization");
    assert_eq!(rule.token_headers()[0].prefix, "Bearer ");
    assert_eq!(rule.token_params(), vec!["access_token".to_owned()]);
}

#[test]
fn istio_examples_decide_as_documented() {
    let policies = load_text(ISTIO_REQUIRE_JWT)
        .unwrap()
        .for_workload(&httpbin());
    assert_eq!(policies.authentications().len(), 1);
    let peer = "cluster.local/ns/foo/sa/curl";
    // "requests without a valid token are rejected": the RequestAuthentication does not
    // refuse them, the ALLOW policy does.
    let d = Req::http(peer).evaluate(&policies);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::Unauthenticated)
    );
    let with = Req::http(peer).jwt(json!({"iss": "issuer-foo", "sub": "alice"}));
    assert_eq!(with.evaluate(&policies).verdict, Verdict::Allow);

    let policies = load_text(ISTIO_TASK).unwrap().for_workload(&httpbin());
    let user = json!({"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io"});
    let mut in_group = user.clone();
    in_group["groups"] = json!(["group1", "group2"]);
    let mut other_group = user.clone();
    other_group["groups"] = json!(["group2"]);
    assert_eq!(
        Req::http(peer).jwt(in_group).evaluate(&policies).verdict,
        Verdict::Allow
    );
    assert_eq!(
        Req::http(peer).jwt(other_group).evaluate(&policies).verdict,
        Verdict::Deny
    );
    assert_eq!(
        Req::http(peer).jwt(user).evaluate(&policies).verdict,
        Verdict::Deny
    );

    let policies = load_text(ISTIO_DENY_NO_JWT)
        .unwrap()
        .for_workload(&httpbin());
    let d = Req::http(peer).path("/ip").evaluate(&policies);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::ExplicitDeny));
    let d = Req::http(peer).path("/healthz").evaluate(&policies);
    assert_eq!(d.reason, Reason::Default);
    let d = Req::http(peer)
        .path("/ip")
        .jwt(json!({"iss": "a", "sub": "b"}))
        .evaluate(&policies);
    assert_eq!(d.reason, Reason::Default);
}

#[test]
fn request_principal_forms() {
    let policies = orders_policies(&doc(
        "p",
        "  rules:\n  - from: [{source: {requestPrincipals: [\"https://idp.example/alice\", \"https://other.example/*\", \"*/bob\"]}}]\n",
    ));
    let allowed = [
        json!({"iss": "https://idp.example", "sub": "alice"}),
        json!({"iss": "https://other.example", "sub": "anyone"}),
        json!({"iss": "https://third.example", "sub": "bob"}),
    ];
    for claims in allowed {
        let d = Req::http(super::FRONTEND)
            .jwt(claims.clone())
            .evaluate(&policies);
        assert_eq!(d.verdict, Verdict::Allow, "{claims}");
    }
    let denied = [
        json!({"iss": "https://idp.example", "sub": "mallory"}),
        json!({"iss": "https://idp.example"}),
        json!({"sub": "bob"}),
    ];
    for claims in denied {
        let d = Req::http(super::FRONTEND)
            .jwt(claims.clone())
            .evaluate(&policies);
        assert_eq!(d.verdict, Verdict::Deny, "{claims}");
    }
    // On TCP an ALLOW with request principals never matches.
    assert_eq!(
        Req::tcp(super::FRONTEND).evaluate(&policies).verdict,
        Verdict::Deny
    );
}

#[test]
fn auth_condition_keys() {
    let policies = orders_policies(&doc(
        "p",
        r#"  rules:
  - when:
    - key: request.auth.principal
      values: ["https://idp.example/*"]
    - key: request.auth.audiences
      values: ["orders"]
    - key: request.auth.presenter
      notValues: ["untrusted-app"]
    - key: request.auth.claims[realm_access][roles]
      values: ["admin", "ops*"]
    - key: request.auth.claims[email_verified]
      values: ["true"]
"#,
    ));
    let base = json!({
        "iss": "https://idp.example",
        "sub": "alice",
        "aud": ["web", "orders"],
        "azp": "web-app",
        "realm_access": {"roles": ["viewer", "ops-oncall"]},
        "email_verified": true,
    });
    let allow = |claims: serde_json::Value| {
        Req::http(super::FRONTEND)
            .jwt(claims)
            .evaluate(&policies)
            .verdict
    };
    assert_eq!(allow(base.clone()), Verdict::Allow);
    let mut single_aud = base.clone();
    single_aud["aud"] = json!("orders");
    assert_eq!(allow(single_aud), Verdict::Allow);
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!(["web"]);
    assert_eq!(allow(wrong_aud), Verdict::Deny);
    let mut presenter = base.clone();
    presenter["azp"] = json!("untrusted-app");
    assert_eq!(allow(presenter), Verdict::Deny);
    let mut no_presenter = base.clone();
    no_presenter.as_object_mut().unwrap().remove("azp");
    assert_eq!(allow(no_presenter), Verdict::Allow);
    let mut roles = base.clone();
    roles["realm_access"]["roles"] = json!(["viewer"]);
    assert_eq!(allow(roles), Verdict::Deny);
    let mut flat = base.clone();
    flat["realm_access"] = json!("admin");
    assert_eq!(allow(flat), Verdict::Deny);
    let mut unverified = base.clone();
    unverified["email_verified"] = json!(false);
    assert_eq!(allow(unverified), Verdict::Deny);
    // Without a token: unauthenticated.
    let d = Req::http(super::FRONTEND).evaluate(&policies);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::Unauthenticated)
    );

    // The explanation names the failing condition and the value the token had.
    let mut roles = base;
    roles["realm_access"]["roles"] = json!(["viewer"]);
    let e = Req::http(super::FRONTEND).jwt(roles).explain(&policies);
    let text = e.to_string();
    assert!(
        text.contains("when[3] (request.auth.claims[realm_access][roles]) values: `viewer` matches none of [admin, ops*]"),
        "{text}"
    );
}

#[test]
fn explain_names_request_principals() {
    let policies = orders_policies(&doc(
        "p",
        "  rules:\n  - from: [{source: {requestPrincipals: [\"idp/alice\"]}}]\n",
    ));
    let text = Req::http(super::FRONTEND).explain(&policies).to_string();
    assert!(
        text.contains("from[0].source.requestPrincipals: the request has no request principal"),
        "{text}"
    );
    let text = Req::http(super::FRONTEND)
        .jwt(json!({"iss": "idp", "sub": "bob"}))
        .explain(&policies)
        .to_string();
    assert!(
        text.contains("requestPrincipals: `idp/bob` matches none of [idp/alice]"),
        "{text}"
    );
}

#[test]
fn request_authentications_are_selected_like_policies() {
    let text = r#"
apiVersion: picket.dev/v1
kind: RequestAuthentication
metadata: {name: orders-only, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  jwtRules: [{issuer: a, jwksUri: "https://idp.example/keys"}]
---
apiVersion: picket.dev/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: picket-system}
spec:
  jwtRules: [{issuer: b, jwks: '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'}]
---
apiVersion: picket.dev/v1
kind: RequestAuthentication
metadata: {name: other-ns, namespace: bank}
spec:
  jwtRules: [{issuer: c, jwksUri: "https://idp.example/keys"}]
"#;
    let set = load_text(text).unwrap();
    let names = |w: &Workload| -> Vec<String> {
        set.for_workload(w)
            .authentications()
            .iter()
            .map(|a| a.reference())
            .collect()
    };
    assert_eq!(
        names(&super::orders()),
        vec!["picket-system/mesh", "shop/orders-only"]
    );
    let web = Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
    };
    assert_eq!(names(&web), vec!["picket-system/mesh"]);
}

#[test]
fn request_authentication_load_errors() {
    let authn = |rule: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: a, namespace: shop}}\nspec:\n  jwtRules:\n  - {rule}\n"
        )
    };
    let cases = [
        (authn("{issuer: a}"), "needs `jwksUri` or `jwks`"),
        (
            authn("{issuer: a, jwksUri: \"http://idp/keys\"}"),
            "is not an https:// URL",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", jwks: '{\"keys\":[]}'}"),
            "gives both",
        ),
        (authn("{issuer: a, jwks: '{\"keys\": []}'}"), "has no keys"),
        (authn("{issuer: a, jwks: 'nope'}"), "not a JSON JWK set"),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", fromCookies: [session]}"),
            "`spec.jwtRules[0].fromCookies` is not supported by Picket",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", timeout: 5s}"),
            "`spec.jwtRules[0].timeout` is not supported by Picket",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", outputPayloadToHeader: x-picket-peer-identity}"),
            "a header the sidecar manages",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", outputClaimToHeaders: [{header: x-user, claim: \"a..b\"}]}"),
            "is not a claim name",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", fromHeaders: [{name: \"bad header\"}]}"),
            "is not a header name",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", forwardOriginalToken: \"yes\"}"),
            "expected true or false",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\", audience: [x]}"),
            "unknown field `audience`",
        ),
        (
            authn("{issuer: a, jwksUri: \"https://idp/k\"}\n  - {issuer: a, jwksUri: \"https://idp/j\"}"),
            "issuer `a` has an earlier rule",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a, namespace: shop}\nspec: {}\n".to_owned(),
            "without `spec.jwtRules`",
        ),
        (
            doc("p", "  rules:\n  - from: [{source: {requestPrincipals: [alice]}}]\n"),
            "is not a request principal",
        ),
        (
            doc("p", "  rules:\n  - from: [{source: {requestPrincipals: [\"a/b\"], notRequestPrincipals: [\"a/b\"]}}]\n"),
            "it can never match",
        ),
        (
            doc("p", "  rules:\n  - when: [{key: \"request.auth.claims[]\", values: [x]}]\n"),
            "is not a claim name",
        ),
    ];
    for (text, want) in cases {
        let err = load_text(&text).expect_err(&text).to_string();
        assert!(err.contains(want), "want {want:?} in:\n{err}\nfor:\n{text}");
        assert!(err.starts_with("test.yaml:"), "{err}");
    }
    // The same name for a policy and a RequestAuthentication is fine (different kinds); twice
    // the same RequestAuthentication is not.
    let one = authn("{issuer: a, jwksUri: \"https://idp/k\"}");
    let both = format!("{one}---\n{}", doc("a", "  rules: [{}]\n"));
    assert!(load_text(&both).is_ok());
    let twice = format!("{one}---\n{one}");
    let err = load_text(&twice).unwrap_err().to_string();
    assert!(
        err.contains("RequestAuthentication `shop/a` is already defined at test.yaml:3:"),
        "{err}"
    );
}
