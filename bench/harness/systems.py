"""The backend and the four systems under test, each with the addresses clients aim at.

Every system offers the same targets:
    http1   HTTP/1.1 keep-alive to the backend's 1 KB and 1 MiB files (W1, W3a, W4, W6, W7)
    h2c     HTTP/2 with prior knowledge from the client (W2)
    fullhs  HTTP/1.1 where every client connection also costs a new sidecar-to-sidecar mTLS
            connection (W3b)
    tcp     opaque TCP to an echo server (W5)
    bulk    like http1, for the 1 MiB uploads of W4 (its own backend in HAProxy, see there)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from .certs import FRONTEND, ORDERS, TRUST_DOMAIN, Pki, spiffe
from .policies import write_policies
from .procs import (
    LOAD_CORE,
    SIDECAR_CORE,
    BenchError,
    Proc,
    free_port,
    http_status,
    port_open,
    read_json_file,
    wait_for,
)

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
# Connection and request ceilings high enough that no system closes connections on its own
# during a run (nginx closes a keep-alive connection after 1,000 requests by default).
KEEPALIVE = "keepalive_timeout 600s; keepalive_requests 1000000;"


def nginx_common(work: Path, name: str) -> str:
    tmp = work / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {work}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 20000; }}
""", f"""
    access_log off;
    tcp_nodelay on;
    {KEEPALIVE}
    client_max_body_size 8m;
    client_body_buffer_size 2m;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
"""


# The environment the injector gives every sidecar container (k8s/src/inject.rs,
# `ALLOCATOR_ENV`; docs/vms.md's unit sets it too): the benchmark runs sidecars as shipped.
SIDECAR_ENV = {"MIMALLOC_PURGE_EXTEND_DELAY": "0"}


def sidecar_env() -> dict[str, str]:
    """This process's environment plus the shipped sidecar settings."""
    return {**os.environ, **SIDECAR_ENV}


def sidecar_binary(picket: Path) -> Path:
    """`picket-sidecar` beside `picket` when it is there (a build of the workspace's binaries
    makes both), else `picket` itself: both run the sidecar with the same `proxy` command."""
    slim = picket.with_name("picket-sidecar")
    return slim if slim.is_file() else picket


def wait_ports(proc: Proc, ports: list[int]) -> None:
    for port in ports:
        wait_for(f"{proc.name} to listen on {port}", lambda p=port: port_open(p), proc=proc)


class Collector:
    """An OpenTelemetry collector (rotel, from scripts/install-telemetry-test-deps) on the load
    generator's core that accepts OTLP/gRPC and discards it: what an overlay with
    `${OTLP_ENDPOINT}` exports to. A node-local collector is how sidecars export in production;
    discarding keeps the collector's own work small and the same for every run."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.endpoint = ""

    def start(self) -> str:
        if self.proc and self.proc.alive():
            return self.endpoint
        try:
            agent = subprocess.run(
                ["python3", "-c", "import os, rotel; "
                 "print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"],
                capture_output=True, text=True, check=True).stdout.strip()
        except subprocess.CalledProcessError as e:
            raise BenchError(f"rotel is not installed (scripts/install-bench-deps): {e.stderr}")
        grpc, http = free_port(), free_port()
        self.proc = Proc("rotel", [agent, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
                                   "--otlp-http-endpoint", f"127.0.0.1:{http}",
                                   "--exporter", "blackhole"], self.log_dir, LOAD_CORE)
        wait_ports(self.proc, [grpc])
        self.endpoint = f"http://127.0.0.1:{grpc}"
        return self.endpoint

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class Backend:
    """nginx serving static bodies (HTTP/1.1 port and h2c port) and a TCP echo server, on the
    load generator's core."""

    def __init__(self, work: Path, log_dir: Path, tools: Path):
        self.work = work
        self.log_dir = log_dir
        self.tools = tools
        self.root = work / "www"
        self.root.mkdir(exist_ok=True)
        (self.root / "1k").write_bytes(b"x" * 1024)
        (self.root / "1m").write_bytes(b"y" * (1024 * 1024))
        self.h1 = free_port()
        self.h2c = free_port()
        self.echo = 0
        self.procs: list[Proc] = []

    def start(self) -> None:
        main, http = nginx_common(self.work, "backend")
        conf = self.work / "backend.conf"
        conf.write_text(
            main
            + f"""
http {{
{http}
    sendfile on;
    server {{
        listen 127.0.0.1:{self.h1} backlog=4096;
        listen 127.0.0.1:{self.h2c} http2 backlog=4096;
        root {self.root};
        # POST /1m answers with the file (the 1 MiB request body is read and discarded).
        location / {{ error_page 405 =200 $uri; }}
    }}
}}
"""
        )
        nginx = Proc("backend-nginx", ["nginx", "-c", str(conf), "-p", str(self.work)],
                     self.log_dir, LOAD_CORE)
        portfile = self.work / "echo.port"
        portfile.unlink(missing_ok=True)
        echo = Proc("backend-echo", ["python3", str(self.tools / "tcptool.py"), "echo",
                                     str(portfile)], self.log_dir, LOAD_CORE)
        self.procs = [nginx, echo]
        wait_ports(nginx, [self.h1, self.h2c])
        wait_for("the echo server", portfile.exists, proc=echo)
        self.echo = int(portfile.read_text())
        if http_status(f"http://127.0.0.1:{self.h1}/1k") != 200:
            raise BenchError("the backend does not serve /1k")

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


