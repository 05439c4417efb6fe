//! `picket policy`: check, test, explain and format policy files offline, with exactly the
//! loader, normalizer and evaluator the sidecar uses.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use picket_policy::normalize::{self, PathOptions};
use picket_policy::{LoadOptions, PolicySet, Workload};
use serde::Deserialize;

use picket_common::text::{MAX_TEXT_BYTES, read_text};
use picket_proxy::authz;

use super::{Output, OutputArgs};

/// `picket policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; errors carry file:line:column and a snippet. Exit 1 on error.
    Check {
        #[command(flatten)]
        files: PolicyFiles,
    },
    /// Run table tests: each case describes a request and the expected decision.
    Test {
        #[command(flatten)]
        files: PolicyFiles,
        /// The cases file (YAML).
        #[arg(long, value_name = "CASES.yaml")]
        cases_file: PathBuf,
    },
    /// Explain how one request is decided: every policy considered and why. With
    /// `--destination-ip`, one egress connection instead, against the workload's egress
    /// policies.
    Explain {
        #[command(flatten)]
        files: PolicyFiles,
        #[command(flatten)]
        request: Box<RequestArgs>,
    },
    /// Print the policies in canonical form (text and yaml: the canonical YAML documents;
    /// json: those documents, as a `List` when there are several).
    Fmt {
        #[command(flatten)]
        files: PolicyFiles,
    },
}

/// What every subcommand takes: the policy files, how to load them, the output format.
#[derive(Debug, clap::Args)]
pub struct PolicyFiles {
    /// Policy files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Loader settings shared by every subcommand (the same knobs as the sidecar's `policy:`).
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "picket-system")]
    root_namespace: String,
    /// What applies when no ALLOW policy selects the workload.
    #[arg(long, default_value = "deny", value_name = "deny|allow|audit-only")]
    default_action: picket_policy::DefaultAction,
    /// Ports carrying opaque TCP (HTTP-only fields in rules for them are errors).
    #[arg(long = "opaque-port")]
    opaque_ports: Vec<u16>,
}

impl LoadArgs {
    fn options(&self) -> LoadOptions {
        LoadOptions {
            root_namespace: self.root_namespace.clone(),
            default_action: self.default_action,
            opaque_tcp_ports: self.opaque_ports.clone(),
            ..LoadOptions::default()
        }
    }
}

/// One request, as given on the command line.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The workload's namespace.
    #[arg(long)]
    workload: String,
    /// A workload label, `key=value` (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The caller's identity (spiffe://...); absent means unauthenticated.
    #[arg(long)]
    from: Option<String>,
    /// The caller's address.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: IpAddr,
    /// Destination port.
    #[arg(long)]
    port: u16,
    /// HTTP method; absent means an opaque TCP connection.
    #[arg(long)]
    method: Option<String>,
    /// HTTP path (normalized as the sidecar does).
    #[arg(long)]
    path: Option<String>,
    /// HTTP host.
    #[arg(long)]
    host: Option<String>,
    /// A request header, `name=value` (repeatable; repeat a name for duplicates).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// TLS server name.
    #[arg(long)]
    sni: Option<String>,
    /// The claims of a validated JWT the request carries, as a JSON object
    /// (`{"iss": "...", "sub": "...", "groups": [...]}`); absent means no token.
    #[arg(long)]
    claims: Option<String>,
    /// Explain an egress connection of the workload to this address (a destination outside
    /// the mesh, `--port` the port dialled, `--sni` or `--host` the name the client asked
    /// for) against its egress policies (`spec.direction: egress`), instead of a request.
    #[arg(
        long,
        value_name = "IP",
        conflicts_with_all = ["from", "source_ip", "method", "path", "headers", "claims"]
    )]
    destination_ip: Option<IpAddr>,
    /// With `--destination-ip`: the sidecar's `outbound.passthrough`, which decides when no
    /// enforced egress ALLOW policy selects the workload [default: allow].
    #[arg(long, value_name = "allow|deny", requires = "destination_ip")]
    passthrough: Option<Passthrough>,
}

