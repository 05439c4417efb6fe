"""bench/run's driver: starts the backend and every system, runs the workloads in alternating
rounds, and writes results.json, report.md and latency.svg. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import jwt, load, report
from .certs import Pki
from .load import IdleClients, measured
from .policies import load_overlays
from .procs import BenchError, run, stop_all
from .systems import (Backend, Collector, Direct, HaproxyPair, NginxPair, Picket, System,
                      sidecar_binary)

ROOT = Path(__file__).resolve().parents[2]
# What `--only` can name besides workload ids: the parts of a run that are not workloads.
PARTS = ["startup", "w7", "w8", "jwt", "ca"]
# The Picket system runs with this many authorization policies (issue 6: "a realistic policy
# set"); W8 varies it.
MAIN_POLICIES = 100
W8_POLICIES = [0, 10, 100, 1000, 10000]
# The quick smoke run (part of the test command) stops at 1,000: 10,000 policies take the same
# code path and cost most of W8's time in a dev build (compiling the set).
W8_POLICIES_QUICK = [0, 10, 100, 1000]


@dataclass
class Durations:
    saturation: float
    fixed_rate: float
    tcp: float
    memory_load: float
    # W7: the second figure of 5,000 idle connections is taken this long after they opened,
    # once a proxy's allocator has had time to give back what their first requests used.
    idle_settle: float
    rounds: int
    warmup: float
    warmup_all: bool  # warm up with every workload, or only with W1
    startup_runs: int
    criterion: list[str]


FULL = Durations(saturation=6, fixed_rate=12, tcp=5, memory_load=8, idle_settle=20, rounds=5,
                 warmup=2,
                 warmup_all=True,
                 startup_runs=10,
                 criterion=["--warm-up-time", "2", "--measurement-time", "8",
                            "--sample-size", "30"])
QUICK = Durations(saturation=1, fixed_rate=2, tcp=1, memory_load=2, idle_settle=2, rounds=1,
                  warmup=1,
                  warmup_all=False,
                  startup_runs=3,
                  criterion=["--warm-up-time", "0.3", "--measurement-time", "1",
                             "--sample-size", "10"])


@dataclass
class Workload:
    id: str
    title: str
    target: str
    go: Callable[[str, float], dict]
    duration: str = "saturation"
    rss: bool = False


def workloads(upload_script: Path) -> list[Workload]:
    return [
        Workload("w1_c16", "W1 HTTP/1.1 keep-alive, 1 KB, 16 connections", "http1",
                 lambda url, d: load.wrk(url + "/1k", 16, d)),
        Workload("w1_c64", "W1 HTTP/1.1 keep-alive, 1 KB, 64 connections", "http1",
                 lambda url, d: load.wrk(url + "/1k", 64, d)),
        Workload("w2_h2", "W2 HTTP/2, 1 KB, 16 connections x 8 streams", "h2c",
                 lambda url, d: load.h2load(url, 16, 8, d)),
        Workload("w3_new_conn", "W3a new client connection per request (sidecar pooling on)",
                 "http1",
                 lambda url, d: load.wrk(url + "/1k", 16, d, headers=["Connection: close"])),
        Workload("w3_full_hs", "W3b new client connection and new sidecar mTLS connection per "
                 "request", "fullhs",
                 lambda url, d: load.wrk(url + "/1k", 16, d, headers=["Connection: close"])),
        Workload("w3_burst64", "W3c burst of 64 new client connections, each a new sidecar mTLS "
                 "connection, opened at once", "fullhs",
                 lambda url, d: load.burst(url + "/1k", 64, d)),
        Workload("w4_1mib", "W4 1 MiB request and 1 MiB response, 8 connections", "bulk",
                 lambda url, d: with_mib(load.wrk(url + "/1m", 8, d, script=upload_script))),
        Workload("w5_stream", "W5 opaque TCP stream, 1 connection, echoed", "tcp",
                 lambda addr, d: load.tcptool("stream", addr, d), duration="tcp"),
        Workload("w5_pingpong", "W5 opaque TCP ping-pong, 64 B, 1 connection", "tcp",
                 lambda addr, d: load.tcptool("pingpong", addr, d), duration="tcp"),
        Workload("w6_1000", "W6 fixed rate 1,000 RPS, HTTP/1.1, 16 connections", "http1",
                 lambda url, d: load.fixed_rate(url + "/1k", 1000, d), duration="fixed_rate"),
        Workload("w6_2000", "W6 fixed rate 2,000 RPS, HTTP/1.1, 16 connections", "http1",
                 lambda url, d: load.fixed_rate(url + "/1k", 2000, d), duration="fixed_rate",
                 rss=True),
    ]


def with_mib(r: dict) -> dict:
    r["mib_per_s"] = r["rps"]  # 1 MiB each way per request: MiB/s in each direction
    return r


class Bench:
    def __init__(self, args):
        self.args = args
        self.d = QUICK if args.quick else FULL
        load.PRECISE_FIXED_RATE = not args.quick
        if args.rounds:
            self.d.rounds = args.rounds
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="picket-bench-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.picket = Path(args.picket).resolve()
        self.failures: list[str] = []
        self.results: dict = {
            "mode": "quick" if args.quick else "full",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "durations": self.d.__dict__,
            "machine": machine(),
            "runs": {},
            "titles": {},
            "memory": {},
            "startup": {},
            "ca": {},
            "w8": {"available": False, "reason": "not run"},
            "jwt": {"available": False, "reason": "not run"},
            "wire": {},
            "kx": {},
        }
        self.only = set(filter(None, args.only.split(","))) if args.only else None

    def fail(self, what: str, e: BaseException) -> None:
        msg = f"{what}: {e}"
        print(f"bench: FAILED {msg}", file=sys.stderr, flush=True)
        self.failures.append(msg)

    def step(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -----------------------------------------------------------------------------------------

    def runs(self, part: str) -> bool:
        """Whether `--only` (if given) selects this part or workload."""
        return self.only is None or part in self.only

    def main(self) -> int:
        t0 = time.monotonic()
        try:
            self.setup()
            if self.runs("startup"):
                self.startup_figures()
            self.rounds()
            self.handshake_facts()
            if self.runs("w8"):
                self.w8()
            if self.runs("jwt"):
                self.jwt()
        except BenchError as e:
            self.fail("setup", e)
        except KeyboardInterrupt:
            self.fail("run", RuntimeError("interrupted"))
        finally:
            stop_all()
        if self.runs("ca"):
            self.ca_rate()
        self.results["elapsed_s"] = time.monotonic() - t0
        self.results["machine"]["load_end"] = load_average()
        self.results["failures"] = self.failures
        self.write()
        if self.failures:
            print(f"bench: {len(self.failures)} step(s) failed; logs kept in {self.logs}",
                  file=sys.stderr)
            return 1
        shutil.rmtree(self.work, ignore_errors=True)
        return 0

    def setup(self) -> None:
        self.step(f"work directory {self.work}")
        self.pki = Pki(self.picket, self.work, self.logs)
        self.pki.init()
        self.backend = Backend(self.work, self.logs, Path(load.__file__).parent)
        self.backend.start()
        overlay = Path(self.args.overlay).read_text() if self.args.overlay else ""
        self.results["machine"]["picket_binary"] = binary_info(self.picket)
        self.results["machine"]["sidecar_binary"] = binary_info(sidecar_binary(self.picket))
        self.results["machine"]["picket_profile"] = self.args.profile
        self.has_policy = subprocess.run([str(self.picket), "policy", "--help"],
                                         capture_output=True).returncode == 0
        self.results["picket_policies"] = MAIN_POLICIES if self.has_policy else None
        self.picket_sys = Picket(self.picket, self.pki, self.backend, self.work, self.logs,
                                 policies=MAIN_POLICIES if self.has_policy else None,
                                 overlay=overlay)
        self.systems: list[System] = [Direct(self.backend), self.picket_sys]
        if self.args.baseline:
            # Another Picket build, run alternately with this one (e.g. before a change).
            baseline = Path(self.args.baseline).resolve()
            self.results["machine"]["baseline_binary"] = binary_info(baseline)
            self.results["baseline_label"] = self.args.baseline_label
            self.systems.append(Picket(baseline, self.pki, self.backend, self.work, self.logs,
                                       policies=MAIN_POLICIES if self.has_policy else None,
                                       overlay=overlay, name="picket-base",
                                       label=f"Picket pair, {self.args.baseline_label}"))
        self.systems += [
            NginxPair(self.pki, self.backend, self.work, self.logs),
            HaproxyPair(self.pki, self.backend, self.work, self.logs),
        ]
        if self.args.systems:
            wanted = set(self.args.systems.split(","))
            unknown = wanted - {s.name for s in self.systems}
            if unknown:
                raise BenchError(f"--systems names unknown systems {sorted(unknown)}")
            self.systems = [s for s in self.systems if s.name in wanted]
        # Memory of fresh processes, before any traffic.
        for s in self.systems:
            s.start()
            if s.pair():
                self.results["memory"].setdefault(s.name, []).append({"fresh_kib": pair_rss(s)})
        self.step("systems up: " + ", ".join(s.name for s in self.systems))
        self.results["titles"]["systems"] = {s.name: s.label for s in self.systems}
        self.workloads = workloads(load.write_upload_script(self.work / "upload.lua"))
        if self.only is not None:
            known = {w.id for w in self.workloads} | set(PARTS)
            if self.only - known:
                raise BenchError(f"--only names unknown parts {sorted(self.only - known)}; "
                                 f"known: {', '.join(sorted(known))}")
            self.workloads = [w for w in self.workloads if w.id in self.only]
        for w in self.workloads:
            self.results["titles"][w.id] = w.title
        self.smoke()

    def smoke(self) -> None:
        """Every target of every system answers before any figure is taken."""
        for s in self.systems:
            for target in ("http1", "h2c", "fullhs"):
                url = s.targets[target] + "/1k"
                h2 = ["--http2-prior-knowledge"] if target == "h2c" else []
                out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                      *h2, url], capture_output=True, text=True, timeout=20)
                if out.stdout != "200":
                    raise BenchError(f"{s.name} {target} {url} answered {out.stdout!r} "
                                     f"{out.stderr.strip()}")
            r = load.tcptool("pingpong", s.targets["tcp"], 0.05)
            if r["round_trips"] < 1:
                raise BenchError(f"{s.name} tcp target does not echo")

    def startup_figures(self) -> None:
        self.step(f"startup: {self.d.startup_runs} sidecar starts to /ready")
        self.isolate([])
        try:
            self.results["startup"] = self.picket_sys.startup_figures(self.d.startup_runs)
        except BenchError as e:
            self.fail("startup figures", e)

    # -----------------------------------------------------------------------------------------

    def isolate(self, active: list) -> None:
        """Freezes (SIGSTOP) every proxy process except `active`, so that nothing a system
        not under test does in the background (timers, file watching, reloads) takes CPU from
        the one being measured on the shared core."""
        for s in self.systems:
            for p in s.processes():
                if p in active:
                    p.thaw()
                else:
                    p.freeze()

    def run_one(self, w: Workload, s: System, seconds: float, keep: bool) -> None:
        active = s.accounted(w.target)
        self.isolate(active)
        healthy = (not active or w.target == "tcp"
                   or probe(s.targets[w.target], h2=w.target == "h2c") == "200")
        if not healthy:
            # A proxy that stopped answering would spoil this and every later figure of the
            # system: record it, start the system afresh and go on.
            self.fail(f"{s.name} stopped answering before {w.id}; restarted",
                      BenchError("health probe failed"))
            try:
                s.restart()
                self.isolate(s.accounted(w.target))
            except BenchError as e:
                self.fail(f"restart of {s.name}", e)
                return
        target = s.targets[w.target]
        try:
            r = measured(s.accounted(w.target), lambda: w.go(target, seconds), sample_rss=w.rss)
        except BenchError as e:
            self.fail(f"{w.id} on {s.name}", e)
            return
        if keep:
            self.results["runs"].setdefault(w.id, {}).setdefault(s.name, []).append(r)
            headline = r.get("mib_per_s") or r.get("round_trips_per_s") or r.get("rps")
            extra = f" p99 {r['p99_ms']:.2f} ms" if "p99_ms" in r else ""
            if headline is None:  # a burst: its median time, ms
                headline = r["p50_ms"]
                extra = f" ms p90 {r['p90_ms']:.2f} ms"
            self.step(f"  {w.id:12} {s.name:8} {headline:12.1f}{extra}"
                      + (f"  errors {r['errors']}" if r.get("errors") else ""))

    def rounds(self) -> None:
        if self.d.warmup:
            self.step("warm-up round (not recorded)")
            for w in self.workloads if self.d.warmup_all else self.workloads[:1]:
                for s in self.systems:
                    self.run_one(w, s, self.d.warmup, keep=False)
        for rnd in range(1, self.d.rounds + 1):
            self.step(f"round {rnd}/{self.d.rounds}")
            for w in self.workloads:
                for s in self.systems:
                    self.run_one(w, s, getattr(self.d, w.duration), keep=True)
            if self.runs("w7"):
                self.memory_round()

    def memory_round(self) -> None:
        """W7 on fresh processes: RSS fresh, at 2,000 RPS, then with 1,000 and 5,000 idle
        keep-alive client connections (each has carried one request)."""
        for s in [s for s in self.systems if s.pair()]:
            try:
                s.restart()
                self.isolate(s.pair())
                fig = {"fresh_kib": pair_rss(s), "fresh_anon_kib": pair_anon(s)}
                r = measured(s.pair(), lambda: load.fixed_rate(s.targets["http1"] + "/1k", 2000,
                                                        self.d.memory_load), sample_rss=True)
                fig["at_2000_kib"] = r["rss_each_kib"]
                time.sleep(0.5)
                fig["after_load_kib"] = pair_rss(s)
                fig["after_load_anon_kib"] = pair_anon(s)
                idle = IdleClients(s.targets["http1"] + "/1k", [1000, 5000])
                try:
                    for count in (1000, 5000):
                        step = idle.next_step()
                        opened = time.monotonic()
                        if step["open"] < count * 0.99:
                            raise BenchError(f"only {step['open']} of {count} idle connections "
                                             f"opened ({step['failures']} failures)")
                        time.sleep(0.5)
                        fig[f"idle_{count}_kib"] = pair_rss(s)
                        if count == 5000:
                            # The same connections, still idle, once the proxy's allocator
                            # has had time to give back what the burst of first requests used.
                            time.sleep(max(0.0, opened + self.d.idle_settle - time.monotonic()))
                            fig["idle_5000_settled_kib"] = pair_rss(s)
                        idle.advance()
                finally:
                    idle.close()
                for key, count in (("1000", 1000), ("5000", 5000), ("5000_settled", 5000)):
                    fig[f"per_idle_conn_b_{key}"] = (
                        (sum(fig[f"idle_{key}_kib"]) - sum(fig["after_load_kib"])) * 1024
                        / count)
                self.results["memory"].setdefault(s.name, []).append(fig)
                self.step(f"  w7 {s.name:8} pair RSS fresh {sum(fig['fresh_kib']) / 1024:.1f} "
                          f"MiB, at 2000 RPS {sum(fig['at_2000_kib']) / 1024:.1f} MiB, "
                          f"5000 idle {sum(fig['idle_5000_kib']) / 1024:.1f} MiB "
                          f"({fig['per_idle_conn_b_5000']:.0f} B/conn)")
                s.restart()
                self.isolate([])
            except BenchError as e:
                self.fail(f"w7 on {s.name}", e)
                try:
                    s.restart()
                except BenchError as e2:
                    self.fail(f"restart of {s.name}", e2)

    def handshake_facts(self) -> None:
        """For each Picket system: the key-exchange groups its frontend negotiated during the
        run, and the TCP payload bytes of one burst of 64 new sidecar-to-sidecar connections
        (tcpdump on the orders sidecar's inbound port)."""
        for s in self.systems:
            if not isinstance(s, Picket):
                continue
            try:
                self.isolate(s.accounted("fullhs"))
                self.results["kx"][s.name] = s.handshake_groups()
                r, wire = load.tcp_payload_bytes(
                    s.inbound_port("fullhs"),
                    lambda: load.burst(s.targets["fullhs"] + "/1k", 64, 0), self.work)
                wire["connections"] = r["requests"]
                self.results["wire"][s.name] = wire
                self.step(f"  {s.name}: groups {self.results['kx'][s.name] or 'not exported'}; "
                          f"{wire['to_port'] / max(1, r['requests']):.0f} B to and "
                          f"{wire['from_port'] / max(1, r['requests']):.0f} B from the inbound "
                          "side per connection")
            except BenchError as e:
                self.fail(f"handshake facts of {s.name}", e)

    # -----------------------------------------------------------------------------------------

    def w8(self) -> None:
        """W8: the Picket pair with policy off (default allow, no files), 10, 100, 1,000 and
        10,000 policies, and 100 policies plus each overlay in bench/w8/ (e.g. telemetry),
        alternating within each round; W1 16 connections and W6 2,000 RPS on each."""
        if not self.has_policy:
            self.results["w8"] = {"available": False,
                                  "reason": "this picket has no authorization policy support"}
            return
        overlays = load_overlays(ROOT / "bench" / "w8")
        # The policy-scale variants run with telemetry off (the detectors are on by default),
        # so that their cost is the policies' alone and "policy off" is the bare data path;
        # an overlay variant brings its own telemetry section instead.
        telemetry_off = "telemetry:\n  detectors:\n    enabled: false\n"
        variants = [(f"{n} policies" if n else "policy off", n, telemetry_off)
                    for n in (W8_POLICIES_QUICK if self.args.quick else W8_POLICIES)]
        collector = Collector(self.logs)
        for o in overlays:
            text = o.text
            if "${OTLP_ENDPOINT}" in text:
                try:
                    text = text.replace("${OTLP_ENDPOINT}", collector.start())
                except BenchError as e:
                    self.fail(f"w8 {o.name}: collector", e)
                    continue
            variants.append((f"{MAIN_POLICIES} policies + {o.name}", MAIN_POLICIES, text))
        self.step(f"W8: {len(variants)} Picket variants")
        base = (self.picket_sys.policies, self.picket_sys.overlay)
        # From every workload, not the ones --only selected: `--only w8` runs W8 alone.
        every = workloads(self.work / "upload.lua")
        w1 = next(w for w in every if w.id == "w1_c16")
        w6 = next(w for w in every if w.id == "w6_2000")
        runs: dict = {}
        try:
            for _ in range(self.d.rounds):
                for name, policies, overlay in variants:
                    self.picket_sys.policies = policies
                    self.picket_sys.overlay = (base[1] + "\n" + overlay) if overlay else base[1]
                    try:
                        self.picket_sys.restart()
                    except BenchError as e:
                        self.fail(f"w8 {name}: start", e)
                        continue
                    self.isolate(self.picket_sys.accounted("http1"))
                    # One timed request first: a variant that takes seconds per request is a
                    # finding in itself, and a saturation run would measure nothing.
                    t0 = time.monotonic()
                    status = probe(self.picket_sys.targets["http1"], timeout=60)
                    first = time.monotonic() - t0
                    runs.setdefault(name, {}).setdefault("first_request_s", []).append(first)
                    if status != "200" or first > 1.0:
                        self.step(f"  w8 {name:26} one request took {first:.1f} s "
                                  f"(status {status}): not loaded")
                        continue
                    for w, seconds in ((w1, self.d.saturation), (w6, self.d.fixed_rate)):
                        try:
                            r = measured(self.picket_sys.accounted(w.target),
                                         lambda: w.go(self.picket_sys.targets[w.target], seconds))
                            runs.setdefault(name, {}).setdefault(w.id, []).append(r)
                        except BenchError as e:
                            # The variant answered the probe but not under load: a finding
                            # about the sidecar, recorded in the report, not a harness failure.
                            runs.setdefault(name, {}).setdefault("load_failures", []).append(
                                f"{w.id}: {e}")
                            self.step(f"  w8 {name}: {w.id} failed: {e}")
                    r1 = runs.get(name, {}).get("w1_c16", [{}])[-1]
                    self.step(f"  w8 {name:26} W1 {r1.get('rps', 0):10.1f} req/s")
        finally:
            self.picket_sys.policies, self.picket_sys.overlay = base
            self.picket_sys.restart()
        self.results["w8"] = {
            "available": True,
            "runs": runs,
            "variants": [name for name, _, _ in variants],
            "telemetry": bool(overlays),
        }

    def jwt(self) -> None:
        """Issue 19's cost of an end-user token: the Picket pair with 100 policies and a
        RequestAuthentication (RS256, inline JWK set) on the orders sidecars, W1 16
        connections without a token and with a valid token the harness minted, alternating
        within each round on the same pair. Afterwards the orders sidecar's metrics must show
        every token validated (`ok`) and no key-set fetch: a validation never touches the
        network."""
        if not self.has_policy:
            self.results["jwt"] = {"available": False,
                                   "reason": "this picket has no authorization policy support"}
            return
        material = jwt.mint(self.work)
        w1 = next((w for w in workloads(self.work / "upload.lua") if w.id == "w1_c16"))
        s = self.picket_sys
        s.extra_policy = ("request-authentication", material.document)
        variants = [("no token", []), ("valid RS256 token",
                                        [f"Authorization: Bearer {material.token}"])]
        runs: dict = {}
        sent = 0
        self.step("JWT: W1 without and with a validated token")
        try:
            s.restart()
            self.isolate(s.accounted("http1"))
            url = s.targets["http1"] + "/1k"
            for _, headers in variants:
                out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                      *[a for h in headers for a in ("-H", h)], url],
                                     capture_output=True, text=True, timeout=30)
                if out.stdout != "200":
                    raise BenchError(f"a request ({headers or 'no token'}) answered "
                                     f"{out.stdout!r}: {out.stderr[-300:]}")
            sent = 1
            for i in range(self.d.rounds):
                order = variants if i % 2 == 0 else variants[::-1]
                for name, headers in order:
                    r = measured(s.accounted("http1"),
                                 lambda h=headers: load.wrk(url, 16, self.d.saturation,
                                                            headers=h))
                    runs.setdefault(name, []).append(r)
                    if headers:
                        sent += r["requests"]
                    self.step(f"  jwt {name:18} W1 {r['rps']:10.1f} req/s, "
                              f"{r.get('cpu_us_per_req', 0):.1f} µs CPU/req")
            metrics = urllib.request.urlopen(
                f"http://{s.ready[f'{s.name}-orders']['admin']}/metrics", timeout=10
            ).read().decode()
            validated = jwt.metric(metrics, "picket_jwt_validations_total", {"result": "ok"})
            refused = (jwt.metric(metrics, "picket_jwt_validations_total") - validated)
            fetches = jwt.metric(metrics, "picket_jwt_jwks_fetches_total")
            check = {"tokens_sent": sent, "validated_ok": validated, "refused": refused,
                     "jwks_fetches": fetches}
            self.step(f"  jwt check: {check}")
            if validated < sent or refused or fetches:
                self.fail("jwt", BenchError(f"the orders sidecar did not validate every token "
                                            f"locally: {check}"))
            self.results["jwt"] = {"available": True, "runs": runs,
                                   "variants": [n for n, _ in variants], "check": check}
        except (BenchError, OSError) as e:
            self.fail("jwt", e)
        finally:
            # The last part that uses the Picket pair: it is stopped with everything else
            # next, so it is not restarted without the RequestAuthentication here.
            s.extra_policy = None

    def ca_rate(self) -> None:
        self.step("CA signing rate (criterion bench ca/benches/issue.rs, one core)")
        try:
            # --workspace, as bench/run builds it: the same features, so nothing is rebuilt.
            run(["cargo", "bench", "-q", "--profile", self.args.profile, "--workspace",
                 "--bench", "issue", "--",
                 *self.d.criterion], timeout=600, cwd=ROOT)
            target = Path(json.loads(subprocess.run(
                ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                capture_output=True, text=True, check=True).stdout)["target_directory"])
            for case in ("join_token_disk", "renewal_disk", "join_token_tmpfs", "renewal_tmpfs"):
                est = target / "criterion" / "ca_issue" / case / "new" / "estimates.json"
                if not est.exists():
                    continue
                data = json.loads(est.read_text())
                ns = data["median"]["point_estimate"]
                self.results["ca"][case] = {
                    "median_us": ns / 1000,
                    "per_s": 1e9 / ns,
                    "ci_us": [data["median"]["confidence_interval"]["lower_bound"] / 1000,
                              data["median"]["confidence_interval"]["upper_bound"] / 1000],
                }
            if "join_token_disk" not in self.results["ca"]:
                raise BenchError("criterion wrote no estimate for ca_issue/join_token_disk")
        except (BenchError, subprocess.CalledProcessError, OSError, KeyError) as e:
            self.fail("CA signing rate", e)

    # -----------------------------------------------------------------------------------------

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        svg = report.latency_svg(self.results)
        (self.out / "latency.svg").write_text(svg)
        (self.out / "report.md").write_text(report.markdown(self.results))
        self.step(f"wrote {self.out / 'report.md'}, latency.svg, results.json")


