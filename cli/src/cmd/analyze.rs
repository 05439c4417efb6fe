//! `picket analyze`: the service graph, unexpected edges, blast radius and a suggested
//! least-privilege policy, from flow logs.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use picket_analyze::{self as analyze, AnalyzeOptions, SuggestOptions};

/// Report formats (`-o, --output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Plain text for a terminal.
    Text,
    /// Everything as one JSON document.
    Json,
    /// One self-contained HTML page with the graph drawn.
    Html,
}

/// Arguments of `picket analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Flow logs (JSON lines written by the sidecars' flow_log).
    #[arg(required = true, value_name = "FLOWS.jsonl")]
    files: Vec<PathBuf>,
    /// Check the observed traffic against the policies in this directory (*.yaml, *.yml) or file.
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,
    /// The mesh default for workloads without ALLOW policies, as the sidecars are configured.
    #[arg(long, default_value = "deny", value_name = "deny|allow|audit-only")]
    default_action: picket_policy::DefaultAction,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "picket-system", value_name = "NS")]
    root_namespace: String,
    /// End of the baseline period (RFC 3339): later edges are flagged as new, and suggestions
    /// use only traffic up to it.
    #[arg(long, value_name = "RFC3339")]
    baseline_until: Option<String>,
    /// Write a least-privilege AuthorizationPolicy YAML from the admitted traffic here.
    #[arg(long, value_name = "OUT.yaml")]
    suggest_policy: Option<PathBuf>,
    /// Suggested policies in dry-run mode instead of enforce.
    #[arg(long)]
    suggest_dry_run: bool,
    /// Collapse paths to `prefix/*` when this many distinct values follow one prefix.
    #[arg(long, default_value_t = 3, value_name = "K")]
    collapse_threshold: usize,
    /// The label that selects a workload; its value is the workload's service account.
    #[arg(long, default_value = "app", value_name = "KEY")]
    workload_label: String,
    /// Write a detector baseline for `telemetry.detectors.baseline_file`: one edge per line,
    /// then the observed rate of every burst counter key (`--write-baseline` is the old name).
    #[arg(long, alias = "write-baseline", value_name = "BASELINE.jsonl")]
    baseline_out: Option<PathBuf>,
    /// End-user principals listed per service in the user-level edges; the others are
    /// summed into one line.
    #[arg(long, default_value_t = analyze::DEFAULT_TOP_USERS, value_name = "N")]
    top_users: usize,
    /// Report format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Write the report to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    output_file: Option<PathBuf>,
}

fn load_policies(args: &AnalyzeArgs) -> anyhow::Result<Option<picket_policy::PolicySet>> {
    let Some(dir) = &args.policy else {
        return Ok(None);
    };
    let opts = picket_policy::LoadOptions {
        root_namespace: args.root_namespace.clone(),
        default_action: args.default_action,
        ..picket_policy::LoadOptions::default()
    };
    let texts = picket_proxy::authz::PolicyTexts::read(std::slice::from_ref(dir), &opts)?;
    picket_policy::load(&texts.sources(), &opts)
        .map(Some)
        .map_err(|e| anyhow::Error::new(analyze::AnalyzeError::Policy(e.to_string())))
}

fn write_to(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the analysis and writes the report and the requested files.
pub async fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    // Reading and aggregating is CPU work: keep it off the async workers.
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("the analysis stopped unexpectedly")?
}

fn run_blocking(args: AnalyzeArgs) -> anyhow::Result<()> {
    let baseline_until = args
        .baseline_until
        .as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .with_context(|| format!("--baseline-until {s:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let policy = load_policies(&args)?;
    let analysis = analyze::analyze(AnalyzeOptions {
        files: args.files.clone(),
        policy,
        baseline_until,
        workload_label: args.workload_label.clone(),
        progress: std::io::stderr().is_terminal(),
        top_users: args.top_users,
    })?;
    let report = &analysis.report;
    if report.summary.records == 0 && report.summary.bad_lines > 0 {
        anyhow::bail!(
            "no flow records could be read; first error: {}",
            report.summary.first_error.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(path) = &args.suggest_policy {
        let yaml = analysis.suggest_policy(&SuggestOptions {
            collapse_threshold: args.collapse_threshold,
            dry_run: args.suggest_dry_run,
        });
        write_to(path, &yaml)?;
        eprintln!("suggested policy written to {}", path.display());
    }
    if let Some(path) = &args.baseline_out {
        write_to(path, &analysis.baseline_edges())?;
        eprintln!("detector baseline written to {}", path.display());
    }
    let text = match args.output {
        Output::Text => analyze::render_text(report),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(report)?;
            s.push('\n');
            s
        }
        Output::Html => analyze::render_html(report),
    };
    match &args.output_file {
        Some(path) => write_to(path, &text)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
