//! `picket policy check | test | explain | fmt`: exit codes and output, on the fixtures under
//! `tests/fixtures/policy/` and the example under `docs/examples/policy/`.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, ensure};
use picket_tests::process::{output, picket};

/// `tests/fixtures/policy/<name>`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/policy")
        .join(name)
}

/// Runs `picket policy <args>`.
async fn policy(args: &[&str]) -> Result<Output> {
    output(picket()?.arg("policy").args(args)).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks the exit code, showing everything the command printed when it differs.
fn exit_code(out: &Output, want: i32) -> Result<()> {
    ensure!(
        out.status.code() == Some(want),
        "expected exit code {want}, got {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("fixture paths are UTF-8")
}

#[tokio::test]
async fn check_accepts_valid_policies() -> Result<()> {
    let orders = fixture("orders.yaml");
    let text = policy(&["check", path_str(&orders)?]).await?;
    exit_code(&text, 0)?;
    let line = stdout(&text);
    let hash = line
        .trim()
        .strip_prefix("ok: 4 policies, sources hash ")
        .with_context(|| format!("unexpected output {line:?}"))?
        .to_owned();
    ensure!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{line}"
    );

    let json = policy(&["check", "-o", "json", path_str(&orders)?]).await?;
    exit_code(&json, 0)?;
    let value: serde_json::Value = serde_json::from_str(&stdout(&json))?;
    ensure!(
        value == serde_json::json!({ "ok": true, "policies": 4, "sources_hash": hash }),
        "{value}"
    );
    Ok(())
}

#[tokio::test]
async fn check_reads_the_yaml_files_of_a_directory_and_skips_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(fixture("orders.yaml"), dir.path().join("orders.yaml"))?;
    std::fs::write(
        dir.path().join("more.yml"),
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: { name: allow-nothing, namespace: billing }\nspec: {}\n",
    )?;
    // Not policy files: a dot-file (as ConfigMap mounts have) and another extension.
    std::fs::write(dir.path().join(".draft.yaml"), "not: [valid")?;
    std::fs::write(dir.path().join("notes.txt"), "not: [valid")?;
    let out = policy(&["check", path_str(dir.path())?]).await?;
    exit_code(&out, 0)?;
    ensure!(
        stdout(&out).starts_with("ok: 5 policies, "),
        "{}",
        stdout(&out)
    );
    Ok(())
}

/// Every error in `fixtures/policy/broken/orders.yaml`: line, column, what the message names.
const BROKEN: [(u64, u64, &str); 3] = [
    (6, 33, "`get` is not an uppercase HTTP method"),
    (13, 33, "`10.0.0.1/8` has host bits set"),
    (14, 23, "unknown field `pathz`"),
];

#[tokio::test]
async fn check_reports_every_error_with_location_and_caret() -> Result<()> {
    let broken = fixture("broken/orders.yaml");
    let source = std::fs::read_to_string(&broken)?;
    let out = policy(&["check", path_str(&broken)?]).await?;
    exit_code(&out, 1)?;
    ensure!(
        stdout(&out).is_empty(),
        "nothing on stdout: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    for (line, column, message) in BROKEN {
        let header = format!("{}:{line}:{column}: ", broken.display());
        let at = lines
            .iter()
            .position(|l| l.starts_with(&header))
            .with_context(|| format!("no error at {header}:\n{err}"))?;
        ensure!(lines[at].contains(message), "{}", lines[at]);
        // The offending line, then a caret under the column.
        let offending = source
            .lines()
            .nth(usize::try_from(line)? - 1)
            .context("line in range")?;
        let snippet = lines.get(at + 1).copied().unwrap_or_default();
        let caret = lines.get(at + 2).copied().unwrap_or_default();
        ensure!(
            snippet.trim_start() == offending.trim_start() && snippet.ends_with(offending),
            "snippet {snippet:?} is not line {line} {offending:?}"
        );
        let indent = snippet.len() - offending.len();
        ensure!(
            caret.trim_end() == format!("{}^", " ".repeat(indent + usize::try_from(column)? - 1)),
            "caret {caret:?} is not under column {column} of {snippet:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn check_json_lists_errors_with_file_line_and_column() -> Result<()> {
    let dir = fixture("broken");
    let out = policy(&["check", "-o", "json", path_str(&dir)?]).await?;
    exit_code(&out, 1)?;
    let errors: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out))
        .with_context(|| format!("not a JSON array: {}", stdout(&out)))?;
    ensure!(errors.len() == BROKEN.len(), "{errors:?}");
    let file = dir.join("orders.yaml").display().to_string();
    for (e, (line, column, message)) in errors.iter().zip(BROKEN) {
        let keys: Vec<&str> = e
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        ensure!(keys == ["column", "file", "line", "message"], "{e}");
        ensure!(e["file"] == file.as_str(), "{e}");
        ensure!(e["line"] == line && e["column"] == column, "{e}");
        ensure!(
            e["message"].as_str().is_some_and(|m| m.contains(message)),
            "{e}"
        );
    }
    Ok(())
}

