"""Staging: Web API pages become typed columns in a scratch DuckDB file, one page at a time.

The fetch phase writes only here, so the store itself is opened once, after the HTTP work,
for one short transaction; a failed fetch leaves the store untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from .fields import PRIMARY_KEY, FieldPlan, FieldSpec

FORMATTED = "@OData.Community.Display.V1.FormattedValue"
LOOKUP_TABLE = "@Microsoft.Dynamics.CRM.lookuplogicalname"

_ARROW = {
    "VARCHAR": pa.string(),
    "UUID": pa.string(),
    "INTEGER": pa.int64(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.string(),
    "DATE": pa.string(),
}


class PageFormatError(ValueError):
    """A page had a value the field's metadata type does not allow."""


def _arrow_type(duck_type: str) -> pa.DataType:
    return pa.float64() if duck_type.startswith("DECIMAL") else _ARROW[duck_type]


@dataclass(frozen=True)
class StageColumn:
    name: str  # column in the stage table
    source: str  # key in the Web API row
    arrow: pa.DataType


def stage_columns(entity: str, fields: Sequence[FieldSpec]) -> list[StageColumn]:
    cols = [StageColumn("id", PRIMARY_KEY[entity], pa.string())]
    if entity == "contact":
        cols += [
            StageColumn("parentcustomerid", "_parentcustomerid_value", pa.string()),
            StageColumn("parentcustomerid_type", "_parentcustomerid_value" + LOOKUP_TABLE, pa.string()),
        ]
    for f in fields:
        cols.append(StageColumn(f.name, f.api_name, _arrow_type(f.duck_type)))
        if f.label_column:
            cols.append(StageColumn(f.label_column, f.api_name + FORMATTED, pa.string()))
        if f.target_column:
            cols.append(StageColumn(f.target_column, f.api_name + LOOKUP_TABLE, pa.string()))
    cols += [
        StageColumn("modifiedon", "modifiedon", pa.string()),
        StageColumn("versionnumber", "versionnumber", pa.int64()),
    ]
    return cols


def is_deleted_row(row: dict) -> bool:
    return row.get("reason") == "deleted" and "id" in row and "@odata.context" in row


@dataclass
class Stage:
    """A scratch DuckDB file holding this cycle's pages until the merge reads them."""

    path: Path
    plan: FieldPlan
    rows: dict[str, int] = field(default_factory=lambda: {"account": 0, "contact": 0})
    deleted: dict[str, int] = field(default_factory=lambda: {"account": 0, "contact": 0})
    memory_limit: str = "512MB"
    _con: duckdb.DuckDBPyConnection | None = None
    _seq: int = 0

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            p.unlink(missing_ok=True)
        self._con = duckdb.connect(str(self.path))
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f"SET memory_limit = '{self.memory_limit}'")
        self._columns = {e: stage_columns(e, self.plan.synced(e)) for e in ("account", "contact")}
        for entity, cols in self._columns.items():
            ddl = ", ".join(f'"{c.name}" {_duck_of(c.arrow)}' for c in cols)
            self._con.execute(
                f"CREATE TABLE stage_{entity} ({ddl}, _deleted BOOLEAN, _seq BIGINT)"
            )

    def add_rows(self, entity: str, rows: list[dict]) -> None:
        """Column-wise copy of one page: one list comprehension per column, no per-row branching."""
        if not rows:
            return
        live = [r for r in rows if "@odata.context" not in r] if self._any_deleted(rows) else rows
        gone = [r["id"] for r in rows if is_deleted_row(r)] if len(live) != len(rows) else []
        arrays = {}
        for col in self._columns[entity]:
            try:
                arrays[col.name] = pa.array([r.get(col.source) for r in live], type=col.arrow)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise PageFormatError(
                    f"{entity}.{col.source}: a value does not fit the field's metadata type "
                    f"({col.arrow}): {exc}"
                ) from None
        n = len(live)
        arrays["_deleted"] = pa.array([False] * n, type=pa.bool_())
        arrays["_seq"] = pa.array(range(self._seq, self._seq + n), type=pa.int64())
        self._seq += n
        page = pa.table(arrays)  # noqa: F841 - read by DuckDB's replacement scan below
        assert self._con is not None
        self._con.execute(f"INSERT INTO stage_{entity} BY NAME SELECT * FROM page")
        if gone:
            ids = pa.table({"id": pa.array(gone, pa.string())})  # noqa: F841
            self._con.execute(
                f"INSERT INTO stage_{entity} (id, _deleted, _seq) "
                f"SELECT id, true, {self._seq} + row_number() OVER () FROM ids"
            )
            self._seq += len(gone)
        self.rows[entity] += n
        self.deleted[entity] += len(gone)

    def reset(self, entity: str) -> None:
        """Forget what was staged for an entity (a delta read that must become a full read)."""
        assert self._con is not None
        self._con.execute(f"DELETE FROM stage_{entity}")
        self.rows[entity] = 0
        self.deleted[entity] = 0

    @staticmethod
    def _any_deleted(rows: list[dict]) -> bool:
        # Deleted-entity rows come last in a delta page; checking the tail is enough to skip
        # the filter pass on ordinary pages.
        return "@odata.context" in rows[-1]

    def finish(self) -> None:
        """Type and de-duplicate the staged rows (the last sighting of each id wins), then close.

        Done here, in the stage file, because one DuckDB transaction may write only one
        attached database: the store's transaction then only reads from the stage.
        """
        assert self._con is not None
        for entity in ("account", "contact"):
            key = PRIMARY_KEY[entity]
            typed = [f"CAST(id AS UUID) AS {key}"]
            if entity == "contact":
                typed += [
                    "CAST(parentcustomerid AS UUID) AS parentcustomerid",
                    "parentcustomerid_type",
                    "CASE WHEN parentcustomerid_type = 'account' "
                    "THEN CAST(parentcustomerid AS UUID) END AS accountid",
                ]
            for f in self.plan.synced(entity):
                for col, duck_type in f.columns():
                    typed.append(f'CAST("{col}" AS {duck_type}) AS "{col}"')
            typed += [
                "CAST(modifiedon AS TIMESTAMPTZ) AS modifiedon",
                "versionnumber",
                "_deleted",
            ]
            try:
                self._con.execute(
                    f"CREATE TABLE s_{entity} AS SELECT {', '.join(typed)} FROM stage_{entity} "
                    "QUALIFY row_number() OVER (PARTITION BY id ORDER BY _seq DESC) = 1"
                )
            except duckdb.ConversionException as exc:
                raise PageFormatError(
                    f"{entity}: a value from Dynamics could not be converted to its column type: {exc}"
                ) from None
        self.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def discard(self) -> None:
        self.close()
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _duck_of(t: pa.DataType) -> str:
    if t == pa.string():
        return "VARCHAR"
    if t == pa.int64():
        return "BIGINT"
    if t == pa.float64():
        return "DOUBLE"
    if t == pa.bool_():
        return "BOOLEAN"
    raise TypeError(t)