class System:
    """A system under test: its processes and the targets clients aim at."""

    name = ""
    label = ""

    def __init__(self):
        self.targets: dict[str, str] = {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def accounted(self, target: str) -> list[Proc]:
        """The proxy processes that carry traffic sent to `target` (CPU is summed over them)."""
        return []

    def pair(self) -> list[Proc]:
        """The two proxies whose memory is reported."""
        return []

    def processes(self) -> list[Proc]:
        """Every proxy process of the system."""
        return self.pair()

    def check(self) -> None:
        for p in self.pair():
            p.check_alive()


class Direct(System):
    name = "direct"
    label = "direct (no proxy)"

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend

    def start(self) -> None:
        b = self.backend
        self.targets = {
            "http1": f"http://127.0.0.1:{b.h1}",
            "h2c": f"http://127.0.0.1:{b.h2c}",
            "fullhs": f"http://127.0.0.1:{b.h1}",
            "tcp": f"127.0.0.1:{b.echo}",
        }
        self.targets["bulk"] = self.targets["http1"]


class Picket(System):
    """client -> frontend sidecar (upstream listener) -> mTLS -> orders sidecar -> backend.

    `orders` serves the HTTP/1.1 backend port; `orders-h2c` the backend's h2c port (the
    inbound side speaks the caller's HTTP version to its app, and nginx 1.22 cannot serve
    HTTP/1.1 and h2c on one port); `orders-tcp` the echo server; `orders-raw` the HTTP/1.1
    port again, reached through the frontend's `tcp` upstream `orders-raw`: one mTLS
    connection per client connection. The TCP-only sidecars carry the label `app: orders-tcp`,
    the HTTP ones `app: orders`, so each is admitted by its own policy."""

    name = "picket"
    label = "Picket pair"

    def __init__(self, picket: Path, pki: Pki, backend: Backend, work: Path, log_dir: Path,
                 policies: int | None, overlay: str = "", name: str = "picket",
                 label: str = "Picket pair"):
        super().__init__()
        # A second Picket system (another build, `--baseline`) has its own name, which also
        # prefixes its processes, configuration files and logs.
        self.name = name
        self.label = label
        self.picket = picket
        # The sidecars run the binary the pods' image ships, `picket-sidecar` (the `proxy`
        # command alone), when it was built beside `picket`; the CA and the tools run `picket`.
        self.sidecar_bin = sidecar_binary(picket)
        self.pki = pki
        self.backend = backend
        self.work = work
        self.log_dir = log_dir
        # None: a sidecar without authorization policy support (no `policy:` section);
        # 0: policy off (`default_action: allow`, no files); N: N policies, default deny.
        self.policies = policies
        self.overlay = overlay
        # Another policy document (a RequestAuthentication, say) written beside the
        # authorization policies of every sidecar; its name keys the directory.
        self.extra_policy: tuple[str, str] | None = None
        self.sidecars: dict[str, Proc] = {}
        self.ready: dict[str, dict] = {}

    def policy_dir(self, count: int, sidecar: str) -> Path:
        """A directory of `count` policies for one sidecar. Each sidecar has its own copy, as
        each pod has its own volume in Kubernetes: sidecars watching one shared directory
        trigger each other's reloads without end (each reload's reads are events for the
        others' watchers), which is not how they are deployed."""
        key = str(count) + (f"-{self.extra_policy[0]}" if self.extra_policy else "")
        source = self.work / "policies" / key / "source"
        if not source.is_dir():
            write_policies(source, count)
            if self.extra_policy:
                (source / f"{self.extra_policy[0]}.yaml").write_text(self.extra_policy[1])
        directory = source.parent / sidecar
        if not directory.is_dir():
            shutil.copytree(source, directory)
        return directory

    def config(self, sa: str, app: int, upstreams: list[dict], label: str, name: str,
               admin: str = "127.0.0.1:0") -> str:
        workload = FRONTEND if sa == "frontend" else ORDERS
        lines = [
            "identity:",
            f"  trust_domain: {TRUST_DOMAIN}",
            "  namespace: shop",
            f"  service_account: {sa}",
            "ca:",
            f"  url: {self.pki.url}",
            f"  trust_bundle: {self.pki.bundle}",
            f"  join_token_file: {self.pki.tokens[workload]}",
            "inbound:",
            "  listen: 127.0.0.1:0",
            f"  app: 127.0.0.1:{app}",
            "outbound:",
            "  listen: 127.0.0.1:0",
        ]
        if upstreams:
            lines.append("  upstreams:")
            for u in upstreams:
                lines += [
                    f"  - name: {u['name']}",
                    "    listen: 127.0.0.1:0",
                    f"    address: {u['address']}",
                    f"    identity: {spiffe(ORDERS)}",
                    f"    protocol: {u['protocol']}",
                ]
        lines += ["admin:", f"  listen: {admin}"]
        if self.policies is not None:
            lines += ["workload:", "  labels:", f"    app: {label}", "policy:"]
            if self.policies == 0:
                lines += ["  default_action: allow"]
            else:
                lines += [f"  path: {self.policy_dir(self.policies, name)}",
                          "  default_action: deny"]
        text = "\n".join(lines) + "\n"
        if self.overlay:
            # ${SIDECAR} lets an overlay give each sidecar its own file (a flow log, say).
            overlay = self.overlay.replace("${SIDECAR}", name).replace("${WORK}", str(self.work))
            text += overlay.rstrip("\n") + "\n"
        return text

    def spawn(self, name: str, config: str) -> tuple[Proc, Path]:
        conf = self.work / f"{name}.yaml"
        conf.write_text(config)
        ready = self.work / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        proc = Proc(name, [str(self.sidecar_bin), "proxy", "--config", str(conf),
                           "--ready-file", str(ready)], self.log_dir, SIDECAR_CORE,
                    env=sidecar_env())
        return proc, ready

    def start_sidecar(self, name: str, config: str) -> None:
        proc, ready = self.spawn(name, config)
        info = wait_for(f"{name}'s ready file", lambda: read_json_file(ready), proc=proc)
        wait_for(f"{name} /ready", lambda: http_status(f"http://{info['admin']}/ready") == 200,
                 proc=proc)
        self.sidecars[name] = proc
        self.ready[name] = info

    def start(self) -> None:
        b = self.backend
        n = self.name
        for name, app, label in ((f"{n}-orders", b.h1, "orders"),
                                 (f"{n}-orders-h2c", b.h2c, "orders"),
                                 (f"{n}-orders-tcp", b.echo, "orders-tcp"),
                                 (f"{n}-orders-raw", b.h1, "orders-tcp")):
            self.start_sidecar(name, self.config("orders", app, [], label, name))
        inbound = {k: self.ready[k]["inbound"] for k in self.ready}
        upstreams = [
            {"name": "orders", "address": inbound[f"{n}-orders"], "protocol": "http"},
            {"name": "orders-raw", "address": inbound[f"{n}-orders-raw"], "protocol": "tcp"},
            {"name": "orders-h2c", "address": inbound[f"{n}-orders-h2c"], "protocol": "http"},
            {"name": "echo", "address": inbound[f"{n}-orders-tcp"], "protocol": "tcp"},
        ]
        self.start_sidecar(f"{n}-frontend", self.config("frontend", b.h1, upstreams,
                                                        "frontend", f"{n}-frontend"))
        up = self.ready[f"{n}-frontend"]["upstreams"]
        self.targets = {
            "http1": f"http://{up['orders']}",
            "h2c": f"http://{up['orders-h2c']}",
            "fullhs": f"http://{up['orders-raw']}",
            "tcp": up["echo"],
        }
        self.targets["bulk"] = self.targets["http1"]

    def stop(self) -> None:
        for p in self.sidecars.values():
            p.stop()
        self.sidecars.clear()
        self.ready.clear()

    def accounted(self, target: str) -> list[Proc]:
        back = {"h2c": "orders-h2c", "tcp": "orders-tcp",
                "fullhs": "orders-raw"}.get(target, "orders")
        return [self.sidecars[f"{self.name}-frontend"], self.sidecars[f"{self.name}-{back}"]]

    def inbound_port(self, target: str) -> int:
        """The port of the inbound mTLS listener that carries `target`'s sidecar-to-sidecar
        connections."""
        back = {"h2c": "orders-h2c", "tcp": "orders-tcp",
                "fullhs": "orders-raw"}.get(target, "orders")
        return int(self.ready[f"{self.name}-{back}"]["inbound"].rpartition(":")[2])

    def pair(self) -> list[Proc]:
        return [self.sidecars[f"{self.name}-frontend"], self.sidecars[f"{self.name}-orders"]]

    def handshake_groups(self) -> dict[str, float]:
        """The frontend sidecar's outbound handshakes by key-exchange group, from its
        `picket_tls_handshakes_total`; empty for a build that does not export it."""
        admin = self.ready[f"{self.name}-frontend"]["admin"]
        try:
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError as e:
            raise BenchError(f"{self.name}: cannot read /metrics: {e}") from e
        groups: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r'picket_tls_handshakes_total\{direction="outbound",kx="([a-z0-9]+)"\} '
                         r'(\S+)', line)
            if m:
                groups[m.group(1)] = float(m.group(2))
        return groups

    def processes(self) -> list[Proc]:
        return list(self.sidecars.values())

    def startup_figures(self, runs: int) -> dict:
        """Time from `picket proxy` start to /ready 200 (CA local; a fresh key, CSR and
        enrolment each time) and RSS of the idle sidecar one second after it is ready."""
        to_ready, rss = [], []
        for i in range(runs):
            admin = free_port()
            config = self.config("orders", self.backend.h1, [], "orders",
                                 f"{self.name}-startup-{i}", admin=f"127.0.0.1:{admin}")
            url = f"http://127.0.0.1:{admin}/ready"
            t0 = time.monotonic()
            proc, _ = self.spawn(f"{self.name}-startup-{i}", config)
            try:
                wait_for("/ready", lambda: http_status(url, timeout=0.5) == 200, timeout=30,
                         interval=0.001, proc=proc)
                to_ready.append((time.monotonic() - t0) * 1000)
                time.sleep(1.0)
                rss.append(proc.rss_kib())
            finally:
                proc.stop()
        return {"ready_ms": to_ready, "rss_kib": rss}


