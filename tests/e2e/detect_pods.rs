//! Scripted attacks against real sidecars in pod-like network namespaces, with transparent
//! interception as `picket iptables` sets it up and meshed destinations pinned to no identity
//! (`identity: any`): what the detectors of the attacker's and the victims' sidecars raise.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_proxy::telemetry::{Alert, AlertKind};
use picket_tests::analyze::analyze_json;
use picket_tests::eventually;
use picket_tests::netns::{CaPods, POD_APP_PORT as APP_PORT, PodYaml, plain_app_script};
use picket_tests::otlp::{OtlpReceiver, SPAN_KIND_CLIENT};
use picket_tests::process::{Daemon, output};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Pods, each with the plain app, a sidecar with a flow log and the interception rules.
struct Pods {
    _processes: Vec<Daemon>,
    pods: CaPods,
    /// The OTLP receiver every sidecar exports to, when started with one.
    otlp: Option<OtlpReceiver>,
}

fn identity(i: usize) -> String {
    format!("spiffe://cluster.local/ns/pods/sa/pod{}", i + 1)
}

impl Pods {
    /// `n` pods whose sidecars admit any mesh identity and run the detectors with
    /// `detectors` (lines under `telemetry.detectors`, indented by four spaces).
    async fn start(n: usize, detectors: &str) -> Result<Self> {
        Self::start_with(n, &|_| detectors.to_owned(), &[]).await
    }

    /// [`Pods::start`] with the detector lines made from the bridge's gateway address, and
    /// extra `outbound:` lines for each pod (`outbound[i]`, when given).
    async fn start_with(
        n: usize,
        detectors: &dyn Fn(Ipv4Addr) -> String,
        outbound: &[&str],
    ) -> Result<Self> {
        Self::start_full(n, detectors, outbound, &[]).await
    }

    /// [`Pods::start_with`] with one more policy document for each pod (`policies[i]`, when
    /// given) beside the one that admits every mesh identity.
    async fn start_full(
        n: usize,
        detectors: &dyn Fn(Ipv4Addr) -> String,
        outbound: &[&str],
        policies: &[&str],
    ) -> Result<Self> {
        Self::start_traced(n, detectors, outbound, policies, false).await
    }

    /// [`Pods::start_full`], and with `otlp` an OTLP receiver on the bridge's gateway that
    /// every sidecar exports its spans to.
    async fn start_traced(
        n: usize,
        detectors: &dyn Fn(Ipv4Addr) -> String,
        outbound: &[&str],
        policies: &[&str],
        otlp: bool,
    ) -> Result<Self> {
        let pods = CaPods::start(n).await?;
        let (net, dir) = (&pods.net, pods.dir.path());
        let detectors = detectors(net.gateway());
        let otlp = match otlp {
            true => Some(OtlpReceiver::start_at(SocketAddr::from((net.gateway(), 0))).await?),
            false => None,
        };
        let otlp_yaml = otlp
            .as_ref()
            .map(|o| {
                format!(
                    "  otlp: {{ endpoint: \"{}\", sampling_ratio: 1.0 }}\n",
                    o.endpoint()
                )
            })
            .unwrap_or_default();
        let meshed = format!(
            "  meshed: [{{ cidr: \"{cidr}\", ports: [{APP_PORT}], identity: any }}]\n",
            cidr = net.cidr()
        );
        let mut processes = Vec::new();
        for i in 0..n {
            let name = format!("pod{}", i + 1);
            processes.push(net.plain_app(i, "0.0.0.0", APP_PORT, &name, dir).await?);
            let extra = outbound
                .get(i)
                .map(|l| format!("  {l}\n"))
                .unwrap_or_default();
            let config = pods
                .sidecar_config(
                    &name,
                    &name,
                    PodYaml {
                        outbound: &(meshed.clone() + &extra),
                        telemetry: &format!("{otlp_yaml}  detectors:\n{detectors}"),
                        policy: policies.get(i).copied().unwrap_or_default(),
                        ..PodYaml::default()
                    },
                )
                .await?;
            processes.push(
                net.sidecar(i, &config, &format!("sidecar-{name}"), dir)
                    .await?,
            );
            net.intercept(i).await?;
        }
        Ok(Self {
            _processes: processes,
            pods,
            otlp,
        })
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        self.pods.net.pods[i].ip
    }

