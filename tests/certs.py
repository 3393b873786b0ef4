"""Certificates for the TLS tests, made with the ``openssl`` command line.

One CA signs the agent's certificate (serverAuth and clientAuth, SAN IP:127.0.0.1 and
DNS:localhost), a client's, an expired one and one naming another host; a second CA
signs a certificate the agent must not trust.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_LEAF = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {san}
"""


@dataclass(frozen=True)
class Pair:
    """A certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything the TLS tests use."""

    ca: Path
    agent: Pair
    client: Pair
    expired: Pair
    other_host: Pair  # signed by the CA, but names 192.0.2.1 / elsewhere.invalid
    foreign: Pair  # signed by another CA
    foreign_ca: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pair.key,
             "-out", pair.cert, "-days", "400", "-subj", f"/CN=Edge Test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pair


def _leaf(directory: Path, name: str, ca: Pair, san: str, days: int = 365) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    request, extensions = directory / f"{name}.csr", directory / f"{name}.ext"
    extensions.write_text(_LEAF.format(san=san))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", pair.key, "-out", request,
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key,
             "-CAcreateserial", "-out", pair.cert, "-days", str(days), "-extfile", extensions)
    pair.key.chmod(0o600)
    return pair


def make_pki(directory: Path) -> Pki:
    """Create the CAs and certificates in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other_ca = _ca(directory, "ca"), _ca(directory, "other-ca")
    local = "IP:127.0.0.1,DNS:localhost"
    return Pki(
        ca=ca.cert,
        agent=_leaf(directory, "agent", ca, local),
        client=_leaf(directory, "client", ca, local),
        expired=_leaf(directory, "expired", ca, local, days=-1),
        other_host=_leaf(directory, "elsewhere", ca, "IP:192.0.2.1,DNS:elsewhere.invalid"),
        foreign=_leaf(directory, "foreign", other_ca, local),
        foreign_ca=other_ca.cert,
    )
