"""Read-only archive access for queries and retrieves, one connection per request."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path

from pydicom.dataset import Dataset

from agent.archive.index import connect
from agent.archive.layout import Layout
from agent.archive.query import Model, StoredInstance, find, resolve


class Reader:
    """Answers C-FIND and resolves C-MOVE/C-GET from the index, without the writer's lock."""

    def __init__(self, layout: Layout, ae_title: str) -> None:
        self.layout = layout
        self.ae_title = ae_title

    def find(
        self, model: Model, identifier: Dataset, *, combined_datetime: bool = False
    ) -> Iterator[Dataset]:
        """Stream answers; QueryError is raised before the first one for a bad identifier."""
        conn = connect(self.layout.index_path, readonly=True)
        try:
            answers = find(
                conn, model, identifier, combined_datetime=combined_datetime, ae_title=self.ae_title
            )
        except BaseException:
            conn.close()
            raise
        return _closing(answers, conn)

    def resolve(self, model: Model, identifier: Dataset) -> list[StoredInstance]:
        """The instances a retrieve identifier names."""
        conn = connect(self.layout.index_path, readonly=True)
        try:
            return resolve(conn, model, identifier)
        finally:
            conn.close()

    def stored_syntaxes(self, sop_classes: Collection[str]) -> dict[str, dict[str, int]]:
        """Per SOP class, how many of its instances are stored in each transfer syntax."""
        if not sop_classes:
            return {}
        marks = ", ".join("?" for _ in sop_classes)
        statement = (
            "SELECT SOPClassUID, transfer_syntax, count(*) FROM instances"
            f" WHERE SOPClassUID IN ({marks}) GROUP BY 1, 2"
        )
        conn = connect(self.layout.index_path, readonly=True)
        try:
            found: dict[str, dict[str, int]] = {}
            for sop_class, syntax, count in conn.execute(statement, list(sop_classes)):
                found.setdefault(sop_class, {})[syntax] = count
            return found
        finally:
            conn.close()

    def path_of(self, instance: StoredInstance) -> Path:
        """The file of an archived instance."""
        return self.layout.absolute(instance.path)


def _closing(answers: Iterator[Dataset], conn: sqlite3.Connection) -> Iterator[Dataset]:
    try:
        yield from answers
    finally:
        conn.close()
