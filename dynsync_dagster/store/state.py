"""The status tables: where each entity's reader stands, which fields sync and why, each cycle."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import duckdb

from dynsync_dagster.dynamics.fields import ENTITIES, FieldPlan
from dynsync_dagster.store.schema import insert_values


@dataclass(frozen=True)
class ReaderState:
    """Where an entity's incremental reader resumes: a delta link, or a modifiedon cursor."""

    entity: str
    mode: str
    delta_link: str | None
    select_list: str | None
    cursor_modifiedon: datetime | None
    updated_at: datetime | None


def read_reader_states(con: duckdb.DuckDBPyConnection) -> dict[str, ReaderState]:
    rows = con.execute(
        "SELECT entity, mode, delta_link, select_list, cursor_modifiedon, updated_at FROM sync_state"
    ).fetchall()
    return {r[0]: ReaderState(*r) for r in rows}


def write_reader_state(con: duckdb.DuckDBPyConnection, state: ReaderState, run_id: str) -> None:
    con.execute("DELETE FROM sync_state WHERE entity = ?", [state.entity])
    con.execute(
        "INSERT INTO sync_state (entity, mode, delta_link, select_list, cursor_modifiedon, run_id, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            state.entity,
            state.mode,
            state.delta_link,
            state.select_list,
            state.cursor_modifiedon,
            run_id,
            state.updated_at,
        ],
    )


def previously_synced_fields(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """Selected fields that synced before, or were since deleted in Dynamics: if one is missing
    from the metadata now, that is schema drift (a warning), not a typo (an error)."""
    rows = con.execute(
        'SELECT entity, field FROM sync_fields WHERE selected AND (synced OR NOT "exists")'
    ).fetchall()
    return {(e, f) for e, f in rows}


def write_field_decisions(
    con: duckdb.DuckDBPyConnection, plan: FieldPlan, run_id: str, now: datetime
) -> None:
    """Replace sync_fields and choice_labels with this cycle's decisions and option labels."""
    specs = {(f.entity, f.name): f for e in ENTITIES for f in plan.synced(e)}
    rows = []
    for d in plan.decisions:
        spec = specs.get((d.entity, d.field))
        rows.append(
            (
                d.entity,
                d.field,
                d.selected,
                d.exists,
                d.readable,
                d.synced,
                d.reason,
                d.attribute_type,
                d.is_secured,
                spec.duck_type if spec else None,
                [c for c, _t in spec.columns()] if spec else None,
                run_id,
                now,
            )
        )
    con.execute("DELETE FROM sync_fields")
    insert_values(con, "sync_fields", rows)
    con.execute("DELETE FROM choice_labels")
    labels = [(f.entity, f.name, v, label) for f in specs.values() for v, label in f.options]
    insert_values(con, "choice_labels", labels)


def decisions_fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[list, list]:
    """The field decisions and option labels, less their run ids and times: a cycle whose
    decisions equal the last ones changed nothing a reader sees in sync_fields."""
    fields = con.execute(
        'SELECT entity, field, selected, "exists", readable, synced, reason, attribute_type, '
        "is_secured, duckdb_type, columns FROM sync_fields ORDER BY entity, field"
    ).fetchall()
    labels = con.execute(
        "SELECT entity, field, value, label FROM choice_labels ORDER BY entity, field, value"
    ).fetchall()
    return fields, labels


@dataclass(frozen=True)
class SyncRun:
    """One row of sync_runs: a cycle's outcome. A failed cycle fills only the first six."""

    run_id: str
    trigger: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str  # success or failed
    error: str | None = None
    account_mode: str | None = None  # full, resync, delta or cursor
    contact_mode: str | None = None
    window_start: datetime | None = None  # a backfill's window; NULL for an ordinary cycle
    window_end: datetime | None = None
    accounts_read: int | None = None
    contacts_read: int | None = None
    accounts_upserted: int | None = None
    contacts_upserted: int | None = None
    accounts_deleted: int | None = None
    contacts_deleted: int | None = None
    contacts_repropagated: int | None = None
    activities_logged: int | None = None
    activities_suppressed: int | None = None
    requests: int | None = None
    retries: int | None = None
    throttle_wait_s: float | None = None
    record_errors: int | None = None
    accounts_filtered: int | None = None  # staged with the sync filter at No
    contacts_filtered: int | None = None
    updates_blocked: int | None = None  # Dynamics changes kept off contacts (block_field_updates)


def write_sync_run(con: duckdb.DuckDBPyConnection, run: SyncRun) -> None:
    columns = [f.name for f in dataclasses.fields(SyncRun)]
    con.execute(
        f"INSERT INTO sync_runs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [getattr(run, c) for c in columns],
    )


def record_sync_errors(
    con: duckdb.DuckDBPyConnection, rejects: Mapping[str, str], run_id: str, now: datetime
) -> int:
    """Records the stage set aside (values their column cannot hold) become `sync_errors` rows.
    `rejects`: entity -> the table that holds them (id, problems)."""
    before = con.execute("SELECT count(*) FROM sync_errors").fetchone()[0]
    for entity, table in rejects.items():
        con.execute(
            f"""
            INSERT INTO sync_errors (run_id, entity, record_id, code, message, occurred_at)
            SELECT ?, ?, id, 'value_not_convertible',
                   'skipped: a value does not fit its column type: ' || array_to_string(problems, '; '),
                   ?
            FROM {table}
            """,
            [run_id, entity, now],
        )
    return int(con.execute("SELECT count(*) FROM sync_errors").fetchone()[0] - before)
