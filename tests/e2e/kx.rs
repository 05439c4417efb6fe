//! Key exchange: two sidecars, and each sidecar and the CA, agree on the post-quantum hybrid
//! X25519MLKEM768, and say so in their metrics, flow records and the CA's log; a classical-only
//! client (Debian's OpenSSL 3.0 `s_client`) still reaches the app and is recorded as classical.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::{StatusCode, Version};
use picket_tests::clients::{body_text, get, openssl_s_client};
use picket_tests::prom::{Exposition, scrape};
use picket_tests::telemetry::{TelemetryYaml, wait_for_flows};
use picket_tests::{Mesh, MeshOptions, TestProxy, eventually};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const HYBRID: &str = "x25519mlkem768";
const CLASSICAL: &str = "x25519";

/// A mesh whose two sidecars write flow logs into `dir`.
async fn logged_mesh(dir: &Path, tcp: bool) -> Result<Mesh> {
    let flows = |name: &str| TelemetryYaml::new().flow_log(&dir.join(name)).to_yaml();
    Mesh::start_with(MeshOptions {
        tcp,
        orders_yaml: flows("orders.jsonl"),
        frontend_yaml: flows("frontend.jsonl"),
        ..MeshOptions::default()
    })
    .await
}

/// `(labels, value)` of every sample of `name`, labels rendered `k=v,k=v`, sorted.
fn series(exp: &Exposition, name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = exp
        .samples(name)
        .into_iter()
        .map(|(labels, v)| {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (l.join(","), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Waits until `proxy` counts exactly `want` as its data-path handshakes.
async fn handshakes(proxy: &TestProxy, want: &[(&str, f64)]) -> Result<Exposition> {
    let want: Vec<(String, f64)> = want.iter().map(|(l, v)| ((*l).to_owned(), *v)).collect();
    eventually(WAIT, async || {
        let exp = scrape(proxy.addrs().admin).await?;
        let got = series(&exp, "picket_tls_handshakes_total");
        ensure!(got == want, "handshakes {got:?}, expected {want:?}");
        Ok(exp)
    })
    .await
}

/// Every handshake the sidecar's CA client made (at least the enrolment) used the hybrid.
fn ca_client_was_hybrid(exp: &Exposition, who: &str) -> Result<()> {
    let got = series(exp, "picket_ca_tls_handshakes_total");
    ensure!(
        got.len() == 1 && got[0].0 == format!("kx={HYBRID}") && got[0].1 >= 1.0,
        "{who}: handshakes with the CA {got:?}, expected only kx={HYBRID}"
    );
    Ok(())
}

/// The `kx` field of each flow record.
fn kx_of(flows: &[Value]) -> Vec<&str> {
    flows
        .iter()
        .map(|f| f["kx"].as_str().unwrap_or("absent"))
        .collect()
}

/// `text` without terminal colour escapes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn sidecars_and_the_ca_negotiate_the_hybrid_group_and_record_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mesh = logged_mesh(dir.path(), false).await?;
    let resp = get(mesh.outbound(), Version::HTTP_11, "orders", "/api/orders/1").await?;
    let status = resp.status();
    let body = body_text(resp).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");

    let orders = handshakes(
        &mesh.orders,
        &[("direction=inbound,kx=x25519mlkem768", 1.0)],
    )
    .await?;
    let frontend = handshakes(
        &mesh.frontend,
        &[("direction=outbound,kx=x25519mlkem768", 1.0)],
    )
    .await?;
    ca_client_was_hybrid(&orders, "orders")?;
    ca_client_was_hybrid(&frontend, "frontend")?;

    let inbound = wait_for_flows(&dir.path().join("orders.jsonl"), 1, WAIT).await?;
    let outbound = wait_for_flows(&dir.path().join("frontend.jsonl"), 1, WAIT).await?;
    ensure!(kx_of(&inbound) == [HYBRID], "orders flows {inbound:#?}");
    ensure!(kx_of(&outbound) == [HYBRID], "frontend flows {outbound:#?}");

    // The CA names the group of the connection each certificate was issued over.
    let log = plain(&mesh.ca.log_text());
    let issued: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("issued certificate"))
        .collect();
    ensure!(
        issued.len() >= 2 && issued.iter().all(|l| l.contains("kx=x25519mlkem768")),
        "the CA's issuance lines do not all name the hybrid group:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn an_opaque_tcp_connection_between_sidecars_is_hybrid_in_both_flow_records() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mesh = logged_mesh(dir.path(), true).await?;
    let mut stream = tokio::net::TcpStream::connect(mesh.frontend.upstream("orders")?).await?;
    stream.write_all(b"ping").await?;
    stream.shutdown().await?;
    let mut echoed = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut echoed))
        .await
        .context("the echo did not end")??;
    ensure!(echoed == b"ping", "echoed {echoed:?}");
    drop(stream);

    handshakes(
        &mesh.orders,
        &[("direction=inbound,kx=x25519mlkem768", 1.0)],
    )
    .await?;
    handshakes(
        &mesh.frontend,
        &[("direction=outbound,kx=x25519mlkem768", 1.0)],
    )
    .await?;
    // The connection's open and end records.
    let inbound = wait_for_flows(&dir.path().join("orders.jsonl"), 2, WAIT).await?;
    let outbound = wait_for_flows(&dir.path().join("frontend.jsonl"), 2, WAIT).await?;
    for flows in [&inbound, &outbound] {
        ensure!(
            flows[0]["phase"] == "open" && flows[1]["phase"] == "end",
            "{flows:#?}"
        );
    }
    for f in inbound.iter().chain(&outbound) {
        ensure!(f["protocol"] == "tcp" && f["kx"] == HYBRID, "{f:#}");
    }
    Ok(())
}

/// Writes the frontend's certificate, chain and key for `openssl s_client` into `dir`.
async fn openssl_identity(mesh: &Mesh, dir: &Path) -> Result<Vec<String>> {
    let svid = mesh.ca.issue("ns/shop/sa/frontend").await?;
    // `-cert` sends only the leaf; the issuers go in `-cert_chain`.
    const END: &str = "-----END CERTIFICATE-----";
    let (leaf, issuers) = svid
        .response
        .chain_pem
        .split_once(END)
        .context("no certificate in the chain")?;
    let files = [
        ("-cert", "leaf.pem", format!("{leaf}{END}\n")),
        ("-cert_chain", "issuers.pem", issuers.to_owned()),
        ("-key", "key.pem", svid.key.serialize_pem()),
    ];
    let mut args = Vec::new();
    for (flag, name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        args.push(flag.to_owned());
        args.push(path.display().to_string());
    }
    Ok(args)
}

/// One request through `openssl s_client` with `extra` arguments: what it printed.
async fn s_client(addr: SocketAddr, identity: &[String], extra: &[&str]) -> Result<String> {
    let mut args: Vec<&str> = identity.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let request = b"GET /api/orders/1 HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";
    let out = openssl_s_client(addr, &args, request).await?;
    Ok(format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test]
async fn a_classical_only_openssl_client_still_connects_and_is_recorded_as_classical() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let mesh = logged_mesh(dir.path(), false).await?;
    let identity = openssl_identity(&mesh, dir.path()).await?;
    let inbound = mesh.orders.addrs().inbound;
    // OpenSSL 3.0 has no ML-KEM: its default list and an explicit X25519 are both classical.
    for extra in [&[][..], &["-groups", "X25519"][..]] {
        let printed = s_client(inbound, &identity, extra).await?;
        ensure!(
            printed.contains("\"app\":\"orders\""),
            "openssl {extra:?} did not reach the app:\n{printed}"
        );
        ensure!(
            printed.contains("Server Temp Key: X25519"),
            "openssl {extra:?} did not use X25519:\n{printed}"
        );
    }
    handshakes(&mesh.orders, &[("direction=inbound,kx=x25519", 2.0)]).await?;
    // Without ALPN each is an opaque TCP connection: an open and an end record each.
    let flows = wait_for_flows(&dir.path().join("orders.jsonl"), 4, WAIT).await?;
    ensure!(kx_of(&flows) == [CLASSICAL; 4], "{flows:#?}");
    Ok(())
}
