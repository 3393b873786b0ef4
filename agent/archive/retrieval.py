"""Read-only archive access for queries and retrieves, one connection per thread.

Opening a connection (and its pragmas) per request cost a tenth of a small C-FIND. A
thread keeps its own, which holds no snapshot between requests: Python's sqlite3 opens
no transaction for a SELECT, and a finished or abandoned cursor is reset at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from agent.archive.index import connect, unavailable_as_error
from agent.archive.layout import Layout
from agent.archive.query import StoredInstance, find, held, resolve
from agent.dicom.models import Model


class Reader:
    """Answers C-FIND and resolves C-MOVE/C-GET from the index, without the writer's lock."""

    def __init__(self, layout: Layout, ae_title: str) -> None:
        self.layout = layout
        self.ae_title = ae_title
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        """This thread's read-only connection (closed when the thread ends)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.layout.index_path, readonly=True)
            self._local.conn = conn
        return conn

    def find(
        self, model: Model, identifier: Dataset, *, combined_datetime: bool = False
    ) -> Iterator[Dataset]:
        """Stream answers; QueryError is raised before the first one for a bad identifier."""
        answers = find(
            self._connection(),
            model,
            identifier,
            combined_datetime=combined_datetime,
            ae_title=self.ae_title,
        )
        return _closing(answers)

    def resolve(self, model: Model, identifier: Dataset) -> list[StoredInstance]:
        """The instances a retrieve identifier names."""
        return resolve(self._connection(), model, identifier)

    def held(self, sop_uids: Sequence[str]) -> list[StoredInstance]:
        """The archived instances among ``sop_uids``."""
        with unavailable_as_error():
            return held(self._connection(), sop_uids)

    def stored_syntaxes(self, sop_classes: Collection[str]) -> dict[str, dict[str, int]]:
        """Per SOP class, how many of its instances are stored in each transfer syntax;
        IndexUnavailable if the index cannot be read."""
        if not sop_classes:
            return {}
        marks = ", ".join("?" for _ in sop_classes)
        statement = (
            "SELECT SOPClassUID, transfer_syntax, count(*) FROM instances"
            f" WHERE SOPClassUID IN ({marks}) GROUP BY 1, 2"
        )
        found: dict[str, dict[str, int]] = {}
        with unavailable_as_error():  # opening the connection may fail too
            rows = self._connection().execute(statement, list(sop_classes)).fetchall()
        for sop_class, syntax, count in rows:
            found.setdefault(sop_class, {})[syntax] = count
        return found

    def path_of(self, instance: StoredInstance) -> Path:
        """The file of an archived instance."""
        return self.layout.absolute(instance.path)


def _closing(answers: Iterator[Dataset]) -> Iterator[Dataset]:
    """The answers; stopping early (C-CANCEL, a failure) releases the cursor at once."""
    try:
        yield from answers
    finally:
        close = getattr(answers, "close", None)
        if close is not None:
            close()
