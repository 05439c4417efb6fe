//! `picket demo`: the whole local mesh, end to end, in one command.

use std::time::Duration;

use anyhow::{Result, ensure};
use picket_tests::process::{output_within, picket};

#[tokio::test]
async fn demo_runs_to_completion() -> Result<()> {
    let out = output_within(picket()?.arg("demo"), Duration::from_secs(120)).await?;
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "`picket demo` exited with {}:\n{printed}",
        out.status
    );
    ensure!(
        !out.stdout.is_empty(),
        "`picket demo` printed nothing on stdout:\n{printed}"
    );
    // The demo shows the key exchange the sidecars, and a sidecar and the CA, agreed on.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "key exchange between the sidecars: x25519mlkem768 (post-quantum hybrid",
        "key exchange of the frontend sidecar with the CA: x25519mlkem768",
        // One request allowed for a user claim, one denied.
        "GET /api/reports/q3 with alice's token (roles: [auditor]) -> 200: allowed for the claim",
        "GET /api/reports/q3 with bob's token (roles: [clerk]) -> 403",
        "the same with a tampered signature -> 401",
    ] {
        ensure!(stdout.contains(line), "no {line:?} in:\n{printed}");
    }
    Ok(())
}
