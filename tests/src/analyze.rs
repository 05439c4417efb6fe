//! `picket analyze` on flow logs, as the tests run it: the text report, the JSON report and
//! the HTML report written to a file; and flow logs written for it.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use picket_proxy::telemetry::FlowRecord;
use serde_json::Value;

use crate::process::{picket, run_ok};

/// `picket analyze FILES ARGS`: what it printed (it must succeed). A path in `ARGS` is given
/// as `path.display()`: the tests' temporary paths are UTF-8.
pub async fn analyze(files: &[impl AsRef<OsStr>], args: &[&str]) -> Result<String> {
    run_ok(picket()?.arg("analyze").args(files).args(args)).await
}

/// `picket analyze FILES --output json ARGS`: the report.
pub async fn analyze_json(files: &[impl AsRef<OsStr>], args: &[&str]) -> Result<Value> {
    let out = run_ok(
        picket()?
            .arg("analyze")
            .args(files)
            .args(["--output", "json"])
            .args(args),
    )
    .await?;
    serde_json::from_str(&out).context("analyze --output json")
}

/// `picket analyze FILES -o html ARGS --output-file DIR/report.html`: the report's path.
pub async fn analyze_html(
    files: &[impl AsRef<OsStr>],
    args: &[&str],
    dir: &Path,
) -> Result<PathBuf> {
    let html = dir.join("report.html");
    run_ok(
        picket()?
            .arg("analyze")
            .args(files)
            .args(["-o", "html"])
            .args(args)
            .arg("--output-file")
            .arg(&html),
    )
    .await?;
    Ok(html)
}

/// Writes `flows` as a flow log (one JSON record a line) at `path`; returns `path`.
pub fn write_flow_log(path: &Path, flows: &[FlowRecord<'_>]) -> Result<PathBuf> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in flows {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(path.to_owned())
}
