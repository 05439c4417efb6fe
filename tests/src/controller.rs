//! `TestController`: the real `picket controller` as a child process, pointed at the
//! in-process API-server double ([`crate::kube_api::KubeApiDouble`]) and a [`TestCa`], plus a
//! sidecar-side subscriber (the proxy's own controller client) and builders of the cluster
//! objects the tests apply, as the k8s-openapi types.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use picket_common::policies::ClusterPolicies;
use picket_proxy::discover::controller::{ControllerDiscover, ControllerSource};
use picket_proxy::discover::{Discover, Resolution};
use picket_proxy::peer::PeerIdentity;
use picket_proxy::tls::{ALPN_H2, Credentials};
use serde::Deserialize;
use serde_json::json;
use tempfile::TempDir;

use crate::ca::{TRUST_DOMAIN, TestCa, spiffe_id};
use crate::kube_api::KubeApiDouble;
use crate::process::{Daemon, picket};

/// The controller's own workload name.
pub const CONTROLLER_WORKLOAD: &str = "ns/picket/sa/picket-controller";

/// The policy file a [`TestController`] distributes (`--policy-file`).
pub const TEST_POLICY: &str = "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: { name: admit, namespace: shop }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: [\"*\"] } }]
";

/// A running `picket controller`.
#[derive(Debug)]
pub struct TestController {
    /// Where sidecars subscribe.
    pub listen: SocketAddr,
    daemon: Daemon,
    _dir: TempDir,
}

#[derive(Debug, Deserialize)]
struct Ready {
    listen: SocketAddr,
}

impl TestController {
    /// Starts the controller against `api` with a certificate from `ca`, and waits until it
    /// has listed the cluster and serves.
    pub async fn start(ca: &TestCa, api: &KubeApiDouble) -> Result<Self> {
        Self::start_with(ca, api, "127.0.0.1:0".parse()?, &[]).await
    }

    /// As [`Self::start`], serving on `listen` (say, the pod bridge's address, where sidecars
    /// in network namespaces reach it) with extra arguments for `picket controller`.
    pub async fn start_with(
        ca: &TestCa,
        api: &KubeApiDouble,
        listen: SocketAddr,
        args: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (kube_ca, kube_token) = api.client_files(dir.path())?;
        let token = dir.path().join("join-token");
        std::fs::write(&token, ca.token(CONTROLLER_WORKLOAD).await?)?;
        let ready_file = dir.path().join("ready.json");
        // File-mode policy, copied into every injected namespace beside the trust bundle.
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, TEST_POLICY)?;
        let mut cmd = picket()?;
        cmd.args(["controller", "--listen", &listen.to_string(), "--identity"])
            .arg(spiffe_id("picket", "picket-controller"))
            .arg("--ca-url")
            .arg(ca.url())
            .arg("--trust-bundle-file")
            .arg(ca.bundle_path())
            .arg("--token-file")
            .arg(&token)
            .arg("--kube-api")
            .arg(&api.url)
            .arg("--kube-ca-file")
            .arg(&kube_ca)
            .arg("--kube-token-file")
            .arg(&kube_token)
            .arg("--policy-file")
            .arg(&policy)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .env("RUST_LOG", "info,picket_controller=debug");
        let mut daemon = Daemon::spawn("controller", cmd, dir.path())?;
        let ready: Ready = daemon.wait_ready(&ready_file).await?;
        Ok(Self {
            listen: ready.listen,
            daemon,
            _dir: dir,
        })
    }

    /// Everything the controller has logged.
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// The controller's process.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Stops the controller (SIGKILL: no goodbye to its subscribers, as a crash or a lost node).
    pub async fn stop(&mut self) -> Result<()> {
        self.daemon.kill().await
    }
}

/// Credentials for a sidecar of `namespace/service_account`, from `ca`.
pub async fn sidecar_credentials(
    ca: &TestCa,
    namespace: &str,
    service_account: &str,
) -> Result<Arc<Credentials>> {
    let svid = ca
        .issue(&format!("ns/{namespace}/sa/{service_account}"))
        .await?;
    let id = spiffe_id(namespace, service_account).parse()?;
    Ok(Arc::new(Credentials::new(
        id,
        svid.response.chain_pem.as_bytes(),
        svid.private_key(),
        svid.response.trust_bundle_pem.as_bytes(),
    )?))
}

/// The sidecar's controller client, connected to `controller` as `creds`.
pub fn subscriber(controller: SocketAddr, creds: &Arc<Credentials>) -> Result<ControllerDiscover> {
    let source = ControllerSource {
        address: controller.to_string(),
        identity: spiffe_id("picket", "picket-controller").parse()?,
    };
    ControllerDiscover::new(&source, creds).context("controller client")
}

