"""Which settings a reload changes is read from the marks on the settings fields."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest

from agent import config as config_module
from agent import reconfigure, reloading
from agent.config import Config
from agent.reloading import LIVE, RESTART


def test_every_settings_field_is_marked_live_or_restart() -> None:
    classes = reloading.settings_classes(Config)
    names = {cls.__name__ for cls in classes}
    assert {"Config", "AgentSettings", "Peer", "ForwardSettings", "Rule", "TlsSettings"} <= names
    for cls in classes:
        assert set(reloading.marks(cls)) == {f.name for f in dataclasses.fields(cls)}


def test_an_unmarked_field_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Settings:
        marked: Annotated[int, LIVE] = 1
        forgotten: int = 2

    with pytest.raises(TypeError, match=r"Settings\.forgotten is marked neither"):
        reloading.marks(Settings)


@dataclasses.dataclass(frozen=True)
class Inner:
    speed: Annotated[int, LIVE] = 1
    pin: Annotated[int, RESTART] = 2


@dataclasses.dataclass(frozen=True)
class Outer:
    port: Annotated[int, RESTART] = 104
    inner: Annotated[Inner, LIVE] = Inner()
    named: Annotated[dict[str, Inner], LIVE] = dataclasses.field(default_factory=dict)
    hardware: Annotated[Inner, RESTART] = Inner()


def test_restart_settings_are_kept_at_any_depth_and_live_ones_taken() -> None:
    running = Outer(named={"a": Inner()})
    new = Outer(port=105, inner=Inner(speed=9, pin=7), hardware=Inner(speed=3),
                named={"a": Inner(speed=4, pin=8), "b": Inner(pin=5)})
    effective = reloading.keep_restart_only(running, new)
    assert effective.port == 104 and effective.hardware == Inner()
    assert effective.inner == Inner(speed=9, pin=2)
    assert effective.named == {"a": Inner(speed=4, pin=2), "b": Inner(pin=5)}  # b is new
    assert reloading.restart_keys(running, new) == [
        "hardware.speed", "inner.pin", "named.a.pin", "port"]


def test_a_new_agent_key_marked_restart_waits_without_a_list_to_update() -> None:
    running = config_module.parse({"agent": {"max_associations": 4, "log_level": "info"}})
    new = config_module.parse({"agent": {"max_associations": 8, "log_level": "debug"}})
    effective, later = reconfigure.split(running, new)
    assert later == ["agent.max_associations"]
    assert effective.agent.max_associations == 4 and effective.agent.log_level == "debug"


def test_live_config_replaces_once_for_every_reader() -> None:
    first = config_module.parse({"agent": {"ae_title": "ONE"}})
    second = config_module.parse({"agent": {"ae_title": "TWO"}})
    live = reconfigure.LiveConfig(first)
    readers = [live.current for _ in range(3)]
    assert live.replace(second) is first
    assert all(read() is second for read in readers)
