//! Small networking pieces of the data path: the idle timeout wrapper, socket tuning, the
//! boxed request future, the original destination of a redirected connection, and protocol
//! detection. The listener skeleton (accept, connection limit, header timeout, drain) is
//! `picket_common::server`, shared with every other server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    #[project = IdleTimeoutProj]
    /// Fails reads and writes with `TimedOut` once no byte has moved in either direction for
    /// `idle`. Wrap the side of a connection that sees all of its traffic.
    ///
    /// Its one timer also serves an owner that wants to hear of a shorter silence (a parkable
    /// HTTP/1 connection, [`park`]): with an alarm window set, the timer first runs to the
    /// window after the last byte; if it fires before `idle` has passed, the stream notes an
    /// alarm ([`IdleTimeout::take_alarm`]) and the timer runs on to the idle deadline.
    #[derive(Debug)]
    pub struct IdleTimeout<T> {
        #[pin]
        inner: T,
        idle: Duration,
        // What the timer is set to after a byte moves: `idle`, or the shorter alarm window.
        window: Duration,
        timer: Pin<Box<Sleep>>,
        // When the last byte moved in either direction.
        last: Instant,
        alarm: bool,
    }
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            window: idle,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            last: now,
            alarm: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Also notes an alarm when no byte has moved for `window` (shorter than the idle
    /// timeout; `None` or a longer one: no alarm).
    pub(crate) fn set_alarm(&mut self, window: Option<Duration>) {
        self.window = window.map_or(self.idle, |w| w.min(self.idle));
        let at = self.last + self.window;
        self.timer.as_mut().reset(at);
    }

    /// Whether the alarm window passed without a byte moving since the last call.
    pub(crate) fn take_alarm(&mut self) -> bool {
        std::mem::take(&mut self.alarm)
    }

    /// When the idle timeout closes the stream if no byte moves before.
    pub(crate) fn idle_deadline(&self) -> Instant {
        self.last + self.idle
    }

    /// The same stream boxed as a tunnel end, with the same timer, window and last byte
    /// time: the idle timeout goes on as it was, without a second timer.
    pub(crate) fn boxed(self) -> IdleTimeout<Box<dyn crate::tunnel::TunnelIo>>
    where
        T: crate::tunnel::TunnelIo + 'static,
    {
        IdleTimeout {
            inner: Box::new(self.inner),
            idle: self.idle,
            window: self.window,
            timer: self.timer,
            last: self.last,
            alarm: self.alarm,
        }
    }
}

/// The timer's state while the stream waits (its inner stream returned `Pending`): fails once
/// the connection has been idle too long; an earlier firing is an alarm (noted, and the timer
/// runs on to the idle deadline).
fn check_idle(
    timer: &mut Pin<Box<Sleep>>,
    last: Instant,
    idle: Duration,
    alarm: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Error> {
    if timer.as_mut().poll(cx).is_pending() {
        return Poll::Pending;
    }
    let deadline = last + idle;
    if Instant::now() >= deadline {
        return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
    }
    *alarm = true;
    timer.as_mut().reset(deadline);
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
        Poll::Pending => Poll::Pending,
    }
}

/// Notes that a byte moved: the timer starts its window again.
fn moved(timer: &mut Pin<Box<Sleep>>, window: Duration, last: &mut Instant) {
    let now = Instant::now();
    *last = now;
    timer.as_mut().reset(now + window);
}

