"""Integrity checks on the store, as plain SQL: what the Dagster asset checks report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from dynsync_dagster.store.schema import BASE_COLUMNS, literal, quote, table_columns

FRESHNESS = timedelta(minutes=15)


@dataclass(frozen=True)
class Finding:
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


# A contact's account is stored, or was kept out by the sync filter (filtered_records), or
# was set aside before it was ever stored (a value its column cannot hold: sync_errors).
_DANGLING = """
    FROM contacts c WHERE NOT c.is_deleted AND c.accountid IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.accountid = c.accountid)
    AND NOT EXISTS (SELECT 1 FROM filtered_records f
                    WHERE f.entity = 'account' AND f.record_id = c.accountid)
    AND NOT EXISTS (SELECT 1 FROM sync_errors e
                    WHERE e.entity = 'account' AND e.record_id = CAST(c.accountid AS VARCHAR))
"""


def contacts_reference_accounts(con: duckdb.DuckDBPyConnection) -> Finding:
    rows = con.execute(
        "SELECT CAST(c.contactid AS VARCHAR), CAST(c.accountid AS VARCHAR) "
        f"{_DANGLING} ORDER BY 1 LIMIT 20"
    ).fetchall()
    dangling = con.execute(f"SELECT count(*) {_DANGLING}").fetchone()[0]
    kept_out = con.execute(
        "SELECT count(*) FROM contacts c WHERE NOT c.is_deleted AND c.accountid IN "
        "(SELECT record_id FROM filtered_records WHERE entity = 'account')"
    ).fetchone()[0]
    return Finding(
        dangling == 0,
        (
            "every contact's account is in `accounts`"
            + (f" or kept out by the sync filter ({kept_out} contacts)" if kept_out else "")
        )
        if dangling == 0
        else f"{dangling} contact(s) point at an account that is not stored",
        {
            "dangling_contacts": int(dangling),
            "contacts_of_filtered_accounts": int(kept_out),
            "examples": [list(r) for r in rows],
        },
    )


def synced_account_fields(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Synced account field -> its DuckDB type, from sync_fields."""
    return dict(
        con.execute(
            "SELECT field, duckdb_type FROM sync_fields WHERE entity = 'account' AND synced AND selected"
        ).fetchall()
    )


def propagation_consistent(con: duckdb.DuckDBPyConnection) -> Finding:
    """Each contact's account_<field> equals its account's value, or the pending local edit.

    One pass over the contacts for all fields (a query per field read them once per field).
    """
    fields = synced_account_fields(con)
    columns = table_columns(con, "contacts")
    checked = [(n, t) for n, t in fields.items() if f"account_{n}" in columns]
    mismatched: dict[str, int] = {}
    if checked:
        pivot = ", ".join(
            f"count(*) FILTER (WHERE field = {literal(n)}) > 0 AS has{i}, "
            f"any_value(value) FILTER (WHERE field = {literal(n)}) AS v{i}"
            for i, (n, _t) in enumerate(checked)
        )
        counts = ", ".join(
            f"count(*) FILTER (WHERE c.{quote('account_' + n)} IS DISTINCT FROM "
            f"CASE WHEN coalesce(e.has{i}, false) THEN CAST(e.v{i} AS {t}) "
            f"ELSE a.{quote(n)} END)"
            for i, (n, t) in enumerate(checked)
        )
        row = con.execute(
            f"""
            SELECT {counts} FROM contacts c
            LEFT JOIN accounts a ON a.accountid = c.accountid
            LEFT JOIN (SELECT accountid, {pivot} FROM local_edits GROUP BY accountid) e
                ON e.accountid = c.accountid
            WHERE NOT c.is_deleted
            """
        ).fetchone()
        mismatched = {f"account_{n}": int(k) for (n, _t), k in zip(checked, row, strict=True) if k}
    return Finding(
        not mismatched,
        "every propagated value equals its account's (or a pending local edit)"
        if not mismatched
        else f"propagated values differ from their account in {sorted(mismatched)}",
        {"mismatched_by_column": mismatched, "fields_checked": len(fields)},
    )


def only_synced_columns(con: duckdb.DuckDBPyConnection) -> Finding:
    """No unselected or unreadable column in accounts or contacts."""
    synced = {
        (e, f): cols
        for e, f, cols in con.execute(
            "SELECT entity, field, columns FROM sync_fields WHERE synced AND selected"
        ).fetchall()
    }
    allowed = {"accounts": set(BASE_COLUMNS["accounts"]), "contacts": set(BASE_COLUMNS["contacts"])}
    for (entity, _f), cols in synced.items():
        for c in cols or []:
            if entity == "account":
                allowed["accounts"].add(c)
                allowed["contacts"].add(f"account_{c}")
            else:
                allowed["contacts"].add(c)
    extra = {table: sorted(set(table_columns(con, table)) - allowed[table]) for table in allowed}
    extra = {t: cols for t, cols in extra.items() if cols}
    return Finding(
        not extra,
        "only synced fields have columns"
        if not extra
        else f"columns that should not be there: {extra}",
        {"unexpected_columns": extra},
    )


def no_duplicate_activity(con: duckdb.DuckDBPyConnection) -> Finding:
    key = "contactid, attribute, old_value, new_value, source, occurred_at"
    # Equal rows hash equally, so as many distinct hashes as rows proves there is no duplicate,
    # at a third of the cost of grouping the whole log on six columns. Only a shortfall
    # (a duplicate, or a hash collision) needs the exact count.
    shortfall = con.execute(
        f"SELECT count(*) - count(DISTINCT hash({key})) FROM activity_log"
    ).fetchone()[0]
    dupes = 0
    if shortfall:
        dupes = con.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM activity_log GROUP BY {key} HAVING count(*) > 1)"
        ).fetchone()[0]
    return Finding(
        dupes == 0,
        "no activity row is logged twice"
        if dupes == 0
        else f"{dupes} activity row(s) appear twice",
        {"duplicate_groups": int(dupes)},
    )


def last_cycle_fresh(
    con: duckdb.DuckDBPyConnection,
    now: datetime | None = None,
    confirmed_at: datetime | None = None,
) -> Finding:
    """`confirmed_at`: when a later cycle found the published file current. A cycle that
    changed nothing does not republish (publish.py), so its sync_runs row is not in this file."""
    now = now or datetime.now(UTC)
    row = con.execute(
        "SELECT max(finished_at) FROM sync_runs WHERE outcome = 'success' AND window_start IS NULL"
    ).fetchone()
    last = max((t for t in (row[0] if row else None, confirmed_at) if t is not None), default=None)
    if last is None:
        return Finding(False, "no cycle has committed yet", {})
    age = now - last
    return Finding(
        age <= FRESHNESS,
        f"last committed cycle {int(age.total_seconds())} s ago (limit {int(FRESHNESS.total_seconds())} s)",
        {"last_cycle_at": last.isoformat(), "age_s": round(age.total_seconds(), 1)},
    )
