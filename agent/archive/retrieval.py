"""Read-only archive access for queries and retrieves, one connection per request."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
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

    def load(self, instance: StoredInstance) -> Dataset:
        """An archived instance, its bulk data left on disk until it is encoded."""
        return dcmread(self.path_of(instance), defer_size="256 KB")

    def path_of(self, instance: StoredInstance) -> Path:
        """The file of an archived instance."""
        return self.layout.absolute(instance.path)


def _closing(answers: Iterator[Dataset], conn: sqlite3.Connection) -> Iterator[Dataset]:
    try:
        yield from answers
    finally:
        conn.close()
