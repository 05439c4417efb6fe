//! `picket demo`: a whole mesh on loopback in one process, walked through step by step.
//!
//! It starts a CA with temporary state, two sidecars (`shop/frontend`, `shop/orders`) with the
//! built-in echo app behind each, sends real traffic through the mesh and shows what each side
//! saw, then shows two calls the mesh refuses. Everything lives in a temporary directory that
//! is removed on exit.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Empty};
use picket_ca::authority::{Authority, InitOptions};
use picket_ca::{SpiffeId, TrustDomain, WorkloadName};
use picket_common::crypto::KxGroup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use picket_proxy::config::{
    AdminConfig, CaConfig, Config, HttpConfig, InboundConfig, Limits, OutboundConfig, PolicyConfig,
    Protocol, Timeouts, Upstream,
};
use picket_proxy::sidecar::{self, BoundAddrs};

/// Arguments of `picket demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the mesh running after the walkthrough and print how to poke it; stop with Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

const TRUST_DOMAIN: &str = "cluster.local";

/// The demo's policy: frontend may read orders; a dry-run DENY tries out blocking the legacy
/// API before anyone enforces it.
const DEMO_POLICY: &str = "\
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: orders-read, namespace: shop }
spec:
  selector: { matchLabels: { app: orders } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: [cluster.local/ns/shop/sa/frontend] } }]
    to: [{ operation: { methods: [GET], paths: [/api/orders/*] } }]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: retire-legacy-api, namespace: shop }
spec:
  selector: { matchLabels: { app: orders } }
  action: DENY
  mode: dry-run
  rules:
  - to: [{ operation: { paths: [/api/orders/legacy/*] } }]
---
apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: reports-for-auditors, namespace: shop }
spec:
  selector: { matchLabels: { app: orders } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: [cluster.local/ns/shop/sa/frontend], requestPrincipals: [\"https://idp.demo/*\"] } }]
    to: [{ operation: { methods: [GET], paths: [/api/reports/*] } }]
    when: [{ key: \"request.auth.claims[roles]\", values: [auditor] }]
";

/// The demo's identity provider: its issuer, and a RequestAuthentication for orders with the
/// provider's public key inline (`jwks`).
const DEMO_ISSUER: &str = "https://idp.demo";

fn demo_authn(jwks: &str) -> anyhow::Result<String> {
    Ok(format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: idp, namespace: shop }}
spec:
  selector: {{ matchLabels: {{ app: orders }} }}
  jwtRules:
  - issuer: {DEMO_ISSUER}
    audiences: [orders]
    jwks: {}
    outputClaimToHeaders: [{{ header: x-user, claim: sub }}]
",
        serde_json::to_string(jwks)?
    ))
}

/// The demo identity provider's signing key (Ed25519), made at start.
struct DemoIdp {
    key: aws_lc_rs::signature::Ed25519KeyPair,
}

impl DemoIdp {
    fn new() -> anyhow::Result<Self> {
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| anyhow!("cannot make the demo identity provider's key"))?;
        let key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow!("cannot read the demo identity provider's key"))?;
        Ok(Self { key })
    }

    fn jwks(&self) -> String {
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref());
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "demo-1", "use": "sig", "x": x}]})
            .to_string()
    }

    /// A token for `sub` with `roles`, valid for ten minutes.
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = serde_json::json!({"alg": "EdDSA", "kid": "demo-1", "typ": "JWT"});
        let claims = serde_json::json!({"iss": DEMO_ISSUER, "sub": sub, "aud": "orders",
                                        "roles": roles, "iat": now, "exp": now + 600});
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64.encode(sig.as_ref()))
    }
}

struct Mesh {
    shutdown: CancellationToken,
    ca_url: String,
    frontend: BoundAddrs,
    orders: BoundAddrs,
    idp: DemoIdp,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs the walkthrough.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("picket-demo-").tempdir()?;
    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone())?;
    let mesh = start(dir.path(), shutdown.clone()).await?;
    let outcome = walkthrough(&mesh, dir.path()).await;
    if outcome.is_ok() && args.keep_running {
        print_poke_instructions(&mesh);
        shutdown.cancelled().await;
    }
    mesh.shutdown.cancel();
    for t in mesh.tasks {
        let _ = t.await;
    }
    outcome?;
    println!(
        "\nAll processes stopped and {} removed.",
        dir.path().display()
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

async fn start(dir: &Path, shutdown: CancellationToken) -> anyhow::Result<Mesh> {
    step("1. Certificate authority");
    let mut tasks = Vec::new();
    let ca = start_ca(dir, &shutdown, &mut tasks).await?;
    std::fs::create_dir_all(dir.join("policy"))?;
    let idp = DemoIdp::new()?;
    std::fs::write(
        dir.join("policy").join("shop.yaml"),
        format!("{DEMO_POLICY}{}", demo_authn(&idp.jwks())?),
    )?;
    println!("   policies written to {}", dir.join("policy").display());
    let mut apps = Vec::new();
    for name in ["frontend", "orders"] {
        apps.push(start_app(name, &shutdown, &mut tasks).await?);
    }

    step("2. Sidecars get their identities");
    let orders = spawn_sidecar(&ca, dir, "orders", apps[1], vec![], &shutdown, &mut tasks).await?;
    let orders_id = SpiffeId::new(
        ca.trust_domain.clone(),
        WorkloadName::new("shop", "orders")?,
    );
    let upstream = Upstream {
        name: "orders".into(),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        address: orders.inbound,
        identity: picket_proxy::peer::PeerIdentity::Exact(orders_id),
        protocol: Protocol::Http,
    };
    let frontend = spawn_sidecar(
        &ca,
        dir,
        "frontend",
        apps[0],
        vec![upstream],
        &shutdown,
        &mut tasks,
    )
    .await?;
    for (name, addrs) in [("frontend", &frontend), ("orders", &orders)] {
        let identity: serde_json::Value = admin_json(addrs.admin, "/identity").await?;
        println!(
            "   shop/{name:<8} {}  serial {}  valid until {}",
            identity["spiffe_id"].as_str().unwrap_or("?"),
            identity["serial"].as_str().unwrap_or("?"),
            identity["not_after"].as_str().unwrap_or("?"),
        );
    }
    println!("   private keys were made inside each sidecar and never left its memory");
    Ok(Mesh {
        shutdown,
        ca_url: ca.url,
        frontend,
        orders,
        idp,
        tasks,
    })
}

/// The demo's CA: made in `dir/ca`, serving on a loopback port, its bundle in `dir/bundle.pem`.
struct DemoCa {
    authority: Arc<Authority>,
    trust_domain: TrustDomain,
    url: String,
    bundle_path: std::path::PathBuf,
}

async fn start_ca(
    dir: &Path,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<DemoCa> {
    let trust_domain: TrustDomain = TRUST_DOMAIN.parse()?;
    let authority = Arc::new(Authority::init(InitOptions {
        state_dir: dir.join("ca"),
        trust_domain: trust_domain.clone(),
        root: None,
        leaf_ttl: Duration::from_secs(24 * 3600),
        max_leaf_ttl: Duration::from_secs(7 * 24 * 3600),
        signer_dir: None,
    })?);
    let bundle_path = dir.join("bundle.pem");
    std::fs::write(&bundle_path, authority.trust_bundle_pem())?;
    let ca_listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", ca_listener.local_addr()?);
    let serving = Arc::clone(&authority);
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let stopped = async move { stop.cancelled().await };
        if let Err(e) = picket_ca::server::serve(serving, ca_listener, stopped).await {
            tracing::error!(error = %e, "CA server failed");
        }
    }));
    println!("   CA for trust domain {trust_domain} serving on {url}");
    println!(
        "   root and intermediate made in {}",
        dir.join("ca").display()
    );
    Ok(DemoCa {
        authority,
        trust_domain,
        url,
        bundle_path,
    })
}

/// One demo app (the echo server, named `<name>-app`) on a loopback port.
async fn start_app(
    name: &str,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let stop = shutdown.clone();
    let app_name = format!("{name}-app");
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            picket_proxy::echo::serve_http(l, app_name, async move { stop.cancelled().await }).await
        {
            tracing::error!(error = %e, "demo app failed");
        }
    }));
    Ok(addr)
}

/// A demo sidecar's configuration: loopback listeners on free ports, strict inbound, the
/// demo's policies, the join token in `token_file`, and the default telemetry.
fn sidecar_config(
    ca: &DemoCa,
    dir: &Path,
    identity: SpiffeId,
    token_file: std::path::PathBuf,
    app: SocketAddr,
    upstreams: Vec<Upstream>,
) -> Config {
    let identity_sa = identity.service_account().to_owned();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Config {
        identity,
        ca: CaConfig {
            urls: vec![ca.url.clone()],
            trust_bundle: ca.bundle_path.clone(),
            join_token_file: token_file,
        },
        inbound: InboundConfig {
            listen: any,
            app: Some(app),
            transparent: false,
            mode: picket_proxy::config::InboundMode::Strict,
        },
        outbound: OutboundConfig {
            listen: any,
            upstreams,
            transparent: false,
            meshed: Vec::new(),
            passthrough: false,
            opaque_ports: Vec::new(),
            block_metadata: true,
            destinations: Vec::new(),
            unmeshed: picket_proxy::config::Unmeshed::Deny,
            balancer: picket_proxy::config::BalancerSettings::default(),
        },
        admin: AdminConfig { listen: any },
        timeouts: Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            park: Duration::from_millis(250),
            stall: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            detect: Duration::from_secs(1),
        },
        limits: Limits {
            max_connections: 1000,
            max_requests: 1000,
            max_header_bytes: 64 * 1024,
        },
        labels: [("app".to_owned(), identity_sa)].into_iter().collect(),
        policy: PolicyConfig {
            path: Some(dir.join("policy")),
            load: picket_policy::LoadOptions::default(),
            deny_details: true,
        },
        http: HttpConfig::default(),
        telemetry: picket_proxy::telemetry::TelemetryConfig::default(),
        health: None,
        jwt: picket_proxy::jwt::JwtSettings::default(),
        controller: None,
    }
}

async fn spawn_sidecar(
    ca: &DemoCa,
    dir: &Path,
    sa: &str,
    app: SocketAddr,
    upstreams: Vec<Upstream>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<BoundAddrs> {
    let workload = WorkloadName::new("shop", sa)?;
    let token = ca
        .authority
        .create_token(&workload, Duration::from_secs(600), 1)?;
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, token)?;
    let identity = SpiffeId::new(ca.trust_domain.clone(), workload);
    let config = sidecar_config(ca, dir, identity, token_file, app, upstreams);
    let (tx, rx) = oneshot::channel();
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let result = sidecar::run(config, stop, move |addrs| {
            let _ = tx.send(addrs.clone());
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "demo sidecar failed");
        }
    }));
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .context("sidecar did not become ready within 30 s")?
        .map_err(|_| anyhow!("sidecar shop/{sa} stopped before it was ready"))
}

async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    http_call(addr, http::Method::GET, host, path, headers).await
}

async fn http_call(
    addr: SocketAddr,
    method: http::Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn admin_json(admin: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(admin, "admin", path, &[]).await?;
    anyhow::ensure!(status == 200, "admin {path} answered {status}");
    Ok(serde_json::from_str(&body)?)
}

async fn walkthrough(mesh: &Mesh, dir: &Path) -> anyhow::Result<()> {
    let via = call_through_the_mesh(mesh).await?;
    policy_decides(via, dir).await?;
    end_users(mesh, via).await?;
    lateral_movement(mesh, via).await?;
    plaintext_client(mesh).await?;
    step("8. A client with a certificate from a foreign certificate authority");
    let refused = foreign_client(mesh, dir).await?;
    println!("   {refused}");

    print_counters(mesh).await
}

/// Step 3: a request through both sidecars; the app sees the caller's true identity, and the
/// key exchange is the post-quantum hybrid. The frontend's listener for orders.
async fn call_through_the_mesh(mesh: &Mesh) -> anyhow::Result<SocketAddr> {
    step("3. frontend calls orders through the mesh");
    let via = *mesh
        .frontend
        .upstreams
        .get("orders")
        .ok_or_else(|| anyhow!("frontend has no orders upstream listener"))?;
    println!(
        "   frontend app --plaintext--> {via} (frontend sidecar) --mTLS--> {} (orders sidecar) --> orders app",
        mesh.orders.inbound
    );
    let (status, body) = http_get(
        via,
        "orders",
        "/api/orders/42",
        &[(
            "x-picket-peer-identity",
            "spiffe://cluster.local/ns/shop/sa/admin",
        )],
    )
    .await?;
    let seen: serde_json::Value =
        serde_json::from_str(&body).context("orders app answered non-JSON")?;
    anyhow::ensure!(
        status == 200,
        "request through the mesh answered {status}: {body}"
    );
    let peer = seen["peer_identity"].as_str().unwrap_or("none");
    println!("   GET /api/orders/42 -> {status}");
    println!("   the orders app saw the caller as {peer}");
    println!(
        "   (the request carried a forged x-picket-peer-identity header; the sidecar replaced it)"
    );
    anyhow::ensure!(
        peer == "spiffe://cluster.local/ns/shop/sa/frontend",
        "orders app saw {peer}, expected the frontend identity"
    );
    let (_, metrics) = http_get(mesh.orders.admin, "admin", "/metrics", &[]).await?;
    let mesh_kx = kx_label(
        &metrics,
        "picket_tls_handshakes_total{direction=\"inbound\",",
    )
    .ok_or_else(|| anyhow!("the orders sidecar counted no inbound handshake"))?;
    let (_, metrics) = http_get(mesh.frontend.admin, "admin", "/metrics", &[]).await?;
    let ca_kx = kx_label(&metrics, "picket_ca_tls_handshakes_total{")
        .ok_or_else(|| anyhow!("the frontend sidecar counted no handshake with the CA"))?;
    println!(
        "   key exchange between the sidecars: {}",
        describe_kx(&mesh_kx)
    );
    println!(
        "   key exchange of the frontend sidecar with the CA: {}",
        describe_kx(&ca_kx)
    );
    let hybrid = KxGroup::X25519Mlkem768.as_str();
    anyhow::ensure!(
        mesh_kx == hybrid && ca_kx == hybrid,
        "expected the post-quantum hybrid {hybrid} between sidecars and with the CA, got {mesh_kx} and {ca_kx}"
    );

    Ok(via)
}

/// Step 4: a denied request, explained as `picket policy explain` does, and a dry-run policy.
async fn policy_decides(via: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    step("4. Policy: only GET /api/orders/* from frontend is allowed");
    let (status, body) = http_call(
        via,
        http::Method::POST,
        "orders",
        "/api/orders/42/refund",
        &[],
    )
    .await?;
    anyhow::ensure!(
        status == 403,
        "POST through the mesh answered {status}, expected 403: {body}"
    );
    println!("   POST /api/orders/42/refund -> {status} {}", body.trim());
    println!("   why, as `picket policy explain` tells it:");
    let explanation = explain_refund(dir)?;
    for line in explanation.lines() {
        println!("     {line}");
    }
    let (status, _) = http_get(via, "orders", "/api/orders/legacy/7", &[]).await?;
    anyhow::ensure!(
        status == 200,
        "legacy GET answered {status}, expected 200 (dry-run must not deny)"
    );
    println!(
        "   GET /api/orders/legacy/7 -> {status}: allowed, but the dry-run policy retire-legacy-api recorded \"would deny\""
    );

    Ok(())
}

/// Step 5: end-user tokens: allowed by a claim, denied without it, refused when tampered.
async fn end_users(mesh: &Mesh, via: SocketAddr) -> anyhow::Result<()> {
    step("5. End users: a JWT from the identity provider, checked by the orders sidecar");
    let alice = mesh.idp.token("alice", &["auditor"]);
    let bob = mesh.idp.token("bob", &["clerk"]);
    let (status, body) = http_get(
        via,
        "orders",
        "/api/reports/q3",
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await?;
    anyhow::ensure!(
        status == 200,
        "alice's report request answered {status}: {body}"
    );
    let seen: serde_json::Value = serde_json::from_str(&body)?;
    let headers = seen["headers"].as_array().cloned().unwrap_or_default();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h[0].as_str() == Some(name))
            .and_then(|h| h[1].as_str().map(str::to_owned))
    };
    anyhow::ensure!(
        header("x-user").as_deref() == Some("alice") && header("authorization").is_none(),
        "the orders app saw x-user {:?} and authorization {:?}",
        header("x-user"),
        header("authorization")
    );
    println!(
        "   GET /api/reports/q3 with alice's token (roles: [auditor]) -> {status}: allowed for the claim"
    );
    println!("   the orders app saw x-user: alice, and not the token (removed by the sidecar)");
    let (status, body) = http_get(
        via,
        "orders",
        "/api/reports/q3",
        &[("authorization", &format!("Bearer {bob}"))],
    )
    .await?;
    anyhow::ensure!(
        status == 403,
        "bob's report request answered {status}: {body}"
    );
    println!(
        "   GET /api/reports/q3 with bob's token (roles: [clerk]) -> {status} {}",
        body.trim()
    );
    // One character of the signature changed.
    let mut forged = alice.clone().into_bytes();
    let at = forged.len().saturating_sub(10);
    if let Some(b) = forged.get_mut(at) {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    let forged = String::from_utf8(forged)?;
    let (status, _) = http_get(
        via,
        "orders",
        "/api/reports/q3",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await?;
    anyhow::ensure!(status == 401, "a forged token answered {status}");
    println!("   the same with a tampered signature -> {status} (invalid token)");

    Ok(())
}

/// Step 6: a probe of a sensitive path raises an alert.
async fn lateral_movement(mesh: &Mesh, via: SocketAddr) -> anyhow::Result<()> {
    step("6. Lateral movement: frontend probes a sensitive path");
    let (status, _) = http_get(via, "orders", "/.env", &[]).await?;
    println!("   GET /.env -> {status} (denied by policy, and flagged)");
    let alerts = admin_json(mesh.orders.admin, "/alerts").await?;
    let list = alerts["alerts"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(
        !list.is_empty(),
        "the orders sidecar raised no alert for a /.env probe"
    );
    for a in &list {
        println!(
            "   alert {} ({}): {}",
            a["kind"].as_str().unwrap_or("?"),
            a["severity"].as_str().unwrap_or("?"),
            a["summary"].as_str().unwrap_or("")
        );
    }

    Ok(())
}

/// Step 7: plaintext on the mTLS port never reaches the app.
async fn plaintext_client(mesh: &Mesh) -> anyhow::Result<()> {
    step("7. A plaintext client on the orders inbound port");
    let mut tcp = TcpStream::connect(mesh.orders.inbound).await?;
    tcp.write_all(b"GET /api/orders/42 HTTP/1.1\r\nhost: orders\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    let leaked = String::from_utf8_lossy(&buf).contains("orders-app");
    anyhow::ensure!(!leaked, "plaintext request reached the app");
    println!(
        "   sent a plaintext HTTP request: connection {} without reaching the app",
        if read.is_ok() { "closed" } else { "timed out" }
    );

    Ok(())
}

/// Step 9: the orders sidecar's counters.
async fn print_counters(mesh: &Mesh) -> anyhow::Result<()> {
    step("9. What the orders sidecar counted");
    let (_, metrics) = http_get(mesh.orders.admin, "admin", "/metrics", &[]).await?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("picket_tls_handshake_failures_total")
            || l.starts_with("picket_tls_handshakes_total")
            || l.starts_with("picket_requests_total")
            || l.starts_with("picket_authz_decisions_total")
            || l.starts_with("picket_alerts_total")
            || l.starts_with("picket_jwt_validations_total")
    }) {
        println!("   {line}");
    }
    Ok(())
}

/// The `kx` label of the first sample in a metrics text whose line starts with `prefix`.
fn kx_label(metrics: &str, prefix: &str) -> Option<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| {
            let (_, rest) = l.split_once("kx=\"")?;
            rest.split_once('"').map(|(kx, _)| kx.to_owned())
        })
}

/// A group name with what it means.
fn describe_kx(kx: &str) -> String {
    if kx == KxGroup::X25519Mlkem768.as_str() {
        format!("{kx} (post-quantum hybrid: ML-KEM-768 with X25519)")
    } else {
        format!("{kx} (classical)")
    }
}

/// The explanation of the refused POST, from the same policy files the sidecar loaded.
fn explain_refund(dir: &Path) -> anyhow::Result<String> {
    let options = picket_policy::LoadOptions::default();
    let (set, _) = picket_proxy::authz::load_policy(&dir.join("policy"), &options)?;
    let compiled = set.for_workload(&picket_policy::Workload {
        namespace: "shop".into(),
        labels: [("app".to_owned(), "orders".to_owned())]
            .into_iter()
            .collect(),
    });
    let headers: [(&str, &str); 0] = [];
    let explanation = compiled.explain(&picket_policy::Request {
        source_principal: Some("cluster.local/ns/shop/sa/frontend"),
        source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        destination_port: 0,
        sni: None,
        http: Some(picket_policy::HttpRequest {
            method: "POST",
            path: "/api/orders/42/refund",
            host: "orders",
            headers: &headers,
        }),
        auth: None,
    });
    Ok(explanation.to_string())
}

/// An attacker's client: a certificate claiming the frontend identity, issued by a CA the mesh
/// does not trust. It trusts the mesh root itself, so the refusal seen is the server's.
async fn foreign_client(mesh: &Mesh, dir: &Path) -> anyhow::Result<String> {
    let foreign = Authority::init(InitOptions {
        state_dir: dir.join("foreign-ca"),
        trust_domain: TRUST_DOMAIN.parse()?,
        root: None,
        leaf_ttl: Duration::from_secs(3600),
        max_leaf_ttl: Duration::from_secs(3600),
        signer_dir: None,
    })?;
    let frontend = WorkloadName::new("shop", "frontend")?;
    let id = SpiffeId::new(TRUST_DOMAIN.parse()?, frontend.clone());
    let token = foreign.create_token(&frontend, Duration::from_secs(60), 1)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
        id.to_uri(),
    )?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let issued = foreign.issue(&csr, picket_ca::authority::Credential::JoinToken(token))?;
    let mesh_bundle = std::fs::read_to_string(dir.join("bundle.pem"))?;
    let both_roots = format!("{}{}", foreign.trust_bundle_pem(), mesh_bundle);
    let creds = Arc::new(picket_proxy::tls::Credentials::new(
        id,
        issued.chain_pem.as_bytes(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        both_roots.as_bytes(),
    )?);
    let orders: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse()?;
    let connector = tokio_rustls::TlsConnector::from(creds.client_config(
        picket_proxy::peer::PeerIdentity::Exact(orders),
        &[picket_proxy::tls::ALPN_HTTP1],
    )?);
    let tcp = TcpStream::connect(mesh.orders.inbound).await?;
    let name = rustls::pki_types::ServerName::IpAddress(mesh.orders.inbound.ip().into());
    let outcome = match connector.connect(name, tcp).await {
        Err(e) => format!("handshake refused: {e}"),
        Ok(mut tls) => {
            // In TLS 1.3 the server judges the client certificate after the client finishes;
            // the refusal arrives as an alert on the first read.
            tls.write_all(b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            match tls.read_to_end(&mut buf).await {
                Err(e) => format!("refused by the orders sidecar: {e}"),
                Ok(_) if buf.is_empty() => "refused: connection closed without a response".into(),
                Ok(_) => return Err(anyhow!("a certificate from a foreign CA was accepted")),
            }
        }
    };
    Ok(outcome)
}

fn print_poke_instructions(mesh: &Mesh) {
    let via = mesh.frontend.upstreams.get("orders").copied();
    println!("\nThe mesh keeps running. Try:");
    if let Some(via) = via {
        println!("   curl -s http://{via}/api/orders/1                       # through the mesh");
    }
    println!(
        "   curl -s -H 'host: orders' http://{}/x                   # shared outbound listener",
        mesh.frontend.outbound
    );
    println!(
        "   curl -s http://{}/metrics                              # orders sidecar metrics",
        mesh.orders.admin
    );
    println!(
        "   curl -s http://{}/identity                             # frontend identity",
        mesh.frontend.admin
    );
    println!(
        "   curl -sk {}/healthz                                    # the CA",
        mesh.ca_url
    );
    println!("Stop with Ctrl-C.");
}
