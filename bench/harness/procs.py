"""Processes the benchmark starts: pinned, logged, measured from /proc, and always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Core 0 carries the system under test (both sidecars), core 1 the load generator and backend.
SIDECAR_CORE = "0"
LOAD_CORE = "1"

_started: list["Proc"] = []


class BenchError(RuntimeError):
    """A step of the benchmark could not run."""


class Proc:
    """One long-running process started by the benchmark."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, core: str, **kw):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            ["taskset", "-c", core, *argv],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
        # taskset execs the program, so this is the program's own PID.
        self.pid = self.popen.pid
        self.started_at = time.monotonic()
        self.frozen = False
        _started.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}; see {self.log_path}"
            )

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def anon_kib(self) -> int:
        """Private memory: RssAnon, without the file pages (program text, shared libraries)
        that VmRSS counts and every process running the same binary shares."""
        return status_kib(self.pid, "RssAnon")

    def freeze(self) -> None:
        """SIGSTOP: the process takes no CPU at all until `thaw`; its sockets stay open."""
        if self.popen.poll() is None and not self.frozen:
            os.kill(self.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.popen.poll() is None and self.frozen:
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self, timeout: float = 10) -> None:
        self.thaw()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        if self in _started:
            _started.remove(self)


def stop_all() -> None:
    for p in list(reversed(_started)):
        try:
            p.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port for programs that cannot bind port 0 and report back (nginx, HAProxy,
    rotel). It is taken below the kernel's ephemeral range (`ip_local_port_range`): a port the
    kernel chose would be free only until the next port-0 bind or outgoing connection, and a
    sidecar binding port 0 between this check and the program's own bind took it once, so the
    program failed to listen and its clients reached the sidecar instead. A port is handed out
    once per run."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, _high = (int(v) for v in f.read().split())
    first = max(1024, low - 16384)
    if low - first < 1024:
        raise BenchError(f"the ephemeral port range starts at {low}: no room below it for "
                         "fixed ports")
    start = first + (os.getpid() * 7919 + len(_handed_out) * 104729) % (low - first)
    for i in range(low - first):
        port = first + (start - first + i) % (low - first)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise BenchError(f"no free loopback port in {first}..{low}")


def wait_for(what: str, check, timeout: float = 30, interval: float = 0.01, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_json_file(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def run(argv: list[str], timeout: float, core: str = LOAD_CORE, **kw) -> str:
    """Runs a short command pinned to `core`; returns stdout, raises BenchError on failure."""
    try:
        out = subprocess.run(
            ["taskset", "-c", core, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f}s") from e
    if out.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-800:]}"
        )
    return out.stdout
