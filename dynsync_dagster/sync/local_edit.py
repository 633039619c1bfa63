"""Local edits of an account field (rule 5): DuckDB only, on every contact of the account.

Nothing here talks to Dynamics: dynsync is one-way, and accounts are created in Dynamics only.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import duckdb

from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.store.connection import not_yet_synced, private_files
from dynsync_dagster.store.outbox import record_local_edit
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
    value: str | None  # as given
    contacts_changed: int
    activities_logged: int
    edited_at: datetime
    account_name: str | None = None  # None when `name` is not a synced account field
    stored: str | None = None  # as stored, shown the way the activity log shows it; None: cleared
    textual: bool = False  # the stored value is text (or a choice's label): quoted when shown
    published: Published | None = None


def confirmation(result: LocalEditResult) -> str:
    """What the CLI prints once an edit is committed: the value as stored, not as typed."""
    account = f"account {result.accountid}"
    if result.account_name:
        account = f'account "{result.account_name}" ({result.accountid})'
    shown = "NULL" if result.stored is None else result.stored
    if result.stored is not None and result.textual:
        shown = f'"{shown}"'
    return (
        f"{account}: {result.field} = {shown} on "
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
    sync: SyncSettings | None = None,
) -> LocalEditResult:
    """Set account field `field` to `value` on every contact of `contact_id`'s account.
    `sync`: the settings whose block_field_updates may refuse the edit."""
    try:
        contact_uuid = str(uuid.UUID(contact_id.strip()))
    except ValueError:
        raise LocalEditError(f"contact id {contact_id!r} is not a GUID") from None
    field = field.strip().lower()
    if sync is not None and sync.blocked(field, "local_update"):
        raise LocalEditError(
            f"{field} is blocked for local updates (block_field_updates in {sync.source}): "
            "change it in Dynamics, or remove local_update for it there; nothing was changed"
        )
    db_path = Path(db_path)
    if missing := not_yet_synced(db_path):
        raise LocalEditError(missing)
    edited_at = datetime.now(UTC)
    with private_files(), writing(db_path, wait_s=wait_s, run_id=run_id) as session:
        con = session.con
        ensure_fixed_tables(con)
        con.execute("BEGIN TRANSACTION")
        try:
            result = _apply(con, contact_uuid, field, value, edited_at, run_id)
            record_local_edit(con, result.accountid)  # for PostgreSQL's copy (store/outbox.py)
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
    return LocalEditResult(
        contact_id,
        account_id,
        field,
        value,
        changed,
        changed,
        edited_at,
        account_name=_account_name(con, account_id),
        stored=_stored_text(con, contact_id, target),
        textual=target.label_column is not None or target.duck_type == "VARCHAR",
    )


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
    _account_is_stored(con, contact_id, account_id)
    return account_id


def _account_is_stored(con: duckdb.DuckDBPyConnection, contact_id: str, account_id: str) -> None:
    """An edit lands on the account's values as the store holds them: there must be some."""
    if con.execute(
        "SELECT 1 FROM accounts WHERE accountid = CAST(? AS UUID)", [account_id]
    ).fetchone():
        return
    kept_out = con.execute(
        "SELECT 1 FROM filtered_records WHERE entity = 'account' AND record_id = CAST(? AS UUID)",
        [account_id],
    ).fetchone()
    if kept_out:
        raise LocalEditError(
            f"contact {contact_id}'s account {account_id} is kept out by the sync filter (it "
            "says No in Dynamics), so the store has no values of it to edit; set the filter "
            "to Yes or empty in Dynamics and the next cycle brings the account in"
        )
    raise LocalEditError(
        f"contact {contact_id}'s account {account_id} is not in the store; run a cycle first"
    )


def _edit_target(con: duckdb.DuckDBPyConnection, field: str, value: str | None) -> _Target:
    """A synced account field and the value in its type; a choice's value must be an option."""
    synced = {
        name: (duck_type, attribute_type)
        for name, duck_type, attribute_type in con.execute(
            "SELECT field, duckdb_type, attribute_type FROM sync_fields "
            "WHERE entity = 'account' AND synced AND selected"
        ).fetchall()
    }
    if field not in synced:
        raise LocalEditError(
            f"{field!r} is not a synced account field; the synced ones are: "
            f"{', '.join(sorted(synced)) or '(none)'}"
        )
    duck_type, attribute_type = synced[field]
    label_column = f"account_{field}_label"
    if label_column not in table_columns(con, "contacts"):
        typed = _typed_value(con, field, duck_type, attribute_type, value)
        return _Target(field, duck_type, typed, None, None)
    if value is None:
        return _Target(field, duck_type, None, label_column, None)
    code, label = _option(con, field, value)
    return _Target(field, duck_type, code, label_column, label)


