//! The flow log writer: JSON lines to stdout or to a file rotated by size.
//!
//! A line is serialized by whoever writes it, straight into one shared buffer
//! ([`FlowLog::write_record`]: [`FlowRecord::write_json`], serde_json's bytes written field by
//! field; alerts through serde, [`FlowLog::write`]), under a lock held only for that. One
//! dedicated writer thread takes the whole buffer at once (a swap with its own, emptied one)
//! and writes it out, so a line costs its serialization and nothing else: no allocation, no
//! copy of the record, no message per line. The buffer holds at most [`QUEUE_BYTES`]; a line
//! that finds it full is dropped and counted in
//! `picket_telemetry_dropped_total{sink="flow_log",reason="queue_full"}`: the data path never
//! waits for a disk.
//!
//! The writer is not woken per line: it takes the buffer every [`DRAIN_INTERVAL`], or at once
//! when the buffer passes [`WAKE_BYTES`] or a flush is asked for. A wake-up per request (a
//! futex call and a context switch, plus a write system call for each line when the writer
//! keeps up) cost more than the rest of the flow record did.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use serde::Serialize;

use super::config::{FlowLogConfig, FlowLogTarget};
use super::flow::FlowRecord;
use super::metrics::{DropReason, Sink, TelemetryMetrics};

/// Bytes of lines the buffer holds before new ones are dropped: about 9,000 flow lines.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Bytes in the buffer at which the writer is woken before its interval is up.
pub const WAKE_BYTES: usize = 64 << 10;

/// A buffer the writer grew past this during a burst is given back rather than kept.
const KEEP_BYTES: usize = 256 << 10;

/// How long queued lines may wait for the writer: the flow log's delay at most, under a load
/// too light to pass [`WAKE_BYTES`] in that time.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the writers and the writer thread share.
#[derive(Default)]
struct Pending {
    /// Whole lines, each ending in `\n`, not yet taken by the writer thread.
    lines: Vec<u8>,
    /// Flushes asked for: answered once every line before them is written and flushed.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The log was dropped: the writer writes what is left and exits.
    closed: bool,
}

/// A running flow log writer. Dropping it lets the writer thread finish the queue and exit.
pub struct FlowLog {
    pending: Arc<Mutex<Pending>>,
    metrics: TelemetryMetrics,
    /// Whose drops the metrics count: the flow log, or the alert stream that shares the writer.
    sink: Sink,
    /// Bytes the buffer holds before lines are dropped.
    capacity: usize,
    /// Buffer length at which the writer is woken before its interval is up.
    wake_at: usize,
    writer: Thread,
}

impl std::fmt::Debug for FlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLog").finish_non_exhaustive()
    }
}

impl FlowLog {
    /// Opens the target (so a bad path fails at start, not later) and starts the writer thread.
    pub fn start(cfg: &FlowLogConfig, metrics: TelemetryMetrics) -> io::Result<Self> {
        Self::start_with_capacity(cfg, metrics, QUEUE_BYTES, Sink::FlowLog)
    }

    /// A writer of the same kind for another stream of lines (the alert stream), its drops
    /// counted under `sink`.
    pub fn start_for(
        cfg: &FlowLogConfig,
        metrics: TelemetryMetrics,
        sink: Sink,
    ) -> io::Result<Self> {
        Self::start_with_capacity(cfg, metrics, QUEUE_BYTES, sink)
    }

    fn start_with_capacity(
        cfg: &FlowLogConfig,
        metrics: TelemetryMetrics,
        capacity: usize,
        sink: Sink,
    ) -> io::Result<Self> {
        let out = match &cfg.target {
            FlowLogTarget::Stdout => Output::Stdout,
            FlowLogTarget::File(path) => {
                Output::File(RotatingFile::open(path, cfg.max_bytes, cfg.max_files)?)
            }
        };
        let pending = Arc::new(Mutex::new(Pending::default()));
        let writer_pending = Arc::clone(&pending);
        let writer_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("picket-flow-log".into())
            .spawn(move || write_loop(&writer_pending, out, &writer_metrics, sink))?;
        Ok(Self {
            pending,
            metrics,
            sink,
            capacity,
            wake_at: WAKE_BYTES.min(capacity / 2).max(1),
            writer: thread.thread().clone(),
        })
    }

    /// Queues `value` as one JSON line; never blocks. Returns false when it was dropped.
    pub fn write<T: Serialize + ?Sized>(&self, value: &T) -> bool {
        self.append(|lines| serde_json::to_writer(lines, value).is_ok())
    }

    /// Queues `record` as one JSON line ([`FlowRecord::write_json`]); never blocks. Returns
    /// false when it was dropped.
    pub fn write_record(&self, record: &FlowRecord<'_>) -> bool {
        self.append(|lines| record.write_json(lines).is_ok())
    }