class NginxPair(System):
    """Two nginx 1-worker processes: outbound with `proxy_ssl_certificate` and upstream
    keep-alive, inbound with `ssl_verify_client on`; the stream module for TCP."""

    name = "nginx"
    label = "nginx pair"

    def __init__(self, pki: Pki, backend: Backend, work: Path, log_dir: Path):
        super().__init__()
        self.pki = pki
        self.backend = backend
        self.work = work
        self.log_dir = log_dir
        self.front_cert = pki.issue_peer_cert(FRONTEND)
        self.back_cert = pki.issue_peer_cert(ORDERS)
        self.ports = {k: free_port() for k in ("h1", "h2c", "fullhs", "tcp", "in", "in_tcp")}
        self.front: Proc | None = None
        self.back: Proc | None = None

    def front_conf(self) -> str:
        p, c, bundle = self.ports, self.front_cert, self.pki.bundle
        # nginx cannot match a URI SAN, and the SVIDs carry no DNS name, so `proxy_ssl_verify`
        # (which always checks a host name) stays off: the outbound side does not verify the
        # server's chain or identity. HAProxy and Picket verify it.
        client_tls = f"""
        proxy_ssl_certificate {c.chain};
        proxy_ssl_certificate_key {c.key};
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_verify off;"""
        main, http = nginx_common(self.work, "nginx-front")
        return f"""load_module {STREAM_MODULE};
{main}
http {{
{http}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;
    proxy_max_temp_file_size 0;
    {client_tls}
    upstream orders {{
        server 127.0.0.1:{p['in']};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    upstream orders_fullhs {{
        server 127.0.0.1:{p['in']};
    }}
    server {{
        listen 127.0.0.1:{p['h1']} backlog=4096;
        location / {{ proxy_pass https://orders; proxy_ssl_session_reuse on; }}
    }}
    server {{
        listen 127.0.0.1:{p['h2c']} http2 backlog=4096;
        location / {{ proxy_pass https://orders; proxy_ssl_session_reuse on; }}
    }}
    server {{
        listen 127.0.0.1:{p['fullhs']} backlog=4096;
        # No upstream keep-alive and no session resumption: a full handshake per request.
        location / {{ proxy_pass https://orders_fullhs; proxy_ssl_session_reuse off; }}
    }}
}}
stream {{
    server {{
        listen 127.0.0.1:{p['tcp']} backlog=4096;
        tcp_nodelay on;
        proxy_pass 127.0.0.1:{p['in_tcp']};
        proxy_ssl on;
        proxy_ssl_certificate {c.chain};
        proxy_ssl_certificate_key {c.key};
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_trusted_certificate {bundle};
        proxy_ssl_verify off;
    }}
}}
"""

    def back_conf(self) -> str:
        p, c, bundle, b = self.ports, self.back_cert, self.pki.bundle, self.backend
        server_tls = f"""
        ssl_certificate {c.chain};
        ssl_certificate_key {c.key};
        ssl_protocols TLSv1.3;
        ssl_client_certificate {bundle};
        ssl_verify_client on;
        ssl_verify_depth 3;"""
        main, http = nginx_common(self.work, "nginx-back")
        return f"""load_module {STREAM_MODULE};
{main}
http {{
{http}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;
    proxy_max_temp_file_size 0;
    upstream app {{
        server 127.0.0.1:{b.h1};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{p['in']} ssl backlog=4096;
        {server_tls}
        location / {{ proxy_pass http://app; }}
    }}
}}
stream {{
    server {{
        listen 127.0.0.1:{p['in_tcp']} ssl backlog=4096;
        tcp_nodelay on;
        {server_tls}
        proxy_pass 127.0.0.1:{b.echo};
    }}
}}
"""

    def start(self) -> None:
        for side in ("back", "front"):
            conf = self.work / f"nginx-{side}.conf"
            conf.write_text(self.back_conf() if side == "back" else self.front_conf())
            proc = Proc(f"nginx-{side}", ["nginx", "-c", str(conf), "-p", str(self.work)],
                        self.log_dir, SIDECAR_CORE)
            setattr(self, side, proc)
        wait_ports(self.back, [self.ports["in"], self.ports["in_tcp"]])
        wait_ports(self.front, [self.ports[k] for k in ("h1", "h2c", "fullhs", "tcp")])
        p = self.ports
        self.targets = {
            "http1": f"http://127.0.0.1:{p['h1']}",
            "h2c": f"http://127.0.0.1:{p['h2c']}",
            "fullhs": f"http://127.0.0.1:{p['fullhs']}",
            "tcp": f"127.0.0.1:{p['tcp']}",
        }
        self.targets["bulk"] = self.targets["http1"]

    def stop(self) -> None:
        for p in (self.front, self.back):
            if p:
                p.stop()

    def accounted(self, target: str) -> list[Proc]:
        return [self.front, self.back]

    def pair(self) -> list[Proc]:
        return [self.front, self.back]


