//! The `picket` and `picket-sidecar` binaries as child processes: one-shot commands and
//! long-running daemons.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::process::{Child, Command};

use crate::wait::{COMMAND_TIMEOUT, READY_TIMEOUT, eventually};

/// The `picket` binary built beside this test executable (`target/<profile>/picket`; the test
/// runs from `target/<profile>/deps/`).
pub fn picket_bin() -> Result<PathBuf> {
    built_bin("picket")
}

/// The binary `name` of the workspace, built beside this test executable.
fn built_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join(name))
        .context("the test executable has no target/<profile> directory above it")?;
    if !bin.is_file() {
        bail!(
            "the {name} binary is missing at {}: run `cargo build --bins` first \
             (scripts/test does this before running the tests)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A `picket` command with no standard input, killed if dropped while running.
pub fn picket() -> Result<Command> {
    Ok(command(picket_bin()?))
}

/// A `picket-sidecar` command (the pods' binary: the `proxy` command alone), like [`picket`].
pub fn picket_sidecar() -> Result<Command> {
    Ok(command(built_bin("picket-sidecar")?))
}

fn command(bin: PathBuf) -> Command {
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs `cmd` to completion (at most [`COMMAND_TIMEOUT`]) and returns what it printed.
pub async fn output(cmd: &mut Command) -> Result<Output> {
    output_within(cmd, COMMAND_TIMEOUT).await
}

/// Runs `cmd` to completion, killing it after `timeout`, and returns what it printed.
pub async fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let run = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
    tokio::time::timeout(timeout, run)
        .await
        .with_context(|| format!("{cmd:?} did not finish within {timeout:?}"))?
        .with_context(|| format!("cannot run {cmd:?}"))
}

/// Runs `cmd`, requires it to succeed, and returns its standard output.
pub async fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = output(cmd).await?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8"))
}

/// A long-running child process whose output goes to a log file. It is killed when dropped,
/// and its log is printed to stderr then (the test runner shows it only for failed tests).
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        cmd.stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let pid = child.id().context("the child has no process id")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    /// Waits for the process to write the JSON ready file at `path`, and parses it. Fails at
    /// once if the process exits first.
    pub async fn wait_ready<T: DeserializeOwned>(&mut self, path: &Path) -> Result<T> {
        let ready = eventually(READY_TIMEOUT, async || {
            if let Some(status) = self.child.try_wait()? {
                let exited = format!("{} exited with {status} before it was ready", self.name);
                return Ok(Err(anyhow::anyhow!("{exited}:\n{}", self.log_text())));
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{} has not written {}", self.name, path.display()))?;
            Ok(serde_json::from_str::<T>(&text)
                .with_context(|| format!("{} wrote a bad ready file: {text}", self.name)))
        })
        .await;
        ready?
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process has printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process has printed `text` (a server's "listening" line, tcpdump's
    /// "listening on"), for at most `timeout`.
    pub async fn wait_log(&self, text: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, async || {
            anyhow::ensure!(
                self.log_text().contains(text),
                "{} has not printed {text:?} yet",
                self.name
            );
            Ok(())
        })
        .await
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, ...) with the `kill` command.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid.to_string();
        run_ok(Command::new("kill").args(["-s", signal, &pid])).await?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("{} still running after {timeout:?}", self.name),
        }
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// A `kB` field of `/proc/<pid>/status`, such as `VmRSS` or `VmHWM`.
    pub fn proc_status_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .with_context(|| format!("{path} has no {field} line"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        const TAIL_BYTES: usize = 32 * 1024;
        let log = self.log_text();
        let start = log.len().saturating_sub(TAIL_BYTES);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        eprintln!(
            "----- {} (pid {}) log -----\n{}",
            self.name,
            self.pid,
            &log[start..]
        );
    }
}

/// Starts a Python fixture app, `tests/fixtures/<script>`, that takes its event log path as
/// its one argument and prints `listening <port>` once bound on `127.0.0.1`. Killed when the
/// returned child is dropped. `modules` names the Python packages it needs (for the message
/// when python3 or they are missing).
pub async fn start_fixture_app(
    script: &str,
    log: &Path,
    modules: &str,
) -> Result<(Child, std::net::SocketAddr)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let path = crate::k8s::repo_root().join("tests/fixtures").join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot run python3 (scripts/install-test-deps installs it with {modules})")
        })?;
    let stdout = child.stdout.take().context("no stdout")?;
    let line = tokio::time::timeout(READY_TIMEOUT, BufReader::new(stdout).lines().next_line())
        .await
        .with_context(|| format!("{script} did not start"))??
        .with_context(|| format!("{script} exited before listening (is {modules} installed?)"))?;
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{script}: unexpected first line {line:?}"))?;
    Ok((child, std::net::SocketAddr::from(([127, 0, 0, 1], port))))
}
