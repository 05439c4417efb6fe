//! Scale benchmark of `picket controller` (not a test; run by `bench/controller-scale`).
//!
//! A generated cluster in the API-server double (`--services` Services, each with
//! `--endpoints` meshed pods behind one EndpointSlice), the real controller binary, and
//! `--sidecars` simulated sidecars in this process, each the proxy's own controller client
//! with its own mTLS connection, subscribed to `--subscriptions` Services. Then `--changes`
//! EndpointSlice changes, one at a time (an endpoint turns unready, then ready again): the time
//! from the change in the double to the last affected subscriber's update. Prints a JSON
//! report: controller memory and CPU, change-to-last-subscriber latency (p50, p99), and
//! memory per subscription and per sidecar.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use picket_proxy::discover::{Discover, Resolution};
use picket_tests::TestCa;
use picket_tests::controller::{
    TestController, endpoint_slice, namespace, pod, service, sidecar_credentials, subscriber,
};
use picket_tests::kube_api::KubeApiDouble;
use tokio::sync::watch;

struct Args {
    services: usize,
    endpoints: usize,
    sidecars: usize,
    subscriptions: usize,
    changes: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        services: 1000,
        endpoints: 10,
        sidecars: 2000,
        subscriptions: 5,
        changes: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--services" => args.services = value,
            "--endpoints" => args.endpoints = value,
            "--sidecars" => args.sidecars = value,
            "--subscriptions" => args.subscriptions = value,
            "--changes" => args.changes = value,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.services == 0 || args.endpoints < 2 || args.services > 60_000 {
        bail!("--services must be 1..60000 and --endpoints at least 2");
    }
    Ok(args)
}

fn service_ip(s: usize) -> String {
    format!("10.96.{}.{}", s / 250, s % 250 + 1)
}

fn pod_ip(s: usize, e: usize) -> String {
    let n = s * 64 + e;
    format!("10.{}.{}.{}", 1 + n / 65_536, (n / 256) % 256, n % 256)
}

fn slice_of(
    s: usize,
    endpoints: usize,
    unready: Option<usize>,
) -> Result<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let names: Vec<(String, String, bool)> = (0..endpoints)
        .map(|e| (format!("svc-{s}-{e}"), pod_ip(s, e), Some(e) != unready))
        .collect();
    let refs: Vec<(&str, &str, bool)> = names
        .iter()
        .map(|(n, ip, r)| (n.as_str(), ip.as_str(), *r))
        .collect();
    endpoint_slice(&namespace_of(s), &format!("svc-{s}"), 8080, &refs)
}

fn namespace_of(s: usize) -> String {
    format!("bench-{}", s % 10)
}

/// `/proc/<pid>/stat` utime + stime, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn ready_count(r: &Resolution) -> usize {
    match r {
        Resolution::Known(d) => d.endpoints.len(),
        _ => 0,
    }
}

