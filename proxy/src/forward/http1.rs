//! Keep-alive HTTP/1.1 connections to one destination: the inbound side's pool of connections
//! to its application.
//!
//! Why not hyper-util's pool: it keys connections by scheme and authority, hashed with SipHash
//! (the authority a byte at a time) when a connection is taken and again when it comes back,
//! and spawns a task per request to put back a connection whose response body is still
//! streaming. Replacing it took about 7,000 instructions off each W1 request on the inbound
//! sidecar (`bench/report.md`, "The application's connections"). A sidecar knows at accept which
//! application address a connection's requests go to, so the pool is found once per
//! connection; within it the idle connections are a stack (the most recently used first), and
//! a connection goes back from its response body, when the body ends. The HTTP/1 codec is
//! still hyper's.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::{Body, Connect, ForwardError};

/// The pooled connections to one destination. Requests are sent with [`H1Pool::send`].
pub struct H1Pool<C> {
    connector: C,
    /// How long a connection may wait unused before it is closed.
    idle_timeout: Duration,
    idle: Mutex<Idle>,
}

impl<C> std::fmt::Debug for H1Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Idle {
    /// Connections not carrying a request, each with when it came back; the most recent last.
    conns: Vec<(SendRequest<Body>, Instant)>,
    /// Whether a task is waiting to close the connections that expire.
    sweeping: bool,
}

impl Idle {
    /// Takes the most recently returned connection that can carry a request now, closing the
    /// closed and the expired ones it meets. One that is not ready yet (its connection has not
    /// yet taken in the end of the last response) stays for a later request.
    fn take(&mut self, now: Instant, idle_timeout: Duration) -> Option<SendRequest<Body>> {
        let mut i = self.conns.len();
        while i > 0 {
            i -= 1;
            let (sender, since) = &self.conns[i];
            if sender.is_closed() || now.saturating_duration_since(*since) >= idle_timeout {
                drop(self.conns.remove(i));
            } else if sender.is_ready() {
                return Some(self.conns.remove(i).0);
            }
        }
        None
    }

    /// Closes the connections unused for `idle_timeout` and the closed ones.
    fn expire(&mut self, now: Instant, idle_timeout: Duration) {
        self.conns.retain(|(sender, since)| {
            !sender.is_closed() && now.saturating_duration_since(*since) < idle_timeout
        });
    }
}

impl<C: Connect> H1Pool<C> {
    /// A pool that opens connections with `connector` and closes those unused for
    /// `idle_timeout`.
    pub fn new(connector: C, idle_timeout: Duration) -> Self {
        Self {
            connector,
            idle_timeout,
            idle: Mutex::new(Idle::default()),
        }
    }

    /// Connections waiting for a request (ready or not).
    pub fn idle_count(&self) -> usize {
        self.lock().conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `req` (its URI in origin form, its `Host` set) on an idle connection, or a new
    /// one, and returns the response; its connection goes back to the pool when the body has
    /// been read to its end. A request a reused connection did not take (the destination
    /// closed it while idle) was never sent, so it goes again, as hyper-util's pool does; a
    /// new connection that does not take it is an error.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Returning<C>>, ForwardError> {
        loop {
            let idle = self.lock().take(Instant::now(), self.idle_timeout);
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(s) => s,
                // A handshake's future is large and rare: boxed, so that it does not size
                // every request's future.
                None => Box::pin(self.connect()).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ForwardError::Broken(e.into_error().to_string())),
                },
            }
        }
    }

    /// A new connection, its I/O driven by a task of its own.
    async fn connect(&self) -> Result<SendRequest<Body>, ForwardError> {
        let io = self.connector.connect().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ForwardError::Broken(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http/1.1 client connection ended");
            }
        });
        Ok(sender)
    }

    /// `resp` with a body that gives `sender` back when it ends: at once for a response
    /// without a body.
    fn returning(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Returning<C>> {
        resp.map(|body| {
            let mut body = Returning {
                body,
                sender: Some(sender),
                pool: Arc::downgrade(self),
            };
            if body.body.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    /// Puts `sender` back, and makes sure a task will close it once it expires.
    fn put(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        idle.conns.push((sender, Instant::now()));
        if !idle.sweeping && tokio::runtime::Handle::try_current().is_ok() {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Closes a pool's expired connections every `idle_timeout`, for as long as it keeps any.
async fn sweep<C: Connect>(pool: Weak<H1Pool<C>>) {
    loop {
        let Some(timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
            return;
        };
        tokio::time::sleep(timeout).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.lock();
        idle.expire(Instant::now(), pool.idle_timeout);
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// A response body that gives its connection back to the pool when it has been read to its
/// end. A body dropped before its end takes the connection with it: hyper closes a connection
/// whose response was not read whole.
pub struct Returning<C: Connect> {
    body: Incoming,
    sender: Option<SendRequest<Body>>,
    pool: Weak<H1Pool<C>>,
}

impl<C: Connect> Returning<C> {
    fn give_back(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.put(sender);
        }
    }
}

impl<C: Connect> std::fmt::Debug for Returning<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Returning")
            .field("pooled", &self.sender.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: Connect> Drop for Returning<C> {
    /// A reader may stop at the last frame, once the body says it has ended, without asking
    /// for the end.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl<C: Connect> hyper::body::Body for Returning<C> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            // A body that failed leaves a connection that cannot carry another request.
            Poll::Ready(Some(Err(_))) => drop(self.sender.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
