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


def describe(plan: FieldPlan, table: str) -> dict[str, str]:
    described = {s.column: s.description for s in column_sources(plan) if s.table == table}
    for col, text in _BASE_DESCRIPTIONS.items():
        described.setdefault(col, text)
    return described
