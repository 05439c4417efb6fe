"""Per-request profiles of the Picket pair: instructions (callgrind), allocations (callgrind's
call counts into the allocator), syscalls (strace -c), context switches (/proc) and a flame
graph (perf record, inferno) for each sidecar, on W1, W2, W4 and W6.

Run through `bench/profile` (see bench/README.md, "Profiles"). The topology is the harness's
Picket system, started by the same code (systems.Picket, certs.Pki, systems.Backend): client ->
frontend sidecar (upstream plaintext listener) -> HTTP/2 mTLS -> orders sidecar -> backend,
with the same configuration (100 policies, default telemetry) and the same pinning.

Every per-request figure is a difference: the same counter after N requests and after 2N
requests (each run on fresh client connections), divided by N. What does not grow with the
request count (start-up, the client connections' accept and close, the warm-up) cancels.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .__main__ import MAIN_POLICIES
from .certs import Pki
from .procs import LOAD_CORE, BenchError, Proc, http_status, read_json_file, run, stop_all, wait_for
from .systems import Backend, Collector, Picket, sidecar_binary, sidecar_env

TOOLS = ("callgrind", "ctx", "strace", "perf")
CONNECTIONS = 16


@dataclass
class Workload:
    id: str
    title: str
    target: str  # the Picket system's target (systems.Picket.targets)
    inbound: str  # the orders sidecar that carries it
    h1: bool
    streams: int
    rate: float | None  # requests per second in total, None: as fast as possible
    path: str = "/1k"
    connections: int = CONNECTIONS
    upload: bool = False  # POST a 1 MiB body (W4) rather than GET
    share: float = 1.0  # runs this fraction of N requests (W4's are 2,000 times larger)


def workloads(rate: float, callgrind_rate: float) -> dict[str, tuple[Workload, Workload]]:
    """Each workload as measured natively and as measured under callgrind (which runs the
    sidecars about 50 times slower: W6 then uses a rate the slowed sidecars still carry with
    idle time between requests, the same regime as 2,000 RPS natively)."""
    out = {}
    for wid, title, target, inbound, h1, streams, r, cr, extra in (
        ("w1", "W1 HTTP/1.1 keep-alive, 1 KB, 16 connections, saturation", "http1", "orders",
         True, 1, None, None, {}),
        ("w2", "W2 HTTP/2, 1 KB, 16 connections x 8 streams, saturation", "h2c", "orders-h2c",
         False, 8, None, None, {}),
        ("w4", "W4 HTTP/1.1 keep-alive, 1 MiB request and 1 MiB response, 8 connections, "
         "saturation", "bulk", "orders", True, 1, None, None,
         {"path": "/1m", "connections": 8, "upload": True, "share": 0.05}),
        ("w6", "W6 fixed rate, HTTP/1.1, 1 KB, 16 connections", "http1", "orders",
         True, 1, rate, callgrind_rate, {}),
    ):
        out[wid] = (Workload(wid, title, target, inbound, h1, streams, r, **extra),
                    Workload(wid, title, target, inbound, h1, streams, cr, **extra))
    return out


UPLOAD = Path(tempfile.gettempdir()) / "picket-profile-1mib.body"


def h2load(url: str, w: Workload, n: int, timeout: float) -> dict:
    """Exactly `n` requests of workload `w` on its new client connections (h2load, pinned to
    the load core); fails unless all of them succeed."""
    argv = ["h2load", "-t1", f"-c{w.connections}", f"-m{w.streams}", "-n", str(n)]
    if w.h1:
        argv.append("--h1")
    if w.rate:
        argv.append(f"--rps={w.rate / w.connections:g}")
    if w.upload:
        if not UPLOAD.exists() or UPLOAD.stat().st_size != 1024 * 1024:
            UPLOAD.write_bytes(b"u" * (1024 * 1024))
        argv += ["-d", str(UPLOAD)]
    t0 = time.monotonic()
    out = run(argv + [url + w.path], timeout=timeout)
    seconds = time.monotonic() - t0
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or int(m.group(3)) != n:
        raise BenchError(f"h2load did not complete {n} requests against {url}:\n{out[-1500:]}")
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not codes or int(codes.group(1)) != n:
        raise BenchError(f"h2load got answers other than 2xx from {url}:\n{out[-1500:]}")
    return {"requests": n, "seconds": seconds, "rps": n / seconds}


class ProfiledPicket(Picket):
    """The harness's Picket system whose sidecars may start under a wrapper (valgrind)."""

    def __init__(self, *args, wrap: dict[str, list[str]] | None = None,
                 start_timeout: float = 30, **kw):
        super().__init__(*args, **kw)
        self.wrap = wrap or {}
        self.start_timeout = start_timeout

    def spawn(self, name: str, config: str) -> tuple[Proc, Path]:
        conf = self.work / f"{name}.yaml"
        conf.write_text(config)
        ready = self.work / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        prefix = [a.replace("%NAME%", name) for a in self.wrap.get(name, [])]
        proc = Proc(name, [*prefix, str(self.sidecar_bin), "proxy", "--config", str(conf),
                           "--ready-file", str(ready)], self.log_dir, self.core,
                    env=sidecar_env())
        return proc, ready

    core = "0"  # procs.SIDECAR_CORE

    def start_sidecar(self, name: str, config: str) -> None:
        proc, ready = self.spawn(name, config)
        t = self.start_timeout
        info = wait_for(f"{name}'s ready file", lambda: read_json_file(ready), timeout=t,
                        proc=proc)
        wait_for(f"{name} /ready", lambda: http_status(f"http://{info['admin']}/ready") == 200,
                 timeout=t, proc=proc)
        self.sidecars[name] = proc
        self.ready[name] = info


