//! The flow log writer: JSON lines to stdout or to a file rotated by size.
//!
//! Flow records are handed over as they are ([`FlowLog::write_record`]) to a bounded queue
//! ([`QUEUE_LINES`]) drained by one dedicated writer thread, which serializes them into one
//! reused buffer ([`FlowRecord::write_json`]: serde_json's bytes, written field by field): the
//! request path neither formats JSON nor allocates a line. Other lines
//! (alerts) are serialized by the caller ([`FlowLog::write`]). A full queue drops the line and
//! counts it in `picket_telemetry_dropped_total{sink="flow_log",reason="queue_full"}`: the data
//! path never waits for a disk.
//!
//! The writer is not woken per line: it drains the queue every [`DRAIN_INTERVAL`], or at once
//! when the queue is half full or a flush is asked for. A wake-up per request (a futex call and
//! a context switch, plus a write system call for each line when the writer keeps up) cost
//! more than the rest of the flow record did.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use serde::Serialize;

use super::config::{FlowLogConfig, FlowLogTarget};
use super::flow::FlowRecord;
use super::metrics::{DropReason, Sink, TelemetryMetrics};

/// Lines the queue holds before new ones are dropped.
pub const QUEUE_LINES: usize = 8192;

/// How long queued lines may wait for the writer: the flow log's delay at most, under a load
/// too light to fill half the queue in that time.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

enum Msg {
    Line(Vec<u8>),
    /// A flow record, serialized by the writer.
    Flow(Box<FlowRecord<'static>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A running flow log writer. Dropping it lets the writer thread finish the queue and exit.
pub struct FlowLog {
    tx: SyncSender<Msg>,
    metrics: TelemetryMetrics,
    /// Whose drops the metrics count: the flow log, or the alert stream that shares the writer.
    sink: Sink,
    /// Lines queued and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    /// Queue length at which a writer is woken before its interval is up.
    wake_at: usize,
    writer: Thread,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLog").finish_non_exhaustive()
    }
}

impl FlowLog {
    /// Opens the target (so a bad path fails at start, not later) and starts the writer thread.
    pub fn start(cfg: &FlowLogConfig, metrics: TelemetryMetrics) -> io::Result<Self> {
        Self::start_with_capacity(cfg, metrics, QUEUE_LINES, Sink::FlowLog)
    }

    /// A writer of the same kind for another stream of lines (the alert stream), its drops
    /// counted under `sink`.
    pub fn start_for(
        cfg: &FlowLogConfig,
        metrics: TelemetryMetrics,
        sink: Sink,
    ) -> io::Result<Self> {
        Self::start_with_capacity(cfg, metrics, QUEUE_LINES, sink)
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
        let (tx, rx) = sync_channel(capacity);
        let writer_metrics = metrics.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer_queued = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("picket-flow-log".into())
            .spawn(move || write_loop(&rx, out, &writer_metrics, &writer_queued, sink))?;
        Ok(Self {
            tx,
            metrics,
            sink,
            queued,
            wake_at: (capacity / 2).max(1),
            writer: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `value` as one JSON line; never blocks. Returns false when it was dropped.
    pub fn write<T: Serialize + ?Sized>(&self, value: &T) -> bool {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, value).is_err() {
            return false;
        }
        line.push(b'\n');
        self.queue(Msg::Line(line))
    }

    /// Queues `record` for the writer thread, which serializes it as one JSON line; never
    /// blocks. Returns false when it was dropped.
    pub fn write_record(&self, record: FlowRecord<'_>) -> bool {
        self.queue(Msg::Flow(Box::new(record.into_owned())))
    }

    fn queue(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) + 1 == self.wake_at {
                    self.writer.unpark();
                }
                true
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped(self.sink, DropReason::QueueFull, 1);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped(self.sink, DropReason::SinkFailed, 1);
                false
            }
        }
    }

    /// Waits until every line queued before this call is written and flushed, or `deadline`
    /// passes. Returns whether the flush completed.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let tx = self.tx.clone();
        let writer = self.writer.clone();
        // The queue may be full; a blocking send belongs on a blocking thread.
        let sent = tokio::task::spawn_blocking(move || {
            let sent = tx.send(Msg::Flush(done_tx)).is_ok();
            writer.unpark();
            sent
        });
        tokio::time::timeout(deadline, async move {
            sent.await.unwrap_or(false) && done_rx.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        // The writer exits once every sender is gone; it is not joined here so that dropping
        // never blocks an async task.
        if let Ok(mut t) = self.thread.lock() {
            t.take();
        }
    }
}

enum Output {
    Stdout,
    File(RotatingFile),
}

impl Output {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().write_all(line),
            Self::File(f) => f.write_line(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().flush(),
            Self::File(f) => f.out.flush(),
        }
    }
}

fn write_loop(
    rx: &Receiver<Msg>,
    mut out: Output,
    metrics: &TelemetryMetrics,
    queued: &AtomicUsize,
    sink: Sink,
) {
    let mut failing = false;
    let mut note = |r: io::Result<()>, n: u64| match r {
        Ok(()) => failing = false,
        Err(e) => {
            metrics.dropped(sink, DropReason::SinkFailed, n);
            if !failing {
                tracing::warn!(error = %e, "flow log write failed; lines are dropped until it recovers");
            }
            failing = true;
        }
    };
    // The writer's one line buffer, reused for every record.
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut waiting = Vec::new();
        let mut wrote = false;
        let open = loop {
            match rx.try_recv() {
                Ok(Msg::Line(line)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    note(out.write_line(&line), 1);
                    wrote = true;
                }
                Ok(Msg::Flow(record)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    buf.clear();
                    if record.write_json(&mut buf).is_ok() {
                        buf.push(b'\n');
                        note(out.write_line(&buf), 1);
                        wrote = true;
                    }
                }
                Ok(Msg::Flush(done)) => waiting.push(done),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        // The queue is empty: push what is buffered out.
        if wrote || !waiting.is_empty() {
            note(out.flush(), 0);
        }
        for done in waiting {
            let _ = done.send(());
        }
        if !open {
            return;
        }
        std::thread::park_timeout(DRAIN_INTERVAL);
    }
}

/// A file that is renamed to `path.1` (shifting older ones up to `path.N`) before a line would
/// take it past `max_bytes`.
struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    max_files: u32,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(64 * 1024, file),
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
        self.out.flush()?;
        for n in (1..self.max_files).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.written = 0;
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        if self.written > 0 && self.written + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.written += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
