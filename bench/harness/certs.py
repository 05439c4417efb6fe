"""One set of identities for every system: the real Picket CA issues them all.

The Picket sidecars enrol with join tokens as in production (key made in memory, CSR, CA API).
The nginx and HAProxy pairs get certificates for the same SPIFFE identities from the same CA
through the same API: openssl makes an ECDSA P-256 key and CSR, the CA signs it. So every
system presents a leaf with exactly one URI SAN chained through the same intermediate to the
same root, and verifies its peer against the same bundle.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .procs import LOAD_CORE, BenchError, Proc, read_json_file, wait_for

TRUST_DOMAIN = "cluster.local"
FRONTEND = "ns/shop/sa/frontend"
ORDERS = "ns/shop/sa/orders"


def spiffe(workload: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{workload}"


@dataclass
class PeerCert:
    """A key and chain on disk for nginx (separate files) and HAProxy (one combined file)."""

    key: Path
    chain: Path
    combined: Path


class Pki:
    """The Picket CA (state, running API) and the files every system reads."""

    def __init__(self, picket: Path, work: Path, log_dir: Path):
        self.picket = picket
        self.dir = work / "pki"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self.dir / "ca-state"
        self.log_dir = log_dir
        self.bundle = self.dir / "bundle.pem"
        self.tokens: dict[str, Path] = {}
        self.server: Proc | None = None
        self.url = ""

    def _picket(self, *args: str) -> str:
        out = subprocess.run(
            [str(self.picket), *args], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise BenchError(f"picket {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def init(self) -> None:
        self._picket("ca", "init", "--trust-domain", TRUST_DOMAIN, "--state-dir", str(self.state))
        self.bundle.write_text(self._picket("ca", "bundle", "--state-dir", str(self.state)))
        for workload in (FRONTEND, ORDERS):
            # Many uses: every sidecar start (and restart for fresh-memory figures) enrols.
            token = self._picket(
                "ca", "token", "create", "--state-dir", str(self.state),
                "--identity", workload, "--ttl", "24h", "--uses", "100000",
            ).strip()
            path = self.dir / (workload.rsplit("/", 1)[1] + ".token")
            path.write_text(token + "\n")
            path.chmod(0o600)
            self.tokens[workload] = path
        self.start_server()

    def start_server(self) -> None:
        ready = self.dir / "ca-ready.json"
        ready.unlink(missing_ok=True)
        # The CA is idle during the measurements (24 h leaves); it sits with the load generator.
        self.server = Proc(
            "picket-ca",
            [str(self.picket), "ca", "serve", "--state-dir", str(self.state),
             "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
            self.log_dir, LOAD_CORE,
        )
        info = wait_for("the CA ready file", lambda: read_json_file(ready), proc=self.server)
        self.url = f"https://{info['listen']}"

    def issue_peer_cert(self, workload: str) -> PeerCert:
        """A certificate for `workload` from the CA's API, for a peer proxy (nginx, HAProxy)."""
        name = workload.rsplit("/", 1)[1]
        key = self.dir / f"peer-{name}.key"
        csr = self.dir / f"peer-{name}.csr"
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            check=True, capture_output=True,
        )
        key.chmod(0o600)
        subprocess.run(
            ["openssl", "req", "-new", "-key", str(key), "-subj", "/O=picket-bench",
             "-out", str(csr)],
            check=True, capture_output=True,
        )
        token = self.tokens[workload].read_text().strip()
        body = json.dumps({"csr": csr.read_text()}).encode()
        request = urllib.request.Request(
            self.url + "/v1/certificates",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        context = ssl.create_default_context(cafile=str(self.bundle))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as r:
                answer = json.loads(r.read())
        except OSError as e:
            raise BenchError(f"the CA refused a certificate for {workload}: {e}") from e
        if answer.get("spiffe_id") != spiffe(workload):
            raise BenchError(f"the CA issued {answer.get('spiffe_id')} for {workload}")
        chain = self.dir / f"peer-{name}.chain.pem"
        chain.write_text(answer["chain_pem"])
        combined = self.dir / f"peer-{name}.haproxy.pem"
        combined.write_text(answer["chain_pem"] + key.read_text())
        combined.chmod(0o600)
        return PeerCert(key=key, chain=chain, combined=combined)