def thread_ctx(pid: int) -> tuple[int, int]:
    """Voluntary and nonvoluntary context switches summed over the process's threads (the
    process's own status file counts its main thread only)."""
    vol = nonvol = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        vol += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        nonvol += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
    return vol, nonvol


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per syscall from `strace -c`'s table."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) in (5, 6) and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return calls


# ------------------------------------------------------------------------------------------
# callgrind output


ALLOC_ENTRIES = {"mi_malloc", "mi_malloc_aligned", "mi_zalloc", "mi_zalloc_aligned", "mi_calloc",
                 "mi_realloc", "mi_realloc_aligned", "mi_rezalloc_aligned", "mi_malloc_small",
                 "mi_zalloc_small", "mi_new", "malloc", "calloc", "realloc",
                 "__rust_alloc", "__rust_alloc_zeroed", "__rust_realloc"}


def _is_allocator(name: str) -> bool:
    base = name.split("'")[0]
    return (base in ALLOC_ENTRIES or base.startswith(("mi_", "_mi_", "__rust_", "__rdl_"))
            or "GlobalAlloc" in base or base.startswith("alloc::alloc::"))


def _is_free(name: str) -> bool:
    base = name.split("'")[0]
    return "free" in base or "dealloc" in base


def expand(table: dict[str, str], value: str) -> str:
    """A name in callgrind's compressed form (the default): `(id) name` names `id` in `table`,
    `(id)` alone refers to it."""
    m = re.match(r"\((\d+)\)(?: (.*))?$", value)
    if not m:
        return value
    if m.group(2) is not None:
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1), value)


def callgrind_control(p: Proc, *args: str) -> str:
    """Runs `callgrind_control ARGS` on the sidecar `p` runs under callgrind."""
    out = subprocess.run(["callgrind_control", *args, str(p.pid)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} {p.name}: "
                         f"{out.stdout[-400:]}{out.stderr[-400:]}")
    return out.stdout


