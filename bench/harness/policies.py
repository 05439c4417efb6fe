"""Authorization policy sets for the Picket sidecars, and W8's config overlays.

`write_policies(dir, n)` writes n AuthorizationPolicy documents (files of 100). Two of them
admit the benchmark's own traffic: GET /1k and POST /1m from the frontend to the `app: orders`
sidecars (HTTP), and any connection from the frontend to the `app: orders-tcp` sidecars
(opaque TCP). The rest are realistic but never match it: ALLOW rules for other callers,
methods and paths, and every tenth a DENY for a quarantined caller. The two that admit the
traffic come last, so an evaluator that scans policies in order meets all the others first.

An overlay is a YAML fragment appended to every Picket sidecar's configuration: top-level
sections the harness does not write itself (for example `telemetry:`). Each `bench/w8/NAME.yaml`
is run in W8 as the 100-policy configuration plus that overlay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .certs import FRONTEND, TRUST_DOMAIN


@dataclass
class Overlay:
    name: str
    text: str


def load_overlays(directory: Path) -> list[Overlay]:
    if not directory.is_dir():
        return []
    return [Overlay(name=p.stem, text=p.read_text()) for p in sorted(directory.glob("*.yaml"))]


def _policy(name: str, app: str, action: str, rule: str) -> str:
    return f"""apiVersion: picket.dev/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: shop
spec:
  selector:
    matchLabels:
      app: {app}
  action: {action}
  rules:
{rule}"""


def write_policies(directory: Path, count: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frontend = f"{TRUST_DOMAIN}/{FRONTEND}"
    docs = []
    for i in range(max(0, count - 2)):
        app = "orders" if i % 4 else "orders-tcp"
        if i % 10 == 9:
            docs.append(_policy(f"quarantine-{i:05d}", app, "DENY", f"""  - from:
    - source:
        principals: ["{TRUST_DOMAIN}/ns/quarantine/sa/svc{i}"]
"""))
        elif app == "orders-tcp":
            docs.append(_policy(f"tcp-{i:05d}", app, "ALLOW", f"""  - from:
    - source:
        principals: ["{TRUST_DOMAIN}/ns/team{i % 13}/sa/svc{i}"]
"""))
        else:
            docs.append(_policy(f"api-{i:05d}", app, "ALLOW", f"""  - from:
    - source:
        principals: ["{TRUST_DOMAIN}/ns/team{i % 13}/sa/svc{i}", "{TRUST_DOMAIN}/ns/batch/sa/job{i}"]
    to:
    - operation:
        methods: ["GET", "HEAD"]
        paths: ["/api/v{i % 7}/resource{i}/*", "/static/{i}/*"]
  - from:
    - source:
        principals: ["{TRUST_DOMAIN}/ns/ops/sa/admin{i}"]
    to:
    - operation:
        methods: ["POST", "PUT", "DELETE"]
        paths: ["/admin/{i}/*"]
"""))
    docs.append(_policy("frontend-reads-orders", "orders", "ALLOW", f"""  - from:
    - source:
        principals: ["{frontend}"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/1k"]
    - operation:
        methods: ["POST"]
        paths: ["/1m"]
"""))
    docs.append(_policy("frontend-streams-orders", "orders-tcp", "ALLOW", f"""  - from:
    - source:
        principals: ["{frontend}"]
"""))
    for old in directory.glob("*.yaml"):
        old.unlink()
    for start in range(0, len(docs), 100):
        (directory / f"policies-{start // 100:04d}.yaml").write_text(
            "---\n".join(docs[start:start + 100])
        )
    return directory
