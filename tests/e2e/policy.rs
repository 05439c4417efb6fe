//! Authorization end to end: policy files enforced by the real sidecars for HTTP/1.1, HTTP/2,
//! gRPC and opaque TCP; the deny record (403 body, gRPC status, metrics); dry-run; selectors and
//! the root namespace; hot reload by rename, ConfigMap symlink swap and SIGHUP, a broken file,
//! reload under load; the admin `/policy` page.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use picket_tests::clients::{
    HttpClient, body_text, curl, described, empty, full, get, request, tls_client_config,
    tls_connect,
};
use picket_tests::process::{picket, run_ok};
use picket_tests::wait::READY_TIMEOUT;
use picket_tests::{
    App, Mesh, MeshOptions, Sidecar, TestCa, TestProxy, assert_eventually, eventually, spiffe_id,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The frontend may GET and POST under `/public/` (and call the gRPC echo); nobody may read
/// `/public/secret*`; a dry-run DENY tries out refusing `/public/drafts/*`.
pub(crate) const ORDERS_POLICY: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: public-read, namespace: shop }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
    to: [{ operation: { methods: ["GET", "POST"], paths: ["/public/*", "/grpc.Echo/*"] } }]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: no-secrets, namespace: shop }
spec:
  action: DENY
  rules:
  - to: [{ operation: { paths: ["/public/secret*", "/grpc.Echo/Secret"] } }]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: try-deny-drafts, namespace: shop }
spec:
  action: DENY
  mode: dry-run
  rules:
  - to: [{ operation: { paths: ["/public/drafts/*"] } }]
"#;

/// A mesh whose orders sidecar enforces `policy`.
async fn mesh_with(policy: &str) -> Result<Mesh> {
    Mesh::start_with(MeshOptions {
        orders_policy: Some(policy.to_owned()),
        ..MeshOptions::default()
    })
    .await
}

/// `GET path` with `Host: orders` through the frontend's outbound, HTTP/1.1: status and body.
pub(crate) async fn get_via_mesh(mesh: &Mesh, path: &str) -> Result<(StatusCode, String)> {
    let resp = get(mesh.outbound(), Version::HTTP_11, "orders", path).await?;
    let status = resp.status();
    Ok((status, body_text(resp).await?))
}

/// The status of `GET path` through the mesh.
async fn status_via_mesh(mesh: &Mesh, path: &str) -> Result<StatusCode> {
    Ok(get_via_mesh(mesh, path).await?.0)
}

/// The JSON body of a 403, checked to have the shape every deny has.
pub(crate) fn deny_body(status: impl Into<u16>, body: &str) -> Result<serde_json::Value> {
    let status = status.into();
    ensure!(status == 403, "expected 403, got {status}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("403 body is not JSON: {body}"))?;
    ensure!(json["error"] == "forbidden", "{json}");
    let id = json["request_id"].as_str().unwrap_or_default();
    ensure!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "request_id {id:?} is not 16 hex digits: {json}"
    );
    Ok(json)
}

/// Checks a detailed 403 body: deciding policy (or null), rule (or null) and reason.
fn expect_deny(
    status: impl Into<u16>,
    body: &str,
    policy: Option<&str>,
    rule: Option<u64>,
    reason: &str,
) -> Result<serde_json::Value> {
    let json = deny_body(status, body)?;
    let keys: Vec<&str> = json
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ensure!(
        keys == ["error", "policy", "reason", "request_id", "rule"],
        "403 body keys {keys:?}: {json}"
    );
    ensure!(json["policy"].as_str() == policy, "policy: {json}");
    ensure!(json["rule"].as_u64() == rule, "rule: {json}");
    ensure!(json["reason"] == reason, "reason: {json}");
    Ok(json)
}

/// Counts the requests the echo app answers (its `/stats` queries are not counted by the app).
#[derive(Debug)]
pub(crate) struct AppCounter {
    app: SocketAddr,
    last: u64,
}

impl AppCounter {
    /// Starts counting now.
    pub(crate) async fn start(app: SocketAddr) -> Result<Self> {
        Ok(Self {
            app,
            last: Self::total(app).await?,
        })
    }

    /// `requests` of the app's `/stats`.
    async fn total(app: SocketAddr) -> Result<u64> {
        let resp = get(app, Version::HTTP_11, "app", "/stats").await?;
        let stats: serde_json::Value = serde_json::from_str(&body_text(resp).await?)?;
        stats["requests"]
            .as_u64()
            .with_context(|| format!("/stats has no requests: {stats}"))
    }

    /// Requests the app received since the previous call (or the start).
    pub(crate) async fn since(&mut self) -> Result<u64> {
        let now = Self::total(self.app).await?;
        let n = now.saturating_sub(self.last);
        self.last = now;
        Ok(n)
    }
}

/// `(labels, value)` of every sample of metric `name` in a Prometheus text exposition.
pub(crate) fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// The sum of metric `name` over the samples carrying every label in `want`.
pub(crate) fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `picket_authz_decisions_total{verdict, policy, reason, mode}` on `proxy`.
pub(crate) async fn decisions(
    proxy: &TestProxy,
    verdict: &str,
    policy: &str,
    reason: &str,
    mode: &str,
) -> Result<f64> {
    let (status, text) = proxy.admin_get("/metrics").await?;
    ensure!(status == StatusCode::OK, "/metrics answered {status}");
    Ok(metric_sum(
        &text,
        "picket_authz_decisions_total",
        &[
            ("verdict", verdict),
            ("policy", policy),
            ("reason", reason),
            ("mode", mode),
        ],
    ))
}