/// `outbound.passthrough`: the default of egress decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Passthrough {
    /// Connections outside the mesh pass unless an egress policy says otherwise.
    Allow,
    /// Connections outside the mesh are refused unless an egress policy allows them.
    Deny,
}

/// A request description shared by `explain` and the cases file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    from: Option<String>,
    #[serde(default = "default_ip")]
    source_ip: IpAddr,
    port: u16,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    sni: Option<String>,
    /// The payload of a validated JWT (needs an HTTP request).
    #[serde(default)]
    claims: Option<serde_json::Value>,
}

fn default_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// The owned, normalized form of a [`RequestSpec`], borrowed as a `picket_policy::Request`.
struct OwnedRequest {
    principal: Option<String>,
    source_ip: IpAddr,
    port: u16,
    sni: Option<String>,
    http: Option<OwnedHttp>,
    auth: Option<picket_policy::RequestAuth>,
}

/// Method, normalized path, normalized host, lowercased headers.
struct OwnedHttp {
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
}

impl OwnedRequest {
    fn from_spec(spec: &RequestSpec) -> anyhow::Result<Self> {
        let principal = match &spec.from {
            None => None,
            Some(f) => {
                let id: picket_ca::SpiffeId = f.parse().with_context(|| format!("from: {f}"))?;
                Some(id.to_string().trim_start_matches("spiffe://").to_owned())
            }
        };
        let http = match &spec.method {
            None => {
                if spec.path.is_some() || spec.host.is_some() || !spec.headers.is_empty() {
                    bail!(
                        "path, host and headers need a method (without one the request is opaque TCP)"
                    );
                }
                None
            }
            Some(m) => {
                normalize::normalize_method(m).map_err(|e| anyhow::anyhow!("method {m:?}: {e}"))?;
                let raw = spec.path.as_deref().unwrap_or("/");
                let raw = raw.split_once('?').map_or(raw, |(p, _)| p);
                let path = normalize::normalize_path(raw, &PathOptions::default())
                    .map_err(|e| anyhow::anyhow!("path {raw:?}: {e}"))?;
                let host = match &spec.host {
                    Some(h) => normalize::normalize_host(h)
                        .map_err(|e| anyhow::anyhow!("host {h:?}: {e}"))?,
                    None => String::new(),
                };
                let headers = spec
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                Some(OwnedHttp {
                    method: m.clone(),
                    path,
                    host,
                    headers,
                })
            }
        };
        let auth = match &spec.claims {
            None => None,
            Some(_) if http.is_none() => {
                bail!("claims need a method: tokens travel only in HTTP requests")
            }
            Some(serde_json::Value::Object(map)) => {
                Some(picket_policy::RequestAuth::from_claims(map.clone()))
            }
            Some(_) => bail!("claims: expected a JSON object (the token's payload)"),
        };
        Ok(Self {
            principal,
            source_ip: spec.source_ip,
            port: spec.port,
            sni: spec.sni.clone(),
            http,
            auth,
        })
    }