class HaproxyPair(System):
    """Two HAProxy processes, `nbthread 1`: HTTP/2 over mTLS between them (`verify required`
    both ways), connection reuse on (`http-reuse always`; `safe` for W4's uploads); TCP mode
    with TLS for the opaque stream."""

    name = "haproxy"
    label = "HAProxy pair"

    def __init__(self, pki: Pki, backend: Backend, work: Path, log_dir: Path):
        super().__init__()
        self.pki = pki
        self.backend = backend
        self.work = work
        self.log_dir = log_dir
        self.front_cert = pki.issue_peer_cert(FRONTEND)
        self.back_cert = pki.issue_peer_cert(ORDERS)
        self.ports = {k: free_port() for k in
                      ("h1", "h2c", "fullhs", "tcp", "in", "in_tcp", "bulk")}
        self.front: Proc | None = None
        self.back: Proc | None = None

    # HAProxy wants two descriptors per connection under maxconn: 9,000 fits the 20,000
    # open-files limit and leaves room for 5,000 idle client connections.
    GLOBAL = """global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode http
    maxconn 9000
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout tunnel 600s
"""

    def front_conf(self) -> str:
        p, crt, bundle = self.ports, self.front_cert.combined, self.pki.bundle
        tls = f"ssl crt {crt} ca-file {bundle} verify required"
        return self.GLOBAL + f"""
frontend out_h1
    bind 127.0.0.1:{p['h1']}
    default_backend orders

frontend out_h2c
    bind 127.0.0.1:{p['h2c']} proto h2
    default_backend orders

frontend out_fullhs
    bind 127.0.0.1:{p['fullhs']}
    default_backend orders_fullhs

frontend out_bulk
    bind 127.0.0.1:{p['bulk']}
    default_backend orders_bulk

backend orders
    http-reuse always
    server orders 127.0.0.1:{p['in']} {tls} alpn h2

backend orders_bulk
    # W4's 1 MiB uploads have their own backend with HAProxy's default `http-reuse safe`:
    # with `always` or `aggressive`, HAProxy 2.6.12 ends up spinning on, or stalling, a reused
    # HTTP/2 connection to its peer after a few seconds of them (reproducible), and every
    # later request on that backend hangs.
    http-reuse safe
    server orders 127.0.0.1:{p['in']} {tls} alpn h2

backend orders_fullhs
    # A new connection and a full handshake (no session reuse) for every request.
    http-reuse never
    server orders 127.0.0.1:{p['in']} {tls} alpn h2 no-ssl-reuse

frontend out_tcp
    mode tcp
    bind 127.0.0.1:{p['tcp']}
    default_backend echo

backend echo
    mode tcp
    server orders 127.0.0.1:{p['in_tcp']} {tls}
"""

    def back_conf(self) -> str:
        p, crt, bundle, b = self.ports, self.back_cert.combined, self.pki.bundle, self.backend
        tls = f"ssl crt {crt} ca-file {bundle} verify required"
        return self.GLOBAL + f"""
frontend in
    bind 127.0.0.1:{p['in']} {tls} alpn h2,http/1.1
    default_backend app

backend app
    http-reuse always
    server app 127.0.0.1:{b.h1}

frontend in_tcp
    mode tcp
    bind 127.0.0.1:{p['in_tcp']} {tls}
    default_backend echo

backend echo
    mode tcp
    server echo 127.0.0.1:{b.echo}
"""

    def start(self) -> None:
        for side in ("back", "front"):
            conf = self.work / f"haproxy-{side}.cfg"
            conf.write_text(self.back_conf() if side == "back" else self.front_conf())
            proc = Proc(f"haproxy-{side}", ["haproxy", "-db", "-f", str(conf)],
                        self.log_dir, SIDECAR_CORE)
            setattr(self, side, proc)
        wait_ports(self.back, [self.ports["in"], self.ports["in_tcp"]])
        wait_ports(self.front, [self.ports[k] for k in ("h1", "h2c", "fullhs", "tcp", "bulk")])
        p = self.ports
        self.targets = {
            "http1": f"http://127.0.0.1:{p['h1']}",
            "h2c": f"http://127.0.0.1:{p['h2c']}",
            "fullhs": f"http://127.0.0.1:{p['fullhs']}",
            "tcp": f"127.0.0.1:{p['tcp']}",
            "bulk": f"http://127.0.0.1:{p['bulk']}",
        }

    def stop(self) -> None:
        for p in (self.front, self.back):
            if p:
                p.stop()

    def accounted(self, target: str) -> list[Proc]:
        return [self.front, self.back]

    def pair(self) -> list[Proc]:
        return [self.front, self.back]
