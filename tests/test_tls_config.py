"""The [tls] table and per-peer TLS keys: defaults, and errors that name the key."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_module
from agent import tls
from agent.errors import ConfigError
from agent.tls import certificate_days_left, certificate_warning
from tests.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def tls_table(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"certificate": str(pki.agent.cert), "private_key": str(pki.agent.key),
            "ca": str(pki.ca), **extra}


def parse(tls_raw: dict[str, Any] | None, peers: dict[str, Any] | None = None,
          **agent: Any) -> config_module.Config:
    raw: dict[str, Any] = {"agent": {"ae_title": "EDGE", **agent}, "peers": peers or {}}
    if tls_raw is not None:
        raw["tls"] = tls_raw
    return config_module.parse(raw)


def test_defaults_are_those_of_the_issue(pki: Pki) -> None:
    config = parse(tls_table(pki), {"PACS": {"ae_title": "PACS", "host": "10.0.0.5",
                                             "port": 2762, "tls": True}})
    assert config.tls is not None
    assert (config.tls.port, config.tls.require_client_certificate, config.tls.min_version,
            config.tls.handshake_timeout) == (2762, True, "1.2", 5.0)
    assert config.agent.plain_listener is True
    peer = config.peers["PACS"]
    assert peer.tls and peer.verify_name


@pytest.mark.parametrize(("table", "agent", "peers", "key"), [
    ({"min_version": "1.1"}, {}, {}, "tls.min_version"),
    ({"port": 70000}, {}, {}, "tls.port"),
    ({"handshake_timeout": 0}, {}, {}, "tls.handshake_timeout"),
    ({"require_client_certificate": "yes"}, {}, {}, "tls.require_client_certificate"),
    ({"ciphers": "ALL"}, {}, {}, "tls.ciphers"),
    (None, {"plain_listener": False}, {}, "agent.plain_listener"),
    (None, {}, {"PACS": {"ae_title": "PACS", "host": "h", "port": 1, "tls": True}},
     "peers.PACS.tls"),
    ({}, {}, {"PACS": {"ae_title": "PACS", "host": "h", "port": 1, "verify_name": 1}},
     "peers.PACS.verify_name"),
    ({}, {}, {"PACS": {"ae_title": "PACS", "host": "h", "port": 1, "commit": "yes"}},
     "peers.PACS.commit"),
])
def test_errors_name_the_key(pki: Pki, table: dict[str, Any] | None, agent: dict[str, Any],
                             peers: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(None if table is None else tls_table(pki, **table), peers, **agent)
    assert caught.value.key == key


def test_a_missing_file_is_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"certificate": str(pki.agent.cert), "private_key": str(pki.agent.key)})
    assert caught.value.key == "tls.ca"
    config = parse(tls_table(pki, private_key=str(tmp_path / "gone.key")))
    assert config.tls is not None
    with pytest.raises(ConfigError, match="does not exist") as caught:
        tls.load(config.tls)
    assert caught.value.key == "tls.private_key"


def test_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    config = parse(tls_table(pki, private_key=str(pki.client.key)))
    assert config.tls is not None
    with pytest.raises(ConfigError, match="is not the key of") as caught:
        tls.load(config.tls)
    assert caught.value.key == "tls.private_key"


def test_an_expired_certificate_is_refused(pki: Pki) -> None:
    config = parse(tls_table(pki, certificate=str(pki.expired.cert),
                             private_key=str(pki.expired.key)))
    assert config.tls is not None
    with pytest.raises(ConfigError, match="expired on") as caught:
        tls.load(config.tls)
    assert caught.value.key == "tls.certificate"


@pytest.mark.parametrize("content", [None, b"not a key\n", "encrypted"])
def test_an_unusable_key_is_refused(pki: Pki, tmp_path: Path, content: Any) -> None:
    key = tmp_path / "agent.key"
    if content is None:
        key.mkdir()  # unreadable as a file, whoever runs the test (root reads mode 0)
    elif content == "encrypted":
        subprocess.run(["openssl", "pkey", "-in", str(pki.agent.key), "-aes128", "-passout",
                        "pass:secret", "-out", str(key)], check=True, capture_output=True)
    else:
        key.write_bytes(content)
    config = parse(tls_table(pki, private_key=str(key)))
    assert config.tls is not None
    expected = r"cannot read|cannot be used|passphrase|no PEM private key"
    with pytest.raises(ConfigError, match=expected) as caught:
        tls.load(config.tls)
    assert caught.value.key == "tls.private_key"
    assert "secret" not in str(caught.value)


def test_expiry_is_read_from_the_certificate(pki: Pki) -> None:
    config = parse(tls_table(pki))
    assert config.tls is not None
    contexts = tls.load(config.tls)
    assert 363 <= tls.days_left(contexts.not_after) <= 365
    assert contexts.server.minimum_version == tls.VERSIONS["1.2"]


def test_status_warns_from_thirty_days_before_expiry() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    later = (now + dt.timedelta(days=31)).isoformat()
    soon = (now + dt.timedelta(days=29, hours=1)).isoformat()
    assert certificate_days_left(later, now) == 31
    assert certificate_warning(later, now) is None
    assert certificate_warning(soon, now) == "TLS certificate expires in 29 days"
    assert certificate_warning((now - dt.timedelta(days=1)).isoformat(), now) is not None