    /// curl inside pod `i`: (HTTP status, body).
    async fn curl(&self, i: usize, args: &[&str], url: &str) -> Result<(u16, String)> {
        let mut cmd = self.pods.net.exec(i, "curl");
        cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url);
        let out = output(&mut cmd).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        ensure!(
            out.status.success(),
            "curl {url} in pod{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }

    /// pod `from`'s app calls pod `to`'s app (intercepted, carried over mTLS).
    async fn call(&self, from: usize, to: usize, method: &str, path: &str) -> Result<u16> {
        let url = format!("http://{}:{APP_PORT}{path}", self.ip(to));
        Ok(self.curl(from, &["-X", method], &url).await?.0)
    }

    /// The alerts pod `i`'s sidecar lists at admin `/alerts`.
    async fn alerts(&self, i: usize) -> Result<Vec<Alert>> {
        let (code, body) = self.curl(i, &[], "http://127.0.0.1:7191/alerts").await?;
        ensure!(code == 200, "/alerts of pod{}: {code} {body}", i + 1);
        #[derive(serde::Deserialize)]
        struct Page {
            alerts: Vec<Alert>,
        }
        let page: Page = serde_json::from_str(&body).with_context(|| body.clone())?;
        Ok(page.alerts)
    }

    fn flow_log(&self, i: usize) -> PathBuf {
        self.pods.flow_log(&format!("pod{}", i + 1))
    }

    /// The flow records in pod `i`'s log, once there are `n`.
    async fn flows(&self, i: usize, n: usize) -> Result<Vec<Value>> {
        picket_tests::telemetry::wait_for_flows(&self.flow_log(i), n, WAIT).await
    }
}

fn count(alerts: &[Alert], kind: AlertKind) -> usize {
    alerts.iter().filter(|a| a.kind == kind).count()
}

/// The attacker in pod1 sweeps four services through the transparent listener, where the
/// meshed CIDR pins no identity. Its own sidecar must name each peer by the identity it
/// presented, so the sweep is a fan-out and each new edge its own alert, and `picket analyze`
/// must match both sides of every request (no pseudo-node, no double count).
#[tokio::test]
async fn a_sweep_seen_from_the_callers_side_names_true_peers_and_raises_fan_out() -> Result<()> {
    const PODS: usize = 5;
    let pods = Pods::start(
        PODS,
        "    learning_window: 0s\n    fanout_threshold: 4\n    window: 60s\n",
    )
    .await?;
    for to in 1..PODS {
        let got = pods.call(0, to, "GET", "/api/status").await?;
        ensure!(got == 200, "pod1 -> pod{}: {got}", to + 1);
    }
    let alerts = eventually(WAIT, async || {
        let alerts = pods.alerts(0).await?;
        ensure!(count(&alerts, AlertKind::FanOut) == 1, "{alerts:#?}");
        Ok(alerts)
    })
    .await?;
    let fan_out = alerts
        .iter()
        .find(|a| a.kind == AlertKind::FanOut)
        .context("no fan_out")?;
    ensure!(
        fan_out.evidence.get("distinct_destinations") == Some(&4),
        "{fan_out:?}"
    );
    // One new edge per peer: alerts about one peer no longer hide those about the next.
    let new_edges: Vec<&str> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::NewEdge)
        .filter_map(|a| a.destination.as_deref())
        .collect();
    let want: Vec<String> = (1..PODS).map(identity).collect();
    ensure!(new_edges == want, "new edges {new_edges:?}");

    let flows = pods.flows(0, PODS - 1).await?;
    for (flow, want) in flows.iter().zip(&want) {
        ensure!(flow["direction"] == "outbound", "{flow}");
        ensure!(flow["destination_identity"] == want.as_str(), "{flow}");
        ensure!(
            flow["expected_identity"] == "spiffe://cluster.local/*",
            "{flow}"
        );
    }

    // analyze on every sidecar's log: each request once, between true identities.
    let mut files = Vec::new();
    for i in 0..PODS {
        let n = usize::from(i > 0);
        pods.flows(i, if i == 0 { PODS - 1 } else { n }).await?;
        files.push(pods.flow_log(i));
    }
    let report = analyze_json(&files, &[]).await?;
    let edges = report["edges"].as_array().context("no edges")?;
    ensure!(edges.len() == PODS - 1, "{report:#}");
    for e in edges {
        ensure!(e["source"] == identity(0).as_str(), "{e}");
        ensure!(e["requests"] == 1, "counted twice: {e}");
    }
    Ok(())
}

