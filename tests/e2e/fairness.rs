//! Per-stream fairness on the HTTP/2 connection between two sidecars: callers that stop reading
//! large responses must not hold up the other requests that share the connection (each of
//! those completes; their latency with and without the stalled callers is printed as a figure). Each stalled
//! stream may hold at most its own window of unread data, and the connection's window covers
//! every stream's at once (`picket_proxy::forward::CONNECTION_WINDOW`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http::{Method, Version};
use http_body_util::BodyExt;
use picket_tests::clients::{HttpClient, empty, request};
use picket_tests::mesh::frontend_to_orders;
use picket_tests::wait::eventually;
use picket_tests::{App, Sidecar, TestCa, TestProxy};
use tokio::io::AsyncWriteExt;

/// Stalled callers, each asking for this many bytes and reading none.
const STALLED: usize = 100;
/// Enough to fill every window and buffer between the app and a stalled caller, and, over
/// all the stalled callers, three times the connection's window (64 MiB): were a stalled
/// stream's window to grow past its share (adaptive windows), they would block the
/// connection. Not more: the app runs in this test's process and writes what it is asked for
/// into loopback buffers that hold megabytes, so 10 MiB each (1 GiB of pattern, most of this
/// test's CPU time) left it too busy on a loaded machine to take the last requests within
/// the sidecars' 30 s request timeout (those callers got 504s from the frontend).
const STALLED_BYTES: u64 = 2 << 20;
/// Latency samples of the unrelated request, with and without the stalled callers.
const SAMPLES: usize = 200;

/// The 99th percentile of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    let i = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    samples.get(i).copied().unwrap_or_default()
}

/// `SAMPLES` small requests, one after the other on one keep-alive connection.
async fn latencies(entry: std::net::SocketAddr) -> Result<Vec<Duration>> {
    let mut client = HttpClient::connect(entry, Version::HTTP_11).await?;
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let req = request(Method::GET, Version::HTTP_11, "orders", "/small", empty())?;
        let start = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(20), client.send(req))
            .await
            .context("a small request took more than 20 s")??;
        ensure!(resp.status() == 200, "small request: {}", resp.status());
        resp.into_body().collect().await?;
        out.push(start.elapsed());
    }
    Ok(out)
}

/// A runtime of its own for the app, shut down without waiting when dropped (a runtime
/// cannot be dropped from async code).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `task` on this runtime (what it spawns runs there too).
    fn run<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The requests the app has received (its `/stats`, which does not count itself).
async fn app_requests(app: &App) -> Result<u64> {
    let resp = picket_tests::clients::get(app.addr(), Version::HTTP_11, "app", "/stats").await?;
    let stats: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    stats["requests"]
        .as_u64()
        .context("the app's /stats has no request count")
}

/// CPU time (user and system, in clock ticks) of process `pid`.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let tick = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short stat line")?.parse()?) };
    Ok(tick(11)? + tick(12)?)
}