/// Waits until the subscription's answer satisfies `check`.
pub async fn wait_for(
    discover: &dyn Discover,
    destination: &str,
    what: &str,
    check: impl Fn(&Resolution) -> bool,
) -> Result<Resolution> {
    let mut rx = discover.subscribe(destination.parse()?);
    let deadline = std::time::Duration::from_secs(10);
    let found = tokio::time::timeout(deadline, async {
        loop {
            let now = rx.borrow_and_update().clone();
            if check(&now) {
                return Ok::<_, anyhow::Error>(now);
            }
            rx.changed().await?;
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "{destination}: {what} not seen within {deadline:?}; last answer {:?}",
            rx.borrow()
        ),
    }
}

/// The endpoints of a known answer as `(address, identity)` text, sorted.
pub fn endpoints(resolution: &Resolution) -> Vec<(String, Option<String>)> {
    let Resolution::Known(d) = resolution else {
        return Vec::new();
    };
    let mut out: Vec<_> = d
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.identity.clone()))
        .collect();
    out.sort();
    out
}

/// A namespace, labelled for injection or not.
pub fn namespace(name: &str, injected: bool) -> Result<Namespace> {
    let labels = if injected {
        json!({"picket.dev/inject": "enabled"})
    } else {
        json!({})
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))?)
}

/// A running pod at `ip`; `meshed` pods carry the injector's annotation and proxy container.
pub fn pod(ns: &str, name: &str, service_account: &str, ip: &str, meshed: bool) -> Result<Pod> {
    let containers = vec![json!({"name": "app", "image": "app:1"})];
    let mut init = vec![];
    let mut annotations = json!({});
    if meshed {
        annotations = json!({ picket_k8s::inject::STATUS_ANNOTATION: "0.1.0" });
        init.push(json!({"name": picket_k8s::inject::PROXY_CONTAINER, "image": "picket:1", "restartPolicy": "Always"}));
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "annotations": annotations},
        "spec": {"serviceAccountName": service_account, "containers": containers, "initContainers": init},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))?)
}

/// A ClusterIP Service with one port (`port` -> the named target port `http`).
pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }))?)
}

/// The IPv4 EndpointSlice of Service `service`: each `(pod, ip, ready)` at `target_port`.
pub fn endpoint_slice(
    ns: &str,
    service: &str,
    target_port: u16,
    endpoints: &[(&str, &str, bool)],
) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({"addresses": [ip], "conditions": {"ready": ready},
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}})
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{service}-abcde"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": target_port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))?)
}

/// The SPIFFE ID of a test workload, as the controller pins it.
pub fn identity(ns: &str, service_account: &str) -> Option<String> {
    Some(format!(
        "spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{service_account}"
    ))
}

/// A policy subscription made as a sidecar of `creds` would (`GET /v1/policies` over the
/// mesh's mTLS, HTTP/2), with a plain hyper client: every set the controller sends arrives on
/// the receiver, in order.
pub async fn subscribe_policies(
    controller: SocketAddr,
    creds: &Arc<Credentials>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<ClusterPolicies>> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let tls = creds.client_config(
        PeerIdentity::Exact(spiffe_id("picket", "picket-controller").parse()?),
        &[ALPN_H2],
    )?;
    let tcp = tokio::net::TcpStream::connect(controller).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request =
        http::Request::get("https://controller/v1/policies").body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "the controller answered {}",
        response.status()
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = response.into_body();
    tokio::spawn(async move {
        // The sender is kept for the life of the stream: dropping it would end the connection.
        let _sender = sender;
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                match serde_json::from_slice::<ClusterPolicies>(&line[..end]) {
                    Ok(set) => {
                        if tx.send(set).is_err() {
                            return;
                        }
                    }
                    // An unreadable line ends the stream: the test waiting for a set fails.
                    Err(_) => return,
                }
            }
        }
    });
    Ok(rx)
}

/// The sources of a policy set, sorted.
pub fn sources(set: &ClusterPolicies) -> Vec<String> {
    let mut names: Vec<String> = set.policies.iter().map(|p| p.source.clone()).collect();
    names.sort();
    names
}

/// The controller section a sidecar needs to use `controller`.
pub fn controller_yaml(controller: SocketAddr) -> String {
    format!(
        "controller:\n  address: \"{controller}\"\n  identity: \"{}\"\n",
        spiffe_id("picket", "picket-controller")
    )
}