def callgrind_dump(p: Proc, cg_dir: Path, path: Path) -> Path:
    """Dumps `p`'s counters (which zeroes them) and moves the finished dump to `path`; `p`
    writes its dumps as `cg_dir/<name>.out.N`."""
    before = set(cg_dir.glob(f"{p.name}.out*"))
    callgrind_control(p, "--dump")
    new = wait_for(f"{p.name}'s callgrind dump",
                   lambda: sorted(set(cg_dir.glob(f"{p.name}.out*")) - before), timeout=120)
    # The dump is complete once its totals line is written.
    wait_for(f"{p.name}'s callgrind dump to finish",
             lambda: b"\ntotals:" in new[0].read_bytes()[-4096:]
             or b"\nsummary:" in new[0].read_bytes()[-4096:], timeout=120)
    new[0].rename(path)
    return path


def parse_callgrind(path: Path) -> dict:
    """Self and inclusive instruction counts per function, and calls into the allocator from
    outside it, from one callgrind output file (`--dump-instr=no`)."""
    names: dict[str, str] = {}
    self_cost: dict[str, int] = defaultdict(int)
    call_cost: dict[str, int] = defaultdict(int)  # cost of calls made from fn to others
    calls_to: dict[str, int] = defaultdict(int)
    total = 0
    fn = ""
    cfn = ""
    pending_call = 0

    with open(path, errors="replace") as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                cost = line.split()
                value = int(cost[1]) if len(cost) > 1 else 0
                if pending_call:
                    call_cost[fn] += value
                    pending_call = 0
                else:
                    self_cost[fn] += value
                continue
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                continue
            key, _, value = line.rstrip("\n").partition("=")
            if key == "fn":
                fn = expand(names, value)
            elif key == "cfn":
                cfn = expand(names, value)
            elif key == "calls":
                # The next cost line is the call's inclusive cost, not `fn`'s own.
                pending_call = 1
                if not _is_allocator(fn):
                    calls_to[cfn] += int(value.split()[0])
    inclusive = {k: self_cost.get(k, 0) + call_cost.get(k, 0)
                 for k in set(self_cost) | set(call_cost)}
    allocs = sum(n for k, n in calls_to.items() if _is_allocator(k) and not _is_free(k))
    frees = sum(n for k, n in calls_to.items() if _is_allocator(k) and _is_free(k))
    return {"total": total or sum(self_cost.values()), "self": dict(self_cost),
            "inclusive": inclusive, "allocs": allocs, "frees": frees,
            "alloc_calls": {k: n for k, n in calls_to.items() if _is_allocator(k)}}


