"""report.md and latency.svg from results.json: medians with min-max over the rounds, ratios
computed from figures taken in the same run, and issue 6's targets checked against them."""

from __future__ import annotations

import math
import statistics

SYSTEMS = ["direct", "picket", "nginx", "haproxy"]
PEERS = ["nginx", "haproxy"]
NAMES = {"direct": "direct", "picket": "Picket", "nginx": "nginx", "haproxy": "HAProxy"}
COLORS = {"direct": "#7f7f7f", "picket": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4"}
PERCENTILES = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p99.9_ms", "p99.9"),
               ("p99.99_ms", "p99.99"), ("max_ms", "max")]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def series(results, workload, system, key):
    return [r[key] for r in results["runs"].get(workload, {}).get(system, []) if key in r]


def m(results, workload, system, key):
    return med(series(results, workload, system, key))


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f}"


def cell(results, workload, system, key, digits=None):
    vals = series(results, workload, system, key)
    if not vals:
        return "–"
    if len(vals) == 1:
        return fmt(vals[0], digits)
    return f"{fmt(med(vals), digits)} ({fmt(min(vals), digits)}–{fmt(max(vals), digits)})"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def rfmt(r):
    return "–" if r is None else f"{r:.2f}x"


def best_peer(results, workload, key, higher_better=True):
    vals = {p: m(results, workload, p, key) for p in PEERS}
    vals = {p: v for p, v in vals.items() if v is not None}
    if not vals:
        return None, None
    pick = max(vals, key=vals.get) if higher_better else min(vals, key=vals.get)
    return pick, vals[pick]


THROUGHPUT = [
    ("w1_c16", "rps", "req/s"),
    ("w1_c64", "rps", "req/s"),
    ("w2_h2", "rps", "req/s"),
    ("w3_new_conn", "rps", "conn/s (= req/s)"),
    ("w3_full_hs", "rps", "conn/s (= req/s)"),
    ("w4_1mib", "mib_per_s", "MiB/s each way"),
    ("w5_stream", "mib_per_s", "MiB/s echoed"),
    ("w5_pingpong", "round_trips_per_s", "round trips/s"),
]


def throughput_table(results) -> list[str]:
    out = ["| workload | unit | direct | Picket | nginx | HAProxy | Picket / best peer | "
           "Picket / direct |", "|---|---|---|---|---|---|---|---|"]
    for wid, key, unit in THROUGHPUT:
        if wid not in results["runs"]:
            continue
        peer, peer_v = best_peer(results, wid, key)
        pk = m(results, wid, "picket", key)
        out.append(
            f"| {results['titles'].get(wid, wid)} | {unit} | "
            + " | ".join(cell(results, wid, s, key) for s in SYSTEMS)
            + f" | {rfmt(ratio(pk, peer_v))} ({NAMES.get(peer, '–')}) | "
            f"{rfmt(ratio(pk, m(results, wid, 'direct', key)))} |"
        )
    return out


CPU_ROWS = ["w1_c16", "w1_c64", "w2_h2", "w3_new_conn", "w3_full_hs", "w3_burst64", "w4_1mib",
            "w6_1000", "w6_2000"]


def cpu_table(results) -> list[str]:
    out = ["| workload | Picket | nginx | HAProxy | Picket / best peer |", "|---|---|---|---|---|"]
    for wid in CPU_ROWS:
        if wid not in results["runs"]:
            continue
        peer, peer_v = best_peer(results, wid, "cpu_us_per_req", higher_better=False)
        pk = m(results, wid, "picket", "cpu_us_per_req")
        out.append(f"| {results['titles'].get(wid, wid)} | "
                   + " | ".join(cell(results, wid, s, "cpu_us_per_req", 1) for s in
                                ["picket", "nginx", "haproxy"])
                   + f" | {rfmt(ratio(pk, peer_v))} ({NAMES.get(peer, '–')}) |")
    return out


def utilisation_table(results) -> list[str]:
    out = ["| workload | Picket | nginx | HAProxy |", "|---|---|---|---|"]
    for wid in ["w1_c16", "w1_c64", "w2_h2", "w4_1mib", "w5_stream", "w6_2000"]:
        if wid in results["runs"]:
            out.append(f"| {results['titles'].get(wid, wid)} | "
                       + " | ".join(cell(results, wid, s, "proxy_cpu_pct", 0) for s in
                                    ["picket", "nginx", "haproxy"]) + " |")
    return out