/// A write's outcome through [`IdleTimeout`]: bytes written restart the idle timer; a write
/// that waits fails once the connection has been idle too long.
fn written<T>(
    this: IdleTimeoutProj<'_, T>,
    cx: &mut Context<'_>,
    polled: Poll<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    match polled {
        Poll::Ready(Ok(n)) => {
            if n > 0 {
                moved(this.timer, *this.window, this.last);
            }
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => match check_idle(this.timer, *this.last, *this.idle, this.alarm, cx) {
            Poll::Ready(e) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        },
    }
}

impl<T: AsyncRead> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    moved(this.timer, *this.window, this.last);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match check_idle(this.timer, *this.last, *this.idle, this.alarm, cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_write(cx, buf);
        written(this, cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_write_vectored(cx, bufs);
        written(this, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bytes read from and written to a [`Counted`] stream, readable while it is in use (an
/// interim flow record) and after it was cut (a tunnel ended by its idle timeout).
#[derive(Debug, Default)]
pub(crate) struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteCounts {
    /// The bytes read and written so far.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// A stream that counts the bytes read from and written to it into `counts`.
pub(crate) struct Counted<'c, S> {
    inner: S,
    counts: &'c ByteCounts,
}

impl<'c, S> Counted<'c, S> {
    /// Counts what passes through `inner` into `counts`.
    pub(crate) fn new(inner: S, counts: &'c ByteCounts) -> Self {
        Self { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Splices `client` and `server` until both sides have finished or one fails, counting the
/// bytes read from and written to `client`, and calls `interim` with the bytes so far every
/// `every` while it lasts (IPFIX's active timeout; never when `None`). The one splice of
/// a flow recorded while open: opaque TCP connections and WebSocket tunnels.
///
/// Returns the copy's outcome and the bytes from and to the client as counted, which a splice
/// cut short by an error or an idle timeout still reports.
pub(crate) async fn splice<A, B>(
    client: &mut A,
    server: &mut B,
    buffer: usize,
    every: Option<Duration>,
    mut interim: impl FnMut((u64, u64)),
) -> (io::Result<(u64, u64)>, (u64, u64))
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let counts = ByteCounts::default();
    let mut counted = Counted::new(client, &counts);
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut counted, server, buffer, buffer);
    tokio::pin!(copy);
    let Some(every) = every else {
        let r = copy.await;
        return (r, counts.get());
    };
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            r = &mut copy => return (r, counts.get()),
            () = tokio::time::sleep_until(next) => {
                interim(counts.get());
                next += every;
            }
        }
    }
}

/// Disables Nagle's algorithm; the proxy writes whole frames and records.
pub fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Boxes a service's per-request future. A hyper HTTP/1 connection keeps the allocation of its
/// service future for the connection's whole life, so an unboxed request future (several KiB:
/// policy, forwarding, telemetry) would be paid by every idle keep-alive connection; boxed, it
/// costs one pointer there and its size only while a request is in flight.
pub fn small_future<F: Future + Send + 'static>(
    f: F,
) -> std::pin::Pin<Box<dyn Future<Output = F::Output> + Send>> {
    Box::pin(f)
}

/// The destination a redirected connection was originally sent to (`SO_ORIGINAL_DST`), or
/// `None` when the socket has no such record. For a connection that was not redirected this
/// is the listener's own address.
pub fn original_dst(stream: &tokio::net::TcpStream) -> Option<std::net::SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    orig.ok()?.as_socket()
}

/// What a transparent connection carries, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1 request line or the HTTP/2 connection preface.
    Http,
    /// Anything else, or nothing within the detection timeout (server-speaks-first protocols).
    Opaque,
}

const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PRI * HTTP/2.0",
];

/// Classifies a prefix: `None` while it could still become HTTP.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    let mut undecided = false;
    for start in HTTP_STARTS {
        if prefix.len() >= start.len() {
            if prefix.starts_with(start) {
                return Some(Detected::Http);
            }
        } else if start.starts_with(prefix) {
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(Detected::Opaque)
    }
}

/// Peeks at the first bytes of `stream` (without consuming them) to tell HTTP from opaque TCP.
pub async fn detect(stream: &tokio::net::TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Detected::Opaque,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // A partial request line: peek returns at once while bytes are buffered, so wait a
        // little for the rest instead of spinning.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(2)))
            .await
            .is_err()
        {
            return Detected::Opaque;
        }
    }
}

/// Watches the response bodies of one connection for a reader that stopped taking data: a body
/// that handed data to the server and has not been asked for more since (the server asks again
/// only once the data could be written: TCP room, or HTTP/2 window). Distinct from the idle
/// timeout: a response waiting on a slow upstream is being asked, so it never counts.
///
/// Two readings: [`StallWatch::stalled`] fires when any one body has waited longer than the
/// limit (a connection with one reader: the app on the outbound side); [`StallWatch::stuck`]
/// only when, besides, the reader took no response data on the whole connection for as long
/// (a connection that may carry many readers' streams: a peer sidecar on the inbound side,
/// where one stalled stream must not close the others).
#[derive(Debug, Default)]
pub struct StallWatch {
    start: std::sync::OnceLock<Instant>,
    bodies: std::sync::Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicU64>>>,
    /// When the reader last took data handed to it, on any body (ms since `start`).
    progress: std::sync::atomic::AtomicU64,
}

