"""Small TCP load tools for the benchmark, run as separate processes (pinned by the caller).

    tcptool.py echo PORTFILE              echo server on 127.0.0.1:0; writes its port to PORTFILE
    tcptool.py stream HOST:PORT SECONDS    one connection, write and read back as fast as possible
    tcptool.py pingpong HOST:PORT SECONDS  one connection, 64-byte round trips one at a time
    tcptool.py idle URL COUNT [COUNT...]   open COUNT keep-alive HTTP/1.1 connections, one request
                                           each, then hold them; prints a JSON line per step and
                                           waits for a line on stdin before the next step
    tcptool.py burst URL N SECONDS         bursts of N new connections opened at once, one
                                           `Connection: close` GET each; the time from the first
                                           connect to the last complete answer, burst after burst

Each client prints one JSON object on stdout. Only loopback addresses are accepted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import selectors
import socket
import sys
import threading
import time
import urllib.parse

CHUNK = 256 * 1024
PING_SIZE = 64


def loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"tcptool: refusing non-loopback address {host}")
    return host


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return loopback(host), int(port)


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


# ---------------------------------------------------------------------------------------------
# echo server


def echo(portfile: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(tmp, portfile)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                conn.sendall(view[:n])
        except OSError:
            pass
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------------------------------------
# stream: bytes echoed back per second over one connection


def stream(addr: tuple[str, int], seconds: float) -> dict:
    sock = connect(addr)
    payload = memoryview(b"\x5a" * CHUNK)
    stop = threading.Event()
    sent = 0

    def writer() -> None:
        nonlocal sent
        try:
            while not stop.is_set():
                sock.sendall(payload)
                sent += CHUNK
        except OSError:
            pass

    buf = bytearray(CHUNK)
    received = 0
    t = threading.Thread(target=writer, daemon=True)
    start = time.perf_counter()
    deadline = start + seconds
    t.start()
    while True:
        n = sock.recv_into(buf)
        if not n:
            break
        received += n
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    stop.set()
    sock.close()
    return {
        "seconds": elapsed,
        "bytes": received,
        "mib_per_s": received / elapsed / (1024 * 1024),
    }


# ---------------------------------------------------------------------------------------------
# ping-pong: one small message in flight at a time


def pingpong(addr: tuple[str, int], seconds: float) -> dict:
    sock = connect(addr)
    msg = b"p" * PING_SIZE
    buf = bytearray(PING_SIZE)
    view = memoryview(buf)
    rtts: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        t0 = clock()
        sock.sendall(msg)
        got = 0
        while got < PING_SIZE:
            n = sock.recv_into(view[got:])
            if not n:
                raise SystemExit("tcptool: connection closed during ping-pong")
            got += n
        now = clock()
        rtts.append(now - t0)
    sock.close()
    elapsed = (now - start) / 1e9
    rtts.sort()

    def pct(p: float) -> float:
        return rtts[min(len(rtts) - 1, int(p / 100 * len(rtts)))] / 1000

    return {
        "seconds": elapsed,
        "round_trips": len(rtts),
        "round_trips_per_s": len(rtts) / elapsed,
        "p50_us": pct(50),
        "p99_us": pct(99),
        "max_us": rtts[-1] / 1000,
    }


# ---------------------------------------------------------------------------------------------
# idle: many keep-alive HTTP/1.1 connections, each having carried one request


def idle(url: str, counts: list[int]) -> None:
    parts = urllib.parse.urlsplit(url)
    addr = (loopback(parts.hostname or ""), parts.port or 80)
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n".encode()
    )
    held: list[socket.socket] = []
    for target in counts:
        start = time.perf_counter()
        failures = 0
        while len(held) < target:
            batch = []
            sel = selectors.DefaultSelector()
            for _ in range(min(200, target - len(held))):
                try:
                    s = connect(addr)
                    s.sendall(request)
                    s.setblocking(False)
                    batch.append(s)
                    sel.register(s, selectors.EVENT_READ, bytearray())
                except OSError:
                    failures += 1
            pending = len(batch)
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    s, data = key.fileobj, key.data
                    try:
                        chunk = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        failures += 1
                        sel.unregister(s)
                        batch.remove(s)
                        s.close()
                        pending -= 1
                        continue
                    data += chunk
                    if response_complete(data):
                        sel.unregister(s)
                        pending -= 1
            sel.close()
            held.extend(batch)
            # Refused or reset connections are replaced in the next batch, within a budget.
            if failures > target // 2:
                break
        print(
            json.dumps(
                {
                    "open": len(held),
                    "target": target,
                    "failures": failures,
                    "seconds": time.perf_counter() - start,
                }
            ),
            flush=True,
        )
        if sys.stdin.readline() == "":
            break
    for s in held:
        s.close()


# ---------------------------------------------------------------------------------------------
# burst: N new connections at once, as when a workload starts and opens its pool


def one_burst(addr: tuple[str, int], request: bytes, n: int) -> tuple[float, int]:
    """Opens `n` connections at once, sends `request` on each and reads each answer to the end
    of the response. Returns the seconds from the first connect to the last answer and the
    number of connections that failed."""
    sel = selectors.DefaultSelector()
    start = time.perf_counter()
    pending = 0
    failures = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, 115):  # EINPROGRESS
            failures += 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE, bytearray())
        pending += 1
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=1):
            s, data = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                try:
                    s.sendall(request)
                    sel.modify(s, selectors.EVENT_READ, data)
                except OSError:
                    failures += 1
                    pending -= 1
                    sel.unregister(s)
                    s.close()
                continue
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                data += chunk
                if not response_complete(data):
                    continue
            elif not data.startswith(b"HTTP/1.1 200"):
                failures += 1
            pending -= 1
            sel.unregister(s)
            s.close()
    elapsed = time.perf_counter() - start
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return elapsed, failures + pending


def burst(url: str, n: int, seconds: float) -> dict:
    parts = urllib.parse.urlsplit(url)
    addr = (loopback(parts.hostname or ""), parts.port or 80)
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
               "Connection: close\r\n\r\n").encode()
    times: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end or not times:
        elapsed, failed = one_burst(addr, request, n)
        times.append(elapsed)
        failures += failed
        # Let the closed connections settle so that bursts do not overlap.
        time.sleep(0.05)
    times.sort()

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(len(times) * p / 100))] * 1000

    return {
        "bursts": len(times),
        "connections": n,
        "requests": len(times) * n - failures,
        "errors": failures,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "max_ms": times[-1] * 1000,
    }


def response_complete(data: bytearray) -> bool:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = bytes(data[:head_end]).decode("latin-1").lower()
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            return len(data) - head_end - 4 >= int(value.strip())
    return True


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "echo":
        echo(args[0])
    elif cmd == "stream":
        print(json.dumps(stream(parse_addr(args[0]), float(args[1]))), flush=True)
    elif cmd == "pingpong":
        print(json.dumps(pingpong(parse_addr(args[0]), float(args[1]))), flush=True)
    elif cmd == "idle":
        idle(args[0], [int(c) for c in args[1:]])
    elif cmd == "burst":
        print(json.dumps(burst(args[0], int(args[1]), float(args[2]))), flush=True)
    else:
        raise SystemExit(f"tcptool: unknown command {cmd}")


if __name__ == "__main__":
    main()