def latency_table(results, wid) -> list[str]:
    out = ["| system | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | "
           "added p99 over direct, ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
    direct_p99 = m(results, wid, "direct", "p99_ms")
    for s in SYSTEMS:
        if not series(results, wid, s, "p99_ms"):
            continue
        p99 = m(results, wid, s, "p99_ms")
        added = None if s == "direct" or direct_p99 is None else p99 - direct_p99
        errors = sum(series(results, wid, s, "errors"))
        out.append(f"| {NAMES[s]} | {fmt(m(results, wid, s, 'rps'), 0)} | "
                   + " | ".join(cell(results, wid, s, k, 3) for k in
                                ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"])
                   + f" | {fmt(added, 3)} | {errors} |")
    return out


def burst_table(results) -> list[str]:
    wid = "w3_burst64"
    out = ["| system | bursts | p50 ms | p90 ms | max ms | CPU µs per connection |",
           "|---|---|---|---|---|---|"]
    for s in SYSTEMS:
        if series(results, wid, s, "p50_ms"):
            out.append(f"| {NAMES[s]} | {fmt(med(series(results, wid, s, 'bursts')), 0)} | "
                       + " | ".join(cell(results, wid, s, k, 2) for k in
                                    ["p50_ms", "p90_ms", "max_ms"])
                       + f" | {cell(results, wid, s, 'cpu_us_per_req', 1)} |")
    return out


def change(before, after):
    if before in (None, 0) or after is None:
        return "–"
    return f"{(after / before - 1) * 100:+.1f} %"


def kx_section(results) -> list[str]:
    """This build against the `--baseline` build (system picket-base), when one ran."""
    base, this = "picket-base", "picket"
    if not any(base in by_s for by_s in results["runs"].values()):
        return []
    label = results.get("baseline_label", "baseline build")

    def groups(system):
        g = results.get("kx", {}).get(system)
        if g is None:
            return "–"
        if not g:
            return "not exported by this build"
        return ", ".join(f"{k} × {v:,.0f}" for k, v in sorted(g.items()))

    rows = [
        ("W3b connections/s (each a full sidecar handshake)", "w3_full_hs", "rps", 0),
        ("W3b sidecar CPU per connection, both sidecars (µs)", "w3_full_hs", "cpu_us_per_req",
         1),
        ("W3c 64-connection burst, p50 (ms)", "w3_burst64", "p50_ms", 2),
        ("W3c 64-connection burst, p90 (ms)", "w3_burst64", "p90_ms", 2),
        ("W3c sidecar CPU per connection in bursts, both sidecars (µs)", "w3_burst64",
         "cpu_us_per_req", 1),
    ]
    out = [f"| figure | {label} | this build | change |", "|---|---|---|---|"]
    for title, wid, key, digits in rows:
        out.append(f"| {title} | {cell(results, wid, base, key, digits)} | "
                   f"{cell(results, wid, this, key, digits)} | "
                   f"{change(m(results, wid, base, key), m(results, wid, this, key))} |")
    wire = results.get("wire", {})
    for direction, key in (("client to server", "to_port"), ("server to client", "from_port")):
        per = {}
        for system in (base, this):
            w = wire.get(system)
            per[system] = w[key] / w["connections"] if w and w.get("connections") else None
        out.append(f"| TCP payload per sidecar-to-sidecar connection, {direction} (bytes; "
                   f"one burst of 64, tcpdump) | {fmt(per[base], 0)} | {fmt(per[this], 0)} | "
                   f"{change(per[base], per[this])} |")
    for direction, key in (("client to server", "to_port"), ("server to client", "from_port")):
        tot = {s: (wire.get(s) or {}).get(key) for s in (base, this)}
        out.append(f"| TCP payload of the whole 64-connection burst, {direction} (KiB) | "
                   f"{fmt(None if tot[base] is None else tot[base] / 1024, 1)} | "
                   f"{fmt(None if tot[this] is None else tot[this] / 1024, 1)} | "
                   f"{change(tot[base], tot[this])} |")
    out.append(f"| key-exchange groups the frontend sidecar negotiated (its "
               f"`picket_tls_handshakes_total`) | {groups(base)} | {groups(this)} | |")
    return out


def pingpong_table(results) -> list[str]:
    out = ["| system | round trips/s | p50 µs | p99 µs |", "|---|---|---|---|"]
    for s in SYSTEMS:
        if series(results, "w5_pingpong", s, "p50_us"):
            out.append(f"| {NAMES[s]} | {cell(results, 'w5_pingpong', s, 'round_trips_per_s')} | "
                       f"{cell(results, 'w5_pingpong', s, 'p50_us', 0)} | "
                       f"{cell(results, 'w5_pingpong', s, 'p99_us', 0)} |")
    return out


def mem_values(results, system, key, agg):
    vals = [agg(f[key]) for f in results["memory"].get(system, []) if key in f]
    return vals


def mem_cell(vals, scale=1 / 1024, digits=1):
    if not vals:
        return "–"
    vals = [v * scale for v in vals]
    if len(vals) == 1:
        return fmt(vals[0], digits)
    return f"{fmt(med(vals), digits)} ({fmt(min(vals), digits)}–{fmt(max(vals), digits)})"


def memory_table(results) -> list[str]:
    rows = [
        ("largest sidecar, fresh (MiB)", "fresh_kib", max, 1 / 1024),
        ("pair, fresh (MiB)", "fresh_kib", sum, 1 / 1024),
        ("largest sidecar at 2,000 RPS (MiB)", "at_2000_kib", max, 1 / 1024),
        ("pair at 2,000 RPS (MiB)", "at_2000_kib", sum, 1 / 1024),
        ("pair with 1,000 idle client connections (MiB)", "idle_1000_kib", sum, 1 / 1024),
        ("pair with 5,000 idle client connections (MiB)", "idle_5000_kib", sum, 1 / 1024),
        ("per idle client connection, 1,000 (KiB)", "per_idle_conn_b_1000", float, 1 / 1024),
        ("per idle client connection, 5,000 (KiB)", "per_idle_conn_b_5000", float, 1 / 1024),
        ("per idle client connection, 5,000, settled (20 s after they opened; 2 s in a quick "
         "run) (KiB)",
         "per_idle_conn_b_5000_settled", float, 1 / 1024),
        ("largest sidecar, fresh, private memory only (RssAnon, MiB)", "fresh_anon_kib", max,
         1 / 1024),
        ("largest sidecar after the 2,000 RPS load, private memory only (RssAnon, MiB)",
         "after_load_anon_kib", max, 1 / 1024),
    ]
    out = ["| RSS | Picket | nginx | HAProxy |", "|---|---|---|---|"]
    for title, key, agg, scale in rows:
        out.append(f"| {title} | " + " | ".join(
            mem_cell(mem_values(results, s, key, agg), scale, 1 if scale < 1 / 1000 else 2)
            for s in ["picket", "nginx", "haproxy"]) + " |")
    return out


def check(ok) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def targets(results) -> list[str]:
    out = ["| target (issue 6) | Picket | best peer | ratio | |", "|---|---|---|---|---|"]

    def thr(title, wid, key, want):
        peer, pv = best_peer(results, wid, key)
        pk = m(results, wid, "picket", key)
        r = ratio(pk, pv)
        out.append(f"| {title} | {fmt(pk)} | {fmt(pv)} ({NAMES.get(peer, '–')}) | {rfmt(r)} | "
                   f"{check(None if r is None else r >= want)} |")

    thr("W1 saturation, 16 conns, ≥ 1.5x", "w1_c16", "rps", 1.5)
    thr("W1 saturation, 64 conns, ≥ 1.5x", "w1_c64", "rps", 1.5)
    thr("W2 HTTP/2 saturation ≥ 1.5x", "w2_h2", "rps", 1.5)

    d99 = m(results, "w6_2000", "direct", "p99_ms")
    if d99 is not None:
        added = {s: m(results, "w6_2000", s, "p99_ms") for s in ["picket", *PEERS]}
        added = {s: v - d99 for s, v in added.items() if v is not None}
        peers = {p: added[p] for p in PEERS if p in added}
        if "picket" in added and peers:
            peer = min(peers, key=peers.get)
            r = ratio(added["picket"], peers[peer])
            out.append(f"| W6 2,000 RPS added p99 over direct ≤ 0.5x peer's (ms) | "
                       f"{fmt(added['picket'], 3)} | {fmt(peers[peer], 3)} ({NAMES[peer]}) | "
                       f"{rfmt(r)} | {check(None if r is None else added['picket'] <= 0.5 * peers[peer])} |")
    peer, pv = best_peer(results, "w6_2000", "p99.9_ms", higher_better=False)
    pk = m(results, "w6_2000", "picket", "p99.9_ms")
    out.append(f"| W6 2,000 RPS p99.9 no worse than peer's (ms) | {fmt(pk, 3)} | "
               f"{fmt(pv, 3)} ({NAMES.get(peer, '–')}) | {rfmt(ratio(pk, pv))} | "
               f"{check(None if pk is None or pv is None else pk <= pv)} |")
    for wid, what in (("w6_2000", "at 2,000 RPS"), ("w1_c16", "at W1 saturation")):
        peer, pv = best_peer(results, wid, "cpu_us_per_req", higher_better=False)
        pk = m(results, wid, "picket", "cpu_us_per_req")
        r = ratio(pk, pv)
        out.append(f"| sidecar CPU per request {what} ≤ 0.75x (µs, both sidecars) | {fmt(pk, 1)} | "
                   f"{fmt(pv, 1)} ({NAMES.get(peer, '–')}) | {rfmt(r)} | "
                   f"{check(None if r is None else r <= 0.75)} |")
    pk = m(results, "w3_full_hs", "picket", "rps")
    ng = m(results, "w3_full_hs", "nginx", "rps")
    r = ratio(pk, ng)
    out.append(f"| W3b full handshakes ≥ 3x nginx's connections/s | {fmt(pk)} | {fmt(ng)} (nginx) "
               f"| {rfmt(r)} | {check(None if r is None else r >= 3)} |")
    thr("W4 1 MiB bodies ≥ 2x peer's MiB/s", "w4_1mib", "mib_per_s", 2)

    def mem(title, key, agg, limit_kib):
        """`agg` turns one round's record into KiB."""
        v = med(mem_values(results, "picket", key, agg))
        peers = {p: med(mem_values(results, p, key, agg)) for p in PEERS}
        peers = {p: x for p, x in peers.items() if x is not None}
        peer = min(peers, key=peers.get) if peers else None
        scale = 1 if limit_kib < 1024 else 1 / 1024
        out.append(f"| {title} | {fmt(None if v is None else v * scale, 2)} | "
                   f"{fmt(None if peer is None else peers[peer] * scale, 2)} "
                   f"({NAMES.get(peer, '–')}) | {rfmt(ratio(v, peers.get(peer)))} | "
                   f"{check(None if v is None else v <= limit_kib)} |")

    mem("RSS per sidecar fresh ≤ 8 MiB (largest of the two, MiB)", "fresh_kib", max, 8 * 1024)
    mem("RSS per sidecar at 2,000 RPS ≤ 16 MiB (largest, MiB)", "at_2000_kib", max, 16 * 1024)
    mem("≤ 6 KiB per idle client connection (5,000 open, KiB)", "per_idle_conn_b_5000",
        lambda b: b / 1024, 6)
    w8 = results.get("w8", {})
    tele = [v for v in w8.get("variants", []) if "+" in v]
    rows = [(f"W8 {v} cost ≤ 5 % of W1", v, 5) for v in tele] or [
        ("W8 100 policies (telemetry not yet available) cost ≤ 5 % of W1", "100 policies", 5)]
    rows.append(("W8 10,000 policies cost ≤ 10 % of W1", "10000 policies", 10))
    for title, name, limit in rows:
        c = w8_cost(results, name)
        first = med(w8.get("runs", {}).get(name, {}).get("first_request_s", []))
        if c is None and first is not None and first > 1.0:
            out.append(f"| {title} | one request takes {first:.1f} s | policy off | | "
                       f"{check(False)} |")
            continue
        out.append(f"| {title} | {'–' if c is None else f'{c:.1f} %'} | policy off | | "
                   f"{check(None if c is None else c <= limit)} |")
    return out


def unavailable(section) -> list[str] | None:
    """The line that stands for a section that was not run, or None when it was."""
    if section.get("available"):
        return None
    return [f"**Not yet available**: {section.get('reason', 'not run')}."]


def cost(base, value):
    """The drop of `value` against `base` in per cent, or None without both figures."""
    if base in (None, 0) or value is None:
        return None
    return (1 - value / base) * 100


def cost_cell(c) -> str:
    return '–' if c is None else f'{c:+.1f} %'


def w8_section(results) -> list[str]:
    w8 = results.get("w8", {})
    if (missing := unavailable(w8)) is not None:
        return missing
    runs = w8["runs"]
    out = ["Each variant is a fresh Picket pair; variants alternate within each round. "
           "\"Cost\" is the drop in W1 saturation throughput against the policy-off variant "
           "of the same run. The policy variants run with telemetry off (detectors "
           "disabled, no OTLP, no flow log), so \"policy off\" is the bare data path; a "
           "\"+ NAME\" variant is 100 policies plus the overlay `bench/w8/NAME.yaml`.", "",
           "| variant | W1 16 conns req/s | cost vs policy off | CPU µs/req at W1 | "
           "W6 2,000 RPS p99 ms | p99.9 ms | CPU µs/req at 2,000 RPS |",
           "|---|---|---|---|---|---|---|"]
    base = med([r["rps"] for r in runs.get("policy off", {}).get("w1_c16", [])])
    for name in w8.get("variants", runs.keys()):
        by_w = runs.get(name, {})
        w1 = by_w.get("w1_c16", [])
        w6 = by_w.get("w6_2000", [])
        rps = med([r["rps"] for r in w1])
        drop = cost(base, rps)
        first = med(by_w.get("first_request_s", []))
        if not w1 and first is not None and first > 1.0:
            out.append(f"| {name} | not loaded: one request took {first:.1f} s | | | | | |")
            continue
        out.append(
            f"| {name} | {fmt(rps)} | {cost_cell(drop)} | "
            f"{fmt(med([r.get('cpu_us_per_req') for r in w1]), 1)} | "
            f"{fmt(med([r.get('p99_ms') for r in w6]), 3)} | "
            f"{fmt(med([r.get('p99.9_ms') for r in w6]), 3)} | "
            f"{fmt(med([r.get('cpu_us_per_req') for r in w6]), 1)} |")
    failures = [f"- {name}: {f}" for name in w8.get("variants", runs.keys())
                for f in runs.get(name, {}).get("load_failures", [])]
    if failures:
        out += ["", "Runs that completed no request:", "", *failures]
    if not w8.get("telemetry"):
        out += ["", "Telemetry on/off: **not yet available**: the sidecar configuration has no "
                "`telemetry:` section yet. Put the section in `bench/w8/telemetry.yaml` and W8 "
                "adds a \"100 policies + telemetry\" variant."]
    return out


def jwt_section(results) -> list[str]:
    j = results.get("jwt", {})
    if (missing := unavailable(j)) is not None:
        return missing
    runs = j["runs"]
    out = ["One Picket pair with 100 policies and a RequestAuthentication on the orders "
           "sidecars (RS256, RSA-2048, JWK set inline); the same W1 (16 connections, 1 KB) "
           "without a token and with a valid token the harness minted "
           "(`Authorization: Bearer ...`), alternating within each round. \"Cost\" is the drop "
           "in throughput against the no-token run.", "",
           "| variant | W1 16 conns req/s | cost vs no token | CPU µs/req, both sidecars | "
           "added CPU µs/req |", "|---|---|---|---|---|"]
    base = runs.get("no token", [])
    base_rps = med([r["rps"] for r in base])
    base_cpu = med([r.get("cpu_us_per_req") for r in base])
    for name in j.get("variants", runs.keys()):
        rs = runs.get(name, [])
        rps = med([r["rps"] for r in rs])
        cpu = med([r.get("cpu_us_per_req") for r in rs])
        drop = cost(base_rps, rps)
        added = None if cpu is None or base_cpu is None else cpu - base_cpu
        out.append(f"| {name} | {fmt(rps)} ({fmt(min((r['rps'] for r in rs), default=None))}"
                   f"–{fmt(max((r['rps'] for r in rs), default=None))}) | "
                   f"{cost_cell(drop)} | {fmt(cpu, 1)} | "
                   f"{'–' if added is None else f'{added:+.1f}'} |")
    c = j.get("check", {})
    out += ["", f"Check after the runs, from the orders sidecar's metrics: "
            f"{c.get('tokens_sent', 0):,} requests carried the token, "
            f"`picket_jwt_validations_total{{result=\"ok\"}}` {c.get('validated_ok', 0):,.0f}, "
            f"refused {c.get('refused', 0):,.0f}, JWK-set fetches "
            f"(`picket_jwt_jwks_fetches_total`) {c.get('jwks_fetches', 0):,.0f}."]
    return out


def w8_cost(results, name):
    w8 = results.get("w8", {})
    if not w8.get("available"):
        return None
    runs = w8["runs"]
    base = med([r["rps"] for r in runs.get("policy off", {}).get("w1_c16", [])])
    rps = med([r["rps"] for r in runs.get(name, {}).get("w1_c16", [])])
    return cost(base, rps)


def errors_section(results) -> list[str]:
    lines = []
    for wid, by_s in results["runs"].items():
        for s, rs in by_s.items():
            e = sum(r.get("errors", 0) for r in rs)
            if e:
                total = sum(r.get("requests", 0) for r in rs)
                lines.append(f"- {results['titles'].get(wid, wid)} on {NAMES.get(s, s)}: {e} "
                             f"errors (non-2xx or socket) over {total:,} requests")
    return lines or ["- none"]


def markdown(results) -> str:
    mach = results["machine"]
    d = results["durations"]
    st = results.get("startup", {})
    ca = results.get("ca", {})
    L = [
        "# Picket benchmark report",
        "",
        f"Mode **{results['mode']}**: {d['rounds']} round(s) after "
        f"{'a warm-up round' if d['warmup'] and results['mode'] == 'full' else 'a short warm-up'}"
        f", started {results['started']}, took {results.get('elapsed_s', 0) / 60:.1f} min. "
        "Written by `bench/run`; how to read it: `bench/README.md`.",
        "",
        "Figures are medians over the rounds with min–max in brackets. Systems alternate within "
        "each round (direct, Picket, nginx, HAProxy, then the next workload), so every ratio "
        "compares figures taken minutes apart on the same machine. \"Best peer\" is the better "
        "of the nginx and HAProxy pairs for that figure.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs | {mach['nproc']} × {mach['cpu']} |",
        f"| memory | {mach['memory']} |",
        f"| kernel | {mach['kernel']} |",
        f"| open files limit | {mach['nofile']} |",
        f"| scheduling of every benchmark process | {mach.get('scheduling', '–')} |",
        f"| load average (1, 5, 15 min) at start / end | {mach.get('load_start', '–')} / "
        f"{mach.get('load_end', '–')} |",
        f"| Picket | source {mach['picket']} when the run started; binary "
        f"{mach.get('picket_binary', '–')}; sidecars run "
        f"{mach.get('sidecar_binary', mach.get('picket_binary', '–'))}; {mach['rustc']}, "
        f"{mach.get('picket_profile', 'release')} profile |",
        f"| nginx | {mach['nginx']} |",
        f"| HAProxy | {mach['haproxy']} |",
        f"| OpenSSL | {mach['openssl']} |",
        f"| wrk / h2load / oha | {mach['wrk']} / {mach['h2load']} / {mach['oha']} |",
        f"| Python (harness, TCP tools) | {mach['python']} |",
        "",
        "## Set-up",
        "",
        "- Core 0: both proxies of every system (`taskset -c 0`; Picket's runtime therefore runs "
        "one worker thread, nginx `worker_processes 1`, HAProxy `nbthread 1`). Core 1: the load "
        "generator, the backend (nginx, 1 worker, static 1 KB and 1 MiB bodies) and the TCP "
        "echo server.",
        "- Isolation: before each run every proxy process that does not carry that run's "
        "traffic is stopped with SIGSTOP (and continued with SIGCONT when its turn comes), so "
        "an idle system takes no CPU from the one measured. Every benchmark process runs with "
        "the scheduling policy in the machine table, so that other work on the machine waits "
        "for it rather than the other way round.",
        "- One CA for all: the Picket CA issues every certificate (ECDSA P-256 leaves with one "
        "SPIFFE URI SAN, `spiffe://cluster.local/ns/shop/sa/frontend` and `.../orders`); the "
        "sidecars enrol with join tokens, nginx and HAProxy get certificates for the same "
        "identities through the same CA API. TLS 1.3 only everywhere.",
        "- Picket: client → frontend sidecar's upstream listener → HTTP/2 over mTLS (one "
        "multiplexed connection) → orders sidecar → backend. W3b and W5 use `protocol: tcp` "
        "upstreams (one mTLS connection per client connection). "
        + (f"Authorization on, as deployed: {results['picket_policies']} AuthorizationPolicy "
           "documents, default deny (W8 varies this)." if results.get("picket_policies")
           else "This build has no authorization policy.")
        + " Telemetry as a sidecar runs it with no `telemetry:` section: Prometheus metrics and "
        "the lateral-movement detectors on; no OTLP export and no flow log, which need a "
        "destination (W8 measures them).",
        "- nginx: `proxy_ssl_certificate` outbound with upstream keep-alive (HTTP/1.1, up to 128 "
        "idle connections), `ssl_verify_client on` inbound; stream module for TCP. nginx cannot "
        "check a URI SAN, so its outbound side runs `proxy_ssl_verify off` (it does not verify "
        "the server), which makes its handshakes cheaper than the others'.",
        "- HAProxy: HTTP/2 over mTLS between the two (`alpn h2`, `verify required` both ways, "
        "`http-reuse always`; W4's 1 MiB uploads go through a second backend with the default "
        "`http-reuse safe`, because with `always` or `aggressive` HAProxy 2.6.12 ends up "
        "spinning on or stalling a reused HTTP/2 connection after them); TCP mode with TLS for "
        "W5. HAProxy checks the chain, not the SPIFFE ID; Picket checks both.",
        "- W3b: nginx without upstream keep-alive and `proxy_ssl_session_reuse off`, HAProxy "
        "`http-reuse never` + `no-ssl-reuse`: a full handshake per request. Picket has no switch "
        "to turn pooling off: its `tcp` upstream opens one mTLS connection per client "
        "connection, and its inbound side issues no TLS 1.3 session ticket (`openssl s_client "
        "-sess_out` gets none), so that is a full handshake too.",
        "",
        "## Against issue 6's targets",
        "",
        *targets(results),
        "",
        "## Throughput",
        "",
        *throughput_table(results),
        "",
        "## Proxy CPU per request (µs, both proxies summed, user + system)",
        "",
        *cpu_table(results),
        "",
        "Proxy CPU use during the run, % of one core (both proxies share core 0, so 100 % is "
        "the ceiling):",
        "",
        *utilisation_table(results),
        "",
        "## Latency at a fixed rate (W6, oha `--latency-correction`; a quick run paces wrk "
        "instead and reports no percentiles)",
        "",
        "![latency percentiles](latency.svg)",
        "",
    ]
    for wid in ("w6_1000", "w6_2000"):
        if wid in results["runs"]:
            L += [f"### {results['titles'].get(wid, wid)}", "", *latency_table(results, wid), ""]
    if "w3_burst64" in results["runs"]:
        L += ["### W3c burst: 64 new connections opened at once (Python client), one "
              "`Connection: close` GET each; the time from the first connect to the last answer",
              "", *burst_table(results), ""]
    kx = kx_section(results)
    if kx:
        L += ["## Picket against a baseline build (`bench/run --baseline`)", "",
              "Both builds run alternately in the same rounds, on the same CA, backend and "
              "cores; \"change\" is this build against the baseline.", "", *kx, ""]
    L += [
        "### W5 ping-pong round trip (64 B, one connection, Python client)",
        "",
        *pingpong_table(results),
        "",
        "## Memory (W7, fresh processes each round)",
        "",
        "RSS from /proc/PID/status. \"Per idle client connection\" is the pair's RSS growth "
        "from after the 2,000 RPS load to N open keep-alive client connections (each has "
        "carried one request), divided by N.",
        "",
        *memory_table(results),
        "",
        "## Startup and CA (issue 2's figures)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    if st.get("ready_ms"):
        L.append(f"| `picket proxy` start to `/ready` 200, local CA, new key + CSR + enrolment "
                 f"(median of {len(st['ready_ms'])}, min–max) | {fmt(med(st['ready_ms']), 1)} ms "
                 f"({fmt(min(st['ready_ms']), 1)}–{fmt(max(st['ready_ms']), 1)}) |")
    if st.get("rss_kib"):
        L.append(f"| RSS of an idle sidecar 1 s after startup (median) | "
                 f"{fmt(med(st['rss_kib']) / 1024, 2)} MiB |")
    ca_rows = {
        "join_token_disk": "CA issuance with a join token, state on disk (token file rewritten "
                           "+ issuance log, each fsync'd)",
        "renewal_disk": "CA issuance on renewal, state on disk (issuance log fsync'd)",
        "join_token_tmpfs": "CA issuance with a join token, state on tmpfs",
        "renewal_tmpfs": "CA issuance on renewal, state on tmpfs (≈ pure signing and encoding)",
    }
    for key, title in ca_rows.items():
        if key in ca:
            L.append(f"| {title}, one core | {fmt(ca[key]['per_s'], 0)} CSRs/s "
                     f"({fmt(ca[key]['median_us'], 1)} µs each) |")
    L += [
        "",
        "## W8 policy scale and telemetry",
        "",
        *w8_section(results),
        "",
        "## End-user token (JWT) at W1",
        "",
        *jwt_section(results),
        "",
        "## Errors seen during the runs",
        "",
        *errors_section(results),
        "",
    ]
    if results.get("failures"):
        L += ["## Steps that failed", "", *[f"- {f}" for f in results["failures"]], ""]
    L += [
        "## Limits of this measurement",
        "",
        "- Two cores: the load generator and the backend share one, so the direct figures are "
        "bounded by that core and the proxies' by the other; with one worker each the "
        "figures say per-core efficiency, not how a system scales across cores.",
        "- The load generators (wrk, h2load, oha) and the Python TCP tools are on the same core "
        "as the backend; at saturation the proxies' core is the bottleneck (see the CPU % "
        "table). The W5 ping-pong figures include the Python client's own cost (tens of µs).",
        "- A shared virtual machine: run-to-run spread is in the min–max brackets; ratios from "
        "the same run are more trustworthy than absolute numbers across runs.",
        "",
    ]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# SVG


def latency_svg(results) -> str:
    panels = [w for w in ("w6_1000", "w6_2000") if w in results["runs"]]
    pw, ph, ml, mt, mb = 460, 320, 70, 50, 60
    width = ml + len(panels) * (pw + 30) + 150
    height = mt + ph + mb
    vals = [m(results, w, s, k) for w in panels for s in SYSTEMS for k, _ in PERCENTILES]
    vals = [v for v in vals if v and v > 0]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if not vals:
        parts.append('<text x="20" y="40">no latency data</text></svg>')
        return "\n".join(parts)
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    span = math.log10(hi) - math.log10(lo)

    def y(v):
        return mt + ph - (math.log10(max(v, lo)) - math.log10(lo)) / span * ph

    for i, w in enumerate(panels):
        x0 = ml + i * (pw + 30)
        title = results["titles"].get(w, w).replace("W6 fixed rate ", "")
        parts.append(f'<text x="{x0 + pw / 2}" y="{mt - 20}" text-anchor="middle" '
                     f'font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{x0}" y="{mt}" width="{pw}" height="{ph}" fill="none" '
                     f'stroke="#999"/>')
        decade = lo
        while decade <= hi * 1.0001:
            for mult in (1, 2, 5):
                v = decade * mult
                if v > hi * 1.0001:
                    break
                yy = y(v)
                parts.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{yy:.1f}" y2="{yy:.1f}" '
                             f'stroke="{"#ccc" if mult == 1 else "#eee"}"/>')
                if i == 0 or mult == 1:
                    parts.append(f'<text x="{x0 - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                                 f'{v:g}</text>')
            decade *= 10
        step = pw / (len(PERCENTILES) - 1 + 1)
        for j, (_, label) in enumerate(PERCENTILES):
            xx = x0 + step * (j + 0.5)
            parts.append(f'<text x="{xx:.1f}" y="{mt + ph + 18}" text-anchor="middle">'
                         f'{label}</text>')
        for s in SYSTEMS:
            pts = []
            for j, (k, _) in enumerate(PERCENTILES):
                v = m(results, w, s, k)
                if v:
                    pts.append((x0 + step * (j + 0.5), y(v)))
            if not pts:
                continue
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[s]}" '
                         f'stroke-width="2"/>')
            for px, py in pts:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{COLORS[s]}"/>')
    parts.append(f'<text x="18" y="{mt + ph / 2}" transform="rotate(-90 18 {mt + ph / 2})" '
                 f'text-anchor="middle">latency, ms (log scale)</text>')
    parts.append(f'<text x="{ml + len(panels) * (pw + 30) / 2}" y="{height - 15}" '
                 f'text-anchor="middle">percentile (median over rounds; oha with latency '
                 f'correction)</text>')
    lx = ml + len(panels) * (pw + 30) + 5
    for k, s in enumerate(SYSTEMS):
        ly = mt + 20 + k * 22
        parts.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{ly}" y2="{ly}" stroke="{COLORS[s]}" '
                     f'stroke-width="3"/>')
        parts.append(f'<text x="{lx + 30}" y="{ly + 4}">{NAMES[s]}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
