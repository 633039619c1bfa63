"""Row storage for one entity: slot lists, a key-ordered index and the change-tracking log."""

from __future__ import annotations

import bisect
from typing import Any

from .schema import Attribute, Entity


class Table:
    """Rows are plain lists (one slot per attribute) to keep a million contacts small in memory."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self.slots: dict[str, int] = {name: i for i, name in enumerate(entity.attributes)}
        self.rows: dict[str, list[Any]] = {}
        # Primary-key order: the default order of a query, kept sorted so paging can bisect.
        self.sorted_ids: list[str] = []
        # Change-tracking log, append-only in version order: (version, id, deleted).
        self.log_versions: list[int] = []
        self.log_entries: list[tuple[str, bool]] = []
        self.data_version = 0
        self.schema_version = 0

    @property
    def name(self) -> str:
        return self.entity.logical_name

    def slot(self, logical_name: str) -> int:
        return self.slots[logical_name]

    def new_row(self) -> list[Any]:
        return [None] * len(self.slots)

    def get(self, row: list[Any], logical_name: str) -> Any:
        return row[self.slots[logical_name]]

    def insert(self, record_id: str, row: list[Any]) -> None:
        self.rows[record_id] = row
        bisect.insort(self.sorted_ids, record_id)

    def remove(self, record_id: str) -> list[Any]:
        row = self.rows.pop(record_id)
        pos = bisect.bisect_left(self.sorted_ids, record_id)
        del self.sorted_ids[pos]
        return row

    def bulk_load(self, rows: dict[str, list[Any]]) -> None:
        self.rows.update(rows)
        self.sorted_ids = sorted(self.rows)

    def record_change(self, version: int, record_id: str, deleted: bool) -> None:
        self.log_versions.append(version)
        self.log_entries.append((record_id, deleted))
        self.data_version = version

    def add_column(self, attribute: Attribute) -> None:
        self.entity.add(attribute)
        if attribute.logical_name in self.slots:
            return  # re-adding a dropped column: its old slot is reused (values were cleared)
        self.slots[attribute.logical_name] = len(self.slots)
        for row in self.rows.values():
            row.append(None)

    def drop_column(self, logical_name: str) -> None:
        del self.entity.attributes[logical_name]
        slot = self.slots[logical_name]
        for row in self.rows.values():
            row[slot] = None
