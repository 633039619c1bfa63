"""The store's tables: the fixed ones, the field columns that follow the selection, and how
they change when the selection does."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from dynsync_dagster.dynamics.fields import FieldPlan, FieldSpec

# Every synced record's version, and dynsync's own bookkeeping of it.
_TRACKED = {
    "modifiedon": "TIMESTAMPTZ",
    "versionnumber": "BIGINT",
    "is_deleted": "BOOLEAN NOT NULL DEFAULT false",
    "deleted_at": "TIMESTAMPTZ",
    "first_synced_at": "TIMESTAMPTZ",
    "last_synced_at": "TIMESTAMPTZ",
    "last_run_id": "VARCHAR",
    # Stale because of the sync filter: Dynamics set it to No after it synced (its values are
    # the last synced ones, and later Dynamics changes do not apply until it turns Yes).
    "sync_filtered": "BOOLEAN NOT NULL DEFAULT false",
}
# Columns dynsync maintains itself; every other column of accounts/contacts is a synced field.
ACCOUNT_BASE = {"accountid": "UUID", **_TRACKED}
CONTACT_BASE = {
    "contactid": "UUID",
    "accountid": "UUID",
    "parentcustomerid": "UUID",
    "parentcustomerid_type": "VARCHAR",
    **_TRACKED,
}
BASE_COLUMNS = {"accounts": ACCOUNT_BASE, "contacts": CONTACT_BASE}

FIXED_TABLES = """
CREATE SEQUENCE IF NOT EXISTS activity_id_seq;
CREATE TABLE IF NOT EXISTS activity_log (
    activity_id BIGINT DEFAULT nextval('activity_id_seq'),
    activity_type VARCHAR NOT NULL,
    contactid UUID NOT NULL,
    accountid UUID,
    attribute VARCHAR NOT NULL,
    old_value VARCHAR,
    new_value VARCHAR,
    source VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    run_id VARCHAR,
    logged_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS activity_suppressions (
    run_id VARCHAR,
    accountid UUID NOT NULL,
    contact_count BIGINT NOT NULL,
    contact_limit BIGINT NOT NULL,
    attributes VARCHAR[] NOT NULL,
    rows_suppressed BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ,
    logged_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS local_edits (
    accountid UUID NOT NULL,
    field VARCHAR NOT NULL,
    value VARCHAR,
    via_contactid UUID,
    account_versionnumber BIGINT,
    edited_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_fields (
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    selected BOOLEAN NOT NULL,
    "exists" BOOLEAN NOT NULL,
    readable BOOLEAN NOT NULL,
    synced BOOLEAN NOT NULL,
    reason VARCHAR NOT NULL,
    attribute_type VARCHAR,
    is_secured BOOLEAN,
    duckdb_type VARCHAR,
    columns VARCHAR[],
    run_id VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS choice_labels (
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    value INTEGER NOT NULL,
    label VARCHAR
);
CREATE TABLE IF NOT EXISTS sync_state (
    entity VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    delta_link VARCHAR,
    select_list VARCHAR,
    cursor_modifiedon TIMESTAMPTZ,
    run_id VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id VARCHAR NOT NULL,
    trigger VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome VARCHAR NOT NULL,
    account_mode VARCHAR,
    contact_mode VARCHAR,
    window_start TIMESTAMPTZ,
    window_end TIMESTAMPTZ,
    accounts_read BIGINT,
    contacts_read BIGINT,
    accounts_upserted BIGINT,
    contacts_upserted BIGINT,
    accounts_deleted BIGINT,
    contacts_deleted BIGINT,
    contacts_repropagated BIGINT,
    activities_logged BIGINT,
    activities_suppressed BIGINT,
    requests BIGINT,
    retries BIGINT,
    throttle_wait_s DOUBLE,
    record_errors BIGINT,
    error VARCHAR,
    accounts_filtered BIGINT,
    contacts_filtered BIGINT,
    updates_blocked BIGINT
);
CREATE TABLE IF NOT EXISTS column_lineage (
    table_name VARCHAR NOT NULL,
    column_name VARCHAR NOT NULL,
    source_table VARCHAR NOT NULL,
    source_column VARCHAR NOT NULL,
    description VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS filtered_records (
    entity VARCHAR NOT NULL,
    record_id UUID NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS sync_errors (
    run_id VARCHAR,
    entity VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    code VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);
"""


def literal(text: str) -> str:
    """A constant SQL string, for names the store itself chose (bound values everywhere else)."""
    return "'" + text.replace("'", "''") + "'"


def quote(identifier: str) -> str:
    """Quote an identifier for SQL. Names reaching here were validated against Dynamics metadata."""
    return '"' + identifier.replace('"', '""') + '"'


def insert_values(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Insert rows with one statement: executemany runs one statement per row (~0.3 ms each)."""
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    con.execute(
        f"INSERT INTO {table} VALUES {', '.join([one] * len(rows))}",
        [v for row in rows for v in row],
    )


def ensure_fixed_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(FIXED_TABLES)
    for table, base in BASE_COLUMNS.items():
        cols = ", ".join(f"{quote(c)} {t}" for c, t in base.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
    for table, columns in _ADDED_SINCE.items():
        _add_missing_columns(con, table, columns)


# Columns added after the first release: a store made before lacks them.
_ADDED_SINCE = {
    "accounts": {"sync_filtered": _TRACKED["sync_filtered"]},
    "contacts": {"sync_filtered": _TRACKED["sync_filtered"]},
    "sync_runs": {
        "accounts_filtered": "BIGINT",
        "contacts_filtered": "BIGINT",
        "updates_blocked": "BIGINT",
    },
}


def _add_missing_columns(
    con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]
) -> None:
    """Bring an older store's table up to date (DuckDB's ADD COLUMN takes a default but no
    NOT NULL)."""
    have = table_columns(con, table)
    for col, dtype in columns.items():
        if col not in have:
            con.execute(
                f"ALTER TABLE {table} ADD COLUMN {quote(col)} {dtype.replace(' NOT NULL', '')}"
            )


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Column -> type of a table in the store (pragma_table_info: information_schema scans the
    whole catalog and costs ~50 ms a call)."""
    rows = con.execute("SELECT name, type FROM pragma_table_info(?)", [table]).fetchall()
    return {name: dtype for name, dtype in rows}


def desired_field_columns(plan: FieldPlan) -> dict[str, dict[str, tuple[str, FieldSpec]]]:
    """Per table: field column -> (DuckDB type, the field it holds)."""
    accounts = {c: (t, f) for f in plan.synced("account") for c, t in f.columns()}
    contacts = {c: (t, f) for f in plan.synced("contact") for c, t in f.columns()}
    contacts.update({f"account_{c}": (t, f) for c, (t, f) in accounts.items()})
    return {"accounts": accounts, "contacts": contacts}


@dataclass
class SchemaChange:
    added: dict[str, list[str]]  # table -> columns added this cycle (filled without activity)
    dropped: dict[str, list[str]]

    def refill(self, entity: str) -> bool:
        """A field column was added to this entity's table: its records must all be re-read."""
        table = {"account": "accounts", "contact": "contacts"}[entity]
        cols = [c for c in self.added.get(table, []) if not c.startswith("account_")]
        return bool(cols)

    def new_account_fields(self) -> set[str]:
        return {
            c[len("account_") :] for c in self.added.get("contacts", []) if c.startswith("account_")
        }


def existing_columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    return {table: table_columns(con, table) for table in BASE_COLUMNS}


def plan_schema_change(existing: dict[str, dict[str, str]], plan: FieldPlan) -> SchemaChange:
    """What apply_schema_change will do, worked out before the fetch so that an entity that
    gains a field column is re-read in full (Marketo's "Quick Sync" fill)."""
    desired = desired_field_columns(plan)
    added: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    for table, base in BASE_COLUMNS.items():
        have = {c: t for c, t in existing[table].items() if c not in base}
        want = desired[table]
        for col, (dtype, _f) in want.items():
            if col not in have or not _same_type(have[col], dtype):
                added.setdefault(table, []).append(col)
        for col, dtype in have.items():
            if col not in want or not _same_type(dtype, want[col][0]):
                dropped.setdefault(table, []).append(col)
    return SchemaChange(added, dropped)


def apply_schema_change(
    con: duckdb.DuckDBPyConnection, plan: FieldPlan, change: SchemaChange
) -> None:
    desired = desired_field_columns(plan)
    for table, cols in change.dropped.items():
        for col in cols:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {quote(col)}")
    for table, cols in change.added.items():
        for col in cols:
            # Propagated account values are rewritten in place by every cycle that changes an
            # account: DuckDB updates an uncompressed column without re-encoding its blocks.
            storage = " USING COMPRESSION uncompressed" if _propagated(table, col) else ""
            con.execute(
                f"ALTER TABLE {table} ADD COLUMN {quote(col)} {desired[table][col][0]}{storage}"
            )


def _propagated(table: str, col: str) -> bool:
    return table == "contacts" and col.startswith("account_")


def _same_type(have: str, want: str) -> bool:
    norm = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
    return norm.get(have.upper(), have.upper()) == norm.get(want.upper(), want.upper())


def rewrite_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    key: str,
    replace: dict[str, str],
    source: str | None,
    where: str = "",
    params: dict | None = None,
    current: str | None = None,
) -> None:
    """UPDATE `table` rows matching `source` (aliased v) on `key`, as a delete and an append.

    A DuckDB UPDATE of text columns rewrites every 2,048-row block it touches, and an
    account's contacts are scattered over the whole table: updating 5,000 of them cost 40x
    more than deleting them and appending the new versions. `replace` maps a column to its
    new value (an expression over t, the old row, and v); `where` filters the joined rows.
    `current` names a copy of the rows as they are now, when the caller already made one.
    Without `source`, `where` alone picks the rows (one scan instead of a join).
    """
    new_values = ", ".join(f"{expr} AS {quote(col)}" for col, expr in replace.items())
    join = f"JOIN {source} v ON t.{key} = v.{key}" if source else ""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _rewritten AS SELECT t.* REPLACE ({new_values}) "
        f"FROM {current or table} t {join} {where}",
        params or {},
    )
    con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM _rewritten)")
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rewritten")
    con.execute("DROP TABLE _rewritten")
