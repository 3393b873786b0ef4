"""The DICOM network side: our SCP, our SCU helpers and socket tuning.

The network layer never touches SQL: it calls the archive's API, and its handlers turn
every failure into a DICOM status and a log line instead of raising.
"""

from __future__ import annotations

import logging

from pydicom import config as pydicom_config

from agent.net import engine, peerlog

# our loggers that speak of what a peer did; pynetdicom's are found at run time
PEER_LOGGERS = (
    "agent.net.scp",
    "agent.net.storage",
    "agent.net.engine.guards",
    "agent.net.engine.transport",
    "agent.net.engine.dul",
    "pydicom",
)


def prepare_pynetdicom() -> None:
    """Process-wide pynetdicom and pydicom settings that decide speed and memory (idempotent).

    Touches no logger: logging is configured once per process by its owner (the agent,
    the forwarding process, the CLI), never muted by whoever opens an association.
    """
    engine.install()  # pynetdicom's settings, and its polling loops swapped for ours
    # pydicom checks every value against its VR as an element is made, and at most warns:
    # a fifth of the cost of a C-FIND answer. Values that matter are checked where used.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE


def configure_pynetdicom(*, debug: bool = False) -> None:
    """The settings of ``prepare_pynetdicom``, and what pynetdicom logs in this process:
    warnings and errors (debug: everything), peers' repeated ones limited (peerlog).

    Called by a process's owner when it starts and when its log level changes; a command
    that reports failures in its own words filters its own output (agent.cli.common).
    """
    prepare_pynetdicom()
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)
    pynetdicom_loggers = [n for n in logging.root.manager.loggerDict if n.startswith("pynetdicom")]
    peerlog.install([*pynetdicom_loggers, *PEER_LOGGERS], debug=debug)
    peerlog.quiet_failed_requests()