/// Credential stuffing: pod1's app tries 50 passwords on pod2's `POST /login`, each answered
/// 401 by the app. Both sidecars raise one authentication-failure burst for that route.
/// Then a route that answered 2xx answers 5xx: both sidecars raise `status_class_new` for it
/// once the floor (3 answers) is reached, while a steady route and one odd 5xx of another
/// route stay quiet.
#[tokio::test]
async fn a_credential_stuffing_burst_and_a_new_status_class_alert_on_both_sides() -> Result<()> {
    let pods = Pods::start(2, "    learning_window: 0s\n").await?;
    let url = format!("http://{}:{APP_PORT}/login", pods.ip(1));
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 50).collect();
    let mut cmd = pods.pods.net.exec(0, "curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-X",
        "POST",
        "-d",
        "user=admin&password=guess",
    ])
    .args(["-w", "\nanswer=%{http_code}\n"])
    .args(&urls);
    let out = output(&mut cmd).await?;
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        codes.lines().filter(|c| *c == "answer=401").count() == 50,
        "answers: {codes}"
    );
    let route = format!("{} POST /login", identity(1));
    for side in [0, 1] {
        let alerts = eventually(WAIT, async || {
            let alerts = pods.alerts(side).await?;
            ensure!(
                count(&alerts, AlertKind::AuthFailureBurst) == 1,
                "pod{}: {alerts:#?}",
                side + 1
            );
            Ok(alerts)
        })
        .await?;
        let burst = alerts
            .iter()
            .find(|a| a.kind == AlertKind::AuthFailureBurst)
            .context("no burst")?;
        ensure!(
            burst.source_identity.as_deref() == Some(identity(0).as_str()),
            "{burst:?}"
        );
        ensure!(
            burst.destination.as_deref() == Some(route.as_str()),
            "{burst:?}"
        );
        ensure!(burst.evidence.get("threshold") == Some(&10), "{burst:?}");
    }
    status_class_new_on_both_sides(&pods).await
}

/// pod1 calls three routes of pod2: `GET /status/{id}` answers 200 five times, then 503 three
/// times (the floor); `GET /status/{id}/odd` answers 200 three times and 503 once (below the
/// floor); `GET /api/steady` answers 200 throughout.
async fn status_class_new_on_both_sides(pods: &Pods) -> Result<()> {
    let calls = std::iter::repeat_n("/status/200", 5)
        .chain(std::iter::repeat_n("/api/steady", 5))
        .chain(std::iter::repeat_n("/status/200/odd", 3))
        .chain(["/status/503/odd"])
        .chain(std::iter::repeat_n("/status/503", 3));
    for path in calls {
        let want: u16 = if path.starts_with("/status/503") {
            503
        } else {
            200
        };
        let got = pods.call(0, 1, "GET", path).await?;
        ensure!(got == want, "GET {path}: {got}");
    }
    let route = format!("{} GET /status/{{id}}", identity(1));
    for side in [0, 1] {
        let alerts = eventually(WAIT, async || {
            let alerts = pods.alerts(side).await?;
            ensure!(
                count(&alerts, AlertKind::StatusClassNew) >= 1,
                "pod{}: {alerts:#?}",
                side + 1
            );
            Ok(alerts)
        })
        .await?;
        let new: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::StatusClassNew)
            .collect();
        ensure!(new.len() == 1, "pod{}: {new:#?}", side + 1);
        let a = new[0];
        ensure!(
            a.destination.as_deref() == Some(route.as_str())
                && a.source_identity.as_deref() == Some(identity(0).as_str())
                && a.evidence.get("status_class") == Some(&5)
                && a.evidence.get("answers") == Some(&3)
                && a.severity == picket_proxy::telemetry::Severity::Medium,
            "pod{}: {a:?}",
            side + 1
        );
        // The learned classes at /detectors, and the alert counted.
        let (_, body) = pods
            .curl(side, &[], "http://127.0.0.1:7191/detectors")
            .await?;
        let state: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        let classes = |r: &str| -> Option<Value> {
            state["routes"]
                .as_array()?
                .iter()
                .find(|v| v["route"] == r && v["destination"] == identity(1).as_str())
                .map(|v| v["status_classes"].clone())
        };
        ensure!(
            classes("GET /status/{id}") == Some(serde_json::json!(["2xx", "5xx"]))
                && classes("GET /status/{id}/odd") == Some(serde_json::json!(["2xx"]))
                && classes("GET /api/steady") == Some(serde_json::json!(["2xx"])),
            "pod{}: {state:#}",
            side + 1
        );
        let (_, metrics) = pods
            .curl(side, &[], "http://127.0.0.1:7191/metrics")
            .await?;
        ensure!(
            metrics
                .contains("picket_alerts_total{kind=\"status_class_new\",severity=\"medium\"} 1"),
            "{metrics}"
        );
    }
    Ok(())
}

