//! Parking idle HTTP/1 connections: an app's keep-alive connection on a plain TCP socket holds
//! no HTTP buffers between request bursts.
//!
//! ```text
//! parked:  the socket alone (peek: readable?), within the head deadline and the idle timeout
//!   -> bytes arrive: a hyper HTTP/1 connection over the socket, after the bytes read before
//!      the park (ParkIo's rewind)
//!   -> no byte for the park delay (the idle timer's alarm) while hyper waits for a request
//!      head with its response flushed: graceful_shutdown (hyper closes an idle connection
//!      without writing), shutdown of the socket skipped, into_parts -> parked again
//! ```
//!
//! hyper stays the only HTTP/1 codec. What tells that hyper is idle is hyper's own
//! header-read timer ([`HeadWatch`]): hyper 1.12 (read in its source; hyper does not promise
//! it, so a hyper upgrade must re-check it, with `tests/e2e/park.rs`) starts it when it waits
//! for a request head (at the start of a connection, or once a response is done and the
//! connection kept alive) and drops it when the head is parsed. While it runs, a
//! `graceful_shutdown` closes the connection at once and writes nothing: after a served
//! request hyper is in its idle keep-alive state (`disable_keep_alive` closes an idle
//! connection). A request in flight, a request body still being
//! read or a response not yet flushed all stop that timer or leave bytes unflushed, so such a
//! connection is not parked. Should hyper not close at once all the same (not seen with 1.12),
//! keep-alive is off by then: that response goes out with `connection: close` and the connection
//! ends instead of parking (`drive`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use picket_common::server::{ConnService, ResponseBody};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::IdleTimeout;

/// How HTTP/1 connections on plain TCP sockets are parked: built once per side
/// (`Metrics::parking`), shared by its connections.
#[derive(Debug, Clone)]
pub struct Parking {
    /// Silence after which an idle connection gives up its HTTP state (`timeouts.park`).
    pub delay: Duration,
    /// Connections parked now (`picket_http1_parked_connections`).
    pub parked: Gauge,
    /// Parks after a request burst (`picket_http1_parks_total`).
    pub parks: Counter,
}

/// One connection counted in the parked gauge for as long as it lives: the count comes off
/// however the park ends, also when the future serving the connection is dropped mid-park
/// (a task aborted or dropped at shutdown).
#[derive(Debug)]
struct Parked<'a>(&'a Gauge);