def _option(con: duckdb.DuckDBPyConnection, field: str, value: str) -> tuple[int, str]:
    """A choice's option, by its code or (case-insensitively) its label, or an error listing
    the options: the activity log shows labels, so a user may well type one."""
    options = con.execute(
        "SELECT value, label FROM choice_labels WHERE entity = 'account' AND field = ? "
        "ORDER BY value",
        [field],
    ).fetchall()
    text = value.strip()
    found = [(c, lab) for c, lab in options if str(c) == text.lstrip("+")]
    found = found or [(c, lab) for c, lab in options if (lab or "").casefold() == text.casefold()]
    if len(found) == 1:
        return found[0]
    known = "; ".join(f"{c} {lab}" for c, lab in options)  # labels may hold commas
    if found:
        codes = ", ".join(str(c) for c, _lab in found)
        raise LocalEditError(
            f"{value!r} is the label of several options of {field} ({codes}): give the code"
        )
    raise LocalEditError(
        f"{value!r} is not an option of {field}; the options (code and label, either one) "
        f"are: {known}. Nothing was changed."
    )


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
    # The value as the activity log writes it (1000000, not 1000000.0000): it reads back
    # exactly with a cast to the field's type. A choice keeps its code, not its label.
    pending = activity_value_sql(target.typed, target.duck_type)
    con.execute(
        "INSERT INTO local_edits (accountid, field, value, via_contactid, account_versionnumber, "
        f"edited_at) SELECT CAST($acc AS UUID), $f, {pending}, "
        "CAST($c AS UUID), (SELECT versionnumber FROM accounts WHERE accountid = CAST($acc AS UUID)), $t",
        {"acc": account_id, "f": target.field, "v": target.value, "c": contact_id, "t": edited_at},
    )


def _stored_text(con: duckdb.DuckDBPyConnection, contact_id: str, target: _Target) -> str | None:
    """The value as the edited contact now holds it, shown the way the activity log shows it."""
    label = quote(target.label_column) if target.label_column else None
    return con.execute(
        f"SELECT {activity_value_sql(target.column, target.duck_type, label)} FROM contacts "
        "WHERE contactid = CAST(? AS UUID)",
        [contact_id],
    ).fetchone()[0]


def _account_name(con: duckdb.DuckDBPyConnection, account_id: str) -> str | None:
    """The account's name as Dynamics has it, when `name` syncs."""
    if "name" not in table_columns(con, "accounts"):
        return None
    row = con.execute(
        "SELECT name FROM accounts WHERE accountid = CAST(? AS UUID)", [account_id]
    ).fetchone()
    return row[0] if row else None


def _typed_value(
    con: duckdb.DuckDBPyConnection,
    field: str,
    duck_type: str,
    attribute_type: str | None,
    value: str | None,
) -> object:
    """The value as the column's type, or a clear error when the column cannot hold it
    exactly (DuckDB's cast would round 12.5 into an INTEGER as 13, and 12.34567 into a
    DECIMAL(38,4) as 12.3457). Text goes in as a bound parameter."""
    if value is None:
        return None
    try:
        typed = con.execute(f"SELECT CAST(? AS {duck_type})", [value]).fetchone()[0]
    except duckdb.Error:
        raise LocalEditError(_refusal(field, duck_type, attribute_type, value)) from None
    if not _holds_exactly(con, duck_type, value, typed):
        raise LocalEditError(_refusal(field, duck_type, attribute_type, value, typed))
    return typed


def _holds_exactly(
    con: duckdb.DuckDBPyConnection, duck_type: str, value: str, typed: object
) -> bool:
    """Whether `typed`, the cast of `value`, is the value itself rather than a rounding of it."""
    kind = duck_type.upper()
    if kind in ("INTEGER", "BIGINT") or kind.startswith("DECIMAL"):
        given = _decimal(value)
        return given is not None and given == Decimal(typed)
    if kind == "DOUBLE":
        # Dynamics keeps a Double as a binary float too: the nearest one is the value.
        return _decimal(value) is not None and math.isfinite(typed)
    if kind == "DATE":
        # A date with a time of day would lose the time.
        try:
            return con.execute(
                "SELECT CAST(? AS TIMESTAMP) = CAST(CAST(? AS DATE) AS TIMESTAMP)", [value, value]
            ).fetchone()[0]
        except duckdb.Error:
            return True  # not a timestamp, yet a date: nothing is lost
    return True


def _decimal(value: str) -> Decimal | None:
    """`value` as an exact decimal number, or None when it is not a finite number."""
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _refusal(
    field: str, duck_type: str, attribute_type: str | None, value: str, typed: object = None
) -> str:
    """Why the value is refused: the field, its type, what it accepts, and that nothing changed."""
    kind = (attribute_type or "").removesuffix("Type") or "account"
    rounded = "" if typed is None else f" (the column would round it to {typed})"
    return (
        f"{value!r} is not a valid value for {field}, a Dynamics {kind} field stored as "
        f"{duck_type}{rounded}: it accepts {_accepts(duck_type)}. Nothing was changed."
    )


def _accepts(duck_type: str) -> str:
    kind = duck_type.upper()
    scale = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", kind)
    if scale:
        whole, decimals = int(scale.group(1)) - int(scale.group(2)), int(scale.group(2))
        if decimals == 0:
            return f"a whole number of at most {whole} digits"
        return (
            f"a number with at most {decimals} decimal places and {whole} digits before the point"
        )
    return _ACCEPTS.get(kind, f"a value DuckDB can read as {duck_type}")


_ACCEPTS = {
    "INTEGER": "a whole number from -2147483648 to 2147483647",
    "BIGINT": "a whole number from -9223372036854775808 to 9223372036854775807",
    "DOUBLE": "a finite number",
    "BOOLEAN": "true or false",
    "DATE": "a date as YYYY-MM-DD, without a time of day",
    "TIMESTAMPTZ": "a date and time as YYYY-MM-DD HH:MM:SS, UTC unless it ends with an offset",
    "UUID": "a GUID",
}