def short(name: str, width: int = 110) -> str:
    """A function name without its hash suffix, shortened from the middle for a table."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", name.split("'")[0])
    name = name.replace("|", "\\|")
    if len(name) > width:
        name = name[: width // 2 - 2] + " … " + name[-(width // 2 - 2):]
    return name


# ------------------------------------------------------------------------------------------
# perf stacks


def collapse_perf_script(text: str, period: int) -> dict[str, int]:
    """Folded stacks (root first, `;`-separated) weighed by `period` (ns per sample, as
    inferno-collapse-perf weighs cpu-clock samples) from `perf script` output; the fallback
    when inferno is not installed."""
    folded: dict[str, int] = defaultdict(int)
    frames: list[str] = []
    comm = ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            if comm:
                stack = [comm] + [f for f in reversed(frames)]
                folded[";".join(stack)] += period
            frames, comm = [], ""
            continue
        if not line[0].isspace():
            comm = line.split()[0]
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].rsplit(" (", 1)[0])
            frames.append(sym.replace(";", ":"))
    return folded


def leaf_shares(folded: dict[str, int]) -> list[tuple[str, int]]:
    leaves: dict[str, int] = defaultdict(int)
    for stack, n in folded.items():
        leaves[stack.rsplit(";", 1)[-1]] += n
    return sorted(leaves.items(), key=lambda kv: -kv[1])


# ------------------------------------------------------------------------------------------


class Profiler:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="picket-profile-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.picket = Path(args.picket).resolve()
        self.n = args.requests
        self.tools = [t for t in args.tools.split(",") if t]
        unknown = set(self.tools) - set(TOOLS)
        if unknown:
            raise BenchError(f"--tools names unknown tools {sorted(unknown)}; known: "
                             f"{', '.join(TOOLS)}")
        self.wl = workloads(args.rate, args.callgrind_rate)
        self.ids = [w for w in args.workloads.split(",") if w]
        if set(self.ids) - set(self.wl):
            raise BenchError(f"--workloads names unknown workloads "
                             f"{sorted(set(self.ids) - set(self.wl))}; known: "
                             f"{', '.join(self.wl)}")
        self.results: dict = {
            "label": args.label,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            # The binary the sidecars run (`picket-sidecar` beside `picket` when built).
            "binary": str(sidecar_binary(self.picket)),
            "binary_sha256": hashlib.sha256(sidecar_binary(self.picket).read_bytes()).hexdigest(),
            "requests": self.n,
            "tools": self.tools,
            "workloads": {},
            "notes": [],
        }
        # A later run on the same binary (other tools or workloads) adds to the earlier figures.
        previous = read_json_file(self.out / "results.json")
        if previous and previous.get("binary_sha256") == self.results["binary_sha256"]:
            self.results["workloads"] = previous.get("workloads", {})
            self.results["tools"] = sorted(set(previous.get("tools", [])) | set(self.tools))

    def step(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def system(self, wrap: dict[str, list[str]] | None, timeout: float) -> ProfiledPicket:
        has_policy = subprocess.run([str(self.picket), "policy", "--help"],
                                    capture_output=True).returncode == 0
        s = ProfiledPicket(self.picket, self.pki, self.backend, self.work, self.logs,
                           policies=MAIN_POLICIES if has_policy else None,
                           overlay=self.overlay, wrap=wrap, start_timeout=timeout)
        s.start()
        return s

    def isolate(self, s: ProfiledPicket, w: Workload) -> list[Proc]:
        """Stops (SIGSTOP) every sidecar but the two that carry `w`; returns those two."""
        active = [s.sidecars[f"{s.name}-frontend"], s.sidecars[f"{s.name}-{w.inbound}"]]
        for p in s.processes():
            if p in active:
                p.thaw()
            else:
                p.freeze()
        return active

    def main(self) -> int:
        try:
            self.step(f"work directory {self.work}")
            self.pki = Pki(self.picket, self.work, self.logs)
            self.pki.init()
            self.backend = Backend(self.work, self.logs, Path(__file__).parent)
            self.backend.start()
            self.overlay = Path(self.args.overlay).read_text() if self.args.overlay else ""
            if "${OTLP_ENDPOINT}" in self.overlay:
                # As in bench/run's W8: a node-local collector that discards what it receives.
                self.overlay = self.overlay.replace("${OTLP_ENDPOINT}",
                                                    Collector(self.logs).start())
            native = [t for t in self.tools if t != "callgrind"]
            if native:
                self.native(native)
            if "callgrind" in self.tools:
                self.callgrind()
        finally:
            stop_all()
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        (self.out / "summary.md").write_text(self.summary())
        self.step(f"wrote {self.out / 'summary.md'}")
        shutil.rmtree(self.work, ignore_errors=True)
        return 0

    def fig(self, wid: str, sidecar: str) -> dict:
        w = self.results["workloads"].setdefault(wid, {"title": self.wl[wid][0].title,
                                                       "sidecars": {}})
        return w["sidecars"].setdefault(sidecar, {})

    def count(self, w: Workload) -> int:
        """N for workload `w`: its share of --requests, at least two requests per connection."""
        return max(round(self.n * w.share), 2 * w.connections)

    def timeout(self, n: int, w: Workload, slow: float = 1) -> float:
        per = 1 / w.rate if w.rate else 0.002 / w.share
        return 60 + n * per * slow * 3

    # -- native: context switches, syscalls, perf ----------------------------------------------

    def native(self, tools: list[str]) -> None:
        self.step("Picket pair, native")
        s = self.system(None, 30)
        try:
            for wid in self.ids:
                w = self.wl[wid][0]
                active = self.isolate(s, w)
                url = s.targets[w.target]
                self.step(f"{wid}: warm-up")
                n = self.count(w)
                h2load(url, w, max(n // 2, 2 * w.connections), self.timeout(n, w))
                if "ctx" in tools:
                    self.ctx(w, url, active)
                if "strace" in tools:
                    self.strace(w, url, active)
                if "perf" in tools:
                    self.perf(w, url, active)
        finally:
            s.stop()

    def role(self, p: Proc) -> str:
        return "frontend" if p.name.endswith("-frontend") else "inbound"

    def ctx(self, w: Workload, url: str, active: list[Proc]) -> None:
        N = self.count(w)
        self.step(f"{w.id}: context switches over {N} and {2 * N} requests")
        counts = {}
        for n in (N, 2 * N):
            before = [thread_ctx(p.pid) for p in active]
            r = h2load(url, w, n, self.timeout(n, w))
            after = [thread_ctx(p.pid) for p in active]
            counts[n] = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]
            self.fig(w.id, "load")[f"native_rps_{n}"] = r["rps"]
        for i, p in enumerate(active):
            f = self.fig(w.id, self.role(p))
            f["ctx_voluntary_per_req"] = (counts[2 * N][i][0] - counts[N][i][0]) / N
            f["ctx_nonvoluntary_per_req"] = (counts[2 * N][i][1] - counts[N][i][1]) / N

    def strace(self, w: Workload, url: str, active: list[Proc]) -> None:
        N = self.count(w)
        self.step(f"{w.id}: strace -c over {N} and {2 * N} requests")
        calls: dict[int, list[dict[str, int]]] = {}
        for n in (N, 2 * N):
            tracers = []
            for p in active:
                path = self.out / f"strace-{w.id}-{self.role(p)}-{n}.txt"
                tr = subprocess.Popen(["taskset", "-c", LOAD_CORE, "strace", "-c", "-f", "-p",
                                       str(p.pid), "-o", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
                # strace reports each thread it attaches to; wait for the first.
                line = tr.stderr.readline()
                if "attached" not in line:
                    tr.kill()
                    raise BenchError(f"strace did not attach to {p.name}: {line}")
                tracers.append((tr, path))
            try:
                h2load(url, w, n, self.timeout(n, w, slow=5))
            finally:
                for tr, _ in tracers:
                    tr.send_signal(signal.SIGINT)
                for tr, _ in tracers:
                    try:
                        tr.wait(30)
                    except subprocess.TimeoutExpired:
                        tr.kill()
                        tr.wait()
            calls[n] = [parse_strace_summary(path.read_text()) for _, path in tracers]
        for i, p in enumerate(active):
            one, two = calls[N][i], calls[2 * N][i]
            per = {k: (two.get(k, 0) - one.get(k, 0)) / N for k in set(one) | set(two)}
            per = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0.005}
            f = self.fig(w.id, self.role(p))
            f["syscalls_per_req"] = sum(per.values())
            f["syscalls_by_name_per_req"] = per

    def perf(self, w: Workload, url: str, active: list[Proc]) -> None:
        # Saturation: N x perf_factor requests; a fixed rate: ten seconds' worth.
        n = int(w.rate * 10) if w.rate else self.count(w) * self.args.perf_factor
        self.step(f"{w.id}: perf record over {n} requests")
        recs = []
        for p in active:
            data = self.out / f"perf-{w.id}-{self.role(p)}.data"
            data.unlink(missing_ok=True)
            rec = subprocess.Popen(
                ["taskset", "-c", LOAD_CORE, "perf", "record", "-e", "cpu-clock", "-F",
                 str(self.args.perf_freq), "-g", "--call-graph", "dwarf,16384", "-p", str(p.pid),
                 "-o", str(data)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            recs.append((rec, data, p))
        for rec, data, p in recs:
            # perf writes the file's header once it has attached to every thread.
            wait_for(f"perf record on {p.name}",
                     lambda d=data, r=rec: (d.exists() and d.stat().st_size > 0)
                     or r.poll() is not None)
            if rec.poll() is not None:
                raise BenchError(f"perf record failed on {p.name}: {rec.stderr.read()[-800:]}")
        try:
            h2load(url, w, n, self.timeout(n, w, slow=2))
        finally:
            for rec, _, _ in recs:
                rec.send_signal(signal.SIGINT)
            for rec, _, _ in recs:
                try:
                    rec.wait(60)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    rec.wait()
        inferno = shutil.which("inferno-collapse-perf") and shutil.which("inferno-flamegraph")
        for rec, data, p in recs:
            role = self.role(p)
            script = subprocess.run(["perf", "script", "-i", str(data), "--no-inline"],
                                    capture_output=True, text=True, timeout=1800)
            if script.returncode != 0:
                raise BenchError(f"perf script failed: {script.stderr[-800:]}")
            folded_path = self.out / f"perf-{w.id}-{role}.folded"
            if inferno:
                col = subprocess.run(["inferno-collapse-perf", "--all"], input=script.stdout,
                                     capture_output=True, text=True, check=True)
                folded_path.write_text(col.stdout)
            else:
                folded = collapse_perf_script(script.stdout,
                                              round(1e9 / self.args.perf_freq))
                folded_path.write_text("".join(f"{k} {v}\n" for k, v in folded.items()))
            folded = {}
            for line in folded_path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if stack:
                    folded[stack] = folded.get(stack, 0) + int(count)
            # inferno-collapse-perf weighs each sample by its period: cpu-clock nanoseconds.
            ns = sum(folded.values())
            svg = self.out / f"flame-{w.id}-{role}.svg"
            if inferno:
                with open(svg, "w") as f:
                    subprocess.run(["inferno-flamegraph", "--title",
                                    f"{self.args.label} {w.id} {role} sidecar, cpu-clock "
                                    f"{self.args.perf_freq} Hz, {n} requests", str(folded_path)],
                                   stdout=f, check=True)
            else:
                self.results["notes"].append("inferno is not installed: folded stacks only, "
                                             "no SVG (scripts/install-bench-deps --profile)")
            fig = self.fig(w.id, role)
            fig["perf_samples"] = round(ns * self.args.perf_freq / 1e9)
            fig["perf_us_per_req"] = ns / 1000 / n
            fig["perf_top_self"] = [(k, v / ns) for k, v in leaf_shares(folded)[:15]]
            if not self.args.keep_perf_data:
                data.unlink(missing_ok=True)

    # -- callgrind: instructions and allocations ----------------------------------------------

    def callgrind(self) -> None:
        self.step("Picket pair under callgrind")
        cg_dir = self.out / "callgrind"
        cg_dir.mkdir(exist_ok=True)
        inbound = {self.wl[wid][1].inbound for wid in self.ids}
        wrap = {}
        for name in ["frontend", *inbound]:
            # Instruction counts do not depend on scheduling: the slowed sidecars keep the
            # ordinary policy rather than a real-time one inherited from bench/profile.
            wrap[f"picket-{name}"] = [
                "chrt", "-o", "0", "valgrind", "--tool=callgrind", "--dump-instr=no", "--dump-line=no",
                "--vgdb=yes", f"--callgrind-out-file={cg_dir}/%NAME%.out"]
        s = self.system(wrap, 600)
        try:
            for wid in self.ids:
                w = self.wl[wid][1]
                active = self.isolate(s, w)
                url = s.targets[w.target]
                self.step(f"{wid}: warm-up under callgrind")
                warmup = max(round(self.args.callgrind_warmup * w.share), 2 * w.connections)
                h2load(url, w, warmup, self.timeout(warmup, w, slow=60))
                N = self.count(w)
                dumps: dict[int, list[Path]] = {}
                for n in (N, 2 * N):
                    for p in active:
                        callgrind_control(p, "--zero")
                    r = h2load(url, w, n, self.timeout(n, w, slow=60))
                    self.fig(wid, "load")[f"callgrind_rps_{n}"] = r["rps"]
                    dumps[n] = [self.dump(p, cg_dir, f"{wid}-{n}") for p in active]
                    self.step(f"{wid}: {n} requests under callgrind at {r['rps']:.0f} req/s")
                for i, p in enumerate(active):
                    self.callgrind_figures(wid, self.role(p), N, dumps[N][i], dumps[2 * N][i])
        finally:
            s.stop()

    def dump(self, p: Proc, cg_dir: Path, tag: str) -> Path:
        role = "frontend" if p.name.endswith("-frontend") else "inbound"
        return callgrind_dump(p, cg_dir, cg_dir / f"{tag}-{role}.callgrind")

    def callgrind_figures(self, wid: str, role: str, n: int, one: Path, two: Path) -> None:
        a, b = parse_callgrind(one), parse_callgrind(two)
        fig = self.fig(wid, role)
        fig["instructions_per_req"] = (b["total"] - a["total"]) / n
        fig["instructions_n"] = a["total"]
        fig["instructions_2n"] = b["total"]
        fig["allocs_per_req"] = (b["allocs"] - a["allocs"]) / n
        fig["frees_per_req"] = (b["frees"] - a["frees"]) / n

        def per(kind: str, top: int = 30) -> list[tuple[str, float]]:
            keys = set(a[kind]) | set(b[kind])
            rows = [(k, (b[kind].get(k, 0) - a[kind].get(k, 0)) / n) for k in keys]
            rows.sort(key=lambda kv: -kv[1])
            return rows[:top]

        # Leave out the frames that enclose (nearly) everything: main, the runtime's poll.
        total = fig["instructions_per_req"]
        fig["top_inclusive"] = [r for r in per("inclusive", 60) if r[1] < 0.9 * total][:30]
        fig["top_self"] = per("self")
        annotate = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                                   str(two)], capture_output=True, text=True)
        lines = annotate.stdout.splitlines()
        (self.out / f"callgrind-{wid}-{role}-annotate.txt").write_text(
            "\n".join(lines[:60]) + "\n")

    # -- summary ------------------------------------------------------------------------------

    def summary(self) -> str:
        r = self.results
        lines = [f"# Profile {r['label']}", "",
                 f"Binary `{r['binary']}` (sha256 {r['binary_sha256'][:16]}), started "
                 f"{r['started']}. N = {r['requests']} requests (W4: 5 % of N, each 1 MiB "
                 f"both ways); every per-request figure is "
                 f"(counter after 2N requests − counter after N requests) / N, so start-up, "
                 f"warm-up and the client connections' set-up cancel. Tools: "
                 f"{', '.join(r['tools'])}.", ""]
        for wid, w in r["workloads"].items():
            sc = w["sidecars"]
            lines += [f"## {wid}: {w['title']}", ""]
            load = sc.get("load", {})
            if load:
                lines.append("Achieved rates: " + ", ".join(f"{k} {v:,.0f} req/s"
                                                            for k, v in load.items()) + ".")
                lines.append("")
            lines += ["| per request | frontend | inbound | both |", "|---|---|---|---|"]
            for key, label, fmt in (
                ("instructions_per_req", "instructions (callgrind)", "{:,.0f}"),
                ("allocs_per_req", "allocations (calls into the allocator)", "{:.1f}"),
                ("syscalls_per_req", "syscalls (strace -c)", "{:.2f}"),
                ("ctx_voluntary_per_req", "voluntary context switches", "{:.3f}"),
                ("ctx_nonvoluntary_per_req", "nonvoluntary context switches", "{:.3f}"),
                ("perf_us_per_req", "cpu-clock time under perf (µs)", "{:.1f}"),
            ):
                vals = [sc.get(role, {}).get(key) for role in ("frontend", "inbound")]
                if all(v is None for v in vals):
                    continue
                cells = [fmt.format(v) if v is not None else "—" for v in vals]
                both = sum(v for v in vals if v is not None)
                lines.append(f"| {label} | {cells[0]} | {cells[1]} | {fmt.format(both)} |")
            lines.append("")
            for role in ("frontend", "inbound"):
                f = sc.get(role, {})
                if "syscalls_by_name_per_req" in f:
                    lines.append(f"Syscalls per request, {role}: " + ", ".join(
                        f"{k} {v:.2f}" for k, v in f["syscalls_by_name_per_req"].items()) + ".")
                    lines.append("")
            for role in ("frontend", "inbound"):
                f = sc.get(role, {})
                if "top_inclusive" in f:
                    lines += [f"### {wid} {role}: instructions per request by function "
                              "(top 30 inclusive, without the frames that enclose everything)",
                              "",
                              "| inclusive | self | function |", "|---:|---:|---|"]
                    selfs = dict(f["top_self"])
                    for name, inc in f["top_inclusive"]:
                        s = selfs.get(name)
                        lines.append(f"| {inc:,.0f} | {'' if s is None else f'{s:,.0f}'} | "
                                     f"`{short(name)}` |")
                    lines += ["", f"Top 30 by self cost ({wid} {role}):", "",
                              "| self | function |", "|---:|---|"]
                    for name, sv in f["top_self"]:
                        lines.append(f"| {sv:,.0f} | `{short(name)}` |")
                    lines.append("")
                if "perf_top_self" in f:
                    lines += [f"Flame graph: [flame-{wid}-{role}.svg](flame-{wid}-{role}.svg) "
                              f"({f['perf_samples']:,} samples). Leaf functions by share of "
                              "samples: " + ", ".join(f"`{short(k, 60)}` {v:.1%}"
                                                      for k, v in f["perf_top_self"][:10]) + ".",
                              ""]
        for note in dict.fromkeys(r["notes"]):
            lines.append(f"- {note}")
        return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m harness.profile")
    ap.add_argument("--picket", required=True, help="the picket binary to profile")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--label", default="picket")
    ap.add_argument("--workloads", default="w1,w2,w4,w6",
                    help="w1, w2, w4, w6, comma-separated")
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="callgrind, ctx, strace, perf, comma-separated")
    ap.add_argument("--requests", type=int, default=2000, help="N (runs of N and 2N requests)")
    ap.add_argument("--rate", type=float, default=2000, help="W6's rate, native (req/s)")
    ap.add_argument("--callgrind-rate", type=float, default=160,
                    help="W6's rate under callgrind (req/s)")
    ap.add_argument("--callgrind-warmup", type=int, default=400)
    ap.add_argument("--perf-factor", type=int, default=50,
                    help="perf records N x this many requests")
    ap.add_argument("--perf-freq", type=int, default=999, help="cpu-clock samples per second")
    ap.add_argument("--keep-perf-data", action="store_true")
    ap.add_argument("--overlay", default="", help="YAML appended to every sidecar's config")
    args = ap.parse_args()
    if args.requests < 2 * CONNECTIONS:
        print(f"--requests must be at least {2 * CONNECTIONS}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return Profiler(args).main()
    except BenchError as e:
        print(f"profile: {e}", file=sys.stderr)
        stop_all()
        return 1
    except Exception:  # noqa: BLE001 - report, stop what was started, fail
        traceback.print_exc()
        stop_all()
        return 1


if __name__ == "__main__":
    sys.exit(main())