/// Waits until the processes `pids` use (nearly) no CPU for half a second.
async fn quiet(pids: &[u32]) -> Result<()> {
    eventually(Duration::from_secs(60), async || {
        let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum::<Result<u64>>()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum::<Result<u64>>()?;
        ensure!(
            after - before <= 2,
            "the sidecars used {} ticks in 500 ms",
            after - before
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_do_not_slow_other_streams_on_the_shared_connection() -> Result<()> {
    let ca = TestCa::start().await?;
    // The app streams 200 MiB to the stalled callers; on this test's runtime its tasks kept
    // the workers so busy that they seldom looked for I/O, and a stalled caller's request,
    // written just after its connection was accepted, went out only after the frontend's
    // 10 s header timeout had closed the connection (the caller got no answer).
    let app_runtime = OwnRuntime::new()?;
    let app = app_runtime.run(App::http("orders")).await??;
    // The stalled readers must stay stalled for the whole test: no stall timeout meanwhile.
    let patient = "timeouts:\n  stall: 300s\n";
    let orders = TestProxy::spawn(
        &ca,
        Sidecar::new("shop", "orders", app.addr()).yaml(patient),
    )
    .await?;
    let frontend = TestProxy::spawn(
        &ca,
        frontend_to_orders(orders.addrs().inbound)
            .await?
            .yaml(patient),
    )
    .await?;
    let entry = frontend.upstream("orders")?;

    // Warm up (the connection between the sidecars), then the reference: the p99 of the
    // faster of two runs, so a burst of load from elsewhere on the machine does not make the
    // reference lenient.
    latencies(entry).await?;
    let alone = p99(latencies(entry).await?).min(p99(latencies(entry).await?));

    // Callers that ask for 2 MiB each and never read a byte of it. Their receive buffers
    // are small, so what a stalled answer leaves in flight is the sidecars' buffers and
    // windows, not megabytes of kernel buffer.
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut tcp = socket.connect(entry).await?;
        tcp.write_all(
            format!("GET /stream?bytes={STALLED_BYTES} HTTP/1.1\r\nHost: orders\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        stalled.push(tcp);
    }
    // Every stalled request reaches the app (counted there; the app is slower to take them
    // than the sidecars are to pass them on when the machine is busy), and the sidecars stop
    // moving data (every stalled stream is full).
    let before = (3 * SAMPLES + STALLED) as u64;
    let reached = eventually(Duration::from_secs(20), async || {
        let requests = app_requests(&app).await?;
        ensure!(
            requests >= before,
            "{requests} of {before} requests reached the app"
        );
        Ok(requests)
    })
    .await;
    quiet(&[frontend.pid(), orders.pid()]).await?;
    let requests = match reached {
        Ok(n) => n,
        Err(_) => app_requests(&app).await?,
    };
    eprintln!("{requests} of {before} requests reached the app");

    let shared = p99(latencies(entry).await?);
    eprintln!(
        "p99 of a small request: {alone:?} alone, {shared:?} beside {STALLED} stalled readers"
    );
    // Each small request beside the stalled readers completed (`latencies` fails one that
    // takes 20 s: a connection window held by stalled streams would stop them all). How much
    // slower they were is a figure, printed above, not a pass mark: a timing comparison on a
    // shared machine measures the machine's load as much as the sidecars.
    if requests < before {
        // The app has since answered the `SAMPLES` requests of `shared` too.
        let report = missing_report(
            &app,
            before + SAMPLES as u64,
            &mut stalled,
            &frontend,
            &orders,
        )
        .await;
        anyhow::bail!("{requests} of {before} requests reached the app; {report}");
    }
    drop(stalled);
    Ok(())
}

/// What became of requests that had not reached the app when counted: whether they arrived
/// later, what each stalled caller whose answer was not the app's `200` received, and the
/// sidecars' request counts by status.
async fn missing_report(
    app: &App,
    before: u64,
    stalled: &mut [tokio::net::TcpStream],
    frontend: &TestProxy,
    orders: &TestProxy,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut report = String::new();
    report.push_str(&match app_requests(app).await {
        Ok(n) if n >= before => format!("all had reached it later ({n})"),
        Ok(n) => format!("{} still missing later", before - n),
        Err(e) => format!("{e:#}"),
    });
    let mut others = Vec::new();
    for (i, tcp) in stalled.iter_mut().enumerate() {
        let mut head = vec![0u8; 512];
        let seen = match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut head)).await {
            Err(_) => "nothing within 2 s".to_owned(),
            Ok(Err(e)) => format!("error {e}"),
            Ok(Ok(0)) => "the connection closed without an answer".to_owned(),
            Ok(Ok(n)) => String::from_utf8_lossy(head.get(..n).unwrap_or_default()).into_owned(),
        };
        if !seen.starts_with("HTTP/1.1 200 OK") {
            others.push(format!("stalled caller {i}: {seen:?}"));
        }
    }
    report.push_str(&format!(
        "; {} stalled callers got no 200: [{}]",
        others.len(),
        others.join("; ")
    ));
    for (name, proxy) in [("frontend", frontend), ("orders", orders)] {
        let lines = match proxy.admin_get("/metrics").await {
            Ok((_, text)) => text
                .lines()
                .filter(|l| {
                    l.starts_with("picket_requests_total")
                        || l.starts_with("picket_requests_shed")
                        || l.starts_with("picket_tcp_connections_total")
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("{e:#}"),
        };
        report.push_str(&format!("\n{name} metrics:\n{lines}"));
    }
    report
}
