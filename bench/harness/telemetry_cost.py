"""What telemetry costs per request: compares `bench/profile` runs of one binary on W1 under
several telemetry configurations (`bench/telemetry-cost` makes them), per sidecar.

For each configuration DIR/<config>/ holds a profile (results.json and the callgrind dumps of
N and 2N requests). The summary gives instructions and allocations per request against the
first configuration (`off`), the inclusive cost per request of the telemetry entry points,
and, per configuration, the functions whose inclusive cost per request grew most against
the first one. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .profile import parse_callgrind, short

ROLES = ("frontend", "inbound")

# The request path's telemetry entry points and the work behind them (substrings of the
# demangled names; a function matching several rows is counted in each).
ENTRY_POINTS = [
    ("flow record built and handed over (`RequestCtx::finish`)", "pipeline::RequestCtx::finish"),
    ("`Telemetry::record_request` (before ee259dd)", "telemetry::Telemetry::record_request"),
    ("`Telemetry::request_ended` (detectors, span end)", "telemetry::Telemetry::request_ended"),
    ("`Telemetry::request_record` (record to the flow log, alerts)",
     "telemetry::Telemetry::request_record"),
    ("detectors (`Inner::detect`)", "telemetry::Inner::detect"),
    ("flow log, request side (`FlowLog::write*`)", "flow_log::FlowLog::write"),
    ("flow log, writer thread (`flow_log::write_loop`)", "flow_log::write_loop"),
    ("server span start (`Telemetry::server_span`)", "telemetry::Telemetry::server_span"),
    ("client span start (`Telemetry::client_span`)", "telemetry::Telemetry::client_span"),
    ("trace context injected (`RequestSpan::inject`)", "trace::RequestSpan::inject"),
    ("span end (`RequestSpan::finish`)", "trace::RequestSpan::finish"),
    ("span export task (`export::export_loop`)", "export::export_loop"),
    ("span encoding (`export::encode`)", "telemetry::export::encode"),
]


def per_request(directory: Path, role: str) -> tuple[dict, dict] | None:
    """Inclusive instructions per request by function, and the profile's figures."""
    results = json.loads((directory / "results.json").read_text())
    n = results["requests"]
    fig = results["workloads"]["w1"]["sidecars"][role]
    dumps = directory / "callgrind"
    one, two = dumps / f"w1-{n}-{role}.callgrind", dumps / f"w1-{2 * n}-{role}.callgrind"
    if not (one.exists() and two.exists()):
        return None
    a, b = parse_callgrind(one), parse_callgrind(two)
    inc = {k: (b["inclusive"].get(k, 0) - a["inclusive"].get(k, 0)) / n
           for k in set(a["inclusive"]) | set(b["inclusive"])}
    return inc, fig


def entry(inc: dict, needle: str) -> float:
    """The largest inclusive cost of a function matching `needle` (nested frames of one
    entry point, such as closures, are inside its own cost)."""
    costs = [v for k, v in inc.items() if needle in k]
    return max(costs, default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m harness.telemetry_cost")
    ap.add_argument("--out", required=True, help="the directory with one profile per configuration")
    ap.add_argument("--label", default="")
    ap.add_argument("configs", nargs="+", help="configuration names, the baseline first")
    args = ap.parse_args()
    out = Path(args.out)
    data: dict[str, dict[str, tuple[dict, dict]]] = {}
    for c in args.configs:
        for role in ROLES:
            r = per_request(out / c, role)
            if r is None:
                print(f"telemetry_cost: no callgrind dumps for {c} {role}", file=sys.stderr)
                return 1
            data.setdefault(c, {})[role] = r
    base = args.configs[0]
    lines = [f"# Telemetry cost per request, W1 {args.label}", "",
             "Instructions and allocations per request from callgrind (the difference between "
             "2N and N requests, divided by N; every thread of the sidecar counted), per "
             f"configuration, and against `{base}`.", "",
             "| configuration | frontend instr. | inbound instr. | both | against "
             f"{base} | allocations frontend / inbound / both |",
             "|---|---:|---:|---:|---:|---|"]
    base_both = sum(data[base][r][1]["instructions_per_req"] for r in ROLES)
    summary = {}
    for c in args.configs:
        ins = [data[c][r][1]["instructions_per_req"] for r in ROLES]
        al = [data[c][r][1]["allocs_per_req"] for r in ROLES]
        both = sum(ins)
        summary[c] = {"instructions": dict(zip(ROLES, ins)), "allocations": dict(zip(ROLES, al))}
        lines.append(f"| {c} | {ins[0]:,.0f} | {ins[1]:,.0f} | {both:,.0f} | "
                     f"{(both - base_both) / base_both:+.1%} | "
                     f"{al[0]:.1f} / {al[1]:.1f} / {sum(al):.1f} |")
    lines += ["", "Telemetry entry points, inclusive instructions per request (frontend / "
              "inbound):", "",
              "| function | " + " | ".join(args.configs) + " |",
              "|---|" + "---:|" * len(args.configs)]
    for title, needle in ENTRY_POINTS:
        cells = []
        for c in args.configs:
            v = [entry(data[c][r][0], needle) for r in ROLES]
            cells.append(f"{v[0]:,.0f} / {v[1]:,.0f}")
        if any(cell != "0 / 0" for cell in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for c in args.configs[1:]:
        for role in ROLES:
            now, was = data[c][role][0], data[base][role][0]
            total = data[c][role][1]["instructions_per_req"]
            grown = sorted(((k, now.get(k, 0) - was.get(k, 0)) for k in set(now) | set(was)),
                           key=lambda kv: -kv[1])
            # The frames that enclose the whole request grow by the whole difference.
            grown = [(k, d) for k, d in grown if now.get(k, 0) < 0.5 * total][:25]
            lines += ["", f"## {c}, {role}: functions whose inclusive cost grew most against "
                      f"{base}", "", "| grown by | inclusive | function |", "|---:|---:|---|"]
            lines += [f"| {d:,.0f} | {now.get(k, 0):,.0f} | `{short(k)}` |" for k, d in grown]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines[:12 + len(args.configs) + len(ENTRY_POINTS)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