/// A mesh certificate for `ns/shop/sa/frontend`, as a client TLS configuration offering `alpn`.
pub(crate) async fn frontend_tls(ca: &TestCa, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    let svid = ca.issue("ns/shop/sa/frontend").await?;
    tls_client_config(Some((svid.chain()?, svid.private_key())), alpn)
}

/// An HTTP/2 connection straight to a sidecar's inbound listener, as a peer sidecar opens it.
pub(crate) async fn h2_to_inbound(
    inbound: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<HttpClient> {
    HttpClient::handshake(tls_connect(inbound, tls).await?, Version::HTTP_2).await
}

/// `GET path` (`:authority orders`) on `client`: status and body.
async fn h2_get(client: &mut HttpClient, path: &str) -> Result<(StatusCode, String)> {
    let req = request(Method::GET, Version::HTTP_2, "orders", path, empty())?;
    let resp = client.send(req).await?;
    let status = resp.status();
    Ok((status, body_text(resp).await?))
}

/// The policy set the sidecar reports on `/policy`.
async fn policy_page(proxy: &TestProxy) -> Result<serde_json::Value> {
    let (status, body) = proxy.admin_get("/policy").await?;
    ensure!(
        status == StatusCode::OK,
        "/policy answered {status}: {body}"
    );
    serde_json::from_str(&body).with_context(|| format!("/policy is not JSON: {body}"))
}

/// The sources hash in force, from `/policy`.
async fn sources_hash(proxy: &TestProxy) -> Result<String> {
    let page = policy_page(proxy).await?;
    page["sources_hash"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("/policy has no sources_hash: {page}"))
}

/// Replaces `dir/policy.yaml` atomically: the new text is written under a dot-name (which the
/// loader skips) and renamed over the old file, as editors and deploy tools do.
fn replace_policy(dir: &Path, yaml: &str) -> Result<()> {
    let tmp = dir.join(".policy.yaml.tmp");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, dir.join("policy.yaml"))?;
    Ok(())
}

/// `picket_policy_reload_failures_total` on `proxy`.
async fn reload_failures(proxy: &TestProxy) -> Result<f64> {
    let (_, text) = proxy.admin_get("/metrics").await?;
    Ok(metric_sum(
        &text,
        "picket_policy_reload_failures_total",
        &[],
    ))
}

