"""The local archive: durable files plus an SQLite index of the DICOM hierarchy."""

from agent.archive.archive import Archive, Stored
from agent.archive.index import Counts
from agent.archive.layout import Layout

__all__ = ["Archive", "Counts", "Layout", "Stored"]