def probe(base: str, timeout: float = 5, h2: bool = False) -> str:
    """The HTTP status of one GET /1k, or "000" if none came."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-m", f"{timeout:g}", "-w",
                          "%{http_code}", *(["--http2-prior-knowledge"] if h2 else []),
                          base + "/1k"], capture_output=True, text=True)
    return out.stdout.strip() or "000"


def pair_rss(s: System) -> list[int]:
    """RSS of each of the system's two proxies, KiB."""
    return [p.rss_kib() for p in s.pair()]


def pair_anon(s: System) -> list[int]:
    """Private (anonymous) resident memory of each of the system's two proxies, KiB."""
    return [p.anon_kib() for p in s.pair()]


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    git = version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "nofile": version(["sh", "-c", "ulimit -n"]),
        "picket": f"{version(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'])} ({git})",
        "rustc": version(["rustc", "--version"]),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "h2load": version(["h2load", "--version"]),
        "oha": version(["oha", "--version"]),
        "openssl": version(["openssl", "version"]),
        "python": platform.python_version(),
        "load_start": load_average(),
        "scheduling": scheduling(),
    }


def scheduling() -> str:
    policy = os.sched_getscheduler(0)
    if policy == os.SCHED_RR:
        return f"SCHED_RR, priority {os.sched_getparam(0).sched_priority} (real-time round robin)"
    if policy == os.SCHED_FIFO:
        return f"SCHED_FIFO, priority {os.sched_getparam(0).sched_priority}"
    return f"SCHED_OTHER, nice {os.nice(0)}"


def binary_info(path: Path) -> str:
    st = path.stat()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    return f"{path} ({st.st_size / 1e6:.1f} MB, modified {built})"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--picket", default="")
    parser.add_argument("--profile", default="release", help="the cargo profile Picket was built with")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--overlay", default="")
    parser.add_argument("--only", default="",
                        help="comma-separated workload ids and parts (startup, w7, w8, ca) to run")
    parser.add_argument("--systems", default="",
                        help="comma-separated systems to run (direct, picket, picket-base, "
                             "nginx, haproxy); default all")
    parser.add_argument("--baseline", default="",
                        help="another picket binary, run as the system picket-base")
    parser.add_argument("--baseline-label", default="baseline build")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite report.md and latency.svg from OUT/results.json")
    args = parser.parse_args()
    if args.render:
        out = Path(args.out)
        results = json.loads((out / "results.json").read_text())
        (out / "latency.svg").write_text(report.latency_svg(results))
        (out / "report.md").write_text(report.markdown(results))
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return Bench(args).main()
    except Exception:  # noqa: BLE001 - report, stop what was started, fail
        traceback.print_exc()
        stop_all()
        return 1


if __name__ == "__main__":
    sys.exit(main())
