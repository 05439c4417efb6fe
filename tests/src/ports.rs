//! Loopback ports the tests choose themselves: for programs that cannot bind port 0 and report
//! back, and for addresses where nothing may listen.
//!
//! A port the kernel chose (bind port 0, read it, release it) stays free only until the next
//! port-0 bind or outgoing connection anywhere on the machine: tests run in parallel and every
//! sidecar binds port 0, so such a port can be taken between the check and its use, and a client
//! then reaches a sidecar instead of the program (or instead of nothing). Ports here come from
//! below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), which no port-0 bind and
//! no outgoing connection uses, and each is handed out once per test run.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many ports below the ephemeral range are used at most.
const SPAN: u16 = 16384;

/// A loopback port below the ephemeral range that nothing listens on now and that no other
/// call in this run returns.
pub fn reserved_port() -> Result<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("cannot read /proc/sys/net/ipv4/ip_local_port_range")?;
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("ip_local_port_range is not two ports: {range:?}"))?;
    let first = low.saturating_sub(SPAN).max(1024);
    let count = low.saturating_sub(first);
    if count < 1024 {
        bail!("the ephemeral port range starts at {low}: no room below it for chosen ports");
    }
    let start = RandomState::new().hash_one(std::process::id()) % u64::from(count);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..u64::from(count) {
        let offset = u16::try_from((start + i) % u64::from(count))?;
        let port = first + offset;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {first}..{low}")
}

/// A loopback address where nothing listens, for "app down" and "peer down" cases.
pub fn closed_port() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, reserved_port()?)))
}
