"""Staging: Web API pages become typed columns in a scratch DuckDB file, one page at a time.

The fetch phase writes only here, so the store itself is opened once, after the HTTP work,
for one short transaction; a failed fetch leaves the store untouched.
"""

from __future__ import annotations

import array
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from dynsync_dagster.dynamics.client import Page
from dynsync_dagster.dynamics.fields import ENTITIES, PRIMARY_KEY, FieldPlan, FieldSpec
from dynsync_dagster.dynamics.pages import ArrowDecoder, is_deleted_row
from dynsync_dagster.store.connection import configure, owner_only
from dynsync_dagster.store.schema import insert_values, literal, quote

LOOKUP_TABLE = "@Microsoft.Dynamics.CRM.lookuplogicalname"
# The only annotation a cycle asks for: which table a lookup points to. Choice labels come
# from the option-set metadata instead of a FormattedValue on every row, which halves the
# size of a page and the JSON work of decoding it.
ANNOTATIONS = "Microsoft.Dynamics.CRM.lookuplogicalname"

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


CHECKPOINT_PAGES = 10  # pages per stage commit during a full read


# The stage's tables, named here only. A cycle attaches the stage file to the store as STAGE.
STAGE = "stage"
CHOICE_LABELS = "choice_options"  # entity, attribute, code, label of every synced choice
SIGNATURE = "stage_info"  # the field plan the stage was made for
PROGRESS = "progress"  # each entity's checkpoint of a full read


def rows_table(entity: str) -> str:
    """Every staged row of an entity, as the pages brought it."""
    return f"stage_{entity}"


def typed_view(entity: str) -> str:
    """The latest row per record, in the store's types, without the rejected rows."""
    return f"s_{entity}"


def rejects_table(entity: str) -> str:
    """Rows set aside for a value the store cannot hold, with their problems."""
    return f"err_{entity}"


def attached(table: str) -> str:
    """A stage table as the store's connection sees it once the stage is attached."""
    return f"{STAGE}.{table}"


class PageFormatError(ValueError):
    """A page had a value the field's metadata type does not allow."""


class StageBusyError(RuntimeError):
    """Another cycle holds the stage file."""


def _arrow_type(duck_type: str) -> pa.DataType:
    return pa.float64() if duck_type.startswith("DECIMAL") else _ARROW[duck_type]


@dataclass(frozen=True)
class StageColumn:
    name: str  # column in the stage table
    source: str  # key in the Web API row
    arrow: pa.DataType


# The sync filter's value of a staged record (NULL where the org has no filter column).
SYNC_FLAG = "_sync_flag"


def stage_columns(
    entity: str, fields: Sequence[FieldSpec], sync_filter: str | None = None
) -> list[StageColumn]:
    cols = [StageColumn("id", PRIMARY_KEY[entity], pa.string())]
    if sync_filter:
        cols.append(StageColumn(SYNC_FLAG, sync_filter, pa.bool_()))
    if entity == "contact":
        cols += [
            StageColumn("parentcustomerid", "_parentcustomerid_value", pa.string()),
            StageColumn(
                "parentcustomerid_type", "_parentcustomerid_value" + LOOKUP_TABLE, pa.string()
            ),
        ]
    for f in fields:
        cols.append(StageColumn(f.name, f.api_name, _arrow_type(f.duck_type)))
        if f.target_column:
            cols.append(StageColumn(f.target_column, f.api_name + LOOKUP_TABLE, pa.string()))
    cols += [
        StageColumn("modifiedon", "modifiedon", pa.string()),
        StageColumn("versionnumber", "versionnumber", pa.int64()),
    ]
    return cols


@dataclass(frozen=True)
class Progress:
    """How far a checkpointed full read of an entity got (survives a failed cycle)."""

    mode: str
    select_list: str
    resume_link: str | None  # the next page to fetch; None once the read is complete
    delta_link: str | None
    complete: bool
    started_at: datetime  # when the read's first page was asked for


