//! `-o, --output text|json|yaml` on the commands whose data had one printed form: `policy fmt`,
//! `inject`, `ca bundle`, `ca token create` and `iptables --dry-run`. For each, the json and
//! yaml forms carry the same data as the text form, and both parse as one document. And the
//! `picket-sidecar` binary: the `proxy` command alone, answering as `picket proxy` does.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use picket_tests::k8s::{documents, golden_path};
use picket_tests::process::{output, picket, picket_sidecar, run_ok};
use serde_json::Value;

/// Runs `picket <args>` and returns its standard output, failing on a non-zero exit.
async fn picket_ok(args: &[&str]) -> Result<String> {
    run_ok(picket()?.args(args)).await
}

/// One YAML document, as the JSON value it reads as.
fn one_yaml_document(text: &str) -> Result<Value> {
    let mut docs = documents(text)?;
    ensure!(
        docs.len() == 1,
        "expected one YAML document, got {}:\n{text}",
        docs.len()
    );
    docs.pop().context("one document")
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("temporary paths are UTF-8")
}

#[tokio::test]
async fn policy_fmt_prints_the_canonical_documents_as_json_and_yaml() -> Result<()> {
    let orders = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/policy/orders.yaml");
    let orders = path_str(&orders)?;
    let text = picket_ok(&["policy", "fmt", orders]).await?;
    let yaml = picket_ok(&["policy", "fmt", "-o", "yaml", orders]).await?;
    ensure!(yaml == text, "-o yaml differs from the canonical text");
    let json: Value =
        serde_json::from_str(&picket_ok(&["policy", "fmt", "-o", "json", orders]).await?)?;
    ensure!(
        json["kind"] == "List" && json["apiVersion"] == "v1",
        "{json}"
    );
    let items = json["items"].as_array().context("items")?;
    ensure!(
        items.as_slice() == documents(&text)?.as_slice(),
        "the JSON items are not the canonical documents:\n{json}\n{text}"
    );
    ensure!(
        items.len() == 4 && items.iter().all(|p| p["kind"] == "AuthorizationPolicy"),
        "{json}"
    );
    Ok(())
}

#[tokio::test]
async fn inject_prints_one_object_or_a_list_as_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let one = dir.path().join("deployment.yaml");
    std::fs::copy(golden_path("inject/deployment.yaml"), &one)?;
    let two = dir.path().join("two.yaml");
    std::fs::write(
        &two,
        format!(
            "{}\n---\n{}",
            std::fs::read_to_string(golden_path("inject/pod.yaml"))?,
            std::fs::read_to_string(golden_path("inject/deployment.yaml"))?
        ),
    )?;
    let text = picket_ok(&["inject", "-f", path_str(&one)?]).await?;
    let json: Value =
        serde_json::from_str(&picket_ok(&["inject", "-o", "json", "-f", path_str(&one)?]).await?)?;
    ensure!(
        json == one_yaml_document(&text)?,
        "one object: JSON differs from the YAML"
    );
    ensure!(json["kind"] == "Deployment", "{json}");
    let yaml = picket_ok(&["inject", "-o", "yaml", "-f", path_str(&one)?]).await?;
    ensure!(yaml == text, "-o yaml differs from the text form");

    let text = picket_ok(&["inject", "-f", path_str(&two)?]).await?;
    let json: Value =
        serde_json::from_str(&picket_ok(&["inject", "-o", "json", "-f", path_str(&two)?]).await?)?;
    ensure!(json["kind"] == "List", "{json}");
    ensure!(
        json["items"].as_array().map(Vec::as_slice) == Some(documents(&text)?.as_slice()),
        "two objects: the List's items differ from the YAML documents"
    );
    Ok(())
}

