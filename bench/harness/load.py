"""Load generators (wrk, h2load, oha, tcptool), pinned to the load core, and their parsers.

Each runner returns a flat dict of figures. CPU of the proxies that carry the traffic is read
from /proc/PID/stat around the run by `measured`."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import CLK_TCK, LOAD_CORE, BenchError, Proc, run

TOOLS = Path(__file__).resolve().parent


def measured(procs: list[Proc], fn, sample_rss: bool = False) -> dict:
    """Runs `fn()` and adds the proxies' CPU (ms, all threads, user + system) and, if asked,
    their summed RSS at the end of the run."""
    for p in procs:
        p.check_alive()
    before = [p.cpu_ticks() for p in procs]
    t0 = time.monotonic()
    result = fn()
    wall = time.monotonic() - t0
    if procs:
        after = [p.cpu_ticks() for p in procs]
        cpu_s = sum(a - b for a, b in zip(after, before)) / CLK_TCK
        result["proxy_cpu_s"] = cpu_s
        result["proxy_cpu_pct"] = 100 * cpu_s / wall
        requests = result.get("requests")
        if requests:
            result["cpu_us_per_req"] = cpu_s * 1e6 / requests
        if sample_rss:
            result["rss_each_kib"] = [p.rss_kib() for p in procs]
            result["rss_kib"] = sum(result["rss_each_kib"])
    for p in procs:
        p.check_alive()
    return result


def _num(pattern: str, text: str, what: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise BenchError(f"cannot find {what} in output:\n{text[-1500:]}")
    return float(m.group(1))


def wrk(url: str, connections: int, seconds: float, headers: list[str] = (),
        script: Path | None = None) -> dict:
    # wrk takes whole seconds only.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", str(script)]
    out = run(argv + [url], timeout=seconds + 60)
    requests = _num(r"(\d+) requests in", out, "the request count")
    duration = parse_wrk_duration(out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    if requests <= 0:
        raise BenchError(f"wrk completed no request against {url}")
    return {
        "requests": int(requests),
        "seconds": duration,
        "rps": _num(r"Requests/sec:\s+([\d.]+)", out, "Requests/sec"),
        "errors": errors,
    }


def parse_wrk_duration(out: str) -> float:
    m = re.search(r"requests in ([\d.]+)(us|ms|s|m)\b", out)
    if not m:
        raise BenchError(f"cannot find wrk's duration in:\n{out[-1000:]}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[m.group(2)]
    return float(m.group(1)) * scale


def h2load(url: str, clients: int, streams: int, seconds: float) -> dict:
    argv = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", "-D", f"{int(seconds * 1000)}ms",
            url + "/1k"]
    out = run(argv, timeout=seconds + 60)
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not m:
        raise BenchError(f"cannot parse h2load output:\n{out[-1500:]}")
    succeeded = int(m.group(3))
    if succeeded <= 0:
        raise BenchError(f"h2load completed no request against {url}")
    errors = int(m.group(2)) - succeeded + int(m.group(5)) + int(m.group(6))
    return {
        "requests": succeeded,
        "seconds": seconds,
        "rps": _num(r"finished in [\d.]+\w*, ([\d.]+) req/s", out, "req/s"),
        "errors": errors,
    }


# The full benchmark measures fixed-rate latency with oha (built from crates.io by
# scripts/install-bench-deps). The quick smoke run, part of the test command, paces wrk instead
# (a Lua `delay()` per request on each connection), so that every generator it needs comes from
# apt. wrk's pacing waits after each response, so the achieved rate sits slightly below the
# target and is recorded as measured; wrk is not free of coordinated omission, so a quick run's
# W6 keeps throughput, errors and CPU per request and leaves the latency percentiles out.
# (h2load's `--rps` cannot be used: its HTTP/1 parser rejects HAProxy's empty reason phrase.)
PRECISE_FIXED_RATE = True


def fixed_rate(url: str, rate: int, seconds: float, connections: int = 16) -> dict:
    if PRECISE_FIXED_RATE:
        return oha(url, rate, seconds, connections)
    return paced_wrk(url, rate, seconds, connections)


def paced_wrk(url: str, rate: int, seconds: float, connections: int = 16) -> dict:
    delay_ms = 1000.0 * connections / rate
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f"function delay()\n  return {delay_ms:.3f}\nend\n")
        script = Path(f.name)
    try:
        result = wrk(url, connections, seconds, script=script)
    finally:
        script.unlink(missing_ok=True)
    result["generator"] = "wrk paced"
    return result


def oha(url: str, rate: int, seconds: float, connections: int = 16) -> dict:
    """Fixed-rate load free of coordinated omission: each request is timed from when it was
    scheduled, not from when a connection got free."""
    argv = ["oha", "-z", f"{int(seconds * 1000)}ms", "-q", str(rate), "--latency-correction",
            "-c", str(connections), "--no-tui", "--output-format", "json",
            "--worker-threads", "1", url]
    out = run(argv, timeout=seconds + 60)
    data = json.loads(out)
    summary = data["summary"]
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    # Requests still in flight when the duration ends are aborted by oha; not failures.
    errors = total - ok + sum(v for k, v in data.get("errorDistribution", {}).items()
                              if "deadline" not in k)
    if ok <= 0:
        raise BenchError(f"oha completed no request against {url}: {data.get('errorDistribution')}")
    ms = 1000.0
    return {
        "requests": ok,
        "seconds": summary["total"],
        "rps": summary["requestsPerSec"],
        "errors": errors,
        "p50_ms": pct["p50"] * ms,
        "p90_ms": pct["p90"] * ms,
        "p99_ms": pct["p99"] * ms,
        "p99.9_ms": pct["p99.9"] * ms,
        "p99.99_ms": pct["p99.99"] * ms,
        "max_ms": summary["slowest"] * ms,
    }


def tcptool(mode: str, addr: str, seconds: float) -> dict:
    out = run([sys.executable, str(TOOLS / "tcptool.py"), mode, addr, f"{seconds:g}"],
              timeout=seconds + 60)
    return json.loads(out.strip().splitlines()[-1])


def burst(url: str, connections: int, seconds: float) -> dict:
    """Bursts of `connections` new connections opened at once (tcptool burst), back to back
    for `seconds`; figures per burst (p50/p90/max ms) and per connection (CPU)."""
    out = run([sys.executable, str(TOOLS / "tcptool.py"), "burst", url, str(connections),
               f"{seconds:g}"], timeout=seconds + 90)
    return json.loads(out.strip().splitlines()[-1])


def tcp_payload_bytes(port: int, fn, work: Path) -> tuple[object, dict]:
    """Runs `fn()` while tcpdump records TCP on loopback port `port`; returns fn's result and
    the TCP payload bytes sent to the port and from it (headers not counted)."""
    pcap = work / f"capture-{port}.pcap"
    pcap.unlink(missing_ok=True)
    dump = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, "tcpdump", "-i", "lo", "-nn", "-s", "128", "-U",
         "--immediate-mode", "-w",
         str(pcap), f"tcp port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = dump.stderr.readline()
        if "listening on" not in line:
            raise BenchError(f"tcpdump did not start: {line}{dump.stderr.read()[-500:]}")
        result = fn()
        # Let the last segments (FIN, close) reach the capture.
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        try:
            dump.wait(10)
        except subprocess.TimeoutExpired:
            dump.kill()
            dump.wait()
    return result, pcap_payload(pcap.read_bytes(), port)


def pcap_payload(data: bytes, port: int) -> dict:
    """TCP payload bytes to and from `port` in a pcap file of IPv4 over Ethernet framing, as
    tcpdump writes for the loopback device."""
    if len(data) < 24:
        raise BenchError("the capture is empty")
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise BenchError(f"not a little-endian pcap file (magic {magic:#x})")
    linktype = struct.unpack("<I", data[20:24])[0]
    if linktype != 1:
        raise BenchError(f"unexpected pcap link type {linktype}")
    to_port = from_port = packets = 0
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        if len(tcp) < 14:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = total - ihl - (tcp[12] >> 4) * 4
        packets += 1
        if dport == port:
            to_port += payload
        elif sport == port:
            from_port += payload
    return {"to_port": to_port, "from_port": from_port, "packets": packets}


class IdleClients:
    """Keep-alive client connections held open by a tcptool process on the load core."""

    def __init__(self, url: str, counts: list[int]):
        self.proc = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, sys.executable, str(TOOLS / "tcptool.py"), "idle",
             url, *map(str, counts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def next_step(self) -> dict:
        """Waits until the next count of connections is open; returns what tcptool saw."""
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"idle-connection client failed: {self.proc.stderr.read()[-800:]}")
        return json.loads(line)

    def advance(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_upload_script(path: Path) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.body = string.rep("u", 1048576)\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return path