@dataclass
class Stage:
    """A scratch DuckDB file holding a cycle's pages until the merge reads them.

    Full reads checkpoint here page by page: when a cycle fails, the next one finds the file
    with the same field plan and resumes from the saved next link instead of from zero.
    """

    path: Path
    plan: FieldPlan
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 0))
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 0))
    _con: duckdb.DuckDBPyConnection | None = None
    _seq: int = 0
    _in_transaction: bool = False
    _pages_uncommitted: int = 0
    # entity -> the checkpoint to write at the next commit (None: forget the entity's)
    _pending_progress: dict[str, Progress | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._columns = {
            e: stage_columns(e, self.plan.synced(e), self.plan.sync_filter.get(e)) for e in ENTITIES
        }
        # stage column -> the DuckDB type it is stored as (the store's type for field values)
        self._types = {e: _stored_types(e, self.plan) for e in ENTITIES}
        self._typing = {e: self._typing_sql(e) for e in ENTITIES}
        signature = self._signature()
        if not self._reopen(signature):
            self._create(signature)

    def _signature(self) -> str:
        parts = ["stage v4"] + [
            f"{e}:{','.join(f'{c.name}:{c.arrow}' for c in cols)}"
            for e, cols in self._columns.items()
        ]
        return "|".join(parts)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StageBusyError(
                    f"{self.path} is in use: another sync cycle is running; retry in a moment"
                ) from None
            raise
        owner_only(self.path)  # it holds a copy of Dynamics rows, like the store
        configure(con)
        # Scratch data, written once and read once: compressing it costs more than it saves.
        con.execute("PRAGMA force_compression = 'uncompressed'")
        return con

    def _reopen(self, signature: str) -> bool:
        """Keep a stage a failed cycle left behind, if it was made for the same field plan."""
        if not self.path.exists():
            return False
        try:
            con = self._connect()
        except duckdb.Error:
            return False
        try:
            found = con.execute(f"SELECT signature FROM {SIGNATURE}").fetchone()
            if found is None or found[0] != signature:
                con.close()
                return False
            for entity in ENTITIES:
                con.execute(f"DROP VIEW IF EXISTS {typed_view(entity)}")
                con.execute(f"DROP TABLE IF EXISTS {rejects_table(entity)}")
            last = " UNION ALL ".join(f"SELECT max(_seq) m FROM {rows_table(e)}" for e in ENTITIES)
            self._seq = int(
                con.execute(f"SELECT coalesce(max(m), 0) + 1 FROM ({last})").fetchone()[0]
            )
        except duckdb.Error:
            con.close()
            return False
        self._con = con
        return True

    def _create(self, signature: str) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            p.unlink(missing_ok=True)
        self._con = self._connect()
        self._con.execute(f"CREATE TABLE {SIGNATURE} (signature VARCHAR)")
        self._con.execute(f"INSERT INTO {SIGNATURE} VALUES (?)", [signature])
        self._con.execute(
            f"CREATE TABLE {PROGRESS} (entity VARCHAR, mode VARCHAR, select_list VARCHAR, "
            "resume_link VARCHAR, delta_link VARCHAR, complete BOOLEAN, started_at TIMESTAMPTZ)"
        )
        for entity, cols in self._columns.items():
            types = self._types[entity]
            ddl = ", ".join(f'"{c.name}" {types.get(c.name, _duck_of(c.arrow))}' for c in cols)
            self._con.execute(
                f"CREATE TABLE {rows_table(entity)} ({ddl}, _key UUID, _problems VARCHAR[], "
                "_deleted BOOLEAN, _seq BIGINT)"
            )

    def progress(self, entity: str) -> Progress | None:
        assert self._con is not None
        self._write_progress()
        row = self._con.execute(
            "SELECT mode, select_list, resume_link, delta_link, complete, started_at "
            f"FROM {PROGRESS} WHERE entity = ?",
            [entity],
        ).fetchone()
        return Progress(*row) if row else None

    def part_progress(self, entity: str) -> dict[str, Progress]:
        """The checkpoints of a read done in parallel parts, saved as `<entity>@<part>`."""
        assert self._con is not None
        self._write_progress()
        rows = self._con.execute(
            "SELECT entity, mode, select_list, resume_link, delta_link, complete, started_at "
            f"FROM {PROGRESS} WHERE starts_with(entity, ?)",
            [entity + "@"],
        ).fetchall()
        return {row[0]: Progress(*row[1:]) for row in rows}

    def _write(self) -> duckdb.DuckDBPyConnection:
        """The connection, inside a transaction: pages are committed in batches, together
        with their checkpoint, instead of one commit (and WAL flush) per page."""
        assert self._con is not None
        if not self._in_transaction:
            self._con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
        return self._con

    def _write_progress(self) -> None:
        """Write the checkpoints held since the last commit (only the newest one counts)."""
        if not self._pending_progress:
            return
        con = self._write()
        for entity, progress in self._pending_progress.items():
            con.execute(f"DELETE FROM {PROGRESS} WHERE entity = ?", [entity])
            if progress is not None:
                con.execute(
                    f"INSERT INTO {PROGRESS} VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        entity,
                        progress.mode,
                        progress.select_list,
                        progress.resume_link,
                        progress.delta_link,
                        progress.complete,
                        progress.started_at,
                    ],
                )
        self._pending_progress.clear()

    def commit(self) -> None:
        if self._con is not None:
            self._write_progress()
        if self._con is not None and self._in_transaction:
            self._con.execute("COMMIT")
            self._in_transaction = False
            self._pages_uncommitted = 0

    def checkpoint(self, entity: str, progress: Progress | None) -> None:
        """Record how far a full read got; None forgets it (reads that are cheap to redo).

        Rows and checkpoint commit together every CHECKPOINT_PAGES pages: a crash loses at
        most that many pages, and never leaves rows without the checkpoint that covers them.
        """
        self._write()
        self._pending_progress[entity] = progress  # written with the rows, at the commit
        self._pages_uncommitted += 1
        if progress is None or progress.complete or self._pages_uncommitted >= CHECKPOINT_PAGES:
            self.commit()

    def has_checkpoint(self) -> bool:
        if self._con is None:
            return False
        try:
            self._write_progress()
        except duckdb.Error:  # an aborted transaction: what was committed is what counts
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            self._in_transaction = False
            self._pending_progress.clear()
        return bool(self._con.execute(f"SELECT count(*) FROM {PROGRESS}").fetchone()[0])

    def count(self, entity: str) -> None:
        """Re-count what a resumed stage already holds."""
        assert self._con is not None
        live, gone = self._con.execute(
            f"SELECT count(*) FILTER (NOT _deleted), count(*) FILTER (_deleted) FROM {rows_table(entity)}"
        ).fetchone()
        self.rows[entity], self.deleted[entity] = int(live), int(gone)

    def _typing_sql(self, entity: str) -> str:
        """The SELECT list that stores a page typed: each value cast to its column's type as
        it is staged (on the staging thread, which waits for pages anyway), and the casts
        that failed listed in _problems with the text that did not fit."""
        types = self._types[entity]
        out, fails = [], []
        for c in self._columns[entity]:
            t = types.get(c.name)
            if t is None or t == _duck_of(c.arrow):  # no cast, or one that cannot fail
                out.append(f'"{c.name}"' if t is None else f'CAST("{c.name}" AS {t}) AS "{c.name}"')
                continue
            cast = f"TRY_CAST({_source(c.name, t)} AS {t})"
            out.append(f'{cast} AS "{c.name}"')
            fails.append(
                f'CASE WHEN "{c.name}" IS NOT NULL AND {cast} IS NULL '
                f"THEN '{c.name} = ' || left(CAST(\"{c.name}\" AS VARCHAR), 100) END"
            )
        problems = (
            f"nullif(list_filter([{', '.join(fails)}], lambda x: x IS NOT NULL), [])"
            if fails
            else "NULL"
        )
        return ", ".join(
            [
                *out,
                "TRY_CAST(id AS UUID) AS _key",
                f"{problems} AS _problems",
                "false AS _deleted",  # a page's rows; removed ones are added apart
                "_seq",
            ]
        )

    def decoder(self, entity: str) -> ArrowDecoder:
        """What the client needs to hand this entity's pages over as Arrow columns."""
        return ArrowDecoder([(c.source, c.arrow) for c in self._columns[entity]])

    def add_page(self, entity: str, page: Page) -> None:
        if page.table is not None:
            self._add_table(entity, page.table)
        else:
            self._add_rows(entity, page.rows)

    def _add_table(self, entity: str, rows: pa.Table) -> None:
        """A page the client decoded to Arrow: the columns are typed already."""
        if rows.num_rows == 0:
            return
        context = rows.column("@odata.context")
        gone: list[str] = []
        if context.null_count != rows.num_rows:  # a delta page with removed records
            # A pattern, not pc.equal(..., "deleted"): a Python scalar would import pandas.
            deleted = pc.match_substring_regex(rows.column("reason"), "^deleted$")
            removed = pc.and_(pc.is_valid(context), deleted)
            gone = [i for i in rows.filter(removed).column("id").to_pylist() if i is not None]
            rows = rows.filter(pc.is_null(context))
        arrays = {c.name: rows.column(c.source) for c in self._columns[entity]}
        self._append(entity, arrays, rows.num_rows, gone)

    def _add_rows(self, entity: str, rows: list[dict]) -> None:
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
        self._append(entity, arrays, len(live), gone)

    def _append(self, entity: str, arrays: dict, n: int, gone: list[str]) -> None:
        arrays["_seq"] = _sequence(self._seq, n)
        self._seq += n
        # Table.from_arrays, not pa.table: pyarrow's pa.table and pa.array import pandas to
        # check their input, 50 MB of every sync process's memory for nothing (the Arrow
        # path never needs it; only _add_rows, for a page Arrow could not read, still does).
        page = pa.Table.from_arrays(list(arrays.values()), names=list(arrays))  # noqa: F841
        con = self._write()
        con.execute(
            f"INSERT INTO {rows_table(entity)} BY NAME SELECT {self._typing[entity]} FROM page"
        )
        if gone:
            self._con.execute(
                f"INSERT INTO {rows_table(entity)} (id, _key, _deleted, _seq) "
                f"SELECT id, TRY_CAST(id AS UUID), true, {self._seq} + row_number() OVER () "
                "FROM (SELECT unnest(?::VARCHAR[]) AS id)",
                [gone],
            )
            self._seq += len(gone)
        self.rows[entity] += n
        self.deleted[entity] += len(gone)

    def reset(self, entity: str) -> None:
        """Forget what was staged for an entity (a read that must start again)."""
        assert self._con is not None
        for key in [k for k in self._pending_progress if k.split("@")[0] == entity]:
            self._pending_progress.pop(key)
        self._con.execute(f"DELETE FROM {rows_table(entity)}")
        self._con.execute(
            f"DELETE FROM {PROGRESS} WHERE entity = ? OR starts_with(entity, ?)",
            [entity, entity + "@"],
        )
        self.rows[entity] = 0
        self.deleted[entity] = 0

    @staticmethod
    def _any_deleted(rows: list[dict]) -> bool:
        # Deleted-entity rows come last in a delta page; checking the tail is enough to skip
        # the filter pass on ordinary pages.
        return "@odata.context" in rows[-1]

    def finish(self) -> None:
        """Views of the typed rows, de-duplicated (the last sighting of each id wins); close.

        A record with a value its column type cannot hold (a malformed GUID or date, a number
        out of range; found as the page was staged) is set aside in rejects_table(entity)
        instead of failing the cycle: the sync goes on and the record shows up in
        `sync_errors`.

        Done here, in the stage file, because one DuckDB transaction may write only one
        attached database: the store's transaction then only reads from the stage.
        """
        self.commit()
        assert self._con is not None
        self._write_choice_labels()
        for entity in ENTITIES:
            self._con.execute(
                f"CREATE TABLE {rejects_table(entity)} AS SELECT id, _problems AS problems "
                f"FROM {rows_table(entity)} WHERE NOT _deleted AND _problems IS NOT NULL"
            )
            self._create_typed_view(entity)
        self.close()

    def _write_choice_labels(self) -> None:
        """Every option of the synced choices, for the typed views' labels."""
        assert self._con is not None
        self._con.execute(
            f"CREATE OR REPLACE TABLE {CHOICE_LABELS} "
            "(entity VARCHAR, field VARCHAR, value INTEGER, label VARCHAR)"
        )
        options = [
            (e, f.name, v, label)
            for e in ENTITIES
            for f in self.plan.synced(e)
            for v, label in f.options
        ]
        insert_values(self._con, CHOICE_LABELS, options)

    def _create_typed_view(self, entity: str) -> None:
        """typed_view(entity): the latest sighting of each record, without the rejected ones.

        A view, not a copy: the store's merge reads it once, and copying a million typed rows
        here first would cost as much as that read.
        """
        assert self._con is not None
        rows = rows_table(entity)
        # Duplicates are rare (a resumed or re-polled read), so the de-duplication runs only
        # when there are any.
        unique = self._con.execute(f"SELECT count(*) = count(DISTINCT id) FROM {rows}").fetchone()[
            0
        ]
        latest = "" if unique else f"AND _seq IN (SELECT max(_seq) FROM {rows} GROUP BY id)"
        self._con.execute(
            f"CREATE VIEW {typed_view(entity)} AS SELECT {', '.join(self._typed_columns(entity))} "
            f"FROM {rows} WHERE id NOT IN (SELECT id FROM {rejects_table(entity)}) {latest}"
        )

    def _typed_columns(self, entity: str) -> list[str]:
        """The typed view's columns: the key as a UUID, a contact's account, each field's
        columns (a choice's label looked up from its code), the version."""
        typed = [f"_key AS {quote(PRIMARY_KEY[entity])}"]
        if entity == "contact":
            typed += [
                "parentcustomerid",
                "parentcustomerid_type",
                "CASE WHEN parentcustomerid_type = 'account' THEN parentcustomerid END "
                "AS accountid",
            ]
        for f in self.plan.synced(entity):
            typed += [quote(c) for c, _t in f.columns() if c != f.label_column]
            if f.label_column:
                typed.append(
                    f"(SELECT o.label FROM {CHOICE_LABELS} o WHERE o.entity = {literal(entity)} "
                    f"AND o.field = {literal(f.name)} AND o.value = {quote(f.name)}) "
                    f"AS {quote(f.label_column)}"
                )
        flag = SYNC_FLAG if entity in self.plan.sync_filter else f"NULL::BOOLEAN AS {SYNC_FLAG}"
        return [*typed, "modifiedon", "versionnumber", "_deleted", flag]

    def close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):  # an aborted transaction just rolls back
                self.commit()
            self._con.close()
            self._con = None
            owner_only(self.path)

    def discard(self) -> None:
        self.close()
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _sequence(start: int, n: int) -> pa.Array:
    """start, start + 1, ... as an int64 Arrow array over a plain buffer (pa.array would
    import pandas to look at its input)."""
    values = array.array("q", range(start, start + n))
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(values)])


def _stored_types(entity: str, plan: FieldPlan) -> dict[str, str]:
    """Stage column -> the type it is staged as: a field's store type, a GUID as UUID, the
    modification time as TIMESTAMPTZ. The record id stays text (errors quote it); _key holds
    it as a UUID."""
    types = {"modifiedon": "TIMESTAMPTZ"}
    if entity == "contact":
        types["parentcustomerid"] = "UUID"
    for f in plan.synced(entity):
        types.update({c: t for c, t in f.columns() if c != f.label_column})
    return types


def _source(column: str, duck_type: str) -> str:
    """The staged column as the cast's input. Decimals go through their shortest text form:
    DuckDB scales a DOUBLE into a DECIMAL in floating point (922337203685477 would become
    ...476.9664), while the shortest text of the double is the number Dynamics sent."""
    if duck_type.startswith("DECIMAL"):
        return f'CAST("{column}" AS VARCHAR)'
    return f'"{column}"'


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
