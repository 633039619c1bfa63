"""Where each stored column comes from: the chain back to a Dynamics attribute."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from .fields import SYSTEM_FIELDS, FieldPlan
from .store import BASE_COLUMNS, insert_values

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


@dataclass(frozen=True)
class ColumnSource:
    table: str
    column: str
    source_table: str  # "dynamics.account", "dynamics.contact", "accounts", ...
    source_column: str
    description: str


def column_sources(plan: FieldPlan) -> list[ColumnSource]:
    out: list[ColumnSource] = []
    for table, entity in (("accounts", "account"), ("contacts", "contact")):
        for col in BASE_COLUMNS[table]:
            if col in SYSTEM_FIELDS[entity]:
                api = f"_{col}_value" if col in ("parentcustomerid",) else col
                out.append(
                    ColumnSource(
                        table,
                        col,
                        f"dynamics.{entity}",
                        api,
                        f"{_BASE_DESCRIPTIONS.get(col, col)}; from Dynamics {entity}.{api}",
                    )
                )
        for f in plan.synced(entity):
            out.append(
                ColumnSource(
                    table,
                    f.name,
                    f"dynamics.{entity}",
                    f.api_name,
                    f"Dynamics {entity}.{f.name} ({f.type_name})",
                )
            )
            if f.label_column:
                out.append(
                    ColumnSource(
                        table,
                        f.label_column,
                        f"dynamics.{entity}",
                        f.api_name,
                        f"Label of {entity}.{f.name} (its FormattedValue)",
                    )
                )
            if f.target_column:
                out.append(
                    ColumnSource(
                        table,
                        f.target_column,
                        f"dynamics.{entity}",
                        f.api_name,
                        f"Table {entity}.{f.name} points to (lookuplogicalname)",
                    )
                )
    out.append(
        ColumnSource(
            "contacts",
            "accountid",
            "dynamics.contact",
            "_parentcustomerid_value",
            "The contact's account: its parent customer when that is an account",
        )
    )
    for f in plan.synced("account"):
        for col, _t in f.columns():
            out.append(
                ColumnSource(
                    "contacts",
                    f"account_{col}",
                    "accounts",
                    col,
                    f"Copied from accounts.{col} of the contact's account "
                    f"(Dynamics account.{f.name}), or a pending local edit",
                )
            )
    return out


def write_lineage(con: duckdb.DuckDBPyConnection, plan: FieldPlan, now: datetime) -> None:
    """Replace the column_lineage table: one row per stored column and the column it comes from."""
    rows = [
        (s.table, s.column, s.source_table, s.source_column, s.description, now)
        for s in column_sources(plan)
    ]
    for f in plan.synced("account"):
        for col in ("old_value", "new_value"):
            rows.append(
                (
                    "activity_log",
                    col,
                    "contacts",
                    f"account_{f.name}",
                    f"When attribute = '{f.name}': the value of contacts.account_{f.name} "
                    f"{'before' if col == 'old_value' else 'after'} the change, as text",
                    now,
                )
            )
    con.execute("DELETE FROM column_lineage")
    insert_values(con, "column_lineage", rows)


def trace(con: duckdb.DuckDBPyConnection, table: str, column: str) -> list[tuple[str, str, str]]:
    """The chain from a stored column back to its Dynamics attribute: (table, column, how)."""
    chain: list[tuple[str, str, str]] = []
    frontier = [(table, column)]
    seen = set()
    while frontier:
        t, c = frontier.pop(0)
        if (t, c) in seen:
            continue
        seen.add((t, c))
        rows = con.execute(
            "SELECT source_table, source_column, description FROM column_lineage "
            "WHERE table_name = ? AND column_name = ? ORDER BY source_column",
            [t, c],
        ).fetchall()
        for source_table, source_column, description in rows:
            chain.append((source_table, source_column, description))
            if not source_table.startswith("dynamics."):
                frontier.append((source_table, source_column))
    return chain


def describe(plan: FieldPlan, table: str) -> dict[str, str]:
    described = {s.column: s.description for s in column_sources(plan) if s.table == table}
    for col, text in _BASE_DESCRIPTIONS.items():
        described.setdefault(col, text)
    return described
