"""Where is the running agent? ``status`` run without a configuration file finds it.

With a file (``--config``, ``$EDGE_AGENT_CONFIG`` or /etc/edge-agent/agent.toml) its data
directory is the answer. Without one, the built-in default's ``edge-data`` is relative to
the directory the command runs in, so an agent started elsewhere would read as "not
running": the agent is looked for in that directory, then among running processes (an
agent holds its data directory's lock open), then in the systemd unit's configuration;
the report says where it was found, or everywhere it looked.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from agent import config as config_module
from agent import procfs
from agent.archive import Layout
from agent.config import Config
from agent.errors import ConfigError
from agent.procfs import process_alive
from agent.status_file import LIVE_STATES, read_published

UNITS = (
    Path("/etc/systemd/system/edge-agent.service"),
    Path("/lib/systemd/system/edge-agent.service"),
    Path("/usr/lib/systemd/system/edge-agent.service"),
)
_UNIT_CONFIG = re.compile(r"^(?:ExecStart=.*\s--config[ =]|Environment=.*EDGE_AGENT_CONFIG=)(\S+)")


@dataclass(frozen=True)
class Found:
    """The data directory to report on, and how it was chosen (or where we looked)."""

    layout: Layout
    note: str | None = None  # how it was found, or where it was looked for in vain


def locate(config: Config, proc: Path = procfs.PROC, units: tuple[Path, ...] = UNITS) -> Found:
    """The data directory of the agent ``status`` should report on."""
    default = Layout(config.agent.data_dir)
    if config.source is not None or serving(default):
        return Found(default)
    live = {d: pid for pid, d in procfs.running_agents(proc) if serving(Layout(d))}
    if len(live) == 1:
        (data_dir, pid), = live.items()
        return Found(Layout(data_dir), f"no configuration file: found the agent (pid {pid})"
                                       " by its data directory's lock")
    if live:
        each = "; ".join(f"pid {pid} with data in {d}" for d, pid in sorted(live.items()))
        return Found(default, f"no configuration file, and {len(live)} agents run ({each}):"
                              " say which with --config")
    unit_config = _unit_config(units)
    if unit_config is not None:
        try:
            from_unit = config_module.load_file(unit_config)
        except ConfigError:
            from_unit = None
        if from_unit is not None and serving(Layout(from_unit.agent.data_dir)):
            return Found(Layout(from_unit.agent.data_dir),
                         f"no configuration file: found the agent by the systemd unit's "
                         f"{unit_config}")
    unit = f"the systemd unit's {unit_config}" if unit_config else "no systemd unit installed"
    return Found(default, f"no configuration file; looked in {default.root} (the built-in "
                          f"default, relative to here), running processes, {unit}: use --config")


def serving(layout: Layout) -> bool:
    """Whether an agent's live status file is in this data directory."""
    published = read_published(layout.run_dir)
    if published is None or published.get("state") not in LIVE_STATES:
        return False
    pid = int(published.get("pid", 0))
    return pid > 0 and process_alive(pid)


def _unit_config(units: tuple[Path, ...]) -> Path | None:
    """The configuration file the installed systemd unit runs the agent with, if any."""
    for unit in units:
        try:
            lines = unit.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            match = _UNIT_CONFIG.match(line.strip())
            if match:
                return Path(shlex.split(match.group(1))[0])
    return None
