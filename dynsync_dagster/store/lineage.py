"""Where each stored column comes from: the chain back to a Dynamics attribute."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from dynsync_dagster.dynamics.fields import SYSTEM_FIELDS, FieldPlan, FieldSpec
from dynsync_dagster.store.schema import BASE_COLUMNS, insert_values

_BASE_DESCRIPTIONS = {
    "accountid": "Primary key of the Dynamics account",
    "contactid": "Primary key of the Dynamics contact",
    "modifiedon": "When Dynamics last modified the record (UTC)",
    "versionnumber": "Dynamics row version; a higher number is an update",
    "is_deleted": "The record was deleted in Dynamics (kept and flagged)",
    "deleted_at": "When dynsync saw the deletion",
    "first_synced_at": "When dynsync first stored the record",
    "last_synced_at": "When dynsync last applied an update from Dynamics",
    "last_run_id": "The cycle (Dagster run) that last changed the row",
    "parentcustomerid": "The contact's parent customer (an account or a contact)",
    "parentcustomerid_type": "Table of the parent customer: account or contact",
    "sync_filtered": "Stale: the sync filter turned No after the record synced; it keeps its "
    "last synced values until the filter turns Yes again",
}


# Stored columns that a row of column_sources describes by hand instead of the generic
# system-field rule: their value is derived, not copied from the attribute of the same name.
_DERIVED = {("contacts", "accountid")}


@dataclass(frozen=True)
class ColumnSource:
    table: str
    column: str
    source_table: str  # "dynamics.account", "dynamics.contact", "accounts", ...
    source_column: str
    description: str


def column_sources(plan: FieldPlan) -> list[ColumnSource]:
    """Every stored column of accounts and contacts and the column it is read or copied from."""
    out: list[ColumnSource] = []
    for table, entity in (("accounts", "account"), ("contacts", "contact")):
        out += _system_columns(table, entity)
        for f in plan.synced(entity):
            out += _field_columns(table, entity, f)
    out.append(_CONTACT_ACCOUNT)
    out += _copied_account_columns(plan)
    return out


def _system_columns(table: str, entity: str) -> list[ColumnSource]:
    """The Dynamics system fields every row has (key, modifiedon, versionnumber, ...)."""
    out = []
    for col in BASE_COLUMNS[table]:
        if col in SYSTEM_FIELDS[entity] and (table, col) not in _DERIVED:
            api = f"_{col}_value" if col == "parentcustomerid" else col
            what = f"{_BASE_DESCRIPTIONS.get(col, col)}; from Dynamics {entity}.{api}"
            out.append(ColumnSource(table, col, f"dynamics.{entity}", api, what))
    return out


def _field_columns(table: str, entity: str, f: FieldSpec) -> list[ColumnSource]:
    """A synced field's value, and for a choice its label, for a lookup its target table."""
    source = f"dynamics.{entity}"
    out = [
        ColumnSource(
            table, f.name, source, f.api_name, f"Dynamics {entity}.{f.name} ({f.type_name})"
        )
    ]
    if f.label_column:
        what = f"Label of {entity}.{f.name} (its FormattedValue)"
        out.append(ColumnSource(table, f.label_column, source, f.api_name, what))
    if f.target_column:
        what = f"Table {entity}.{f.name} points to (lookuplogicalname)"
        out.append(ColumnSource(table, f.target_column, source, f.api_name, what))
    return out


_CONTACT_ACCOUNT = ColumnSource(
    "contacts",
    "accountid",
    "dynamics.contact",
    "_parentcustomerid_value",
    "The contact's account: its parent customer lookup (Dynamics "
    "contact.parentcustomerid) when that points to an account, else NULL",
)


def _copied_account_columns(plan: FieldPlan) -> list[ColumnSource]:
    """contacts.account_<column>: each column of each synced account field, copied on."""
    return [
        ColumnSource(
            "contacts",
            f"account_{col}",
            "accounts",
            col,
            f"Copied from accounts.{col} of the contact's account "
            f"(Dynamics account.{f.name}), or a pending local edit",
        )
        for f in plan.synced("account")
        for col, _t in f.columns()
    ]


