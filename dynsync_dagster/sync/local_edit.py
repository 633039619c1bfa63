"""Local edits of an account field (rule 5): DuckDB only, on every contact of the account.

Nothing here talks to Dynamics: dynsync is one-way, and accounts are created in Dynamics only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from dynsync_dagster.store.connection import private_files, working_path
from dynsync_dagster.store.publish import Published, bump_generation, writing
from dynsync_dagster.store.schema import ensure_fixed_tables, literal, quote, table_columns
from dynsync_dagster.sync.rules import ACTIVITY_TYPE, SOURCE_LOCAL, activity_value_sql

REASON_LOCAL = "Account field edited locally (not sent to Dynamics)"


class LocalEditError(ValueError):
    """The edit cannot be made; nothing was changed."""


@dataclass(frozen=True)
class LocalEditResult:
    contactid: str
    accountid: str
    field: str
    value: str | None
    contacts_changed: int
    activities_logged: int
    edited_at: datetime
    published: Published | None = None


def set_account_field(
    db_path: Path,
    contact_id: str,
    field: str,
    value: str | None,
    *,
    run_id: str | None = None,
    wait_s: float = 30.0,
) -> LocalEditResult:
    """Set account field `field` to `value` on every contact of `contact_id`'s account."""
    try:
        contact_uuid = str(uuid.UUID(contact_id.strip()))
    except ValueError:
        raise LocalEditError(f"contact id {contact_id!r} is not a GUID") from None
    field = field.strip().lower()
    db_path = Path(db_path)
    if not (db_path.exists() or working_path(db_path).exists()):
        raise LocalEditError(f"{db_path} does not exist yet: run `dynsync sync` first")
    edited_at = datetime.now(UTC)
    with private_files(), writing(db_path, wait_s=wait_s, run_id=run_id) as session:
        con = session.con
        ensure_fixed_tables(con)
        con.execute("BEGIN TRANSACTION")
        try:
            result = _apply(con, contact_uuid, field, value, edited_at, run_id)
            bump_generation(con, run_id, edited_at)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    # Readers see the edit as soon as it is published, when the session ends (publish.py).
    return replace(result, published=session.published)


def _apply(
    con: duckdb.DuckDBPyConnection,
    contact_id: str,
    field: str,
    value: str | None,
    edited_at: datetime,
    run_id: str | None,
) -> LocalEditResult:
    row = con.execute(
        "SELECT CAST(accountid AS VARCHAR), is_deleted FROM contacts WHERE contactid = CAST(? AS UUID)",
        [contact_id],
    ).fetchone()
    if row is None:
        raise LocalEditError(f"no contact {contact_id} in the store")
    account_id, deleted = row
    if deleted:
        raise LocalEditError(f"contact {contact_id} was deleted in Dynamics; it cannot be edited")
    if account_id is None:
        raise LocalEditError(
            f"contact {contact_id} has no account, and dynsync cannot create one: accounts are "
            "created in Dynamics only (dynsync syncs one way, Dynamics -> DuckDB). Create or "
            "assign the account in Dynamics; the next cycle brings it in."
        )
    synced = dict(
        con.execute(
            "SELECT field, duckdb_type FROM sync_fields WHERE entity = 'account' AND synced AND selected"
        ).fetchall()
    )
    if field not in synced:
        raise LocalEditError(
            f"{field!r} is not a synced account field; the synced ones are: "
            f"{', '.join(sorted(synced)) or '(none)'}"
        )
    duck_type = synced[field]
    typed = _typed_value(con, field, duck_type, value)
    label_col = f"account_{field}_label"
    has_label = label_col in table_columns(con, "contacts")
    label = None
    if has_label and value is not None:
        found = con.execute(
            "SELECT label FROM choice_labels WHERE entity = 'account' AND field = ? AND value = ?",
            [field, int(typed)],
        ).fetchone()
        if found is None:
            known = con.execute(
                "SELECT string_agg(value || ' ' || label, ', ' ORDER BY value) FROM choice_labels "
                "WHERE entity = 'account' AND field = ?",
                [field],
            ).fetchone()[0]
            raise LocalEditError(f"{value!r} is not an option of {field}; the options are: {known}")
        label = found[0]

    col = quote(f"account_{field}")
    params = {"acc": account_id, "v": typed, "t": edited_at, "run": run_id}
    # The values as text by the cycle's rule (merge.activity_value_sql): a choice by its label.
    old_text = activity_value_sql(col, duck_type, quote(label_col) if has_label else None)
    new_text = activity_value_sql(
        f"CAST($v AS {duck_type})", duck_type, "$label" if has_label else None
    )
    if has_label:
        params["label"] = label
    # Rule 6: one Local update row per contact whose value changes, whatever the account's size.
    # DuckDB returns the number of rows an INSERT wrote: the contacts whose value changes.
    changed = con.execute(
        f"""
        INSERT INTO activity_log (activity_type, contactid, accountid, attribute, old_value,
            new_value, source, reason, occurred_at, run_id, logged_at)
        SELECT {literal(ACTIVITY_TYPE)}, contactid, accountid, {literal(field)},
               {old_text}, {new_text},
               {literal(SOURCE_LOCAL)}, {literal(REASON_LOCAL)}, $t, $run, $t
        FROM contacts
        WHERE accountid = CAST($acc AS UUID) AND NOT is_deleted
          AND {col} IS DISTINCT FROM CAST($v AS {duck_type})
        """,
        params,
    ).fetchone()[0]
    # In place: the propagated columns are stored uncompressed for exactly this (store.py).
    sets = f"{col} = CAST($v AS {duck_type})"
    set_params = {"acc": account_id, "v": typed}
    if has_label:
        sets += f", {quote(label_col)} = $label"
        set_params["label"] = label
    con.execute(
        f"UPDATE contacts SET {sets} WHERE accountid = CAST($acc AS UUID) AND NOT is_deleted",
        set_params,
    )
    con.execute(
        "DELETE FROM local_edits WHERE accountid = CAST(? AS UUID) AND field = ?",
        [account_id, field],
    )
    con.execute(
        "INSERT INTO local_edits (accountid, field, value, via_contactid, account_versionnumber, "
        "edited_at) SELECT CAST($acc AS UUID), $f, CAST(CAST($v AS " + duck_type + ") AS VARCHAR), "
        "CAST($c AS UUID), (SELECT versionnumber FROM accounts WHERE accountid = CAST($acc AS UUID)), $t",
        {"acc": account_id, "f": field, "v": typed, "c": contact_id, "t": edited_at},
    )
    return LocalEditResult(
        contact_id, account_id, field, value, int(changed), int(changed), edited_at
    )


def _typed_value(con: duckdb.DuckDBPyConnection, field: str, duck_type: str, value: str | None):
    """The value as the column's type, or a clear error; text goes in as a bound parameter."""
    if value is None:
        return None
    try:
        return con.execute(f"SELECT CAST(? AS {duck_type})", [value]).fetchone()[0]
    except duckdb.Error:
        raise LocalEditError(
            f"{value!r} is not a valid value for {field} (type {duck_type})"
        ) from None