/// Waits until `GET path` through the mesh answers `want`.
async fn until_status(mesh: &Mesh, path: &str, want: StatusCode) -> Result<()> {
    eventually(READY_TIMEOUT, async || {
        let got = status_via_mesh(mesh, path).await?;
        ensure!(got == want, "GET {path} answered {got}, waiting for {want}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Enforcement per protocol.

#[tokio::test]
async fn http1_requests_are_allowed_or_denied_with_an_explained_403() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;

    let got = curl(&[
        "-H",
        "Host: orders",
        &mesh.outbound_url("/public/items?id=7"),
    ])
    .await?;
    let seen = got.described()?;
    ensure!(got.http_version == "1.1", "{got:?}");
    ensure!(seen.path == "/public/items?id=7", "{seen:?}");
    ensure!(
        seen.peer_identity == Some(spiffe_id("shop", "frontend")),
        "{seen:?}"
    );

    // The frontend passes the target on as written; orders normalizes it once, for policy and
    // for the app alike.
    let got = curl(&[
        "--path-as-is",
        "-H",
        "Host: orders",
        &mesh.outbound_url("/public/a/../b/./c"),
    ])
    .await?;
    let seen = got.described()?;
    ensure!(seen.path == "/public/b/c", "{seen:?}");

    let mut app = AppCounter::start(mesh.app.addr()).await?;
    let got = curl(&[
        "--path-as-is",
        "-H",
        "Host: orders",
        &mesh.outbound_url("/public/x/../secret/key"),
    ])
    .await?;
    expect_deny(
        got.status,
        &got.body,
        Some("shop/no-secrets"),
        Some(0),
        "explicit-deny",
    )?;
    let got = curl(&["-H", "Host: orders", &mesh.outbound_url("/admin")]).await?;
    expect_deny(got.status, &got.body, None, None, "no-allow-match")?;
    let got = curl(&[
        "-X",
        "DELETE",
        "-H",
        "Host: orders",
        &mesh.outbound_url("/public/items"),
    ])
    .await?;
    expect_deny(got.status, &got.body, None, None, "no-allow-match")?;
    ensure!(app.since().await? == 0, "a denied request reached the app");
    Ok(())
}

#[tokio::test]
async fn http2_prior_knowledge_requests_are_enforced() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let h2 = |path: &str| {
        let url = mesh.outbound_url(path);
        async move { curl(&["--http2-prior-knowledge", "-H", "Host: orders", &url]).await }
    };

    let got = h2("/public/h2?x=1").await?;
    ensure!(
        got.http_version == "2",
        "curl spoke HTTP/{}",
        got.http_version
    );
    let seen = got.described()?;
    ensure!(seen.path == "/public/h2?x=1", "{seen:?}");

    let got = h2("/public/secret").await?;
    ensure!(
        got.http_version == "2",
        "curl spoke HTTP/{}",
        got.http_version
    );
    expect_deny(
        got.status,
        &got.body,
        Some("shop/no-secrets"),
        Some(0),
        "explicit-deny",
    )?;
    let got = h2("/private").await?;
    expect_deny(got.status, &got.body, None, None, "no-allow-match")?;
    Ok(())
}

/// One gRPC unary call through the frontend's outbound (h2c): the response head, body and
/// trailers.
async fn grpc_call(
    mesh: &Mesh,
    path: &str,
) -> Result<(http::response::Parts, Bytes, http::HeaderMap)> {
    let message = b"\x00\x00\x00\x00\x05hello";
    let mut req = request(
        Method::POST,
        Version::HTTP_2,
        "orders",
        path,
        full(Bytes::from_static(message)),
    )?;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse()?);
    req.headers_mut().insert("te", "trailers".parse()?);
    let mut client = HttpClient::connect(mesh.outbound(), Version::HTTP_2).await?;
    let (parts, body) = client.send(req).await?.into_parts();
    let body = body.collect().await?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    Ok((parts, body.to_bytes(), trailers))
}

/// `grpc-status` from the response head (trailers-only answer) or the trailers.
fn grpc_status<'a>(parts: &'a http::response::Parts, trailers: &'a http::HeaderMap) -> &'a str {
    parts
        .headers
        .get("grpc-status")
        .or_else(|| trailers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
}

#[tokio::test]
async fn grpc_denied_call_gets_permission_denied() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;

    let (parts, body, trailers) = grpc_call(&mesh, "/grpc.Echo/Unary").await?;
    ensure!(parts.status == StatusCode::OK, "{parts:?}");
    ensure!(
        grpc_status(&parts, &trailers) == "0",
        "{parts:?} {trailers:?}"
    );
    ensure!(body.as_ref() == b"\x00\x00\x00\x00\x05hello", "{body:?}");

    let mut app = AppCounter::start(mesh.app.addr()).await?;
    for (path, reason) in [
        ("/grpc.Echo/Secret", "explicit-deny"),
        ("/grpc.Other/Call", "no-allow-match"),
    ] {
        let (parts, body, trailers) = grpc_call(&mesh, path).await?;
        ensure!(
            parts.status == StatusCode::OK,
            "{path}: gRPC denials travel as HTTP 200, got {parts:?}"
        );
        ensure!(
            grpc_status(&parts, &trailers) == "7",
            "{path}: expected PERMISSION_DENIED (7): {parts:?} {trailers:?}"
        );
        ensure!(
            parts
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            "{parts:?}"
        );
        let message = parts
            .headers
            .get("grpc-message")
            .or_else(|| trailers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            message.contains("denied") && message.contains(reason),
            "{path}: grpc-message {message:?}"
        );
        ensure!(
            body.is_empty(),
            "{path}: a denied call has no message: {body:?}"
        );
    }
    ensure!(
        app.since().await? == 0,
        "a denied gRPC call reached the app"
    );
    Ok(())
}

/// Sends `payload` through the frontend's TCP upstream and returns every byte that came back
/// before the connection closed (a reset counts as a close).
async fn tcp_round_trip(mesh: &Mesh, payload: &[u8]) -> Result<Vec<u8>> {
    let stream = tokio::net::TcpStream::connect(mesh.frontend.upstream("orders")?).await?;
    let (mut rd, mut wr) = stream.into_split();
    let send = async {
        // A refused connection may close before the write: what comes back is what counts.
        let _ = wr.write_all(payload).await;
        let _ = wr.shutdown().await;
    };
    let mut echoed = Vec::new();
    let receive = async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => echoed.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(READY_TIMEOUT, async { tokio::join!(send, receive) })
        .await
        .context("the TCP connection neither echoed nor closed")?;
    Ok(echoed)
}

/// A TCP mesh whose orders sidecar enforces `policy`.
async fn tcp_mesh_with(policy: &str) -> Result<Mesh> {
    Mesh::start_with(MeshOptions {
        tcp: true,
        orders_policy: Some(policy.to_owned()),
        ..MeshOptions::default()
    })
    .await
}

const TCP_ALLOW_FRONTEND: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: frontend-tcp, namespace: shop }
spec:
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
"#;

#[tokio::test]
async fn tcp_connection_from_an_allowed_principal_is_echoed() -> Result<()> {
    let mesh = tcp_mesh_with(TCP_ALLOW_FRONTEND).await?;
    let echoed = tcp_round_trip(&mesh, b"ping over opaque tcp").await?;
    ensure!(echoed == b"ping over opaque tcp", "echoed {echoed:?}");
    ensure!(
        decisions(
            &mesh.orders,
            "allow",
            "shop/frontend-tcp",
            "allow-match",
            "enforce"
        )
        .await?
            == 1.0,
        "one allowed TCP connection should be one decision"
    );
    Ok(())
}

