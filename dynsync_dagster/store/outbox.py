"""Change capture for the PostgreSQL copy: which rows each DuckDB transaction changed.

Every writer of a published table records the keys it changed in `postgres_outbox`, in the
same DuckDB transaction as the change, so a commit always carries its record and a rollback
(or a kill) takes both away. The publisher (store/postgres.py) ships the rows those keys name,
as they are now, and trims the entries PostgreSQL has applied. Why the copy is then exact:

- After a publish that applied sequence S, each PostgreSQL table equals its DuckDB table.
- A later transaction that changes a row of `accounts`, `contacts` or `sync_runs` records its
  key with a sequence number above S (a whole-table mark, key NULL, when it changes a column
  of every row: a field added or removed). A row no entry names is unchanged since S.
- The next publish replaces, for every key with an entry above S, PostgreSQL's row by
  DuckDB's current one, or deletes it when DuckDB has none. Shipping a row twice is harmless,
  so entries may overlap and the publish is idempotent.
- `activity_log` rows are only added, with ids from a sequence under one writer, or deleted:
  the rows with an id above PostgreSQL's largest are exactly the new ones, and a deletion
  (activity retention's purge records nothing here) shows in the row count PostgreSQL keeps,
  which then drops the ids DuckDB no longer has. The small tables (store/postgres.py,
  WHOLE_TABLES) are copied whole on every publish.
- With DYNSYNC_POSTGRES_URL unset nothing is recorded; the transaction notes instead that its
  changes went unrecorded (`skipped_through`), and the next publish to PostgreSQL is a full one.
"""

from __future__ import annotations

import os
import uuid

import duckdb

from dynsync_dagster.store.schema import SchemaChange, quote

URL_VARIABLE = "DYNSYNC_POSTGRES_URL"

OUTBOX_TABLES = """
CREATE SEQUENCE IF NOT EXISTS postgres_outbox_seq;
CREATE TABLE IF NOT EXISTS postgres_outbox (
    seq BIGINT NOT NULL,
    table_name VARCHAR NOT NULL,
    key VARCHAR
);
CREATE TABLE IF NOT EXISTS postgres_outbox_state (
    store_id VARCHAR NOT NULL,
    skipped_through BIGINT NOT NULL
);
"""

# The temp table the cycle's rules leave for re-propagated contacts, with old_/new_ columns.
_PROPAGATED = "prop_vals"


def enabled() -> bool:
    """Whether changes are recorded for PostgreSQL: DYNSYNC_POSTGRES_URL is set."""
    return bool(os.environ.get(URL_VARIABLE, "").strip())


def ensure_outbox(con: duckdb.DuckDBPyConnection) -> str:
    """Create the outbox tables if needed; returns the store's id (PostgreSQL remembers which
    store it copies, so pointing the URL at another store's copy starts a full publish)."""
    con.execute(OUTBOX_TABLES)
    row = con.execute("SELECT store_id FROM postgres_outbox_state").fetchone()
    if row is not None:
        return row[0]
    store_id = uuid.uuid4().hex
    con.execute("INSERT INTO postgres_outbox_state VALUES (?, 0)", [store_id])
    return store_id


def _next_seq(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT nextval('postgres_outbox_seq')").fetchone()[0])


def record(
    con: duckdb.DuckDBPyConnection, table: str, keys_sql: str | None, params: list | None = None
) -> None:
    """Inside the writer's transaction: `table`'s rows whose keys `keys_sql` selects changed
    (None: every row of the table did)."""
    ensure_outbox(con)
    seq = _next_seq(con)
    if not enabled():
        con.execute("UPDATE postgres_outbox_state SET skipped_through = ?", [seq])
        return
    if keys_sql is None:
        con.execute("INSERT INTO postgres_outbox VALUES (?, ?, NULL)", [seq, table])
        return
    con.execute(
        f"INSERT INTO postgres_outbox SELECT ?, ?, CAST(k AS VARCHAR) FROM ({keys_sql}) AS _k(k)",
        [seq, table, *(params or [])],
    )


def record_cycle(con: duckdb.DuckDBPyConnection, run_id: str, schema: SchemaChange) -> None:
    """What a cycle's rules changed, read before their temp tables are dropped: the records
    they wrote (stamped with the run), the contacts whose account values changed (prop_vals),
    and the tables whose columns changed."""
    for table in ("accounts", "contacts"):
        if schema.added.get(table) or schema.dropped.get(table):
            record(con, table, None)
    record(con, "accounts", "SELECT accountid FROM accounts WHERE last_run_id = ?", [run_id])
    keys = "SELECT contactid FROM contacts WHERE last_run_id = ?"
    changed = _propagated_changes(con)
    if changed:
        keys += f" UNION ALL SELECT contactid FROM {_PROPAGATED} WHERE {changed}"
    record(con, "contacts", keys, [run_id])


def record_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """A cycle's sync_runs row (written once per cycle, success or failure)."""
    record(con, "sync_runs", "SELECT ?", [run_id])


def record_local_edit(con: duckdb.DuckDBPyConnection, account_id: str) -> None:
    """A local edit: it wrote the field on every live contact of the account."""
    record(
        con,
        "contacts",
        "SELECT contactid FROM contacts WHERE accountid = CAST(? AS UUID) AND NOT is_deleted",
        [account_id],
    )


def _propagated_changes(con: duckdb.DuckDBPyConnection) -> str | None:
    """The condition on prop_vals of a contact whose account values change (any old_/new_ pair
    differs), or None when the cycle re-propagated nothing."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?", [_PROPAGATED]
    ).fetchone()[0]
    if not exists:
        return None
    rows = con.execute(f"SELECT name FROM pragma_table_info('{_PROPAGATED}')").fetchall()
    columns = {r[0] for r in rows}
    pairs = [c[4:] for c in columns if c.startswith("old_") and f"new_{c[4:]}" in columns]
    if not pairs:
        return None
    return " OR ".join(
        f"{quote('old_' + c)} IS DISTINCT FROM {quote('new_' + c)}" for c in sorted(pairs)
    )


def pending(con: duckdb.DuckDBPyConnection) -> tuple[str, int, int]:
    """(store id, the newest sequence number, the last one whose changes went unrecorded)."""
    store_id = ensure_outbox(con)
    skipped = con.execute("SELECT skipped_through FROM postgres_outbox_state").fetchone()[0]
    newest = con.execute(
        "SELECT coalesce(max(last_value), 0) FROM duckdb_sequences() "
        "WHERE sequence_name = 'postgres_outbox_seq' AND schema_name = 'main' "
        "AND database_name = current_database()"
    ).fetchone()[0]
    return store_id, int(newest), int(skipped)


def trim(con: duckdb.DuckDBPyConnection, applied: int) -> None:
    """Drop the entries PostgreSQL has applied (its own transaction)."""
    con.execute("DELETE FROM postgres_outbox WHERE seq <= ?", [applied])