impl<'a> Parked<'a> {
    fn count(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What hyper's connection, the stream under it and the loop that parks share.
#[derive(Debug)]
struct Shared {
    base: Instant,
    /// hyper waits for a request head: its header-read timer exists.
    waiting_head: AtomicBool,
    /// Header-read timers ended on the current hyper connection: request heads parsed.
    heads: AtomicU32,
    /// When the request head hyper waits (or last waited) for is due, in ns after `base`.
    head_due: AtomicU64,
    /// The stream saw the park delay pass while the connection could be parked.
    park_wanted: AtomicBool,
    /// The close hyper is making is a park: the socket is not shut down.
    parking: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            waiting_head: AtomicBool::new(false),
            heads: AtomicU32::new(0),
            head_due: AtomicU64::new(0),
            park_wanted: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }

    /// For a new hyper connection.
    fn reset(&self) {
        self.waiting_head.store(false, Ordering::Relaxed);
        self.heads.store(0, Ordering::Relaxed);
        self.park_wanted.store(false, Ordering::Relaxed);
        self.parking.store(false, Ordering::Relaxed);
    }

    fn set_head_due(&self, due: Instant) {
        let ns =
            u64::try_from(due.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.head_due.store(ns, Ordering::Relaxed);
    }

    fn head_due(&self) -> Instant {
        self.base + Duration::from_nanos(self.head_due.load(Ordering::Relaxed))
    }
}

/// hyper's timer for a parkable connection: tokio's, and it tells [`Shared`] when hyper waits
/// for a request head. The first head of a connection made after a park is due when the head
/// hyper was waiting for at the park was, so parking never lengthens the header timeout.
#[derive(Debug)]
struct HeadWatch {
    shared: Arc<Shared>,
    first_due: Option<Instant>,
}

impl HeadWatch {
    fn watch(&self, deadline: Instant) -> HeadSleep {
        let deadline = match self.first_due {
            Some(due) if self.shared.heads.load(Ordering::Relaxed) == 0 => deadline.min(due),
            _ => deadline,
        };
        self.shared.set_head_due(deadline);
        self.shared.waiting_head.store(true, Ordering::Relaxed);
        HeadSleep {
            inner: tokio::time::sleep_until(deadline),
            _guard: HeadGuard(Arc::clone(&self.shared)),
        }
    }
}

impl hyper::rt::Timer for HeadWatch {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.watch(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.watch(deadline.into()))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// Ends a head wait in [`Shared`] when hyper drops its header-read timer.
#[derive(Debug)]
struct HeadGuard(Arc<Shared>);

impl Drop for HeadGuard {
    fn drop(&mut self) {
        self.0.waiting_head.store(false, Ordering::Relaxed);
        self.0.heads.fetch_add(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// hyper's header-read timer on a parkable connection.
    #[derive(Debug)]
    struct HeadSleep {
        #[pin]
        inner: tokio::time::Sleep,
        _guard: HeadGuard,
    }
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// The stream a parkable connection's hyper connection reads and writes: the socket with its
/// idle timeout, after the bytes read before the last park. It tells the loop when the park
/// delay passed while the connection could be parked, and does not shut the socket down when
/// hyper closes for a park.
#[derive(Debug)]
pub struct ParkIo {
    io: IdleTimeout<TcpStream>,
    /// Bytes read before the park and not used yet; hyper reads them first.
    rewind: Bytes,
    shared: Arc<Shared>,
    /// Bytes handed to hyper by a write and not flushed since.
    unflushed: bool,
}

impl ParkIo {
    /// The socket with its idle timeout (without the park alarm), and the bytes read before
    /// the park that hyper has not taken: a WebSocket's client end.
    pub(crate) fn into_tunnel_end(self) -> (IdleTimeout<TcpStream>, Bytes) {
        let mut io = self.io;
        io.set_alarm(None);
        (io, self.rewind)
    }

    /// After the socket returned `Pending`: when the park delay has passed, whether hyper is
    /// idle: waiting for the head of a next request after a served one, with everything it
    /// wrote flushed. (A hyper connection is made only once bytes arrived, so before its first
    /// head is parsed it is never idle: it waits for the rest of a head.)
    fn waited(&mut self) {
        if self.io.take_alarm()
            && !self.unflushed
            && self.shared.waiting_head.load(Ordering::Relaxed)
            && self.shared.heads.load(Ordering::Relaxed) > 0
        {
            self.shared.park_wanted.store(true, Ordering::Relaxed);
        }
    }

    fn wrote(&mut self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        if polled.is_pending() {
            self.waited();
        }
        polled
    }
}

impl AsyncRead for ParkIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.rewind.is_empty() && buf.remaining() > 0 {
            let n = this.rewind.len().min(buf.remaining());
            buf.put_slice(this.rewind.get(..n).unwrap_or_default());
            this.rewind.advance(n);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_pending() {
            this.waited();
        }
        polled
    }
}

impl AsyncWrite for ParkIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.unflushed = false;
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Conn<S> = hyper::server::conn::http1::UpgradeableConnection<TokioIo<ParkIo>, S>;

/// Serves HTTP/1.1 (with upgrades) on a plain TCP connection, parked between request bursts:
/// the connection starts parked, a hyper connection is made when bytes arrive and given up
/// after `parking.delay` without a byte while it is idle. Ends when the connection closes, is
/// upgraded (the tunnel owns the socket then), or at `shutdown` (a parked connection is
/// closed, an active one finishes its request and closes).
///
/// `builder` is the listener's HTTP/1 server, built once; each hyper connection made after a
/// park takes a copy of it only to carry the connection's own header-read timer ([`HeadWatch`]).
pub(crate) async fn serve<S, B>(
    mut tcp: IdleTimeout<TcpStream>,
    mut svc: S,
    builder: &http1::Builder,
    header_timeout: Duration,
    parking: &Parking,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    S: ConnService<B> + Unpin,
    B: ResponseBody,
{
    let shared = Arc::new(Shared::new());
    tcp.set_alarm(Some(parking.delay));
    let mut rewind = Bytes::new();
    let mut due = Instant::now() + header_timeout;
    loop {
        let woke = {
            let _parked = Parked::count(&parking.parked);
            tcp.parked(due, shutdown).await
        };
        if !woke {
            return Ok(());
        }
        shared.reset();
        let io = ParkIo {
            io: tcp,
            rewind,
            shared: Arc::clone(&shared),
            unflushed: false,
        };
        let mut http1 = builder.clone();
        http1.timer(HeadWatch {
            shared: Arc::clone(&shared),
            first_due: Some(due),
        });
        let mut conn = Box::new(
            http1
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        if !drive(&mut conn, &shared, shutdown).await? {
            // Closed, or upgraded: the tunnel owns the socket.
            return Ok(());
        }
        let Some(parts) = conn.into_parts() else {
            return Ok(());
        };
        svc = parts.service;
        let io = parts.io.into_inner();
        tcp = io.io;
        rewind = unread(&parts.read_buf, &io.rewind);
        due = shared.head_due();
        parking.parks.inc();
    }
}

/// Runs a hyper connection until it ends; parks it when its stream asks (hyper idle past the
/// park delay); on `shutdown` asks it to finish in-flight requests and close. `Ok(true)` when
/// it ended for a park. Whether the close under way is a park is `shared.parking` alone: the
/// stream reads it too (a park does not shut the socket down).
async fn drive<S, B>(
    conn: &mut Box<Conn<S>>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<bool, hyper::Error>
where
    S: ConnService<B> + Unpin,
    B: ResponseBody,
{
    let mut draining = false;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    std::future::poll_fn(|cx| {
        if !draining && cancelled.as_mut().poll(cx).is_ready() {
            draining = true;
            shared.parking.store(false, Ordering::Relaxed);
            Pin::new(&mut **conn).graceful_shutdown();
        }
        loop {
            if let Poll::Ready(r) = Pin::new(&mut **conn).poll(cx) {
                return Poll::Ready(r.map(|()| shared.parking.load(Ordering::Relaxed)));
            }
            if shared.parking.swap(false, Ordering::Relaxed) {
                // hyper did not close at once, so it was not idle after all: it finishes what
                // it is doing and closes the connection, which is not parked.
                return Poll::Pending;
            }
            if draining || !shared.park_wanted.swap(false, Ordering::Relaxed) {
                return Poll::Pending;
            }
            shared.parking.store(true, Ordering::Relaxed);
            Pin::new(&mut **conn).graceful_shutdown();
        }
    })
    .await
}

/// What hyper had read and not used, then what it had not taken of the bytes before, copied
/// out of hyper's read buffer (which is freed with it).
fn unread(read: &[u8], rest: &[u8]) -> Bytes {
    if read.is_empty() {
        return Bytes::copy_from_slice(rest);
    }
    let mut all = Vec::with_capacity(read.len() + rest.len());
    all.extend_from_slice(read);
    all.extend_from_slice(rest);
    Bytes::from(all)
}

impl IdleTimeout<TcpStream> {
    /// Waits, holding no buffer, for the peer's next bytes: `true` once the socket is readable
    /// with data, `false` when the peer closed, when `due` (the request head's deadline) or
    /// the idle deadline passed, or at `shutdown`. Bytes of a head read before the park are
    /// no reason to wake: that head is incomplete (hyper was waiting for the rest).
    async fn parked(&mut self, due: Instant, shutdown: &CancellationToken) -> bool {
        let at = due.min(self.idle_deadline());
        if shutdown.is_cancelled() || Instant::now() >= at {
            return false;
        }
        self.timer.as_mut().reset(at);
        let mut probe = [0u8; 1];
        tokio::select! {
            r = self.inner.peek(&mut probe) => matches!(r, Ok(n) if n > 0),
            () = self.timer.as_mut() => false,
            () = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests;