#[tokio::test]
async fn tcp_connection_denied_is_closed_without_bytes_from_the_app() -> Result<()> {
    let cases = [
        (
            // An explicit DENY of the caller.
            format!(
                "{TCP_ALLOW_FRONTEND}---\napiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{ name: no-frontend, namespace: shop }}\nspec:\n  action: DENY\n  \
                 rules:\n  - from: [{{ source: {{ namespaces: [\"shop\"] }} }}]\n"
            ),
            ("shop/no-frontend", "explicit-deny"),
        ),
        (
            // Only another caller is allowed.
            TCP_ALLOW_FRONTEND.replace("sa/frontend", "sa/checkout"),
            ("none", "no-allow-match"),
        ),
        (
            // An ALLOW rule with HTTP-only fields never matches a TCP connection.
            TCP_ALLOW_FRONTEND.replace(
                "principals: [\"cluster.local/ns/shop/sa/frontend\"] } }]",
                "principals: [\"cluster.local/ns/shop/sa/frontend\"] } }]\n    \
                 to: [{ operation: { paths: [\"/anything\"] } }]",
            ),
            ("none", "no-allow-match"),
        ),
        (
            // A DENY rule is read without its HTTP-only fields for TCP: the more restrictive
            // reading, so a DENY of `/admin/*` refuses raw TCP altogether.
            format!(
                "{TCP_ALLOW_FRONTEND}---\napiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{ name: no-admin, namespace: shop }}\nspec:\n  action: DENY\n  \
                 rules:\n  - to: [{{ operation: {{ paths: [\"/admin/*\"] }} }}]\n"
            ),
            ("shop/no-admin", "explicit-deny"),
        ),
    ];
    for (policy, (by, reason)) in cases {
        let mesh = tcp_mesh_with(&policy).await?;
        let echoed = tcp_round_trip(&mesh, b"ping").await?;
        ensure!(
            echoed.is_empty(),
            "denied ({reason}) but {} bytes came back: {echoed:?}\n{policy}",
            echoed.len()
        );
        assert_eventually!(
            READY_TIMEOUT,
            decisions(&mesh.orders, "deny", by, reason, "enforce").await? == 1.0,
            "no deny decision by {by} ({reason}) for the TCP connection"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The deny record.

#[tokio::test]
async fn deny_reasons_are_explicit_deny_no_allow_match_and_default() -> Result<()> {
    // explicit-deny and no-allow-match: see the HTTP/1.1 test; here also `default`: with only
    // a DENY policy, no ALLOW policy selects orders and the mesh default (deny) decides.
    let deny_only = ORDERS_POLICY
        .split("---")
        .nth(1)
        .context("the policy has a second document")?;
    let mesh = mesh_with(deny_only).await?;
    let (status, body) = get_via_mesh(&mesh, "/public/items").await?;
    expect_deny(status, &body, None, None, "default")?;
    let (status, body) = get_via_mesh(&mesh, "/public/secret").await?;
    expect_deny(
        status,
        &body,
        Some("shop/no-secrets"),
        Some(0),
        "explicit-deny",
    )?;
    ensure!(
        decisions(&mesh.orders, "deny", "none", "default", "enforce").await? == 1.0,
        "default denial not counted"
    );
    Ok(())
}

#[tokio::test]
async fn deny_details_false_hides_policy_rule_and_reason() -> Result<()> {
    let policy_dir = tempfile::tempdir()?;
    std::fs::write(policy_dir.path().join("policy.yaml"), ORDERS_POLICY)?;
    let mut mesh = Mesh::start_with(MeshOptions {
        orders_yaml: format!(
            "policy:\n  path: {}\n  deny_details: false\n",
            serde_json::to_string(&policy_dir.path().display().to_string())?
        ),
        ..MeshOptions::default()
    })
    .await?;
    let (status, body) = get_via_mesh(&mesh, "/public/secret").await?;
    let json = deny_body(status, &body)?;
    let keys: Vec<&str> = json
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ensure!(keys == ["error", "request_id"], "403 body {json}");
    ensure!(!body.contains("no-secrets"), "{body}");

    // The log keeps the whole record, findable by the request id.
    let id = json["request_id"].as_str().unwrap_or_default().to_owned();
    let log = mesh.orders.daemon().log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&id))
        .with_context(|| format!("no log line has request id {id}:\n{log}"))?;
    ensure!(
        line.contains("shop/no-secrets") && line.contains("explicit-deny"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn dry_run_deny_leaves_request_allowed_and_counts_would_deny() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let (status, body) = get_via_mesh(&mesh, "/public/drafts/1").await?;
    ensure!(
        status == StatusCode::OK,
        "dry-run changed the verdict: {status} {body}"
    );
    ensure!(body.contains("\"path\":\"/public/drafts/1\""), "{body}");

    ensure!(
        decisions(
            &mesh.orders,
            "deny",
            "shop/try-deny-drafts",
            "dry-run",
            "dry-run"
        )
        .await?
            == 1.0,
        "the dry-run policy's would-deny is not counted"
    );
    ensure!(
        decisions(
            &mesh.orders,
            "allow",
            "shop/public-read",
            "allow-match",
            "enforce"
        )
        .await?
            == 1.0,
        "the enforced verdict is not counted as allow"
    );
    // A request the dry-run policy does not match leaves no shadow.
    let (status, _) = get_via_mesh(&mesh, "/public/other").await?;
    ensure!(status == StatusCode::OK, "{status}");
    ensure!(
        decisions(
            &mesh.orders,
            "deny",
            "shop/try-deny-drafts",
            "dry-run",
            "dry-run"
        )
        .await?
            == 1.0,
        "a non-matching request was counted as a dry-run shadow"
    );
    Ok(())
}

#[tokio::test]
async fn decision_metrics_match_the_traffic_sent() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let traffic: [(&str, usize, StatusCode); 4] = [
        ("/public/a", 3, StatusCode::OK),
        ("/public/secret", 2, StatusCode::FORBIDDEN),
        ("/admin", 4, StatusCode::FORBIDDEN),
        ("/public/drafts/x", 1, StatusCode::OK),
    ];
    for (path, times, want) in traffic {
        for _ in 0..times {
            let (status, body) = get_via_mesh(&mesh, path).await?;
            ensure!(status == want, "GET {path}: {status} {body}");
        }
    }
    let (_, text) = mesh.orders.admin_get("/metrics").await?;
    let mut got: Vec<(String, f64)> = samples(&text, "picket_authz_decisions_total")
        .into_iter()
        .map(|(l, v)| {
            let key = ["verdict", "policy", "reason", "mode"]
                .map(|k| l.get(k).cloned().unwrap_or_default())
                .join(" ");
            (key, v)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want = vec![
        ("allow shop/public-read allow-match enforce".to_owned(), 4.0),
        ("deny none no-allow-match enforce".to_owned(), 4.0),
        ("deny shop/no-secrets explicit-deny enforce".to_owned(), 2.0),
        ("deny shop/try-deny-drafts dry-run dry-run".to_owned(), 1.0),
    ];
    ensure!(got == want, "decision counters {got:?}, expected {want:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Which policies apply.

/// Policies across namespaces: a selector-scoped ALLOW in `shop`, a mesh-wide DENY in the root
/// namespace, and an ALLOW in `billing` that only billing's workloads see.
const SCOPED_POLICIES: &str = r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: orders-only, namespace: shop }
spec:
  selector: { matchLabels: { app: orders } }
  rules:
  - from: [{ source: { namespaces: ["shop"] } }]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: no-debug, namespace: picket-system }
spec:
  action: DENY
  rules:
  - to: [{ operation: { paths: ["/debug/*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: billing-open, namespace: billing }
spec:
  rules:
  - {}
"#;

#[tokio::test]
async fn selectors_and_root_namespace_decide_which_policies_apply() -> Result<()> {
    let ca = TestCa::start().await?;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (ns, sa, label) in [
        ("shop", "orders", Some(("app", "orders"))),
        ("shop", "inventory", Some(("app", "inventory"))),
        ("billing", "ledger", None),
    ] {
        let app = App::http(sa).await?;
        let mut sidecar = Sidecar::new(ns, sa, app.addr()).policy(SCOPED_POLICIES);
        if let Some((k, v)) = label {
            sidecar = sidecar.label(k, v);
        }
        sidecars.push(TestProxy::spawn(&ca, sidecar).await?);
        apps.push(app);
    }
    let tls = frontend_tls(&ca, &[b"h2"]).await?;
    // (sidecar, path) -> (status, deciding policy, reason)
    let expectations: [(usize, &str, u16, Option<&str>, &str); 6] = [
        (0, "/public/x", 200, None, ""),
        (
            0,
            "/debug/x",
            403,
            Some("picket-system/no-debug"),
            "explicit-deny",
        ),
        // Not labelled app=orders: no ALLOW selects it, so the mesh default denies.
        (1, "/public/x", 403, None, "default"),
        (
            1,
            "/debug/x",
            403,
            Some("picket-system/no-debug"),
            "explicit-deny",
        ),
        (2, "/public/x", 200, None, ""),
        (
            2,
            "/debug/x",
            403,
            Some("picket-system/no-debug"),
            "explicit-deny",
        ),
    ];
    for (i, path, want, policy, reason) in expectations {
        let sidecar = &sidecars[i];
        let mut client = h2_to_inbound(sidecar.addrs().inbound, Arc::clone(&tls)).await?;
        let (status, body) = h2_get(&mut client, path).await?;
        let what = format!("{} GET {path}", sidecar.spiffe_id());
        if want == 200 {
            ensure!(status == StatusCode::OK, "{what}: {status} {body}");
        } else {
            let rule = policy.map(|_| 0);
            expect_deny(status, &body, policy, rule, reason).with_context(|| what.clone())?;
        }
    }
    for (sidecar, policy) in [
        (&sidecars[0], "shop/orders-only"),
        (&sidecars[2], "billing/billing-open"),
    ] {
        ensure!(
            decisions(sidecar, "allow", policy, "allow-match", "enforce").await? == 1.0,
            "{} was not allowed by {policy}",
            sidecar.spiffe_id()
        );
    }
    Ok(())
}

#[tokio::test]
async fn connection_port_sni_and_source_address_are_matched() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let port = app.addr().port();
    let other = if port == 65535 { 1 } else { port + 1 };
    let policy = format!(
        r#"
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: by-port, namespace: shop }}
spec:
  rules:
  - to: [{{ operation: {{ ports: ["{port}"], paths: ["/public/*"] }} }}]
  - to: [{{ operation: {{ ports: ["{other}"], paths: ["/other/*"] }} }}]
  - to: [{{ operation: {{ paths: ["/sni/*"] }} }}]
    when: [{{ key: connection.sni, values: ["*.TEST"] }}]
  - to: [{{ operation: {{ paths: ["/wrong-sni/*"] }} }}]
    when: [{{ key: connection.sni, values: ["orders.shop"] }}]
  - from: [{{ source: {{ ipBlocks: ["127.0.0.0/8"] }} }}]
    to: [{{ operation: {{ paths: ["/local/*"] }} }}]
  - from: [{{ source: {{ notIpBlocks: ["127.0.0.0/8"] }} }}]
    to: [{{ operation: {{ paths: ["/remote/*"] }} }}]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: closed-path, namespace: shop }}
spec:
  action: DENY
  rules:
  - when: [{{ key: destination.port, values: ["{port}"] }}, {{ key: "request.headers[x-closed]", values: ["*"] }}]
"#
    );
    let orders = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", app.addr()).policy(&policy),
    )
    .await?;
    let mut client =
        h2_to_inbound(orders.addrs().inbound, frontend_tls(&ca, &[b"h2"]).await?).await?;
    let (status, body) = h2_get(&mut client, "/public/x").await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    // The test client asks for server name `picket.test` and connects from 127.0.0.1.
    for (path, allowed) in [
        ("/other/x", false),
        ("/sni/x", true),
        ("/wrong-sni/x", false),
        ("/local/x", true),
        ("/remote/x", false),
    ] {
        let (status, body) = h2_get(&mut client, path).await?;
        if allowed {
            ensure!(status == StatusCode::OK, "{path}: {status} {body}");
        } else {
            expect_deny(status, &body, None, None, "no-allow-match").context(path)?;
        }
    }
    let mut req = request(Method::GET, Version::HTTP_2, "orders", "/public/x", empty())?;
    req.headers_mut().insert("x-closed", "yes".parse()?);
    let resp = client.send(req).await?;
    let status = resp.status();
    let body = body_text(resp).await?;
    expect_deny(
        status,
        &body,
        Some("shop/closed-path"),
        Some(0),
        "explicit-deny",
    )?;
    Ok(())
}

#[tokio::test]
async fn mesh_default_allow_admits_workloads_no_allow_policy_selects() -> Result<()> {
    let policy_dir = tempfile::tempdir()?;
    let deny_only = ORDERS_POLICY
        .split("---")
        .nth(1)
        .context("the policy has a second document")?;
    std::fs::write(policy_dir.path().join("policy.yaml"), deny_only)?;
    let mesh = Mesh::start_with(MeshOptions {
        orders_yaml: format!(
            "policy:\n  path: {}\n  default_action: allow\n",
            serde_json::to_string(&policy_dir.path().display().to_string())?
        ),
        ..MeshOptions::default()
    })
    .await?;
    let (status, body) = get_via_mesh(&mesh, "/anything").await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    let (status, body) = get_via_mesh(&mesh, "/public/secret").await?;
    expect_deny(
        status,
        &body,
        Some("shop/no-secrets"),
        Some(0),
        "explicit-deny",
    )?;
    ensure!(
        decisions(&mesh.orders, "allow", "none", "default", "enforce").await? == 1.0,
        "the default allow is not counted"
    );
    Ok(())
}

#[tokio::test]
async fn sidecar_refuses_to_start_with_a_broken_policy() -> Result<()> {
    let ca = TestCa::start().await?;
    let app = App::http("orders").await?;
    let broken = "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
                  metadata: { name: x, namespace: shop }\nspec:\n  rules:\n  \
                  - to: [{operation: {methods: [get]}}]\n";
    let started = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", app.addr()).policy(broken),
    )
    .await;
    let Err(e) = started else {
        bail!("a sidecar started with a policy it cannot load");
    };
    let message = format!("{e:#}");
    ensure!(
        message.contains("policy.yaml:6:") && message.contains("`get` is not an uppercase"),
        "the startup error does not locate the problem: {message}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hot reload.

/// `ORDERS_POLICY` with `/public/beta/*` denied too.
fn with_beta_denied() -> String {
    format!(
        "{ORDERS_POLICY}---\napiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
         metadata: {{ name: no-beta, namespace: shop }}\nspec:\n  action: DENY\n  rules:\n  \
         - to: [{{ operation: {{ paths: [\"/public/beta/*\"] }} }}]\n"
    )
}

#[tokio::test]
async fn renamed_policy_file_takes_effect() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    ensure!(status_via_mesh(&mesh, "/public/beta/1").await? == StatusCode::OK);
    let old = sources_hash(&mesh.orders).await?;

    replace_policy(mesh.orders.policy_dir(), &with_beta_denied())?;
    until_status(&mesh, "/public/beta/1", StatusCode::FORBIDDEN).await?;
    let (status, body) = get_via_mesh(&mesh, "/public/beta/1").await?;
    expect_deny(
        status,
        &body,
        Some("shop/no-beta"),
        Some(0),
        "explicit-deny",
    )?;
    ensure!(
        sources_hash(&mesh.orders).await? != old,
        "/policy kept the old hash"
    );

    replace_policy(mesh.orders.policy_dir(), ORDERS_POLICY)?;
    until_status(&mesh, "/public/beta/1", StatusCode::OK).await?;
    ensure!(
        sources_hash(&mesh.orders).await? == old,
        "same sources, different hash"
    );
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_takes_effect() -> Result<()> {
    use std::os::unix::fs::symlink;

    let mesh = mesh_with(ORDERS_POLICY).await?;
    let dir = mesh.orders.policy_dir();
    // Lay the directory out as the kubelet mounts a ConfigMap: versioned data behind `..data`,
    // visible names as symlinks through it.
    let v1 = dir.join("..2025_01_01_00_00_00.000000001");
    std::fs::create_dir(&v1)?;
    std::fs::write(v1.join("policy.yaml"), ORDERS_POLICY)?;
    symlink(v1.file_name().context("v1 has a name")?, dir.join("..data"))?;
    symlink("..data/policy.yaml", dir.join(".policy.yaml.link"))?;
    std::fs::rename(dir.join(".policy.yaml.link"), dir.join("policy.yaml"))?;
    ensure!(status_via_mesh(&mesh, "/public/beta/1").await? == StatusCode::OK);

    // The kubelet's update: new data directory, new `..data` link renamed over the old one.
    let v2 = dir.join("..2025_01_01_00_01_00.000000002");
    std::fs::create_dir(&v2)?;
    std::fs::write(v2.join("policy.yaml"), with_beta_denied())?;
    symlink(
        v2.file_name().context("v2 has a name")?,
        dir.join("..data_tmp"),
    )?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    std::fs::remove_dir_all(&v1)?;

    until_status(&mesh, "/public/beta/1", StatusCode::FORBIDDEN).await?;
    ensure!(status_via_mesh(&mesh, "/public/items").await? == StatusCode::OK);
    let page = policy_page(&mesh.orders).await?;
    ensure!(
        page["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "no-beta")),
        "/policy does not list the new policy: {page}"
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_policy() -> Result<()> {
    let mut mesh = mesh_with(ORDERS_POLICY).await?;
    ensure!(status_via_mesh(&mesh, "/public/beta/1").await? == StatusCode::OK);
    let old = sources_hash(&mesh.orders).await?;

    // Change the file's content through a hard link in another directory: the watched
    // directory sees no event (inotify reports a write to the directory it was made through),
    // so only the signal can make the sidecar re-read it. Nothing below opens the file through
    // the watched directory either: `stat` is not an event.
    let file = mesh.orders.policy_dir().join("policy.yaml");
    let elsewhere = tempfile::tempdir_in(mesh.orders.policy_dir().parent().context("parent")?)?;
    let alias = elsewhere.path().join("alias.yaml");
    std::fs::hard_link(&file, &alias)?;
    let new = with_beta_denied();
    std::fs::write(&alias, &new)?;
    ensure!(
        std::fs::metadata(&file)?.len() == new.len() as u64,
        "the hard link did not change the policy file"
    );

    mesh.orders.daemon().signal("HUP").await?;
    until_status(&mesh, "/public/beta/1", StatusCode::FORBIDDEN).await?;
    ensure!(
        sources_hash(&mesh.orders).await? != old,
        "/policy kept the old hash"
    );
    Ok(())
}

#[tokio::test]
async fn broken_policy_file_keeps_the_last_good_policy() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let good = sources_hash(&mesh.orders).await?;
    let failures = reload_failures(&mesh.orders).await?;

    // A valid document followed by one with a lowercase method: the whole set is refused,
    // including the new DENY that would otherwise apply.
    let broken = format!(
        "{}---\napiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
         metadata: {{ name: broken, namespace: shop }}\nspec:\n  rules:\n  \
         - to: [{{ operation: {{ methods: [get] }} }}]\n",
        with_beta_denied()
    );
    replace_policy(mesh.orders.policy_dir(), &broken)?;
    assert_eventually!(
        READY_TIMEOUT,
        reload_failures(&mesh.orders).await? > failures,
        "picket_policy_reload_failures_total did not increase"
    );
    ensure!(
        sources_hash(&mesh.orders).await? == good,
        "/policy shows another hash"
    );
    let page = policy_page(&mesh.orders).await?;
    ensure!(
        !page.to_string().contains("no-beta"),
        "/policy lists a policy from the broken file: {page}"
    );
    ensure!(
        status_via_mesh(&mesh, "/public/beta/1").await? == StatusCode::OK,
        "part of the broken file took effect"
    );
    let (status, body) = get_via_mesh(&mesh, "/public/secret").await?;
    expect_deny(
        status,
        &body,
        Some("shop/no-secrets"),
        Some(0),
        "explicit-deny",
    )?;

    // Fixing the file brings the new policy in.
    replace_policy(mesh.orders.policy_dir(), &with_beta_denied())?;
    until_status(&mesh, "/public/beta/1", StatusCode::FORBIDDEN).await?;
    Ok(())
}

#[tokio::test]
async fn a_reload_does_not_trigger_the_next_one() -> Result<()> {
    // Reading the policy files is not a change to them. A watcher that reacts to the reload's
    // own reads (inotify IN_OPEN) re-reads the directory every debounce period forever, and
    // with a broken file counts a new failure each time.
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let failures = reload_failures(&mesh.orders).await?;
    // Staged outside the watched directory, so that the change is exactly one rename event.
    let staging = tempfile::tempdir_in(mesh.orders.policy_dir().parent().context("parent")?)?;
    let staged = staging.path().join("policy.yaml");
    std::fs::write(&staged, "kind: [unterminated\n")?;
    std::fs::rename(&staged, mesh.orders.policy_dir().join("policy.yaml"))?;
    assert_eventually!(
        READY_TIMEOUT,
        reload_failures(&mesh.orders).await? > failures,
        "the broken file was not noticed"
    );
    // Nothing changes from here on. This is the one bounded wait for something NOT to happen:
    // it can only pass wrongly (on a machine too slow to loop), never fail wrongly.
    let quiet = Duration::from_secs(3);
    let spinning = eventually(quiet, async || {
        let now = reload_failures(&mesh.orders).await?;
        ensure!(now >= failures + 3.0, "{now} failures");
        Ok(now)
    })
    .await;
    if let Ok(now) = spinning {
        bail!(
            "one broken write, no further change, and {} reload failures within {quiet:?}: \
             the sidecar keeps reloading by itself",
            now - failures
        );
    }
    Ok(())
}

/// Steady load for [`reload_under_load_fails_no_request_both_policies_allow`]: requests on one
/// connection until `stop` (or `max` requests), every failure recorded.
async fn load(
    mut client: HttpClient,
    version: Version,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    max: u64,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut n = 0;
    while n < max && !stop.load(Ordering::Relaxed) {
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let req = request(Method::GET, version, "orders", "/public/steady", empty())?;
            let seen = described(client.send(req).await?).await?;
            ensure!(seen.path == "/public/steady", "{seen:?}");
            Ok(())
        }
        .await;
        if let Err(e) = result {
            failures.push(format!("{version:?} request {n}: {e:#}"));
        }
    }
    failures
}

#[tokio::test]
async fn reload_under_load_fails_no_request_both_policies_allow() -> Result<()> {
    const PER_CLIENT: u64 = 2_000;
    const RELOADS: usize = 6;
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_11, Version::HTTP_2] {
        let client = HttpClient::connect(mesh.outbound(), version).await?;
        clients.push(tokio::spawn(load(
            client,
            version,
            Arc::clone(&stop),
            Arc::clone(&sent),
            PER_CLIENT,
        )));
    }

    let policies = [with_beta_denied(), ORDERS_POLICY.to_owned()];
    let mut during = Vec::new();
    for i in 0..RELOADS {
        let before = sent.load(Ordering::Relaxed);
        let (policy, want) = if i % 2 == 0 {
            (&policies[0], StatusCode::FORBIDDEN)
        } else {
            (&policies[1], StatusCode::OK)
        };
        replace_policy(mesh.orders.policy_dir(), policy)?;
        until_status(&mesh, "/public/beta/1", want)
            .await
            .with_context(|| format!("reload {i}"))?;
        during.push(sent.load(Ordering::Relaxed) - before);
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await?);
    }
    let total = sent.load(Ordering::Relaxed);
    ensure!(
        failures.is_empty(),
        "{} of {total} requests failed across {RELOADS} reloads:\n{}",
        failures.len(),
        failures.join("\n")
    );
    ensure!(
        during.iter().filter(|n| **n > 0).count() >= RELOADS / 2,
        "the load did not overlap the reloads (requests per reload: {during:?})"
    );
    ensure!(
        decisions(
            &mesh.orders,
            "allow",
            "shop/public-read",
            "allow-match",
            "enforce"
        )
        .await?
            >= total as f64,
        "fewer allow decisions than requests"
    );
    Ok(())
}

#[tokio::test]
async fn long_lived_http2_connection_sees_a_reload_on_its_next_request() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let tls = frontend_tls(&mesh.ca, &[b"h2"]).await?;
    let mut client = h2_to_inbound(mesh.orders.addrs().inbound, tls).await?;
    let (status, body) = h2_get(&mut client, "/public/beta/1").await?;
    ensure!(status == StatusCode::OK, "{status} {body}");

    replace_policy(mesh.orders.policy_dir(), &with_beta_denied())?;
    // Same connection throughout: a failed send is fatal, not retried.
    let client = tokio::sync::Mutex::new(client);
    let outcome = eventually(READY_TIMEOUT, async || {
        let mut c = client.lock().await;
        match h2_get(&mut c, "/public/beta/1").await {
            Err(e) => Ok(Err(e.context("the long-lived connection failed"))),
            Ok((StatusCode::FORBIDDEN, body)) => Ok(Ok(body)),
            Ok((status, _)) => bail!("still {status}"),
        }
    })
    .await?;
    let body = outcome?;
    expect_deny(
        403u16,
        &body,
        Some("shop/no-beta"),
        Some(0),
        "explicit-deny",
    )?;
    let mut c = client.lock().await;
    let (status, _) = h2_get(&mut c, "/public/items").await?;
    ensure!(status == StatusCode::OK, "{status}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Admin.

#[tokio::test]
async fn admin_policy_page_shows_active_policies_and_sources_hash() -> Result<()> {
    let mesh = mesh_with(ORDERS_POLICY).await?;
    let dir = mesh.orders.policy_dir().to_owned();
    let check_hash = async || -> Result<String> {
        let out = run_ok(picket()?.args(["policy", "check", "-o", "json"]).arg(&dir)).await?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        json["sources_hash"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no sources_hash: {json}"))
    };

    let page = policy_page(&mesh.orders).await?;
    let hash = page["sources_hash"].as_str().unwrap_or_default();
    ensure!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{page}"
    );
    ensure!(
        hash == check_hash().await?,
        "the sidecar and `picket policy check` hash the same files differently: {page}"
    );
    let files: Vec<&str> = page["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    ensure!(
        files == [dir.join("policy.yaml").display().to_string()],
        "files {files:?}"
    );
    let policies: Vec<String> = page["policies"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}/{} {} {}",
                        p["namespace"].as_str().unwrap_or("?"),
                        p["name"].as_str().unwrap_or("?"),
                        p["action"].as_str().unwrap_or("?"),
                        p["mode"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        policies
            == [
                "shop/no-secrets DENY enforce",
                "shop/public-read ALLOW enforce",
                "shop/try-deny-drafts DENY dry-run",
            ],
        "policies {policies:?}: {page}"
    );

    replace_policy(&dir, &with_beta_denied())?;
    let old = hash.to_owned();
    assert_eventually!(
        READY_TIMEOUT,
        sources_hash(&mesh.orders).await? != old,
        "/policy still shows the old hash"
    );
    ensure!(sources_hash(&mesh.orders).await? == check_hash().await?);
    Ok(())
}