/// Own resident memory, KiB.
fn own_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .context("VmRSS")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    for n in 0..10 {
        api.apply(&namespace(&format!("bench-{n}"), true)?)?;
    }
    for s in 0..args.services {
        let ns = namespace_of(s);
        for e in 0..args.endpoints {
            api.apply(&pod(
                &ns,
                &format!("svc-{s}-{e}"),
                &format!("sa-{s}"),
                &pod_ip(s, e),
                true,
            )?)?;
        }
        api.apply(&service(&ns, &format!("svc-{s}"), &service_ip(s), 80)?)?;
        api.apply(&slice_of(s, args.endpoints, None)?)?;
    }
    let generated = started.elapsed();
    let list_start = Instant::now();
    let controller = TestController::start(&ca, &api).await?;
    let listed = list_start.elapsed();
    let pid = controller.daemon().pid();
    let rss_idle = controller.daemon().proc_status_kib("VmRSS")?;
    // Everything the controller did so far: its certificate, the lists, the first index.
    let cpu_listed = cpu_seconds(pid)?;

    // The sidecars, each with its own connection.
    let creds = sidecar_credentials(&ca, "bench-0", "client").await?;
    let own_before = own_rss_kib()?;
    let mut clients = Vec::with_capacity(args.sidecars);
    let mut subscribers: Vec<Vec<watch::Receiver<Resolution>>> = vec![Vec::new(); args.services];
    let subscribe_start = Instant::now();
    for i in 0..args.sidecars {
        let client = subscriber(controller.listen, &creds)?;
        for k in 0..args.subscriptions {
            let s = (i * args.subscriptions + k) % args.services;
            let addr = format!("{}:80", service_ip(s)).parse()?;
            subscribers[s].push(client.subscribe(addr));
        }
        clients.push(client);
    }
    let total: usize = subscribers.iter().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = subscribers
            .iter()
            .flatten()
            .filter(|rx| ready_count(&rx.borrow()) == args.endpoints)
            .count();
        if done == total {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} subscriptions answered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subscribed = subscribe_start.elapsed();
    let rss_subscribed = controller.daemon().proc_status_kib("VmRSS")?;
    let cpu_subscriptions = cpu_seconds(pid)? - cpu_listed;
    let own_after = own_rss_kib()?;

    // Changes, one at a time.
    let cpu_before = cpu_seconds(pid)?;
    let changes_start = Instant::now();
    let mut latencies = Vec::with_capacity(args.changes);
    for c in 0..args.changes {
        let s = (c * 7919) % args.services;
        let want = args.endpoints - 1;
        let mut receivers = subscribers[s].clone();
        for rx in &mut receivers {
            rx.borrow_and_update();
        }
        let t0 = Instant::now();
        // One endpoint turns unready (measured), then ready again (not measured).
        api.apply(&slice_of(s, args.endpoints, Some(c % args.endpoints))?)?;
        let mut last = Duration::ZERO;
        for rx in &mut receivers {
            let seen = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if ready_count(&rx.borrow_and_update()) == want {
                        return Ok::<_, anyhow::Error>(t0.elapsed());
                    }
                    rx.changed().await?;
                }
            })
            .await
            .context("a subscriber did not see a change within 30 s")??;
            last = last.max(seen);
        }
        latencies.push(last);
        // Put the endpoint back before the next change.
        api.apply(&slice_of(s, args.endpoints, None)?)?;
        for rx in &mut receivers {
            tokio::time::timeout(Duration::from_secs(30), async {
                while ready_count(&rx.borrow_and_update()) != args.endpoints {
                    rx.changed().await?;
                }
                Ok::<_, anyhow::Error>(())
            })
            .await
            .context("restore not seen")??;
        }
    }
    let change_wall = changes_start.elapsed().as_secs_f64();
    let cpu_changes = cpu_seconds(pid)? - cpu_before;
    latencies.sort();

    // The sidecar side's endpoint state: one Destination per subscription.
    let sample = subscribers[0].first().map(|rx| rx.borrow().clone());
    let destination_bytes = match &sample {
        Some(Resolution::Known(d)) => {
            std::mem::size_of::<picket_proxy::discover::Destination>()
                + d.service.as_ref().map_or(0, String::capacity)
                + d.endpoints.capacity() * std::mem::size_of::<picket_proxy::discover::Endpoint>()
                + d.endpoints
                    .iter()
                    .map(|e| e.identity.as_ref().map_or(0, String::capacity))
                    .sum::<usize>()
        }
        _ => 0,
    };
    let report = serde_json::json!({
        "cluster": {
            "services": args.services,
            "endpoints": args.services * args.endpoints,
            "pods": args.services * args.endpoints,
            "sidecars": args.sidecars,
            "subscriptions": total,
        },
        "seconds": {
            "generate": generated.as_secs_f64(),
            "controller_start_to_serving": listed.as_secs_f64(),
            "all_subscriptions_answered": subscribed.as_secs_f64(),
        },
        "controller": {
            "rss_mib_listed_no_subscribers": rss_idle as f64 / 1024.0,
            "rss_mib_with_subscribers": rss_subscribed as f64 / 1024.0,
            "rss_kib_per_sidecar_connection": (rss_subscribed.saturating_sub(rss_idle)) as f64 / args.sidecars as f64,
            "rss_kib_per_subscription": (rss_subscribed.saturating_sub(rss_idle)) as f64 / total as f64,
            "cpu_seconds_start_to_serving": cpu_listed,
            "cpu_seconds_accepting_all_subscriptions": cpu_subscriptions,
            "cpu_seconds_during_changes": cpu_changes,
            "cpu_ms_per_change": 1000.0 * cpu_changes / (2 * latencies.len()).max(1) as f64,
            "cpu_percent_of_one_core_during_changes": 100.0 * cpu_changes / change_wall,
            "rss_mib_peak": controller.daemon().proc_status_kib("VmHWM")? as f64 / 1024.0,
        },
        "change_to_last_subscriber_ms": {
            "changes": latencies.len(),
            "subscribers_per_change": total / args.services,
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
        "sidecar_side": {
            "endpoint_state_bytes_per_subscription": destination_bytes,
            "endpoint_state_bytes_per_sidecar": destination_bytes * args.subscriptions,
            "client_process_rss_kib_per_simulated_sidecar": (own_after.saturating_sub(own_before)) as f64 / args.sidecars as f64,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(clients);
    Ok(())
}
