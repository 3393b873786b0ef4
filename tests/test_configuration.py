"""Configuration: a good file parses; every bad one names its key and stops start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import ConfigError, parse

GOOD = {
    "agent": {"ae_title": "EDGE", "port": 11112, "bind": "0.0.0.0", "data_dir": "data"},
    "peers": {
        "CT1": {"ae_title": "CT1", "host": "192.168.1.20", "port": 104,
                "allow": ["echo", "store"]},
        "PACS": {"ae_title": "PACS", "host": "pacs.example.org", "port": 11112},
    },
}


def with_change(path: str, value: object) -> dict[str, object]:
    """GOOD with one dotted key set (or removed when value is ...)."""
    document = {"agent": dict(GOOD["agent"]),
                "peers": {k: dict(v) for k, v in GOOD["peers"].items()}}
    *parents, leaf = path.split(".")
    table: dict[str, object] = document
    for part in parents:
        table = table.setdefault(part, {})  # type: ignore[assignment]
    if value is ...:
        table.pop(leaf, None)
    else:
        table[leaf] = value
    return document


def test_a_good_file_parses_into_settings_and_peers(tmp_path: Path) -> None:
    config = parse(GOOD, source=tmp_path / "agent.toml")
    assert config.agent.ae_title == "EDGE"
    assert config.agent.data_dir == (tmp_path / "data").resolve()
    assert config.agent.allow_unknown == frozenset()
    assert config.peers["CT1"].allow == frozenset({"echo", "store"})
    assert config.peers["PACS"].allow == frozenset({"echo"})
    assert config.peers["PACS"].verify_host is True
    assert config.peer_by_ae("CT1") is config.peers["CT1"]
    assert config.agent.handshake_timeout == 5.0
    assert parse(with_change("agent.handshake_timeout", 2)).agent.handshake_timeout == 2.0
    assert config.qr.fall_through == () and config.peers["CT1"].fall_through is True
    falling = parse(with_change("qr.fall_through", ["PACS"]))
    assert falling.qr.fall_through == ("PACS",) and falling.qr.fall_through_timeout == 5.0


@pytest.mark.parametrize(("path", "value", "key", "words"), [
    ("agent.colour", "blue", "agent.colour", "unknown key"),
    ("peers.CT1.colour", "blue", "peers.CT1.colour", "unknown key"),
    ("forwarding", {}, "forwarding", "unknown key"),
    ("agent.port", "104", "agent.port", "must be an integer"),
    ("agent.port", True, "agent.port", "must be an integer"),
    ("agent.ae_title", 5, "agent.ae_title", "must be a string"),
    ("agent.ae_title", "A_VERY_LONG_AE_TITLE", "agent.ae_title", "at most 16"),
    ("agent.ae_title", " ", "agent.ae_title", "cannot be empty"),
    ("agent.ae_title", "EDGE\\1", "agent.ae_title", "backslash"),
    ("agent.port", 70000, "agent.port", "0-65535"),
    ("peers.CT1.port", 0, "peers.CT1.port", "1-65535"),
    ("peers.PACS.ae_title", "CT1", "peers.PACS.ae_title", "already used"),
    ("peers.CT1.ae_title", "EDGE", "peers.CT1.ae_title", "already used"),
    ("peers.CT1.allow", ["delete"], "peers.CT1.allow", "'delete' is not one of"),
    ("peers.CT1.host", ..., "peers.CT1.host", "is required"),
    ("peers.CT1.host", "bad host", "peers.CT1.host", "neither an IP address nor a host"),
    ("agent.max_pdu", 100, "agent.max_pdu", "between"),
    ("agent.handshake_timeout", 0, "agent.handshake_timeout", "between 0.5 and 120"),
    ("agent.handshake_timeout", "5", "agent.handshake_timeout", "must be an integer or a number"),
    ("agent.log_level", "loud", "agent.log_level", "must be one of"),
    ("forward.associations", 0, "forward.associations", "between 1 and 8"),
    ("forward.associations", 9, "forward.associations", "between 1 and 8"),
    ("peers.bad name", {"ae_title": "X", "host": "h", "port": 1}, "peers.bad name", "peer name"),
    ("qr.fall_through", ["NOPE"], "qr.fall_through", "'NOPE' is not a configured peer"),
    ("qr.fall_through", ["PACS", "PACS"], "qr.fall_through", "names a peer twice"),
    ("qr.fall_through_timeout", 0, "qr.fall_through_timeout", "between"),
    ("qr.colour", 1, "qr.colour", "unknown key"),
    ("peers.CT1.fall_through", "no", "peers.CT1.fall_through", "must be true or false"),
    ("prefetch", {"from": ["CT1"]}, "prefetch", "array of tables"),
    ("prefetch", [{"from": ["CT1"], "priors_from": "NOPE"}], "prefetch[0].priors_from",
     "not a configured peer"),
    ("prefetch", [{"from": [], "priors_from": "PACS"}], "prefetch[0].from", "at least one"),
    ("prefetch", [{"from": ["CT1"], "priors_from": "PACS", "modality": "some"}],
     "prefetch[0].modality", "'same', 'any' or a list"),
])
def test_a_bad_value_names_its_key(path: str, value: object, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_change(path, value))
    assert caught.value.key == key
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[agent\nport = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        config_module.load_file(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config_module.load_file(tmp_path / "nowhere.toml")


def test_lookup_order_is_flag_then_environment_then_etc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc.toml"
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    monkeypatch.delenv(config_module.CONFIG_ENV, raising=False)
    assert config_module.locate(None) is None
    system.write_text("")
    assert config_module.locate(None) == system
    monkeypatch.setenv(config_module.CONFIG_ENV, str(tmp_path / "env.toml"))
    assert config_module.locate(None) == tmp_path / "env.toml"
    assert config_module.locate(tmp_path / "flag.toml") == tmp_path / "flag.toml"


def test_no_file_anywhere_gives_the_open_built_in_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    monkeypatch.delenv(config_module.CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    config = config_module.load(None)
    assert config.source is None
    assert (config.agent.ae_title, config.agent.port) == ("EDGE", 11112)
    assert config.agent.data_dir == tmp_path.resolve() / "edge-data"
    assert config.agent.allow_unknown == frozenset({"echo", "store"})
