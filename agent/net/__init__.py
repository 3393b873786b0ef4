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


def configure_pynetdicom(*, debug: bool = False, quiet: bool = False) -> None:
    """Process-wide pynetdicom settings that decide speed, memory and what gets logged.

    ``quiet`` is for commands that report failures in their own words.
    """
    engine.install()  # pynetdicom's settings, and its polling loops swapped for ours
    # pydicom checks every value against its VR as an element is made, and at most warns:
    # a fifth of the cost of a C-FIND answer. Values that matter are checked where used.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    level = logging.DEBUG if debug else logging.CRITICAL if quiet else logging.WARNING
    logging.getLogger("pynetdicom").setLevel(level)
    pynetdicom_loggers = [n for n in logging.root.manager.loggerDict if n.startswith("pynetdicom")]
    peerlog.install([*pynetdicom_loggers, *PEER_LOGGERS], debug=debug)
