//! In-process apps behind the sidecars: the echo app of [`picket_proxy::echo`], over HTTP or
//! raw TCP, each on its own `127.0.0.1:0` listener.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running echo app; it stops when dropped.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// The HTTP/1.1 + h2c echo app, answering with `"app": name`.
    pub async fn http(name: &str) -> Result<Self> {
        let name = name.to_owned();
        Self::start(|listener, stop| picket_proxy::echo::serve_http(listener, name, stop)).await
    }

    /// A raw TCP echo.
    pub async fn tcp_echo() -> Result<Self> {
        Self::start(picket_proxy::echo::serve_tcp_echo).await
    }

    async fn start<F, Fut>(serve: F) -> Result<Self>
    where
        F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        ));
        Ok(Self {
            addr,
            _stop: stop,
            task,
        })
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}
