"""Where ``edge-agent retrieve`` lands instances: the running agent's archive, or ours."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from agent.app import Agent
from agent.archive import Layout
from agent.archive.lock import DataDirBusy, DataDirLock
from agent.config import Config
from agent.pull import Landing, open_archive
from agent.status import StatusModel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def landing(config: Config, serve: bool) -> Iterator[Landing]:
    """The archive, beside the running agent or alone; with a temporary agent if needed.

    ``serve``: a C-MOVE needs a Storage SCP, a commitment request a listener for the
    report; when the agent is not running, a temporary one runs in this process until
    the retrieve (or commit) ends.
    """
    layout = Layout(config.agent.data_dir)
    layout.create()
    lock = DataDirLock(layout.run_dir)
    try:
        lock.acquire()
    except DataDirBusy:
        with open_archive(config) as archive:
            yield Landing(archive, StatusModel(), lambda names: None, "the running agent")
        return
    if not serve:
        try:
            with open_archive(config) as archive:
                yield Landing(archive, StatusModel(), lambda names: None, "the archive")
        finally:
            lock.release()
        return
    lock.release()
    with temporary_agent(config) as land:
        yield land


@contextlib.contextmanager
def temporary_agent(config: Config) -> Iterator[Landing]:
    """The agent, started in this process for the length of one retrieve."""
    temporary = Agent(config)
    try:
        temporary.start()
        log.info("the agent is not running: receiving here until the command ends")
        land = temporary.landing()
        yield Landing(land.archive, land.status, land.wake, "a temporary receiver")
    finally:
        temporary.close()
