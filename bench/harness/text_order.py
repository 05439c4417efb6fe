"""The functions a sidecar runs, in the order its program text should be laid out: first what
it runs from start to /ready, then what carrying requests adds (W1, W2, W4 through the Picket
pair). Each sidecar runs under callgrind; its counters are dumped at /ready and again after
the requests, and the functions of the sidecar's own binary named in each dump are listed.

The list is the linker's symbol ordering file for release builds (cli/build.rs): the code a
fresh sidecar runs sits together, so the kernel maps little of the rest of the program.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from .__main__ import MAIN_POLICIES
from .certs import Pki
from .procs import BenchError, stop_all
from .profile import ProfiledPicket, callgrind_dump, expand, h2load, workloads
from .systems import Backend, sidecar_binary

# callgrind's mark of a recursion level (`--separate-recs`): `f'2` is `f`.
RECURSION = re.compile(r"'\d+$")


def functions(path: Path, binary: str) -> list[str]:
    """Functions of object `binary` that a callgrind output names as costed (`fn=`), in the
    order first named."""
    names: dict[str, str] = {}
    objects: dict[str, str] = {}
    out: list[str] = []
    seen = set()
    current_ob = ""
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "ob":
            current_ob = expand(objects, value)
        elif key == "cob":
            expand(objects, value)  # may name an object for later lines
        elif key in ("fn", "cfn"):
            name = RECURSION.sub("", expand(names, value))
            # A called function (cfn) may live in another object; only the costed one counts.
            # Addresses without a symbol (`0x...`) cannot be ordered.
            if (key == "fn" and Path(current_ob).name == binary and name not in seen
                    and not name.startswith("0x") and " " not in name):
                seen.add(name)
                out.append(name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m harness.text_order")
    ap.add_argument("--picket", required=True, help="the picket binary (the sidecars run "
                    "picket-sidecar beside it when it is there)")
    ap.add_argument("--out", required=True, help="the list to write")
    ap.add_argument("--requests", type=int, default=200, help="requests per workload")
    args = ap.parse_args()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run(args)
    except BenchError as e:
        print(f"text-order: {e}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - report, stop what was started, fail
        traceback.print_exc()
        return 1
    finally:
        stop_all()


def run(args) -> int:
    picket = Path(args.picket).resolve()
    binary = sidecar_binary(picket).name
    work = Path(tempfile.mkdtemp(prefix="picket-text-order-"))
    logs = work / "logs"
    logs.mkdir()
    cg = work / "callgrind"
    cg.mkdir()
    pki = Pki(picket, work, logs)
    pki.init()
    backend = Backend(work, logs, Path(__file__).parent)
    backend.start()
    wrap = ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
            "--dump-line=no", "--vgdb=yes", f"--callgrind-out-file={cg}/%NAME%.out"]
    names = ["frontend", "orders", "orders-h2c", "orders-tcp", "orders-raw"]
    s = ProfiledPicket(picket, pki, backend, work, logs, policies=MAIN_POLICIES,
                       wrap={f"picket-{n}": wrap for n in names}, start_timeout=600)
    s.start()
    start = [callgrind_dump(p, cg, cg / f"start-{p.name}.callgrind") for p in s.processes()]
    wl = workloads(2000, 160)
    for wid in ("w1", "w2", "w4"):
        w = wl[wid][1]
        n = max(round(args.requests * w.share), 2 * w.connections)
        h2load(s.targets[w.target], w, n, timeout=600)
    serve = [callgrind_dump(p, cg, cg / f"serve-{p.name}.callgrind") for p in s.processes()]
    # In the order callgrind first names them, not sorted: sorted by name, the frontend kept
    # about 0.2 MiB more resident (10,284 against 10,080 KiB, medians of three starts).
    order: list[str] = []
    seen = set()
    for path in [*start, *serve]:
        for name in functions(path, binary):
            if name not in seen:
                seen.add(name)
                order.append(name)
    first = {f for path in start for f in functions(path, binary)}
    n_start = len(first)
    out = Path(args.out)
    if out.exists():
        # How stale the list being replaced was: renamed or moved code drops out of it.
        kept = first & {line.strip() for line in out.read_text().splitlines()
                        if not line.startswith("#")}
        print(f"text-order: the previous list had {len(kept)} of the {n_start} functions "
              f"run to /ready")
    header = (f"# The order of a release build's program text (cli/build.rs), written by\n"
              f"# bench/text-order: the {n_start} functions a sidecar runs to /ready, then the\n"
              f"# {len(order) - n_start} that carrying W1, W2 and W4 adds. Regenerate after\n"
              f"# changing what a sidecar runs at start (bench/README.md).\n")
    out.write_text(header + "\n".join(order) + "\n")
    print(f"text-order: {n_start} functions to /ready, {len(order) - n_start} more serving; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