/// A compromised pod fetches the cloud metadata service (here a server on the bridge's
/// gateway, configured as the metadata address). With the default `outbound.metadata: block`
/// the connection is refused and a critical alert raised; with `alert` it goes through,
/// alerted, and its egress flow is recorded with address, port and bytes.
#[tokio::test]
async fn a_metadata_fetch_is_blocked_or_alerted_per_the_setting() -> Result<()> {
    const METADATA_PORT: u16 = 9090;
    let pods = Pods::start_with(
        2,
        &|gateway| format!("    learning_window: 0s\n    metadata_addresses: [\"{gateway}\"]\n"),
        &["metadata: block", "metadata: alert"],
    )
    .await?;
    let gateway = pods.pods.net.gateway();
    let mut server = tokio::process::Command::new("python3");
    server
        .arg(plain_app_script())
        .arg(gateway.to_string())
        .arg(METADATA_PORT.to_string())
        .arg("metadata");
    let server = Daemon::spawn("metadata", server, pods.pods.dir.path())?;
    server.wait_log("listening", WAIT).await?;
    let url = format!("http://{gateway}:{METADATA_PORT}/latest/meta-data/iam/");
    // pod1 blocks: curl gets no answer.
    let mut cmd = pods.pods.net.exec(0, "curl");
    cmd.args(["-sS", "--max-time", "5", &url]);
    let out = output(&mut cmd).await?;
    ensure!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("metadata"),
        "pod1 reached the metadata service: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // pod2 only alerts: the answer comes back.
    let (code, body) = pods.curl(1, &[], &url).await?;
    ensure!(
        code == 200 && body.contains("\"metadata\""),
        "pod2: {code} {body}"
    );
    for i in [0, 1] {
        let alerts = eventually(WAIT, async || {
            let alerts = pods.alerts(i).await?;
            ensure!(
                count(&alerts, AlertKind::MetadataAccess) == 1,
                "pod{}: {alerts:#?}",
                i + 1
            );
            Ok(alerts)
        })
        .await?;
        let a = alerts
            .iter()
            .find(|a| a.kind == AlertKind::MetadataAccess)
            .context("no alert")?;
        ensure!(
            a.severity == picket_proxy::telemetry::Severity::Critical,
            "{a:?}"
        );
    }
    let (_, metrics) = pods.curl(0, &[], "http://127.0.0.1:7191/metrics").await?;
    ensure!(
        metrics.contains("outcome=\"refused_metadata\""),
        "{metrics}"
    );
    // pod2's egress flow: open and end, address, port, bytes.
    let flows = pods.flows(1, 2).await?;
    let end = flows
        .iter()
        .find(|f| f["phase"] == "end")
        .context("no end record")?;
    ensure!(
        end["destination_address"] == format!("{gateway}:{METADATA_PORT}").as_str()
            && end["destination_port"] == METADATA_PORT
            && end["bytes_out"].as_u64().unwrap_or(0) > 0
            && end.get("destination_identity").is_none(),
        "{end}"
    );
    Ok(())
}

