//! End-user request authentication through real sidecars: a JWKS server over HTTPS, tokens
//! minted in the test, Istio's RequestAuthentication + AuthorizationPolicy semantics. Each
//! case checks the status and what the app received (or that it received nothing).

use std::time::Duration;

use anyhow::{Result, ensure};
use http::{Method, StatusCode, Version};
use picket_proxy::echo::Description;
use picket_tests::clients::{body_text, empty, request, send};
use picket_tests::jwt::{
    JwksMode, JwksServer, TestKey, hmac_token, jwks, now, tamper, unsigned_token,
};
use picket_tests::prom::scrape;
use picket_tests::proxy::allow_authenticated;
use picket_tests::{Mesh, MeshOptions, assert_eventually, eventually};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test";

/// Istio's pair: a RequestAuthentication naming the issuer and its JWKS, and an
/// AuthorizationPolicy that lets buyers (a list-valued claim) call `/api/*` and anyone call
/// `/public/*`.
fn policy(jwks_uri: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: idp, namespace: shop}}
spec:
  jwtRules:
  - issuer: "{ISSUER}"
    audiences: ["orders"]
    jwksUri: "{jwks_uri}"
    outputClaimToHeaders:
    - header: x-user
      claim: sub
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/api/*"]}}}}]
    when:
    - key: request.auth.claims[groups]
      values: ["buyers"]
  - to: [{{operation: {{paths: ["/public/*"]}}}}]
"#
    )
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": "orders", "groups": ["staff", "buyers"],
           "iat": now(), "exp": now() + 600})
}

/// A mesh whose orders sidecar validates tokens of `server`, with quick JWKS timings.
async fn mesh(server: &JwksServer, dir: &tempfile::TempDir, timings: &str) -> Result<Mesh> {
    let roots = dir.path().join("jwks-roots.pem");
    std::fs::write(&roots, &server.ca_pem)?;
    let yaml = format!(
        "jwt:\n  trust_roots: {}\n{timings}",
        serde_json::to_string(&roots.display().to_string())?
    );
    Mesh::start_with(MeshOptions {
        orders_policy: Some(policy(&server.url)),
        orders_yaml: yaml,
        ..MeshOptions::default()
    })
    .await
}

const QUICK: &str = "  refresh_interval: 1h\n  refetch_min_interval: 100ms\n  fetch_timeout: 1s\n";

/// `GET path` through the mesh with `headers`: status, headers and body.
async fn call(
    mesh: &Mesh,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, http::HeaderMap, String)> {
    let mut req = request(Method::GET, Version::HTTP_11, "orders", path, empty())?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    let resp = send(mesh.outbound(), req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    Ok((status, headers, body_text(resp).await?))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What the app received, from the echo's answer.
fn received(body: &str) -> Result<Description> {
    Ok(serde_json::from_str(body)?)
}

fn header<'a>(d: &'a Description, name: &str) -> Option<&'a str> {
    d.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A 401 with the Bearer challenge, naming `reason`; the app received nothing.
fn assert_401(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &str,
    reason: &str,
) -> Result<()> {
    ensure!(status == StatusCode::UNAUTHORIZED, "{status}: {body}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ensure!(
        challenge.starts_with("Bearer realm=\"picket\", error=\"invalid_token\""),
        "{challenge}"
    );
    let v: Value = serde_json::from_str(body)?;
    ensure!(v["reason"] == reason, "{body}");
    ensure!(!body.contains("orders\""), "the app answered: {body}");
    Ok(())
}

#[tokio::test]
async fn tokens_are_validated_and_decided_as_istio_does() -> Result<()> {
    let key = TestKey::rsa("k1")?;
    let server = JwksServer::start(&jwks(&[&key])).await?;
    let dir = tempfile::tempdir()?;
    let mut mesh = mesh(&server, &dir, QUICK).await?;
    let valid = key.token(&claims("alice"))?;
    eventually(Duration::from_secs(10), async || {
        let (s, _, b) = call(&mesh, "/api/orders", &[("authorization", &bearer(&valid))]).await?;
        ensure!(s == StatusCode::OK, "{s} {b}");
        Ok(())
    })
    .await?;

    // Valid: allowed; the app gets the claim header, not the token, and not a forged claim.
    let (s, _, b) = call(
        &mesh,
        "/api/orders?x=1",
        &[("authorization", &bearer(&valid)), ("x-user", "mallory")],
    )
    .await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    let d = received(&b)?;
    ensure!(header(&d, "x-user") == Some("alice"), "{d:?}");
    ensure!(
        header(&d, "authorization").is_none(),
        "token forwarded: {d:?}"
    );
    ensure!(d.path == "/api/orders?x=1", "{d:?}");
    // Every RSA and PSS form, and the token in the default query parameter (removed).
    for alg in ["RS384", "RS512", "PS256"] {
        let t = key.token_alg(alg, &claims("alice"))?;
        let (s, _, b) = call(&mesh, "/api/x", &[("authorization", &bearer(&t))]).await?;
        ensure!(s == StatusCode::OK, "{alg}: {s} {b}");
    }
    let (s, _, b) = call(&mesh, &format!("/api/q?access_token={valid}&y=2"), &[]).await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    ensure!(received(&b)?.path == "/api/q?y=2", "{b}");

    // No token: not rejected; policy decides (public yes, api no), forged claim header gone.
    let (s, _, b) = call(&mesh, "/public/x", &[("x-user", "mallory")]).await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    ensure!(header(&received(&b)?, "x-user").is_none(), "{b}");
    let (s, _, b) = call(&mesh, "/api/orders", &[]).await?;
    ensure!(s == StatusCode::FORBIDDEN, "{s} {b}");
    ensure!(b.contains("unauthenticated"), "{b}");

    // Valid token without the claim value: 403 (authenticated, not authorized).
    let mut c = claims("bob");
    c["groups"] = json!(["staff"]);
    let t = key.token(&c)?;
    let (s, _, b) = call(&mesh, "/api/orders", &[("authorization", &bearer(&t))]).await?;
    ensure!(s == StatusCode::FORBIDDEN, "{s} {b}");

    // Invalid tokens: 401, whatever the path, the app reached by none.
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("alice");
    early["nbf"] = json!(now() + 3600);
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("billing");
    let cases = [
        (key.token(&expired)?, "expired"),
        (key.token(&early)?, "not_yet_valid"),
        (key.token(&wrong_iss)?, "unknown_issuer"),
        (key.token(&wrong_aud)?, "wrong_audience"),
        (unsigned_token(&claims("alice")), "algorithm_refused"),
        (
            hmac_token(&key.public_bytes(), "k1", &claims("alice")),
            "algorithm_refused",
        ),
        (tamper(&valid), "bad_signature"),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        for path in ["/public/x", "/api/orders"] {
            let (s, h, b) = call(&mesh, path, &[("authorization", &bearer(token))]).await?;
            assert_401(s, &h, &b, reason).map_err(|e| e.context(format!("{reason} {path}")))?;
        }
    }

    // The counters, and no token text anywhere in the sidecar's log.
    let m = scrape(mesh.orders.addrs().admin).await?;
    ensure!(
        m.value("picket_jwt_validations_total", &[("result", "expired")]) == Some(2.0),
        "{:?}",
        m.samples("picket_jwt_validations_total")
    );
    let log = mesh.orders.daemon().log_text();
    for (token, _) in &cases {
        if token.len() > 20 {
            let sig = token.rsplit('.').next().unwrap_or("");
            ensure!(sig.len() < 10 || !log.contains(sig), "token in the log");
        }
    }
    ensure!(!log.contains(&valid), "token in the log");
    Ok(())
}

#[tokio::test]
async fn keys_rotate_in_on_unknown_kid_and_cache_hits_stay_local() -> Result<()> {
    let k1 = TestKey::es256("k1")?;
    let k2 = TestKey::ed25519("k2")?;
    let server = JwksServer::start(&jwks(&[&k1])).await?;
    let dir = tempfile::tempdir()?;
    let mesh = mesh(&server, &dir, QUICK).await?;
    let t1 = k1.token(&claims("alice"))?;
    eventually(Duration::from_secs(10), async || {
        let (s, _, b) = call(&mesh, "/api/o", &[("authorization", &bearer(&t1))]).await?;
        ensure!(s == StatusCode::OK, "{s} {b}");
        Ok(())
    })
    .await?;
    // Cache hits: 20 validated requests, not one JWKS request.
    let before = server.requests();
    for _ in 0..20 {
        let (s, _, _) = call(&mesh, "/api/o", &[("authorization", &bearer(&t1))]).await?;
        ensure!(s == StatusCode::OK);
    }
    ensure!(
        server.requests() == before,
        "cache hits reached the JWKS server"
    );

    // A token from a key the JWKS does not have yet: 401 and an early fetch.
    let t2 = k2.token(&claims("carol"))?;
    let (s, h, b) = call(&mesh, "/api/o", &[("authorization", &bearer(&t2))]).await?;
    assert_401(s, &h, &b, "unknown_kid")?;
    assert_eventually!(Duration::from_secs(5), server.requests() > before);
    // The issuer rotates the key in; the next fetch asked for by the kid picks it up.
    server.set_body(&jwks(&[&k1, &k2]));
    eventually(Duration::from_secs(10), async || {
        let (s, _, b) = call(&mesh, "/api/o", &[("authorization", &bearer(&t2))]).await?;
        ensure!(s == StatusCode::OK, "{s} {b}");
        ensure!(header(&received(&b)?, "x-user") == Some("carol"));
        Ok(())
    })
    .await?;
    // A flood of made-up kids costs at most one fetch per refetch_min_interval.
    let before = server.requests();
    let started = std::time::Instant::now();
    for i in 0..30 {
        let t = k2.token_with_header(
            &json!({"alg": "EdDSA", "kid": format!("x{i}")}),
            &claims("eve"),
        )?;
        let (s, _, _) = call(&mesh, "/public/x", &[("authorization", &bearer(&t))]).await?;
        ensure!(s == StatusCode::UNAUTHORIZED);
    }
    let allowed = started.elapsed().as_millis() / 100 + 2;
    let fetched = u128::from(server.requests() - before);
    ensure!(
        fetched <= allowed,
        "{fetched} fetches for 30 unknown kids in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn jwks_down_or_slow_fails_only_the_tokens_of_that_issuer() -> Result<()> {
    let key = TestKey::rsa("k1")?;
    let server = JwksServer::start(&jwks(&[&key])).await?;
    // Down at startup: no keys; tokens 401, requests without one go on.
    server.set_mode(JwksMode::Down);
    let dir = tempfile::tempdir()?;
    let mesh = mesh(
        &server,
        &dir,
        "  refresh_interval: 1s\n  refetch_min_interval: 100ms\n  fetch_timeout: 300ms\n",
    )
    .await?;
    let valid = key.token(&claims("alice"))?;
    assert_eventually!(Duration::from_secs(5), server.requests() > 0);
    let (s, h, b) = call(&mesh, "/public/x", &[("authorization", &bearer(&valid))]).await?;
    assert_401(s, &h, &b, "no_keys")?;
    let (s, _, b) = call(&mesh, "/public/x", &[]).await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    let m = scrape(mesh.orders.addrs().admin).await?;
    let failures = m
        .samples("picket_jwt_jwks_fetches_total")
        .into_iter()
        .filter(|(l, _)| l.get("result").map(String::as_str) == Some("error"))
        .map(|(_, v)| v)
        .sum::<f64>();
    ensure!(
        failures >= 1.0,
        "{:?}",
        m.samples("picket_jwt_jwks_fetches_total")
    );
    ensure!(
        m.samples("picket_jwt_jwks_key_age_seconds")
            .iter()
            .all(|(_, v)| *v < 0.0),
        "a key age without keys"
    );

    // Up again: the retry picks the keys up.
    server.set_mode(JwksMode::Up);
    eventually(Duration::from_secs(10), async || {
        let (s, _, b) = call(&mesh, "/api/o", &[("authorization", &bearer(&valid))]).await?;
        ensure!(s == StatusCode::OK, "{s} {b}");
        Ok(())
    })
    .await?;

    // Slow (past the fetch timeout) and then down: the last good keys stay in force.
    server.set_mode(JwksMode::Slow(Duration::from_secs(5)));
    let before = server.requests();
    assert_eventually!(Duration::from_secs(10), server.requests() >= before + 2);
    server.set_mode(JwksMode::Down);
    let before = server.requests();
    assert_eventually!(Duration::from_secs(10), server.requests() > before);
    let started = std::time::Instant::now();
    let (s, _, b) = call(&mesh, "/api/o", &[("authorization", &bearer(&valid))]).await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "a request waited on the JWKS server"
    );
    let m = scrape(mesh.orders.addrs().admin).await?;
    let age = m
        .samples("picket_jwt_jwks_key_age_seconds")
        .first()
        .map(|(_, v)| *v)
        .unwrap_or(-1.0);
    ensure!(age >= 1.0, "key age {age}");
    Ok(())
}

#[tokio::test]
async fn a_policy_without_request_authentication_is_unchanged() -> Result<()> {
    // Without a RequestAuthentication an Authorization header is just a header: forwarded.
    let mesh = Mesh::start_with(MeshOptions {
        orders_policy: Some(allow_authenticated("shop")),
        ..MeshOptions::default()
    })
    .await?;
    let (s, _, b) = call(&mesh, "/x", &[("authorization", "Bearer a.b.c")]).await?;
    ensure!(s == StatusCode::OK, "{s} {b}");
    ensure!(
        header(&received(&b)?, "authorization") == Some("Bearer a.b.c"),
        "{b}"
    );
    Ok(())
}

/// A RequestAuthentication with the key set inline for `issuer`, and an ALLOW for its users.
fn inline_policy(issuer: &str, key: &TestKey) -> Result<String> {
    Ok(format!(
        r#"
apiVersion: picket.dev/v1
kind: RequestAuthentication
metadata: {{name: idp, namespace: shop}}
spec:
  jwtRules:
  - issuer: "{issuer}"
    jwks: {}
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
"#,
        serde_json::to_string(&jwks(&[key]))?
    ))
}

#[tokio::test]
async fn request_authentication_hot_reloads_with_the_policies() -> Result<()> {
    let key = TestKey::ed25519("k1")?;
    let mesh = Mesh::start_with(MeshOptions {
        orders_policy: Some(inline_policy("https://a.test", &key)?),
        ..MeshOptions::default()
    })
    .await?;
    let mut for_a = claims("alice");
    for_a["iss"] = json!("https://a.test");
    let mut for_b = claims("bob");
    for_b["iss"] = json!("https://b.test");
    let (a, b) = (key.token(&for_a)?, key.token(&for_b)?);
    let (s, _, body) = call(&mesh, "/x", &[("authorization", &bearer(&a))]).await?;
    ensure!(s == StatusCode::OK, "{s} {body}");
    let (s, h, body) = call(&mesh, "/x", &[("authorization", &bearer(&b))]).await?;
    assert_401(s, &h, &body, "unknown_issuer")?;
    // The issuer changes in the policy directory: the sidecar follows without a restart.
    let dir = mesh.orders.policy_dir();
    std::fs::write(dir.join(".next"), inline_policy("https://b.test", &key)?)?;
    std::fs::rename(dir.join(".next"), dir.join("policy.yaml"))?;
    eventually(Duration::from_secs(10), async || {
        let (s, _, body) = call(&mesh, "/x", &[("authorization", &bearer(&b))]).await?;
        ensure!(s == StatusCode::OK, "{s} {body}");
        Ok(())
    })
    .await?;
    let (s, h, body) = call(&mesh, "/x", &[("authorization", &bearer(&a))]).await?;
    assert_401(s, &h, &body, "unknown_issuer")?;
    // A key set with no usable key is a reload error: the last good rules stay in force.
    let broken = inline_policy("https://c.test", &key)?.replace("OKP", "oct");
    std::fs::write(dir.join(".next"), broken)?;
    std::fs::rename(dir.join(".next"), dir.join("policy.yaml"))?;
    let admin = mesh.orders.addrs().admin;
    assert_eventually!(
        Duration::from_secs(10),
        scrape(admin)
            .await?
            .value("picket_policy_reload_failures_total", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    let (s, _, body) = call(&mesh, "/x", &[("authorization", &bearer(&b))]).await?;
    ensure!(s == StatusCode::OK, "{s} {body}");
    Ok(())
}