def write_lineage(con: duckdb.DuckDBPyConnection, plan: FieldPlan, now: datetime) -> None:
    """Replace the column_lineage table: one row per stored column and the column it comes from."""
    rows = [
        (s.table, s.column, s.source_table, s.source_column, s.description, now)
        for s in column_sources(plan)
    ]
    rows += [(*r, now) for r in _activity_value_sources(plan)]
    con.execute("DELETE FROM column_lineage")
    insert_values(con, "column_lineage", rows)


def _activity_value_sources(plan: FieldPlan) -> list[tuple[str, str, str, str, str]]:
    """activity_log's old_value and new_value: the contact's copy of the field, as Dynamics
    shows it (activity_value_sql in sync/activity.py): a choice by its label, the code only
    when it has none."""
    rows = []
    for f in plan.synced("account"):
        for col, when in (("old_value", "before"), ("new_value", "after")):
            if f.label_column:
                rows.append(
                    (
                        "activity_log",
                        col,
                        "contacts",
                        f"account_{f.label_column}",
                        f"When attribute = '{f.name}': the label {when} the change",
                    )
                )
                how = f"the code {when} the change, when the option has no label"
            else:
                how = f"its value {when} the change, as text the way Dynamics shows it"
            rows.append(
                (
                    "activity_log",
                    col,
                    "contacts",
                    f"account_{f.name}",
                    f"When attribute = '{f.name}': {how}",
                )
            )
    return rows


@dataclass(frozen=True)
class LineageStep:
    """One source in a column's lineage tree; depth 1 is a direct source of the column."""

    depth: int
    source_table: str
    source_column: str
    description: str


def trace(con: duckdb.DuckDBPyConnection, table: str, column: str) -> list[LineageStep]:
    """The tree from a stored column back to its Dynamics attributes, depth first: each source
    is followed by its own sources, one level deeper."""
    sources: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for t, c, st, sc, description in con.execute(
        "SELECT table_name, column_name, source_table, source_column, description "
        "FROM column_lineage ORDER BY source_column, source_table"
    ).fetchall():
        sources.setdefault((t, c), []).append((st, sc, description))
    steps: list[LineageStep] = []
    expanded: set[tuple[str, str]] = set()

    def visit(node: tuple[str, str], depth: int) -> None:
        if node in expanded:  # a column reached twice is followed once (and lineage never loops)
            return
        expanded.add(node)
        for source_table, source_column, description in sources.get(node, []):
            steps.append(LineageStep(depth, source_table, source_column, description))
            if not source_table.startswith("dynamics."):
                visit((source_table, source_column), depth + 1)

    visit((table, column), 1)
    return steps


def render_lineage(column: str, steps: list[LineageStep]) -> str:
    """The tree as `dynsync lineage` prints it: indented by depth, so that sources at the same
    depth line up, with the descriptions in one column."""
    heads = [f"{'  ' * s.depth}<- {s.source_table}.{s.source_column}" for s in steps]
    width = max((len(h) for h in heads), default=0)
    lines = [f"{h.ljust(width)}   {s.description}" for h, s in zip(heads, steps, strict=True)]
    return "\n".join([column, *lines])