/// Egress through real sidecars: the name a client asks for is recorded (the SNI of an HTTPS
/// ClientHello, also one split across several TLS records, the Host of a plaintext HTTP/1
/// request), and an egress policy allows one host and refuses another; in dry-run the refused
/// host is let through and recorded as would-deny. pod1 enforces the egress allow-list, pod2
/// has it in dry-run. Every egress connection is a client span at the OTLP receiver.
#[tokio::test]
async fn egress_names_are_recorded_and_egress_policy_allows_one_host_and_denies_another()
-> Result<()> {
    const EGRESS_PORT: u16 = 9091;
    let allow_list = |mode: &str| {
        format!(
            "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: egress, namespace: pods }}
spec:
  direction: egress
  mode: {mode}
  rules:
  - to: [{{ operation: {{ hosts: [\"allowed.example.test\"], ports: [\"{EGRESS_PORT}\"] }} }}]
"
        )
    };
    let (enforce, dry_run) = (allow_list("enforce"), allow_list("dry-run"));
    let pods = Pods::start_traced(2, &|_| String::new(), &[], &[&enforce, &dry_run], true).await?;
    let gateway = pods.pods.net.gateway();
    let mut server = tokio::process::Command::new("python3");
    server
        .arg(plain_app_script())
        .arg(gateway.to_string())
        .arg(EGRESS_PORT.to_string())
        .arg("outside");
    let server = Daemon::spawn("outside", server, pods.pods.dir.path())?;
    server.wait_log("listening", WAIT).await?;
    let url = format!("http://{gateway}:{EGRESS_PORT}/v1/x");
    let host = |name: &str| format!("Host: {name}:{EGRESS_PORT}");
    // Enforced: the allowed host answers, the other is refused before any byte leaves.
    let (code, body) = pods
        .curl(0, &["-H", &host("allowed.example.test")], &url)
        .await?;
    ensure!(
        code == 200 && body.contains("outside"),
        "allowed: {code} {body}"
    );
    let mut cmd = pods.pods.net.exec(0, "curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "-H",
        &host("denied.example.test"),
        &url,
    ]);
    let out = output(&mut cmd).await?;
    ensure!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("outside"),
        "pod1 reached a host its egress policy does not allow: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // HTTPS: the SNI is recorded (the outside server speaks plaintext, so the handshake
    // itself fails after the connection was let through).
    let mut cmd = pods.pods.net.exec(0, "curl");
    let resolve = format!("allowed.example.test:{EGRESS_PORT}:{gateway}");
    cmd.args(["-sk", "--max-time", "5", "--resolve", &resolve])
        .arg(format!("https://allowed.example.test:{EGRESS_PORT}/"));
    let _ = output(&mut cmd).await?;
    // Dry-run: both hosts answer; the one outside the list is recorded as would-deny.
    for name in ["allowed.example.test", "denied.example.test"] {
        let (code, body) = pods.curl(1, &["-H", &host(name)], &url).await?;
        ensure!(
            code == 200 && body.contains("outside"),
            "pod2 {name}: {code} {body}"
        );
    }

    let records = |i: usize| -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(pods.flow_log(i)).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "flow" && v["destination_port"] == EGRESS_PORT)
            .collect())
    };
    let find = |flows: &[Value], key: &str, name: &str, phase: Option<&str>| -> Option<Value> {
        flows
            .iter()
            .find(|f| f[key] == name && f.get("phase").and_then(Value::as_str) == phase)
            .cloned()
    };
    eventually(WAIT, async || {
        let flows = records(0)?;
        let allowed = find(&flows, "host", "allowed.example.test", Some("end"))
            .context("no end record of the allowed host")?;
        ensure!(
            allowed["verdict"] == "allow"
                && allowed["policy"] == "pods/egress"
                && allowed["reason"] == "allow-match"
                && allowed["bytes_out"].as_u64().unwrap_or(0) > 0
                && allowed["destination_address"] == format!("{gateway}:{EGRESS_PORT}").as_str(),
            "{allowed}"
        );
        let denied = find(&flows, "host", "denied.example.test", None)
            .context("no record of the denied host")?;
        ensure!(
            denied["verdict"] == "deny" && denied["reason"] == "no-allow-match",
            "{denied}"
        );
        let tls = find(&flows, "sni", "allowed.example.test", Some("open"))
            .context("no record with the SNI")?;
        ensure!(
            tls["verdict"] == "allow" && tls.get("host").is_none(),
            "{tls}"
        );
        let flows = records(1)?;
        let would = find(&flows, "host", "denied.example.test", Some("open"))
            .context("no dry-run record of the denied host")?;
        ensure!(
            would["verdict"] == "allow" && would["would_verdict"] == "deny",
            "{would}"
        );
        let fine = find(&flows, "host", "allowed.example.test", Some("open"))
            .context("no dry-run record of the allowed host")?;
        ensure!(
            fine["verdict"] == "allow"
                && fine.get("would_verdict").is_none()
                && fine["dry_run"][0] == "allow:pods/egress",
            "{fine}"
        );
        Ok(())
    })
    .await?;
    let (_, metrics) = pods.curl(0, &[], "http://127.0.0.1:7191/metrics").await?;
    ensure!(metrics.contains("outcome=\"refused_egress\""), "{metrics}");

    // A ClientHello split across TLS records (a real OpenSSL one, re-cut into 100-byte
    // records): its SNI is read, so the allowed name passes and the other is refused.
    let split_hello = |sni: &str| {
        let mut cmd = pods.pods.net.exec(0, "python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls_split_hello.py"))
            .args([&gateway.to_string(), &EGRESS_PORT.to_string(), sni, "100"]);
        cmd
    };
    let mut sent = Vec::new();
    for sni in ["allowed.example.test", "denied.example.test"] {
        let out = output(&mut split_hello(sni)).await?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{sni}: {}", String::from_utf8_lossy(&out.stderr)))?;
        ensure!(report["records"].as_u64().unwrap_or(0) > 1, "{report}");
        sent.push(report["sent"].as_u64().unwrap_or(0));
    }
    // openssl s_client, with -servername, for a name the list does not hold.
    let mut cmd = pods.pods.net.exec(0, "timeout");
    cmd.args(["5", "openssl", "s_client", "-connect"])
        .arg(format!("{gateway}:{EGRESS_PORT}"))
        .args(["-servername", "openssl.example.test"]);
    let _ = output(&mut cmd).await?;
    eventually(WAIT, async || {
        let flows = records(0)?;
        let openssl = find(&flows, "sni", "openssl.example.test", None)
            .with_context(|| format!("no record of openssl's ClientHello: {flows:#?}"))?;
        ensure!(openssl["verdict"] == "deny", "{openssl}");
        let allowed = flows
            .iter()
            .find(|f| {
                f["sni"] == "allowed.example.test"
                    && f["phase"] == "end"
                    && f["bytes_in"].as_u64() == Some(sent[0])
            })
            .with_context(|| format!("no end record of the split ClientHello: {flows:#?}"))?;
        ensure!(allowed["verdict"] == "allow", "{allowed}");
        let denied = find(&flows, "sni", "denied.example.test", None)
            .with_context(|| format!("no record of the refused split ClientHello: {flows:#?}"))?;
        ensure!(
            denied["verdict"] == "deny" && denied["bytes_in"] == 0,
            "{denied}"
        );
        Ok(())
    })
    .await?;

    // Spans: each egress connection is a client span named `tcp egress`, with the address
    // and port dialled, the name asked for, the decision and the bytes.
    let otlp = pods.otlp.as_ref().context("no OTLP receiver")?;
    let pod1 = identity(0);
    let peer = gateway.to_string();
    let port = EGRESS_PORT.to_string();
    let sent_tls = sent[0].to_string();
    let tls = &egress_span(otlp, &pod1, |s| {
        s.attr("tls.server.name") == Some("allowed.example.test")
            && s.attr("picket.network.bytes_sent") == Some(sent_tls.as_str())
    })
    .await?;
    ensure!(
        tls.kind == SPAN_KIND_CLIENT
            && tls.attr("server.address") == Some("allowed.example.test")
            && tls.attr("server.port") == Some(port.as_str())
            && tls.attr("network.peer.address") == Some(peer.as_str())
            && tls.attr("network.peer.port") == Some(port.as_str())
            && tls.attr("network.transport") == Some("tcp")
            && tls.attr("picket.authz.verdict") == Some("allow")
            && tls.attr("picket.authz.policy") == Some("pods/egress")
            && tls.attr("picket.source.identity") == Some(pod1.as_str()),
        "{tls:#?}"
    );
    let refused = egress_span(otlp, &pod1, |s| {
        s.attr("server.address") == Some("denied.example.test")
            && s.attr("tls.server.name").is_none()
    })
    .await?;
    ensure!(
        refused.attr("picket.authz.verdict") == Some("deny")
            && refused.attr("picket.network.bytes_sent") == Some("0"),
        "{refused:#?}"
    );
    let plain = egress_span(otlp, &pod1, |s| {
        s.attr("server.address") == Some("allowed.example.test")
            && s.attr("tls.server.name").is_none()
    })
    .await?;
    ensure!(
        plain
            .attr("picket.network.bytes_received")
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "{plain:#?}"
    );
    Ok(())
}

/// The first `tcp egress` span of the sidecar of `identity` that `pred` accepts, once it
/// arrived.
async fn egress_span(
    otlp: &OtlpReceiver,
    identity: &str,
    pred: impl Fn(&picket_tests::otlp::ReceivedSpan) -> bool,
) -> Result<picket_tests::otlp::ReceivedSpan> {
    let spans = otlp
        .wait_for_spans(1, WAIT, |s| {
            s.name == "tcp egress"
                && s.resource.get("picket.identity").map(String::as_str) == Some(identity)
                && pred(s)
        })
        .await?;
    spans.into_iter().next().context("no span")
}