#[tokio::test]
async fn ca_bundle_and_token_create_print_json_and_yaml() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("ca");
    let state = path_str(&state)?;
    picket_ok(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--state-dir",
        state,
    ])
    .await?;

    let pem = picket_ok(&["ca", "bundle", "--state-dir", state]).await?;
    ensure!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let json: Value = serde_json::from_str(
        &picket_ok(&["ca", "bundle", "--state-dir", state, "-o", "json"]).await?,
    )?;
    ensure!(
        json["bundle_pem"] == pem.as_str() && json["trust_domain"] == "example.org",
        "{json}"
    );
    let fingerprints = json["root_sha256"].as_array().context("root_sha256")?;
    ensure!(
        fingerprints.len() == 1
            && fingerprints[0]
                .as_str()
                .is_some_and(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit())),
        "{json}"
    );
    let yaml = picket_ok(&["ca", "bundle", "--state-dir", state, "-o", "yaml"]).await?;
    ensure!(
        one_yaml_document(&yaml)? == json,
        "yaml and json differ:\n{yaml}"
    );

    let create = [
        "ca",
        "token",
        "create",
        "--state-dir",
        state,
        "--identity",
        "ns/shop/sa/orders",
    ];
    let token = picket_ok(&create).await?;
    ensure!(
        token.lines().count() == 1 && !token.trim().is_empty(),
        "{token:?}"
    );
    for format in ["json", "yaml"] {
        let printed =
            picket_ok(&[&create[..], &["--uses", "3", "--ttl", "2h", "-o", format]].concat())
                .await?;
        let value = match format {
            "json" => serde_json::from_str(&printed)?,
            _ => one_yaml_document(&printed)?,
        };
        ensure!(
            value["identity"] == "spiffe://example.org/ns/shop/sa/orders"
                && value["uses"] == 3
                && value["ttl_seconds"] == 7200
                && value["token"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty() && t != token.trim()),
            "-o {format}: {value}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn iptables_dry_run_prints_its_steps_as_json() -> Result<()> {
    // A tool family that does not exist: the rules in force cannot be read, so the dry run
    // says so and shows the input for a table without Picket's rules (nothing is run).
    let family = [
        "iptables",
        "--dry-run",
        "--iptables",
        "picket-test-no-such-iptables",
    ];
    let text = picket_ok(&family).await?;
    let json: Value =
        serde_json::from_str(&picket_ok(&[&family[..], &["-o", "json"]].concat()).await?)?;
    ensure!(
        json["dry_run"] == true && json["cleanup"] == false,
        "{json}"
    );
    let steps = json["steps"].as_array().context("steps")?;
    let restore = steps
        .iter()
        .find(|s| s["step"] == "restore" && s["family"] == "IPv4")
        .with_context(|| format!("no IPv4 restore step: {json}"))?;
    ensure!(
        restore["command"] == "picket-test-no-such-iptables-restore --noflush --wait 10"
            && restore["input"]
                .as_str()
                .is_some_and(|i| i.contains("REDIRECT --to-ports 7140")),
        "{restore}"
    );
    ensure!(
        steps
            .iter()
            .any(|s| s["step"] == "unread" && s["family"] == "IPv4"),
        "the unreadable rules in force are not a step: {json}"
    );
    // The text form is the steps, each as the comment line and input it was before.
    let input = restore["input"].as_str().unwrap_or_default();
    ensure!(
        text.contains(input),
        "the text form lacks the restore input:\n{text}"
    );
    ensure!(
        ["applied", "no_ipv6", "skipped"].contains(&json["ipv6"].as_str().unwrap_or("")),
        "{json}"
    );
    let yaml = picket_ok(&[&family[..], &["-o", "yaml"]].concat()).await?;
    ensure!(
        one_yaml_document(&yaml)? == json,
        "yaml and json differ:\n{yaml}"
    );
    Ok(())
}

/// `picket-sidecar` has the `proxy` command and no other, and a sidecar configuration it
/// refuses is refused with `picket proxy`'s exit status and message (one front end for both).
/// That it runs a sidecar, every test that starts one through `TestProxy` shows.
#[tokio::test]
async fn the_sidecar_binary_has_the_proxy_command_alone_and_answers_as_picket_proxy() -> Result<()>
{
    let help = run_ok(picket_sidecar()?.arg("--help")).await?;
    ensure!(help.contains("proxy"), "{help}");
    for other in [
        "ca",
        "inject",
        "injector",
        "controller",
        "analyze",
        "policy",
        "iptables",
        "demo",
    ] {
        let out = output(picket_sidecar()?.args([other, "--help"])).await?;
        ensure!(
            out.status.code() == Some(2)
                && String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"),
            "picket-sidecar {other}: {out:?}"
        );
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(&config, "identity:\n  namespace: shop\n  bogus: 1\n")?;
    let args = [
        "--log-format",
        "json",
        "proxy",
        "--config",
        path_str(&config)?,
    ];
    let slim = output(picket_sidecar()?.args(args)).await?;
    let full = output(picket()?.args(args)).await?;
    let slim_err = String::from_utf8_lossy(&slim.stderr);
    ensure!(
        slim.status.code() == Some(2) && slim_err.contains("sidecar.yaml:"),
        "{slim:?}"
    );
    ensure!(
        slim.status == full.status && slim.stderr == full.stderr,
        "picket-sidecar: {slim:?}\npicket: {full:?}"
    );
    Ok(())
}
