//! The strict recording app (`tests/fixtures/strict_app.py`): an independent reading of every
//! message that reaches the application. Python's `h11` parses HTTP/1.1 and `h2` HTTP/2; the
//! script adds the RFC 9110/9112/9113 checks those parsers leave to applications (one Host,
//! no obs-text, canonical framing headers, origin-form targets, no hop-by-hop headers) and logs
//! one JSON line per event: `request` (complete, with the raw HTTP/1.1 bytes), `incomplete` (a
//! request cut off before its end) or `flag` (what a parser or check refused).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::Deserialize;
use tokio::process::Child;

/// One event of the strict app's log.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// `request`, `incomplete` or `flag`.
    pub event: String,
    /// `HTTP/1.1` or `HTTP/2`.
    #[serde(default)]
    pub proto: String,
    /// Method, as received.
    #[serde(default)]
    pub method: String,
    /// Request-target (`:path`), as received.
    #[serde(default)]
    pub target: String,
    /// `Host` (or `:authority`).
    #[serde(default)]
    pub host: String,
    /// Header names (lowercase) and values in order; HTTP/2 puts `:authority` first.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Body, base64.
    #[serde(default)]
    pub body: String,
    /// Body length.
    #[serde(default)]
    pub body_bytes: u64,
    /// The raw bytes of an HTTP/1.1 request, base64.
    #[serde(default)]
    pub raw: String,
    /// What the parser or the checks refused; empty for a clean message.
    #[serde(default)]
    pub flags: Vec<String>,
}

impl Event {
    /// The raw HTTP/1.1 bytes.
    pub fn raw_bytes(&self) -> Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD.decode(&self.raw)?)
    }

    /// The body bytes.
    pub fn body_bytes(&self) -> Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD.decode(&self.body)?)
    }

    /// The values of header `name`, in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running strict app; killed when dropped.
#[derive(Debug)]
pub struct StrictApp {
    _child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
    read: usize,
}

impl StrictApp {
    /// Starts the app on `127.0.0.1:0`. Needs python3 with h11 and h2
    /// (`scripts/install-test-deps` installs them).
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("strict-app.jsonl");
        std::fs::write(&log, b"")?;
        let (child, addr) =
            crate::process::start_fixture_app("strict_app.py", &log, "h11 and h2").await?;
        Ok(Self {
            _child: child,
            addr,
            log,
            _dir: dir,
            read: 0,
        })
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every event so far.
    pub fn events(&self) -> Result<Vec<Event>> {
        let text = std::fs::read_to_string(&self.log)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l}")))
            .collect()
    }

    /// The events since the previous call.
    pub fn since(&mut self) -> Result<Vec<Event>> {
        let all = self.events()?;
        let new = all.get(self.read..).unwrap_or_default().to_vec();
        self.read = all.len();
        Ok(new)
    }

    /// How many connections have delivered their first bytes to the app.
    pub fn connections(&self) -> Result<usize> {
        let text = std::fs::read_to_string(self.log.with_extension("conns")).unwrap_or_default();
        Ok(text.lines().count())
    }

    /// Fails when any event so far was flagged.
    pub fn assert_no_flags(&self) -> Result<()> {
        let flagged: Vec<Event> = self
            .events()?
            .into_iter()
            .filter(|e| !e.flags.is_empty() || e.event == "flag")
            .collect();
        if !flagged.is_empty() {
            bail!("the strict parser flagged what the app received: {flagged:#?}");
        }
        Ok(())
    }
}
