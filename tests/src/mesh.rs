//! The usual two-sidecar mesh: a client workload `frontend` calling `orders` through both
//! sidecars, with the echo app behind `orders`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::apps::App;
use crate::ca::{TestCa, spiffe_id};
use crate::ports::closed_port;
use crate::proxy::{Sidecar, TestProxy, Upstream};
use crate::telemetry::TelemetryYaml;

/// How to build a [`Mesh`].
#[derive(Debug, Default, Clone)]
pub struct MeshOptions {
    /// Extra `picket ca init` arguments, such as `--leaf-ttl 60s`.
    pub ca_init_args: Vec<String>,
    /// Carry `orders` as opaque TCP to a TCP echo instead of HTTP to the echo app.
    pub tcp: bool,
    /// Extra YAML for both sidecars.
    pub extra_yaml: String,
    /// Policy documents for the orders sidecar; `None` keeps the harness default, which admits
    /// any authenticated peer.
    pub orders_policy: Option<String>,
    /// Workload labels of the orders sidecar.
    pub orders_labels: Vec<(String, String)>,
    /// Extra YAML for the orders sidecar only (such as its own `policy:` section).
    pub orders_yaml: String,
    /// Extra YAML for the frontend sidecar only (such as its own `telemetry:` section).
    pub frontend_yaml: String,
}

/// The frontend's sidecar (`ns/shop/sa/frontend`, its app port closed) with `upstream`.
pub async fn frontend(upstream: Upstream) -> Result<Sidecar> {
    Ok(Sidecar::new("shop", "frontend", closed_port()?).upstream(upstream))
}

/// The frontend's sidecar (see [`frontend`]) with the upstream `orders` over HTTP at
/// `orders_inbound`, pinned to `ns/shop/sa/orders`.
pub async fn frontend_to_orders(orders_inbound: SocketAddr) -> Result<Sidecar> {
    frontend(Upstream::http(
        "orders",
        orders_inbound,
        &spiffe_id("shop", "orders"),
    ))
    .await
}

/// The orders sidecar and the frontend's sidecar calling it (see [`frontend_to_orders`]), each
/// writing a flow log of its own.
#[derive(Debug)]
pub struct FlowLogged {
    /// The server-side sidecar, `ns/shop/sa/orders`.
    pub orders: TestProxy,
    /// The client-side sidecar, `ns/shop/sa/frontend`, with upstream `orders`.
    pub frontend: TestProxy,
    /// The orders sidecar's flow log.
    pub orders_flows: PathBuf,
    /// The frontend sidecar's flow log.
    pub frontend_flows: PathBuf,
}

impl FlowLogged {
    /// Starts `orders` (its configuration without telemetry: the app, policy, extra YAML), then
    /// the frontend's sidecar calling it with `frontend_yaml` added, both with `telemetry` and
    /// their flow logs in `dir` (`orders-flows.jsonl`, `frontend-flows.jsonl`).
    pub async fn start(
        ca: &TestCa,
        dir: &Path,
        telemetry: &TelemetryYaml,
        orders: Sidecar,
        frontend_yaml: &str,
    ) -> Result<Self> {
        let orders_flows = dir.join("orders-flows.jsonl");
        let frontend_flows = dir.join("frontend-flows.jsonl");
        let orders = TestProxy::spawn(
            ca,
            orders.yaml(&telemetry.clone().flow_log(&orders_flows).to_yaml()),
        )
        .await?;
        let frontend = TestProxy::spawn(
            ca,
            frontend_to_orders(orders.addrs().inbound)
                .await?
                .yaml(&telemetry.clone().flow_log(&frontend_flows).to_yaml())
                .yaml(frontend_yaml),
        )
        .await?;
        Ok(Self {
            orders,
            frontend,
            orders_flows,
            frontend_flows,
        })
    }
}

/// frontend app -> frontend sidecar (outbound) -> mTLS -> orders sidecar (inbound) -> orders app.
#[derive(Debug)]
pub struct Mesh {
    /// The CA both sidecars got their certificates from.
    pub ca: TestCa,
    /// The app behind `orders` (named `orders`).
    pub app: App,
    /// The server-side sidecar, `ns/shop/sa/orders`.
    pub orders: TestProxy,
    /// The client-side sidecar, `ns/shop/sa/frontend`, with upstream `orders`.
    pub frontend: TestProxy,
}

impl Mesh {
    /// An HTTP mesh with default settings.
    pub async fn start() -> Result<Self> {
        Self::start_with(MeshOptions::default()).await
    }

    /// A mesh built as `options` say.
    pub async fn start_with(options: MeshOptions) -> Result<Self> {
        let init_args: Vec<&str> = options.ca_init_args.iter().map(String::as_str).collect();
        let ca = TestCa::start_with(&init_args).await?;
        let app = if options.tcp {
            App::tcp_echo().await?
        } else {
            App::http("orders").await?
        };
        let mut sidecar = Sidecar::new("shop", "orders", app.addr()).yaml(&options.extra_yaml);
        if !options.orders_yaml.is_empty() {
            sidecar = sidecar.yaml(&options.orders_yaml);
        }
        if let Some(policy) = &options.orders_policy {
            sidecar = sidecar.policy(policy);
        }
        for (key, value) in &options.orders_labels {
            sidecar = sidecar.label(key, value);
        }
        let orders = TestProxy::spawn(&ca, sidecar).await?;
        let orders_identity = spiffe_id("shop", "orders");
        let inbound = orders.addrs().inbound;
        let upstream = if options.tcp {
            Upstream::tcp("orders", inbound, &orders_identity)
        } else {
            Upstream::http("orders", inbound, &orders_identity)
        };
        let mut sidecar = frontend(upstream).await?.yaml(&options.extra_yaml);
        if !options.frontend_yaml.is_empty() {
            sidecar = sidecar.yaml(&options.frontend_yaml);
        }
        let frontend = TestProxy::spawn(&ca, sidecar).await?;
        Ok(Self {
            ca,
            app,
            orders,
            frontend,
        })
    }

    /// The frontend sidecar's shared outbound listener, where its app sends plaintext HTTP
    /// with `Host: orders`.
    pub fn outbound(&self) -> SocketAddr {
        self.frontend.addrs().outbound
    }

    /// `http://<outbound><path>`, for curl with `-H "Host: orders"`.
    pub fn outbound_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.outbound())
    }
}
