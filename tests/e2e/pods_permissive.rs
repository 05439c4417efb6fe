//! Migrating a namespace into the mesh without a window of refused calls: no mesh, then the
//! server pod meshed in permissive mode (plaintext and mTLS on the same port, told apart by
//! the first bytes), then its clients meshed, then strict. pod1 serves; pod2 is a client that
//! joins the mesh; pod3 is a client that never does. Policy decides each caller: the
//! unmeshed one has no principal, so only a rule on its address admits it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::netns::{PodNet, seen_header, shared_dir};
use picket_tests::process::{Daemon, output};
use picket_tests::{TestCa, eventually};
use serde_json::Value;
use tokio::process::Command;

const APP_PORT: u16 = 8080;
const SERVER: usize = 0;
const MESHED_CLIENT: usize = 1;
const PLAIN_CLIENT: usize = 2;

fn app_url(ip: Ipv4Addr, path: &str) -> String {
    format!("http://{ip}:{APP_PORT}{path}")
}

struct World {
    net: PodNet,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl World {
    /// Starts pod `i`'s sidecar with `inbound_extra` in its inbound section.
    async fn sidecar(&self, i: usize, inbound_extra: &str) -> Result<Daemon> {
        let n = i + 1;
        let dir = self.dir.path();
        let token = dir.join(format!("pod{n}.{}.token", inbound_extra.len()));
        std::fs::write(&token, self.ca.token(&format!("ns/pods/sa/pod{n}")).await?)?;
        let config = format!(
            "identity: {{ trust_domain: cluster.local, namespace: pods, service_account: pod{n} }}
ca: {{ url: \"{url}\", trust_bundle: \"{bundle}\", join_token_file: \"{token}\" }}
inbound: {{ listen: \"0.0.0.0:7143\", transparent: true {inbound_extra} }}
outbound:
  listen: \"127.0.0.1:7140\"
  transparent: true
  meshed: [{{ cidr: \"{cidr}\", ports: [{APP_PORT}], identity: any }}]
  passthrough: allow
admin: {{ listen: \"127.0.0.1:7191\" }}
policy: {{ path: \"{policy}\" }}
",
            url = self.ca.url(),
            bundle = dir.join("bundle.pem").display(),
            token = token.display(),
            cidr = self.net.cidr(),
            policy = dir.join("policy.yaml").display(),
        );
        let file = dir.join(format!("pod{n}.{}.yaml", inbound_extra.len()));
        std::fs::write(&file, config)?;
        let label = format!("sidecar-pod{n}-{}", inbound_extra.len());
        self.net.sidecar(i, &file, &label, dir).await
    }

    /// Pod `i`'s sidecar's inbound connections, requests and decisions (its metrics lines),
    /// for a failure message.
    async fn inbound_account(&self, i: usize) -> String {
        match self.net.curl(i, "http://127.0.0.1:7191/metrics", &[]).await {
            Ok((_, metrics)) => metrics
                .lines()
                .filter(|l| {
                    l.starts_with("picket_tcp_connections_total")
                        || l.starts_with("picket_requests_total")
                        || l.starts_with("picket_authz_decisions_total")
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("{e:#}"),
        }
    }

    async fn metric(&self, i: usize, needle: &str) -> Result<u64> {
        let (code, metrics) = self
            .net
            .curl(i, "http://127.0.0.1:7191/metrics", &[])
            .await?;
        ensure!(code == 0, "admin: {code}");
        Ok(metrics
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }
}

/// Asks `GET /public` on one keep-alive connection to the app: once when started, again for
/// each line read from standard input; prints each answer's status line (or the error).
const HELD_CONNECTION: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = c.makefile("rb")
def ask():
    try:
        c.sendall(b"GET /public HTTP/1.1\r\nHost: server\r\n\r\n")
        status = f.readline().decode().strip()
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        f.read(length)
        print(status or "closed", flush=True)
    except OSError as e:
        print("error:", e, flush=True)
ask()
for _ in sys.stdin:
    ask()
"#;

/// A client's keep-alive connection to the server's app, opened (and asked once) before the
/// switch.
struct HeldConnection {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl HeldConnection {
    async fn open(netns: &str, server: Ipv4Addr) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", HELD_CONNECTION])
            .arg(server.to_string())
            .arg(APP_PORT.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start python3 for the held connection")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut held = Self {
            child,
            stdin,
            answers: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        };
        let first = held.answer().await?;
        ensure!(
            first.starts_with("HTTP/1.1 200"),
            "the held connection's first call: {first}"
        );
        Ok(held)
    }

    async fn answer(&mut self) -> Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(15), self.answers.next_line())
            .await
            .context("the held connection did not answer within 15 s")??;
        match line {
            Some(line) => Ok(line),
            None => anyhow::bail!(
                "the held connection's client exited: {:?}",
                self.child.try_wait()
            ),
        }
    }

    async fn ask_again(&mut self) -> Result<String> {
        tokio::io::AsyncWriteExt::write_all(&mut self.stdin, b"again\n").await?;
        self.answer().await
    }
}

#[tokio::test]
async fn a_namespace_migrates_from_no_mesh_through_permissive_to_strict() -> Result<()> {
    let net = PodNet::create(3).await?;
    let ca = TestCa::start_at((net.gateway(), 0).into(), &[]).await?;
    let dir = shared_dir()?;
    std::fs::write(dir.path().join("bundle.pem"), ca.bundle_pem()?)?;
    let plain_client = net.pods[PLAIN_CLIENT].ip;
    // pod1 admits pod2 by identity everywhere, and pod3 by address on /public only.
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!(
            "apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: migrate, namespace: pods }}
spec:
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: [\"cluster.local/ns/pods/sa/pod2\"] }} }}]
  - from: [{{ source: {{ ipBlocks: [\"{plain_client}/32\"] }} }}]
    to: [{{ operation: {{ paths: [\"/public\"] }} }}]
"
        ),
    )?;
    let world = World { net, ca, dir };
    let net = &world.net;
    let server = net.pods[SERVER].ip;
    let _app = net
        .plain_app(SERVER, "0.0.0.0", APP_PORT, "server", world.dir.path())
        .await?;

    // Step 0, no mesh: both clients reach the app in plaintext.
    for client in [MESHED_CLIENT, PLAIN_CLIENT] {
        eventually(Duration::from_secs(10), async || {
            let (code, body) = net.curl(client, &app_url(server, "/private"), &[]).await?;
            ensure!(code == 0 && body.contains("\"server\""), "{code} {body}");
            Ok(())
        })
        .await?;
    }

    // Step 1, the server joins in permissive mode while the unmeshed client keeps calling:
    // not one call fails across the switch (the rules are applied in one transaction).
    let _server_sidecar = world.sidecar(SERVER, ", mode: permissive").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let caller = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let first_failure = Arc::clone(&first_failure);
        let netns = net.pods[PLAIN_CLIENT].netns.clone();
        let url = app_url(server, "/public");
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let out = output(
                    Command::new("ip")
                        .args(["netns", "exec", &netns, "curl", "-sS", "--max-time", "5"])
                        .arg(&url),
                )
                .await;
                let failure = match out {
                    Ok(o)
                        if o.status.success()
                            && String::from_utf8_lossy(&o.stdout).contains("\"server\"") =>
                    {
                        None
                    }
                    Ok(o) => Some(format!(
                        "{}: {} {}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(failure) = failure {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = first_failure.lock() {
                        first.get_or_insert(failure);
                    }
                } else {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    eventually(Duration::from_secs(10), async || {
        ensure!(
            ok.load(Ordering::Relaxed) >= 3,
            "the caller has not run yet"
        );
        Ok(())
    })
    .await?;
    let mut held = HeldConnection::open(&net.pods[PLAIN_CLIENT].netns, server).await?;
    net.intercept(SERVER).await?;
    let switched = ok.load(Ordering::Relaxed);
    // A keep-alive connection open across the switch stays with the app: it is not picked up
    // halfway and redirected (the kernel would reset it).
    let after = held.ask_again().await?;
    ensure!(
        after.starts_with("HTTP/1.1 200"),
        "a connection open across the switch, asked again: {after}"
    );
    eventually(Duration::from_secs(10), async || {
        ensure!(
            ok.load(Ordering::Relaxed) >= switched + 5,
            "few calls after the switch"
        );
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    caller.await?;
    if failed.load(Ordering::Relaxed) > 0 {
        anyhow::bail!(
            "{} of {} calls failed across the switch to permissive, the first: {:?}; the server's sidecar counted: {}",
            failed.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed) + ok.load(Ordering::Relaxed),
            first_failure.lock().map(|f| f.clone()).unwrap_or_default(),
            world.inbound_account(SERVER).await
        );
    }

    // The unmeshed client's calls now go through the sidecar in plaintext: no identity
    // reaches the app (a forged one is removed), policy admits /public by address and
    // refuses /private, which only names a principal.
    let forged = "x-picket-peer-identity: spiffe://cluster.local/ns/pods/sa/pod2";
    let (code, body) = net
        .curl(PLAIN_CLIENT, &app_url(server, "/public"), &[forged])
        .await?;
    let seen: Value = serde_json::from_str(&body).with_context(|| format!("{code} {body}"))?;
    ensure!(
        seen_header(&seen, "x-picket-peer-identity").is_none(),
        "identity on plaintext: {seen}"
    );
    let (code, body) = net
        .curl(PLAIN_CLIENT, &app_url(server, "/private"), &[forged])
        .await?;
    ensure!(
        code == 0 && body.contains("forbidden"),
        "unmeshed /private: {code} {body}"
    );
    ensure!(
        world.metric(SERVER, "outcome=\"plaintext\"").await? >= 2,
        "plaintext connections are not counted"
    );
    let (_, alerts) = net
        .curl(SERVER, "http://127.0.0.1:7191/alerts", &[])
        .await?;
    ensure!(
        alerts.contains("plaintext connection") && alerts.contains(&plain_client.to_string()),
        "the plaintext detector did not flag the unmeshed client: {alerts}"
    );

    // Step 2, the other client joins (strict for its own inbound): its calls to the server
    // now arrive over mTLS on the same port, with its identity, and policy admits /private.
    let _client_sidecar = world.sidecar(MESHED_CLIENT, "").await?;
    net.intercept(MESHED_CLIENT).await?;
    let (code, body) = net
        .curl(MESHED_CLIENT, &app_url(server, "/private"), &[])
        .await?;
    let seen: Value = serde_json::from_str(&body).with_context(|| format!("{code} {body}"))?;
    ensure!(
        seen_header(&seen, "x-picket-peer-identity")
            == Some("spiffe://cluster.local/ns/pods/sa/pod2"),
        "the meshed client's call: {seen}"
    );
    let handshakes_before = world.metric(SERVER, "outcome=\"accepted\"").await?;
    ensure!(handshakes_before >= 1, "no mTLS connection was accepted");

    // Step 3, strict (the server's sidecar restarted with the default mode, as a rollout
    // would): the meshed client still gets through, the unmeshed one is refused.
    drop(_server_sidecar);
    let _strict = world.sidecar(SERVER, ", mode: strict").await?;
    let (code, body) = net
        .curl(MESHED_CLIENT, &app_url(server, "/private"), &[])
        .await?;
    ensure!(
        code == 0 && body.contains("\"server\""),
        "meshed client in strict: {code} {body}"
    );
    let (code, body) = net
        .curl(PLAIN_CLIENT, &app_url(server, "/public"), &[])
        .await?;
    ensure!(
        code != 0 && !body.contains("\"server\""),
        "the unmeshed client got through in strict mode: {code} {body}"
    );
    Ok(())
}