    /// Appends the line `serialize` writes, and its newline, unless the buffer is full. A line
    /// that fails to serialize leaves nothing behind.
    fn append(&self, serialize: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            // Only a panic while the lock was held poisons it: nothing more is written.
            self.metrics.dropped(self.sink, DropReason::SinkFailed, 1);
            return false;
        };
        let start = pending.lines.len();
        if start >= self.capacity {
            drop(pending);
            self.metrics.dropped(self.sink, DropReason::QueueFull, 1);
            return false;
        }
        if !serialize(&mut pending.lines) {
            pending.lines.truncate(start);
            return false;
        }
        pending.lines.push(b'\n');
        let woken = start < self.wake_at && pending.lines.len() >= self.wake_at;
        drop(pending);
        if woken {
            self.writer.unpark();
        }
        true
    }

    /// Waits until every line queued before this call is written and flushed, or `deadline`
    /// passes. Returns whether the flush completed.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        match self.pending.lock() {
            Ok(mut pending) => pending.flushes.push(done_tx),
            Err(_) => return false,
        }
        self.writer.unpark();
        tokio::time::timeout(deadline, done_rx)
            .await
            .is_ok_and(|done| done.is_ok())
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        // The writer writes what is queued and exits; it is not joined here so that dropping
        // never blocks an async task.
        if let Ok(mut pending) = self.pending.lock() {
            pending.closed = true;
        }
        self.writer.unpark();
    }
}

enum Output {
    Stdout,
    File(RotatingFile),
}

impl Output {
    /// Writes whole lines.
    fn write_lines(&mut self, lines: &[u8]) -> Result<(), Unwritten> {
        match self {
            Self::Stdout => io::stdout()
                .lock()
                .write_all(lines)
                .map_err(|error| Unwritten::all(error, lines)),
            Self::File(f) => f.write_lines(lines),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().flush(),
            // Lines go to the file as they are written: nothing is buffered here.
            Self::File(_) => Ok(()),
        }
    }
}

/// A write that failed, and how many lines it did not write.
struct Unwritten {
    error: io::Error,
    lines: u64,
}

impl Unwritten {
    /// Every line of `lines` counted as not written (a write that failed part way may have
    /// written some; they are counted too, rather than guessed at).
    fn all(error: io::Error, lines: &[u8]) -> Self {
        let lines = lines.iter().filter(|&&b| b == b'\n').count() as u64;
        Self { error, lines }
    }
}

fn write_loop(pending: &Mutex<Pending>, mut out: Output, metrics: &TelemetryMetrics, sink: Sink) {
    let mut failing = false;
    // The writer's own buffer, swapped with the shared one each time it takes the lines.
    let mut lines = Vec::new();
    loop {
        let (flushes, closed) = match pending.lock() {
            Ok(mut p) => {
                std::mem::swap(&mut p.lines, &mut lines);
                (std::mem::take(&mut p.flushes), p.closed)
            }
            Err(_) => return,
        };
        if !lines.is_empty() || !flushes.is_empty() {
            let written = out
                .write_lines(&lines)
                .and_then(|()| out.flush().map_err(|error| Unwritten { error, lines: 0 }));
            match written {
                Ok(()) => failing = false,
                Err(Unwritten { error, lines }) => {
                    metrics.dropped(sink, DropReason::SinkFailed, lines);
                    if !failing {
                        tracing::warn!(error = %error, "flow log write failed; lines are dropped until it recovers");
                    }
                    failing = true;
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        lines.clear();
        if lines.capacity() > KEEP_BYTES {
            lines = Vec::new();
        }
        if closed {
            return;
        }
        std::thread::park_timeout(DRAIN_INTERVAL);
    }
}

/// A file that is renamed to `path.1` (shifting older ones up to `path.N`) before a line would
/// take it past `max_bytes`.
struct RotatingFile {
    path: PathBuf,
    out: File,
    written: u64,
    max_bytes: u64,
    max_files: u32,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        let out = OpenOptions::new().create(true).append(true).open(path)?;
        let written = out.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            out,
            written,
            max_bytes,
            max_files,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.max_files).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }

    /// Writes whole lines, as many at a time as the file takes before `max_bytes`; the file is
    /// rotated before a line that would take it past that. A line longer than `max_bytes`
    /// goes alone into a new file.
    fn write_lines(&mut self, mut lines: &[u8]) -> Result<(), Unwritten> {
        while !lines.is_empty() {
            let room =
                usize::try_from(self.max_bytes.saturating_sub(self.written)).unwrap_or(usize::MAX);
            let fits = if lines.len() <= room {
                lines.len()
            } else {
                lines[..room]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            let take = match fits {
                0 if self.written > 0 => {
                    self.rotate().map_err(|e| Unwritten::all(e, lines))?;
                    continue;
                }
                0 => lines
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(lines.len(), |i| i + 1),
                n => n,
            };
            let (now, rest) = lines.split_at(take);
            self.out
                .write_all(now)
                .map_err(|e| Unwritten::all(e, lines))?;
            self.written += take as u64;
            lines = rest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
