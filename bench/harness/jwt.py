"""The end-user token workload (issue 19): an RS256 key, its JWK set, a token the harness
mints and signs itself, and the RequestAuthentication document that makes the orders sidecars
validate it.

The key, the JWK set and the signature come from the `openssl` command line (already a
benchmark dependency), so no Python package is needed. The JWK set is given inline
(`jwks:`): the sidecar has its keys from the policy load on, and no request can wait for or
cause a key fetch; `bench/run` checks afterwards that the sidecar validated every token and
fetched no key set.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import BenchError

ISSUER = "https://idp.bench.local"
AUDIENCE = "orders"
SUBJECT = "user-1"
KID = "bench-rs256"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(argv: list[str], data: bytes | None = None) -> bytes:
    out = subprocess.run(["openssl", *argv], input=data, capture_output=True, timeout=60)
    if out.returncode != 0:
        raise BenchError(f"openssl {' '.join(argv)} exited {out.returncode}: "
                         f"{out.stderr.decode(errors='replace')[-400:]}")
    return out.stdout


@dataclass
class Material:
    token: str
    jwks: str
    document: str  # the RequestAuthentication YAML document


def mint(work: Path, lifetime_s: int = 86400) -> Material:
    """A fresh RSA-2048 key in `work`, its JWK set and one RS256 token valid for
    `lifetime_s` seconds (issuer, audience, subject as above)."""
    key = work / "jwt-rs256.pem"
    _openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
              "-out", str(key)])
    modulus = _openssl(["rsa", "-in", str(key), "-noout", "-modulus"]).decode()
    m = re.search(r"Modulus=([0-9A-Fa-f]+)", modulus)
    if not m:
        raise BenchError(f"cannot read the RSA modulus from openssl's output: {modulus[:200]}")
    n = bytes.fromhex(m.group(1))
    jwks = json.dumps({"keys": [{"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
                                 "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]},
                      separators=(",", ":"))
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "iat": now,
              "exp": now + lifetime_s}
    signing_input = ".".join(b64url(json.dumps(p, separators=(",", ":")).encode())
                             for p in (header, claims))
    signature = _openssl(["dgst", "-sha256", "-sign", str(key), "-binary"],
                         signing_input.encode())
    token = f"{signing_input}.{b64url(signature)}"
    # JSON string syntax is valid YAML double-quoted scalar syntax.
    document = f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: bench-idp
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  jwtRules:
  - issuer: "{ISSUER}"
    audiences: ["{AUDIENCE}"]
    jwks: {json.dumps(jwks)}
"""
    return Material(token=token, jwks=jwks, document=document)


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples of `name` (Prometheus text) whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(2))
    return total