impl StallWatch {
    fn now_ms(&self) -> u64 {
        let start = *self.start.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Wraps a response body so this watch sees it.
    pub fn guard<B>(self: &Arc<Self>, body: B) -> StallGuard<B> {
        let waiting = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut bodies = self
            .bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bodies.retain(|w| w.strong_count() > 0);
        bodies.push(Arc::downgrade(&waiting));
        StallGuard {
            inner: body,
            watch: Arc::clone(self),
            waiting,
        }
    }

    /// Resolves once some body has waited for the reader longer than `stall`.
    pub async fn stalled(&self, stall: Duration) {
        self.watch(stall, false).await;
    }

    /// Resolves once some body has waited for the reader longer than `stall` and the reader
    /// has taken no data on any body for as long: the connection as a whole is stuck.
    pub async fn stuck(&self, stall: Duration) {
        self.watch(stall, true).await;
    }

    async fn watch(&self, stall: Duration, whole_connection: bool) {
        let limit = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        let tick = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let now = self.now_ms();
            let bodies = self
                .bodies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stalled = bodies.iter().filter_map(std::sync::Weak::upgrade).any(|w| {
                let since = w.load(std::sync::atomic::Ordering::Acquire);
                since != 0 && now.saturating_sub(since) > limit
            });
            let idle_reader = !whole_connection
                || now.saturating_sub(self.progress.load(std::sync::atomic::Ordering::Acquire))
                    > limit;
            if stalled && idle_reader {
                return;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body seen by a [`StallWatch`].
    #[derive(Debug)]
    pub struct StallGuard<B> {
        #[pin]
        inner: B,
        watch: Arc<StallWatch>,
        waiting: Arc<std::sync::atomic::AtomicU64>,
    }
}

impl<B: http_body::Body> http_body::Body for StallGuard<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        // Asked again: whatever was handed over before has been taken.
        if this.waiting.swap(0, std::sync::atomic::Ordering::AcqRel) != 0 {
            this.watch
                .progress
                .store(this.watch.now_ms(), std::sync::atomic::Ordering::Release);
        }
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            this.waiting
                .store(this.watch.now_ms(), std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;

pub mod park;

pub use park::Parking;

/// A connection's stream as [`serve_http`] takes it: the connection under its idle timeout. A
/// plain TCP stream can be parked between HTTP/1 requests ([`park`]); a TLS stream cannot:
/// rustls keeps its own buffers and records (alerts, key updates) arrive without a request, so
/// readability of the socket says nothing about a request, and the sidecar-to-sidecar
/// connections it carries are HTTP/2.
pub trait ServeIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The plain TCP stream, when this is one.
    fn into_parkable(self) -> Result<IdleTimeout<tokio::net::TcpStream>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }

    /// The stream as a WebSocket tunnel's client end, keeping its idle timeout (the one timer
    /// of the tunnel, `tunnel::client_end`).
    fn into_tunnel(self) -> IdleTimeout<Box<dyn crate::tunnel::TunnelIo>>;
}

impl ServeIo for IdleTimeout<tokio::net::TcpStream> {
    fn into_parkable(self) -> Result<IdleTimeout<tokio::net::TcpStream>, Self> {
        Ok(self)
    }

    fn into_tunnel(self) -> IdleTimeout<Box<dyn crate::tunnel::TunnelIo>> {
        self.boxed()
    }
}

impl ServeIo for IdleTimeout<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    fn into_tunnel(self) -> IdleTimeout<Box<dyn crate::tunnel::TunnelIo>> {
        self.boxed()
    }
}

/// The HTTP servers of one side's listeners, built once from their settings and shared by
/// every connection: HTTP/1.1 with the listener's limits and how its idle connections are
/// parked, and HTTP/2 tuned for the side.
#[derive(Debug, Clone)]
pub struct HttpServers {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
    parking: Parking,
}

impl HttpServers {
    /// The servers for listeners with `settings`; `tune_h2` adds the side's HTTP/2 settings.
    pub fn new(
        settings: &picket_common::server::ListenerSettings,
        parking: Parking,
        tune_h2: impl FnOnce(&mut hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>),
    ) -> Self {
        use picket_common::server;
        let mut http2 = server::http2_builder(settings);
        tune_h2(&mut http2);
        Self {
            http1: server::http1_builder(settings),
            http2,
            header_timeout: settings.header_timeout,
            parking,
        }
    }
}

/// Serves one plaintext-framed HTTP connection (the app's, or a peer's inside TLS) with `svc`
/// until it ends, or until `shutdown` and then gracefully: HTTP/2 when `h2`, else HTTP/1.1
/// with upgrades, parked between requests on a plain TCP stream. Each version's connection is
/// boxed on its own, so a connection holds the state of the version it speaks and not of the
/// other (an HTTP/2 server connection's future is larger than an HTTP/1 one, and an idle
/// connection keeps it).
pub async fn serve_http<I, S, B>(
    io: I,
    h2: bool,
    svc: S,
    servers: &HttpServers,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), hyper::Error>
where
    I: ServeIo,
    S: picket_common::server::ConnService<B> + Unpin,
    B: picket_common::server::ResponseBody,
{
    use hyper_util::rt::TokioIo;
    use picket_common::server;
    if h2 {
        let conn = servers.http2.serve_connection(TokioIo::new(io), svc);
        return Box::pin(server::drain_on(conn, shutdown, |c| c.graceful_shutdown())).await;
    }
    match io.into_parkable() {
        Ok(tcp) => {
            Box::pin(park::serve(
                tcp,
                svc,
                &servers.http1,
                servers.header_timeout,
                &servers.parking,
                shutdown,
            ))
            .await
        }
        Err(io) => {
            let conn = servers
                .http1
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            Box::pin(server::drain_on(conn, shutdown, |c| c.graceful_shutdown())).await
        }
    }
}
