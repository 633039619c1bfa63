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
from dynsync_dagster.sync.activity import (
    REASON_LOCAL,
    SOURCE_LOCAL,
    activity_value_sql,
    log_activity,
)


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


def confirmation(result: LocalEditResult) -> str:
    """What the CLI prints once an edit is committed."""
    return (
        f"account {result.accountid}: {result.field} = {result.value!r} on "
        f"{result.contacts_changed} contact(s), {result.activities_logged} activity row(s) logged "
        "(local only; Dynamics is not changed)"
    )


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
    # Readers see the edit as soon as it is published, when the session ends (store/publish.py).
    return replace(result, published=session.published)


def _apply(
    con: duckdb.DuckDBPyConnection,
    contact_id: str,
    field: str,
    value: str | None,
    edited_at: datetime,
    run_id: str | None,
) -> LocalEditResult:
    """The edit, inside the caller's transaction: checked, logged, written and kept pending."""
    account_id = _editable_account(con, contact_id)
    target = _edit_target(con, field, value)
    changed = _log_local_edit(con, account_id, target, edited_at, run_id)
    _write_on_contacts(con, account_id, target)
    _keep_pending(con, account_id, contact_id, target, edited_at)
    return LocalEditResult(contact_id, account_id, field, value, changed, changed, edited_at)


@dataclass(frozen=True)
class _Target:
    """The account field an edit sets, and the value as it will be stored."""

    field: str
    duck_type: str
    value: object  # the edit's value cast to duck_type (None clears the field)
    label_column: str | None  # a choice keeps its label beside the code
    label: str | None

    @property
    def column(self) -> str:
        """The contacts' copy of the field."""
        return quote(f"account_{self.field}")

    @property
    def typed(self) -> str:
        """The value ($v) as SQL of the field's type."""
        return f"CAST($v AS {self.duck_type})"


def _editable_account(con: duckdb.DuckDBPyConnection, contact_id: str) -> str:
    """The account of a live contact: the edit lands on every contact of it."""
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
    return account_id


def _edit_target(con: duckdb.DuckDBPyConnection, field: str, value: str | None) -> _Target:
    """A synced account field and the value in its type; a choice's value must be an option."""
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
    label_column = f"account_{field}_label"
    if label_column not in table_columns(con, "contacts"):
        return _Target(field, duck_type, typed, None, None)
    label = None if value is None else _option_label(con, field, value, int(typed))
    return _Target(field, duck_type, typed, label_column, label)


def _option_label(con: duckdb.DuckDBPyConnection, field: str, value: str, code: int) -> str:
    """The label of a choice's option, or an error listing the options."""
    found = con.execute(
        "SELECT label FROM choice_labels WHERE entity = 'account' AND field = ? AND value = ?",
        [field, code],
    ).fetchone()
    if found is None:
        known = con.execute(
            "SELECT string_agg(value || ' ' || label, ', ' ORDER BY value) FROM choice_labels "
            "WHERE entity = 'account' AND field = ?",
            [field],
        ).fetchone()[0]
        raise LocalEditError(f"{value!r} is not an option of {field}; the options are: {known}")
    return found[0]


def _log_local_edit(
    con: duckdb.DuckDBPyConnection,
    account_id: str,
    target: _Target,
    edited_at: datetime,
    run_id: str | None,
) -> int:
    """Rule 6: one Local update row per contact whose value changes, whatever the account's
    size. Returns how many contacts change."""
    label = quote(target.label_column) if target.label_column else None
    old_text = activity_value_sql(target.column, target.duck_type, label)
    new_label = "$label" if target.label_column else None
    new_text = activity_value_sql(target.typed, target.duck_type, new_label)
    params = {"acc": account_id, "v": target.value, "t": edited_at}
    if target.label_column:
        params["label"] = target.label
    rows = f"""
        SELECT contactid, accountid, {literal(target.field)} AS attribute,
               {old_text} AS old_value, {new_text} AS new_value,
               {literal(REASON_LOCAL)} AS reason, $t AS occurred_at
        FROM contacts
        WHERE accountid = CAST($acc AS UUID) AND NOT is_deleted
          AND {target.column} IS DISTINCT FROM {target.typed}
        """
    return log_activity(con, rows, SOURCE_LOCAL, run_id=run_id, logged_at=edited_at, params=params)


def _write_on_contacts(con: duckdb.DuckDBPyConnection, account_id: str, target: _Target) -> None:
    """The value on every live contact of the account, in place: the propagated columns are
    stored uncompressed for exactly this (store/schema.py)."""
    sets = f"{target.column} = {target.typed}"
    params = {"acc": account_id, "v": target.value}
    if target.label_column:
        sets += f", {quote(target.label_column)} = $label"
        params["label"] = target.label
    con.execute(
        f"UPDATE contacts SET {sets} WHERE accountid = CAST($acc AS UUID) AND NOT is_deleted",
        params,
    )


def _keep_pending(
    con: duckdb.DuckDBPyConnection,
    account_id: str,
    contact_id: str,
    target: _Target,
    edited_at: datetime,
) -> None:
    """Rule 5: the edit stays pending until Dynamics updates the account after it; the
    account's version is kept to show which Dynamics values it covers."""
    con.execute(
        "DELETE FROM local_edits WHERE accountid = CAST(? AS UUID) AND field = ?",
        [account_id, target.field],
    )
    con.execute(
        "INSERT INTO local_edits (accountid, field, value, via_contactid, account_versionnumber, "
        f"edited_at) SELECT CAST($acc AS UUID), $f, CAST({target.typed} AS VARCHAR), "
        "CAST($c AS UUID), (SELECT versionnumber FROM accounts WHERE accountid = CAST($acc AS UUID)), $t",
        {"acc": account_id, "f": target.field, "v": target.value, "c": contact_id, "t": edited_at},
    )


def _typed_value(
    con: duckdb.DuckDBPyConnection, field: str, duck_type: str, value: str | None
) -> object:
    """The value as the column's type, or a clear error; text goes in as a bound parameter."""
    if value is None:
        return None
    try:
        return con.execute(f"SELECT CAST(? AS {duck_type})", [value]).fetchone()[0]
    except duckdb.Error:
        raise LocalEditError(
            f"{value!r} is not a valid value for {field} (type {duck_type})"
        ) from None