# The tables whose columns do not follow the field selection: what each column holds.
_FIXED_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "activity_log": {
        "activity_id": "Row number, increasing in the order the rows were logged",
        "activity_type": "Always `Change Data Value` (Marketo's activity type)",
        "contactid": "The contact whose copy of the account field changed (contacts.contactid)",
        "accountid": "The contact's account when the change was logged; NULL once it has none",
        "attribute": "Logical name of the account field that changed (e.g. address1_city)",
        "old_value": "The contact's value before the change, as Dynamics shows it (a choice "
        "by its label, money without trailing zeros); NULL when it was empty",
        "new_value": "The value after the change, shown the same way; NULL when cleared",
        "source": "Who changed it: `Dynamics sync` (a cycle) or `Local update` (a local edit)",
        "reason": "Why: the account was updated, the contact joined, moved to or left an "
        "account, was restored, or the field was edited locally",
        "occurred_at": "When the change happened: modifiedon in Dynamics of the account or "
        "contact that changed, or the time of the local edit (UTC)",
        "run_id": "The cycle or local edit (Dagster run id) that logged the row",
        "logged_at": "When dynsync wrote the row (UTC)",
    },
    "sync_runs": {
        "run_id": "The cycle's id (its Dagster run id when Dagster ran it)",
        "trigger": "What started it: schedule, backfill, manual, cli or demo",
        "started_at": "When the cycle started (UTC)",
        "finished_at": "When it committed or failed (UTC)",
        "outcome": "success or failed; a failed cycle changed no data table",
        "account_mode": "How accounts were read: full, resync (re-read after a selection "
        "change), delta (change tracking) or cursor (modifiedon)",
        "contact_mode": "How contacts were read, as account_mode",
        "window_start": "A backfill's first re-read instant (modifiedon, UTC); NULL otherwise",
        "window_end": "The end of a backfill's window, exclusive; NULL otherwise",
        "accounts_read": "Account records read from Dynamics",
        "contacts_read": "Contact records read from Dynamics",
        "accounts_upserted": "Accounts inserted or updated in the store",
        "contacts_upserted": "Contacts inserted or updated in the store",
        "accounts_deleted": "Accounts flagged deleted (is_deleted) this cycle",
        "contacts_deleted": "Contacts flagged deleted this cycle",
        "contacts_repropagated": "Contacts whose account_<field> copies were rewritten",
        "activities_logged": "activity_log rows the cycle wrote",
        "activities_suppressed": "Activity rows not logged because the account has more "
        "contacts than the activity limit (see activity_suppressions)",
        "requests": "HTTP requests sent to the Dynamics Web API",
        "retries": "Requests retried after throttling or a transient error",
        "throttle_wait_s": "Seconds spent waiting on Retry-After (429 throttling)",
        "record_errors": "Records skipped because a value does not fit its column "
        "(listed in sync_errors)",
        "error": "Why a failed cycle failed, and what to do; NULL on success",
        "accounts_filtered": "Accounts read with the sync filter at No: not created, or "
        "left stale (sync_filtered)",
        "contacts_filtered": "Contacts read with the sync filter at No: not created, or "
        "left stale (sync_filtered)",
        "updates_blocked": "Account fields Dynamics changed whose contacts kept their value "
        "(block_field_updates: dynamics_sync)",
    },
    "sync_fields": {
        "entity": "account or contact",
        "field": "Logical name of the Dynamics attribute",
        "selected": "Listed in the settings file's account_fields or contact_fields",
        "exists": "The org's metadata has the attribute",
        "readable": "The sync user may read it (valid for read, and column security allows it)",
        "synced": "It has columns in accounts/contacts and is read every cycle (selected and "
        "readable, or a system field dynsync always keeps)",
        "reason": "Why it syncs or not, with the fix when it does not",
        "attribute_type": "Dynamics attribute type (String, Money, Picklist, Lookup, ...)",
        "is_secured": "Protected by column (field) security in Dynamics",
        "duckdb_type": "The DuckDB type of its value column; NULL when not synced",
        "columns": "The columns it fills (value, and a choice's label or a lookup's target)",
        "run_id": "The cycle that made this decision",
        "updated_at": "When that cycle made it (UTC)",
    },
}


def describe(plan: FieldPlan, table: str) -> dict[str, str]:
    """What each column of `table` holds, for the column schema Dagster shows."""
    if table in _FIXED_DESCRIPTIONS:
        return dict(_FIXED_DESCRIPTIONS[table])
    described = {s.column: s.description for s in column_sources(plan) if s.table == table}
    for col, text in _BASE_DESCRIPTIONS.items():
        described.setdefault(col, text)
    return described