    fn evaluate_with<T>(&self, f: impl FnOnce(&picket_policy::Request<'_>) -> T) -> T {
        let headers: Vec<(&str, &str)> = self
            .http
            .as_ref()
            .map(|h| {
                h.headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let req = picket_policy::Request {
            source_principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            destination_port: self.port,
            sni: self.sni.as_deref(),
            http: self.http.as_ref().map(|h| picket_policy::HttpRequest {
                method: &h.method,
                path: &h.path,
                host: &h.host,
                headers: &headers,
            }),
            auth: self.auth.as_ref(),
        };
        f(&req)
    }
}

fn split_kv(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| anyhow::anyhow!("{what} {s:?}: expected key=value"))
}

/// Loads every policy under `paths`; on error prints each problem and returns `None`.
fn load(
    paths: &[PathBuf],
    options: &LoadOptions,
    output: Output,
) -> anyhow::Result<Option<PolicySet>> {
    let texts = authz::PolicyTexts::read(paths, options)?;
    match picket_policy::load(&texts.sources(), options) {
        Ok(set) => Ok(Some(set)),
        Err(errors) => {
            match output {
                Output::Text => eprint!("{errors}"),
                Output::Json | Output::Yaml => output.print(&errors, String::new)?,
            }
            Ok(None)
        }
    }
}

/// Runs a `picket policy` subcommand. `Ok(false)` means the check or tests failed (exit 1).
pub fn run(cmd: PolicyCommand) -> anyhow::Result<bool> {
    let (PolicyCommand::Check { files }
    | PolicyCommand::Test { files, .. }
    | PolicyCommand::Explain { files, .. }
    | PolicyCommand::Fmt { files }) = &cmd;
    let output = files.output.output;
    let Some(set) = load(&files.paths, &files.load.options(), output)? else {
        return Ok(false);
    };
    match cmd {
        PolicyCommand::Check { .. } => {
            let n = set.policies().count();
            let summary = serde_json::json!({ "ok": true, "policies": n, "sources_hash": set.sources_hash() });
            output.print(&summary, || {
                format!("ok: {n} policies, sources hash {}\n", set.sources_hash())
            })?;
            Ok(true)
        }
        PolicyCommand::Fmt { .. } => {
            let canonical = set.to_yaml();
            match output {
                Output::Text | Output::Yaml => super::print_stdout(&canonical)?,
                Output::Json => {
                    let documents: Vec<serde_json::Value> =
                        serde_saphyr::from_str_multiple(&canonical)
                            .context("cannot read back the canonical form")?;
                    output.print(&super::object_list(documents), String::new)?;
                }
            }
            Ok(true)
        }
        PolicyCommand::Explain { request, .. } => {
            explain(&set, &request, output)?;
            Ok(true)
        }
        PolicyCommand::Test { cases_file, .. } => run_cases(&set, &cases_file, output),
    }
}

/// `picket policy explain`: the request (or egress connection) from the command line,
/// decided with every step shown.
fn explain(set: &PolicySet, request: &RequestArgs, output: Output) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    for kv in &request.labels {
        let (k, v) = split_kv(kv, "--label")?;
        labels.insert(k, v);
    }
    if let Some(ip) = request.destination_ip {
        let compiled = set.for_workload(&Workload {
            namespace: request.workload.clone(),
            labels,
        });
        return explain_egress(&compiled, ip, request, output);
    }
    let headers = request
        .headers
        .iter()
        .map(|h| split_kv(h, "--header"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = RequestSpec {
        from: request.from.clone(),
        source_ip: request.source_ip,
        port: request.port,
        method: request.method.clone(),
        path: request.path.clone(),
        host: request.host.clone(),
        headers,
        sni: request.sni.clone(),
        claims: match &request.claims {
            None => None,
            Some(text) => Some(
                serde_json::from_str(text)
                    .with_context(|| format!("--claims {text:?}: not JSON"))?,
            ),
        },
    };
    let owned = OwnedRequest::from_spec(&spec)?;
    let compiled = set.for_workload(&Workload {
        namespace: request.workload.clone(),
        labels,
    });
    let explanation = owned.evaluate_with(|r| compiled.explain(r));
    output.print(&explanation, || explanation.to_string())
}

/// `picket policy explain --destination-ip`: one egress connection, decided by the workload's
/// egress policies with `--passthrough` as the default, as the sidecar decides it.
fn explain_egress(
    compiled: &picket_policy::WorkloadPolicies,
    ip: IpAddr,
    request: &RequestArgs,
    output: Output,
) -> anyhow::Result<()> {
    let (name, sni) = match (&request.sni, &request.host) {
        (Some(_), Some(_)) => bail!(
            "--sni and --host: an egress connection has one name, the SNI of its TLS ClientHello or the Host of its plaintext HTTP/1 request"
        ),
        (Some(n), None) => (
            Some(egress_name(
                n,
                "--sni",
                picket_policy::egress_name::sni_name,
            )?),
            true,
        ),
        (None, Some(n)) => (
            Some(egress_name(
                n,
                "--host",
                picket_policy::egress_name::host_header_name,
            )?),
            false,
        ),
        (None, None) => (None, false),
    };
    let req = picket_policy::EgressRequest {
        ip,
        port: request.port,
        name: name.as_deref(),
        sni: name.as_deref().filter(|_| sni),
    };
    let default = match request.passthrough.unwrap_or(Passthrough::Allow) {
        Passthrough::Allow => picket_policy::DefaultAction::Allow,
        Passthrough::Deny => picket_policy::DefaultAction::Deny,
    };
    let explanation = compiled.explain_egress(&req, default);
    output.print(&explanation, || explanation.to_string())
}

/// A name as the sidecar reads it from an egress connection, by the one rule it reads with
/// (`picket_policy::egress_name`): `--sni` as a ClientHello's server name, `--host` as a
/// plaintext request's `Host` (its port dropped: the port dialled is `--port`). A text the
/// sidecar reads no name from is an error that says why.
fn egress_name(
    raw: &str,
    flag: &str,
    read: fn(&[u8]) -> Result<String, picket_policy::egress_name::NameError>,
) -> anyhow::Result<String> {
    read(raw.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "{flag} {raw:?}: {e}: the sidecar reads no name from it (explain the connection without {flag} to see how a connection without a name is decided)"
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    workload: CaseWorkload,
    request: RequestSpec,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseWorkload {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    verdict: String,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    rule: Option<usize>,
    #[serde(default)]
    reason: Option<String>,
}

/// One case's outcome: its name and what differed from the expectation (nothing: passed).
#[derive(Debug, serde::Serialize)]
struct CaseResult<'a> {
    name: &'a str,
    passed: bool,
    diffs: Vec<String>,
}

fn run_cases(set: &PolicySet, cases_path: &Path, output: Output) -> anyhow::Result<bool> {
    let text = read_text(cases_path, MAX_TEXT_BYTES)
        .with_context(|| format!("cannot read {}", cases_path.display()))?;
    let file: CasesFile = picket_proxy::yaml::parse(&cases_path.display().to_string(), &text)?;
    let mut results = Vec::with_capacity(file.cases.len());
    for case in &file.cases {
        let owned = OwnedRequest::from_spec(&case.request)
            .with_context(|| format!("case {:?}", case.name))?;
        let compiled = set.for_workload(&Workload {
            namespace: case.workload.namespace.clone(),
            labels: case.workload.labels.clone(),
        });
        let d = owned.evaluate_with(|r| compiled.evaluate(r));
        let got_policy = d.policy.as_ref().map(ToString::to_string);
        let mut diffs = Vec::new();
        if d.verdict.as_str() != case.expect.verdict {
            diffs.push(format!(
                "verdict: expected {}, got {}",
                case.expect.verdict, d.verdict
            ));
        }
        if let Some(p) = &case.expect.policy
            && got_policy.as_deref() != Some(p.as_str())
        {
            diffs.push(format!(
                "policy: expected {p}, got {}",
                got_policy.as_deref().unwrap_or("none")
            ));
        }
        if let Some(r) = case.expect.rule
            && d.rule != Some(r)
        {
            let got = d.rule.map_or_else(|| "none".to_owned(), |g| g.to_string());
            diffs.push(format!("rule: expected {r}, got {got}"));
        }
        if let Some(r) = &case.expect.reason
            && d.reason.as_str() != r
        {
            diffs.push(format!("reason: expected {r}, got {}", d.reason));
        }
        results.push(CaseResult {
            name: &case.name,
            passed: diffs.is_empty(),
            diffs,
        });
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let failed = results.len() - passed;
    let report = serde_json::json!({
        "passed": passed,
        "failed": failed,
        "cases": results,
    });
    output.print(&report, || {
        let mut text = String::new();
        for r in &results {
            text.push_str(&format!(
                "{}  {}\n",
                if r.passed { "PASS" } else { "FAIL" },
                r.name
            ));
            for diff in &r.diffs {
                text.push_str(&format!("      {diff}\n"));
            }
        }
        text.push_str(&format!("{passed} passed, {failed} failed\n"));
        text
    })?;
    Ok(failed == 0)
}
