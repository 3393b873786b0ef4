"""The console's ``config`` commands: show, get, set, unset, diff, apply, revert."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import tomlkit

from agent.config import Config
from agent.field.console.config_edit import ConfigStage, parse_value
from agent.field.console.table import Args, CommandError, Reply, err, ok, syntax
from agent.ops.running import RunningAgent

log = logging.getLogger(__name__)


class ConfigCommands:
    """Staged editing of the agent's config file, applied live where the agent can."""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent
        self._stage: ConfigStage | None = None

    @property
    def stage(self) -> ConfigStage:
        """The staging area for the file the agent was started with."""
        source = self.agent.config.source
        if source is None:
            raise CommandError("running on the built-in default: there is no config file")
        if self._stage is None or self._stage.path != source:
            self._stage = ConfigStage(Path(source))
        return self._stage

    @syntax("config show [SECTION]", "the config file (with staged changes), or one [section]")
    def show(self, args: Args) -> Reply:
        """The staged document as TOML, comments included."""
        document = self.stage.document()
        section = args.get("section")
        if section is None:
            text = tomlkit.dumps(document)
        elif section in document:
            part = tomlkit.document()
            part.add(section, document[section])
            text = tomlkit.dumps(part)
        else:
            return err(f"no [{section}] in {self.stage.path}")
        marker = " (with staged changes)" if self.stage.dirty else ""
        return ok(f"{self.stage.path}{marker}", text.splitlines())

    @syntax("config get KEY", "one setting by its dotted key, e.g. agent.ae_title")
    def get(self, args: Args) -> Reply:
        """The staged value, or the built-in default when the file does not set it."""
        key = args["key"]
        try:
            value = self.stage.get(key)
        except KeyError:
            return self._default(key)
        staged = " (staged)" if key in self.stage.changed_keys() else ""
        return ok(f"{key} = {_render(value)}{staged}")

    def _default(self, key: str) -> Reply:
        value = effective_value(self.agent.config, key.split("."))
        if value is None:
            return err(f"{key}: not set, and no such setting")
        return ok(f"{key} = {_render(value)} (default)")

    @syntax("config set KEY VALUE...", "stage a change; VALUE is TOML (bare words are strings)")
    def set(self, args: Args) -> Reply:
        """Stage ``KEY = VALUE`` after checking the whole file would still be valid."""
        key, value = args["key"], parse_value(args["value"])
        self.stage.set(key, value)
        return ok(f"staged {key} = {_render(value)}; 'config apply' writes it")

    @syntax("config unset KEY", "stage the removal of a setting or a whole table")
    def unset(self, args: Args) -> Reply:
        """Stage the removal of ``KEY``."""
        self.stage.unset(args["key"])
        return ok(f"staged removal of {args['key']}; 'config apply' writes it")

    @syntax("config diff", "what 'config apply' would change in the file")
    def diff(self, args: Args) -> Reply:
        """Changed keys, then a unified diff."""
        if not self.stage.dirty:
            return ok("nothing staged")
        keys = self.stage.changed_keys()
        return ok(f"{len(keys)} changed: {' '.join(keys)}", self.stage.diff())

    @syntax("config apply", "write the staged changes (atomically) and apply them live")
    def apply(self, args: Args) -> Reply:
        """Write the file, reload the agent, say what needs a restart."""
        stage = self.stage
        if not stage.dirty:
            return ok("nothing staged")
        keys = stage.changed_keys()
        new_config = stage.apply()
        log.warning("config %s changed on the serial console: %s", stage.path, ", ".join(keys))
        later = self.agent.reload(new_config)
        body = [f"changed: {' '.join(keys)}"]
        if later:
            body.append(f"need a restart ('restart yes'): {' '.join(later)}")
            return ok(f"written to {stage.path}; applied except {len(later)}", body)
        return ok(f"written to {stage.path} and applied", body)

    @syntax("config revert", "drop every staged change")
    def revert(self, args: Args) -> Reply:
        """Forget the staged edits."""
        return ok("staged changes dropped" if self.stage.revert() else "nothing staged")


def effective_value(config: Config, parts: list[str]) -> Any:
    """The value a dotted key has in the running configuration (None: no such key)."""
    node: Any = config
    for part in parts:
        if isinstance(node, Mapping):
            node = node.get(part)
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        else:
            return None
    return _plain(node)


def _plain(value: Any) -> Any:
    """A configuration value as plain TOML-able data (None values left out)."""
    if hasattr(value, "unwrap"):
        value = value.unwrap()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (frozenset, set)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (Path, Enum)):
        return str(value.value if isinstance(value, Enum) else value)
    return value


def _render(value: Any) -> str:
    """A value as TOML text on one line."""
    if value is None:
        return "(not set)"
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        inline.update(_plain(value))
        return str(inline.as_string())
    return str(tomlkit.item(_plain(value)).as_string())