/// A principal is an identity's shape, `<trust-domain>/ns/<ns>/sa/<sa>` (or `*` before or
/// after a part of one): anything else is refused at load with its line and column.
#[tokio::test]
async fn check_refuses_principals_no_identity_can_have() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shapes.yaml");
    let principals = [
        ("cluster.local/ns/shop/sa/frontend", None),
        ("spiffe://cluster.local/ns/shop/sa/*", None),
        ("*/sa/frontend", None),
        (
            "cluster.local/ns//sa/frontend",
            Some("the namespace is empty"),
        ),
        (
            "cluster.local/ns/shop/sa/",
            Some("the service account is empty"),
        ),
        (
            "cluster.local/shop/frontend",
            Some("it has 3 `/`-separated parts"),
        ),
        (
            "Cluster.Local/ns/shop/sa/frontend",
            Some("`Cluster.Local` is not a trust domain"),
        ),
        (
            "cluster.local/namespace/shop/*",
            Some("`namespace` stands where `ns` belongs"),
        ),
        (
            "cluster.local/ns/Shop/sa/*",
            Some("`Shop` is not a namespace"),
        ),
        (
            "*/sa/front_end",
            Some("`front_end` is not a service account"),
        ),
        ("/ns/shop/sa/frontend", Some("the trust domain is empty")),
    ];
    let mut text = String::from(
        "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n\
         metadata: { name: shapes, namespace: shop }\nspec:\n  rules:\n\
         \x20 - from:\n    - source:\n        principals:\n",
    );
    for (principal, _) in &principals {
        text.push_str(&format!("        - \"{principal}\"\n"));
    }
    std::fs::write(&file, &text)?;
    let out = policy(&["check", path_str(&file)?]).await?;
    exit_code(&out, 1)?;
    let err = stderr(&out);
    let first_line = 9;
    for (i, (principal, want)) in principals.iter().enumerate() {
        let header = format!("{}:{}:11: ", file.display(), first_line + i);
        let line = err.lines().find(|l| l.starts_with(&header));
        match (want, line) {
            (None, None) => {}
            (None, Some(line)) => anyhow::bail!("{principal} was refused: {line}"),
            (Some(want), Some(line)) => ensure!(
                line.contains(&format!("`{principal}` is not a principal: {want}")),
                "{principal}: {line}"
            ),
            (Some(_), None) => anyhow::bail!("{principal}: no error at {header}:\n{err}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn test_passing_cases_exit_0() -> Result<()> {
    let out = policy(&[
        "test",
        path_str(&fixture("orders.yaml"))?,
        "--cases-file",
        path_str(&fixture("cases.yaml"))?,
    ])
    .await?;
    exit_code(&out, 0)?;
    let text = stdout(&out);
    ensure!(text.ends_with("10 passed, 0 failed\n"), "{text}");
    ensure!(
        text.lines().filter(|l| l.starts_with("PASS  ")).count() == 10,
        "{text}"
    );
    ensure!(!text.contains("FAIL"), "{text}");
    Ok(())
}

#[tokio::test]
async fn test_failing_case_exits_1_with_a_readable_diff() -> Result<()> {
    let out = policy(&[
        "test",
        path_str(&fixture("orders.yaml"))?,
        "--cases-file",
        path_str(&fixture("failing-cases.yaml"))?,
    ])
    .await?;
    exit_code(&out, 1)?;
    let text = stdout(&out);
    let want = [
        "PASS  frontend reads an order",
        "FAIL  frontend may delete orders",
        "      verdict: expected allow, got deny",
        "      policy: expected shop/orders-read, got none",
        "      reason: expected allow-match, got no-allow-match",
        "1 passed, 1 failed",
    ];
    for line in want {
        ensure!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn test_json_lists_each_case_with_its_diffs() -> Result<()> {
    let out = policy(&[
        "test",
        path_str(&fixture("orders.yaml"))?,
        "--cases-file",
        path_str(&fixture("failing-cases.yaml"))?,
        "-o",
        "json",
    ])
    .await?;
    exit_code(&out, 1)?;
    let value: serde_json::Value = serde_json::from_str(&stdout(&out))
        .with_context(|| format!("not JSON: {}", stdout(&out)))?;
    ensure!(value["passed"] == 1 && value["failed"] == 1, "{value}");
    let cases = value["cases"].as_array().context("cases")?;
    ensure!(cases.len() == 2, "{value}");
    ensure!(
        cases[0]["name"] == "frontend reads an order" && cases[0]["passed"] == true,
        "{value}"
    );
    ensure!(cases[0]["diffs"] == serde_json::json!([]), "{value}");
    ensure!(
        cases[1]["name"] == "frontend may delete orders" && cases[1]["passed"] == false,
        "{value}"
    );
    ensure!(
        cases[1]["diffs"]
            == serde_json::json!([
                "verdict: expected allow, got deny",
                "policy: expected shop/orders-read, got none",
                "rule: expected 0, got none",
                "reason: expected allow-match, got no-allow-match",
            ]),
        "{value}"
    );
    Ok(())
}

#[tokio::test]
async fn test_with_a_broken_policy_exits_1_with_the_load_errors() -> Result<()> {
    let broken = fixture("broken/orders.yaml");
    let out = policy(&[
        "test",
        path_str(&broken)?,
        "--cases-file",
        path_str(&fixture("cases.yaml"))?,
    ])
    .await?;
    exit_code(&out, 1)?;
    ensure!(
        stderr(&out).contains(&format!("{}:6:33: ", broken.display())),
        "{}",
        stderr(&out)
    );
    ensure!(
        !stdout(&out).contains("passed"),
        "cases ran against a broken policy"
    );
    Ok(())
}

/// `picket policy explain` on the orders fixture for workload shop/app=orders.
async fn explain(extra: &[&str]) -> Result<Output> {
    let orders = fixture("orders.yaml");
    let mut args = vec![
        "explain",
        path_str(&orders)?,
        "--workload",
        "shop",
        "--label",
        "app=orders",
        "--from",
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "--port",
        "8080",
    ];
    args.extend_from_slice(extra);
    let out = policy(&args).await?;
    exit_code(&out, 0)?;
    Ok(out)
}

#[tokio::test]
async fn explain_text_names_the_decider_every_policy_and_the_dry_run_shadows() -> Result<()> {
    let out = explain(&[
        "--method",
        "GET",
        "--path",
        "/api/orders/7",
        "--header",
        "user-agent=legacy-client/2.1",
    ])
    .await?;
    let text = stdout(&out);
    let orders = fixture("orders.yaml");
    let want = [
        "decision: allow (allow-match) by shop/orders-read rule 0; would deny with dry-run policies enforced".to_owned(),
        format!("policy picket-system/no-debug (DENY enforce, {}:52)", orders.display()),
        "    to[0].operation.paths: `/api/orders/7` matches none of [/debug/*]".to_owned(),
        format!("policy shop/deny-legacy-clients (DENY dry-run, {}:38)", orders.display()),
        format!("policy shop/no-admin (DENY enforce, {}:25)", orders.display()),
        format!("policy shop/orders-read (ALLOW enforce, {}:3)", orders.display()),
        "  rule 0: matched".to_owned(),
        "  rule 1: no match".to_owned(),
        "    to[0].operation.methods: `GET` matches none of [POST]".to_owned(),
        "dry-run: shop/deny-legacy-clients would deny (rule 0)".to_owned(),
        "with dry-run policies enforced the verdict would be deny".to_owned(),
    ];
    for line in &want {
        ensure!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }

    // The path is normalized as the sidecar does before it is judged.
    let out = explain(&["--method", "GET", "--path", "/api/orders/%2e%2e/../admin/x"]).await?;
    let text = stdout(&out);
    ensure!(
        text.starts_with("decision: deny (explicit-deny) by shop/no-admin rule 0\n"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn explain_json_has_the_decision_every_policy_and_each_rule() -> Result<()> {
    let out = explain(&[
        "-o",
        "json",
        "--method",
        "DELETE",
        "--path",
        "/api/orders/7",
        "--header",
        "user-agent=legacy-client/2.1",
    ])
    .await?;
    let json: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    let decision = &json["decision"];
    ensure!(decision["verdict"] == "deny", "{decision}");
    ensure!(decision["reason"] == "no-allow-match", "{decision}");
    ensure!(
        decision["policy"].is_null() && decision["rule"].is_null(),
        "{decision}"
    );
    ensure!(
        decision["shadows"]
            == serde_json::json!([{ "policy": "shop/deny-legacy-clients", "rule": 0, "would": "deny" }]),
        "{decision}"
    );
    ensure!(decision["would_verdict"] == "deny", "{decision}");
    ensure!(json["default_action"] == "deny", "{json}");

    let considered: Vec<(String, Option<u64>)> = json["policies"]
        .as_array()
        .context("policies is an array")?
        .iter()
        .map(|p| {
            (
                p["policy"].as_str().unwrap_or_default().to_owned(),
                p["matched_rule"].as_u64(),
            )
        })
        .collect();
    let want: Vec<(String, Option<u64>)> = vec![
        ("picket-system/no-debug".into(), None),
        ("shop/deny-legacy-clients".into(), Some(0)),
        ("shop/no-admin".into(), None),
        ("shop/orders-read".into(), None),
    ];
    ensure!(considered == want, "{considered:?}");
    let read_rules = &json["policies"][3]["rules"];
    ensure!(
        read_rules[0]["misses"]
            == serde_json::json!(["to[0].operation.methods: `DELETE` matches none of [GET]"]),
        "{read_rules}"
    );
    ensure!(
        read_rules[1]["matched"] == false
            && read_rules[1]["misses"]
                .as_array()
                .is_some_and(|m| m.len() == 3),
        "{read_rules}"
    );
    Ok(())
}

#[tokio::test]
async fn fmt_prints_canonical_policies_that_check_and_test_the_same() -> Result<()> {
    let out = policy(&["fmt", path_str(&fixture("orders.yaml"))?]).await?;
    exit_code(&out, 0)?;
    let formatted = stdout(&out);
    ensure!(
        !formatted.contains('#'),
        "comments are not part of the canonical form"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("orders.yaml");
    std::fs::write(&file, &formatted)?;
    let check = policy(&["check", path_str(&file)?]).await?;
    exit_code(&check, 0)?;
    ensure!(
        stdout(&check).starts_with("ok: 4 policies, "),
        "{}",
        stdout(&check)
    );
    // Same meaning: the fixture's cases pass on the formatted file too.
    let cases = policy(&[
        "test",
        path_str(&file)?,
        "--cases-file",
        path_str(&fixture("cases.yaml"))?,
    ])
    .await?;
    exit_code(&cases, 0)?;
    // Stable: formatting the formatted file changes nothing.
    let again = policy(&["fmt", path_str(&file)?]).await?;
    exit_code(&again, 0)?;
    ensure!(
        stdout(&again) == formatted,
        "fmt is not stable:\n{formatted}\n---- then ----\n{}",
        stdout(&again)
    );

    let broken = policy(&["fmt", path_str(&fixture("broken/orders.yaml"))?]).await?;
    exit_code(&broken, 1)?;
    ensure!(
        stdout(&broken).is_empty(),
        "fmt printed a broken set: {}",
        stdout(&broken)
    );
    Ok(())
}

#[tokio::test]
async fn documented_example_cases_pass() -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/policy");
    let out = policy(&[
        "test",
        path_str(&examples.join("orders.yaml"))?,
        "--cases-file",
        path_str(&examples.join("cases.yaml"))?,
    ])
    .await?;
    exit_code(&out, 0)?;
    ensure!(
        stdout(&out).ends_with(" passed, 0 failed\n"),
        "{}",
        stdout(&out)
    );
    Ok(())
}

#[tokio::test]
async fn test_and_explain_take_the_claims_of_a_token() -> Result<()> {
    let policies = fixture("jwt.yaml");
    let out = policy(&[
        "test",
        path_str(&policies)?,
        "--cases-file",
        path_str(&fixture("jwt-cases.yaml"))?,
    ])
    .await?;
    exit_code(&out, 0)?;
    ensure!(
        stdout(&out).ends_with("3 passed, 0 failed\n"),
        "{}",
        stdout(&out)
    );
    let out = policy(&[
        "explain",
        path_str(&policies)?,
        "--workload",
        "foo",
        "--label",
        "app=httpbin",
        "--port",
        "8000",
        "--method",
        "GET",
        "--path",
        "/headers",
        "--claims",
        r#"{"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io", "groups": ["group2"]}"#,
    ])
    .await?;
    exit_code(&out, 0)?;
    let text = stdout(&out);
    ensure!(
        text.contains(
            "when[0] (request.auth.claims[groups]) values: `group2` matches none of [group1]"
        ),
        "{text}"
    );
    // Claims without an HTTP request are refused: tokens travel in HTTP requests only.
    let out = policy(&[
        "explain",
        path_str(&policies)?,
        "--workload",
        "foo",
        "--port",
        "8000",
        "--claims",
        "{}",
    ])
    .await?;
    exit_code(&out, 2)?;
    ensure!(
        stderr(&out).contains("claims need a method"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

/// `picket policy explain --destination-ip` on the egress fixture for workload shop/app=orders.
async fn explain_egress(extra: &[&str]) -> Result<Output> {
    let egress = fixture("egress.yaml");
    let mut args = vec![
        "explain",
        path_str(&egress)?,
        "--workload",
        "shop",
        "--label",
        "app=orders",
    ];
    args.extend_from_slice(extra);
    policy(&args).await
}

#[tokio::test]
async fn explain_an_egress_connection_against_the_egress_policies() -> Result<()> {
    let egress = fixture("egress.yaml");
    // A name the allow-list does not hold: denied, every egress policy shown, never the
    // inbound one.
    let out = explain_egress(&[
        "--destination-ip",
        "203.0.113.9",
        "--port",
        "443",
        "--sni",
        "Evil.Example.",
    ])
    .await?;
    exit_code(&out, 0)?;
    let text = stdout(&out);
    let want = [
        "egress connection to 203.0.113.9:443, SNI evil.example".to_owned(),
        "decision: deny (no-allow-match)".to_owned(),
        format!(
            "policy shop/no-pastebin (DENY enforce, {}:13)",
            egress.display()
        ),
        format!(
            "policy shop/orders-egress (ALLOW enforce, {}:3)",
            egress.display()
        ),
        "    to[0].operation.hosts: `evil.example:443` matches none of [api.stripe.com]".to_owned(),
        "    when[0] (destination.ip) values: `203.0.113.9` matches none of [10.20.0.0/16]"
            .to_owned(),
    ];
    for line in &want {
        ensure!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    ensure!(!text.contains("orders-in"), "an inbound policy: {text}");

    // JSON and YAML: the same explanation, with the connection.
    for format in ["json", "yaml"] {
        let out = explain_egress(&[
            "-o",
            format,
            "--destination-ip",
            "10.20.3.4",
            "--port",
            "5432",
        ])
        .await?;
        exit_code(&out, 0)?;
        let doc: serde_json::Value = if format == "json" {
            serde_json::from_str(&stdout(&out))?
        } else {
            let mut docs = picket_tests::k8s::documents(&stdout(&out))?;
            ensure!(docs.len() == 1, "one YAML document: {}", stdout(&out));
            docs.pop().context("one document")?
        };
        ensure!(
            doc["decision"]["verdict"] == "allow"
                && doc["decision"]["policy"] == "shop/orders-egress"
                && doc["decision"]["rule"] == 1
                && doc["egress"]["ip"] == "10.20.3.4"
                && doc["egress"]["port"] == 5432
                && doc["egress"].get("name").is_none()
                && doc["default_action"] == "allow",
            "{format}: {doc}"
        );
    }

    // A Host, the DENY, and passthrough: deny for a workload no egress ALLOW selects.
    let out = explain_egress(&[
        "--destination-ip",
        "198.51.100.7",
        "--port",
        "80",
        "--host",
        "x.pastebin.com",
    ])
    .await?;
    ensure!(
        stdout(&out).contains("decision: deny (explicit-deny) by shop/no-pastebin rule 0"),
        "{}",
        stdout(&out)
    );
    let out = policy(&[
        "explain",
        path_str(&egress)?,
        "--workload",
        "shop",
        "--destination-ip",
        "198.51.100.7",
        "--port",
        "80",
        "--passthrough",
        "deny",
    ])
    .await?;
    exit_code(&out, 0)?;
    ensure!(
        stdout(&out).contains("outbound.passthrough decides: deny")
            || stdout(&out).contains("decision: deny (default)"),
        "{}",
        stdout(&out)
    );

    // A Host with a port and a trailing dot, in capitals: the name the sidecar reads from
    // such a header (the port dropped), decided by the DENY.
    let out = explain_egress(&[
        "--destination-ip",
        "198.51.100.7",
        "--port",
        "80",
        "--host",
        "X.PasteBin.com.:8080",
    ])
    .await?;
    exit_code(&out, 0)?;
    ensure!(
        stdout(&out).contains("decision: deny (explicit-deny) by shop/no-pastebin rule 0"),
        "{}",
        stdout(&out)
    );

    // Bad input: named, exit 2.
    let long_label = format!("{}.example", "a".repeat(64));
    for (args, says) in [
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--sni",
                "a.example",
                "--host",
                "b.example",
            ],
            "--sni and --host",
        ),
        // Texts the sidecar reads no name from (the one rule of `picket_policy::egress_name`).
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--sni",
                "a.example:443",
            ],
            "--sni \"a.example:443\": a port after the name (a server name has none): the sidecar reads no name from it",
        ),
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--sni",
                "203.0.113.9",
            ],
            "an IP address, not a host name: the sidecar reads no name",
        ),
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--sni",
                "",
            ],
            "--sni \"\": empty",
        ),
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "80",
                "--host",
                "bücher.example",
            ],
            "not ASCII",
        ),
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--sni",
                long_label.as_str(),
            ],
            "longer than 63 bytes",
        ),
        (
            vec![
                "--destination-ip",
                "203.0.113.9",
                "--port",
                "443",
                "--method",
                "GET",
            ],
            "--method",
        ),
        (
            vec!["--port", "443", "--passthrough", "deny"],
            "--destination-ip",
        ),
    ] {
        let out = explain_egress(&args).await?;
        exit_code(&out, 2)?;
        ensure!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    Ok(())
}
