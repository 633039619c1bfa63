"""The Change Data Value activity log: what a row holds, and the one writer of its rows.

Both writers use it: the cycle's rules (source `Dynamics sync`) and local edits (source
`Local update`). README.md, `activity_log`, says what a row means.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from dynsync_dagster.store.schema import literal

ACTIVITY_TYPE = "Change Data Value"

SOURCE_SYNC = "Dynamics sync"
SOURCE_LOCAL = "Local update"

REASON_ACCOUNT_UPDATED = "Account updated in Dynamics"
REASON_JOINED = "Contact joined an account in Dynamics"
REASON_MOVED = "Contact moved to another account in Dynamics"
REASON_LEFT = "Contact no longer has an account in Dynamics"
# A deleted contact brought back (Dataverse restore, or seen again after a full read missed
# it): the account values it kept may be out of date.
REASON_RESTORED = "Contact restored in Dynamics"
REASON_LOCAL = "Account field edited locally (not sent to Dynamics)"

# What a writer's rows give, by these names; the writer adds the type, source and run.
ROW_COLUMNS = (
    "contactid",
    "accountid",
    "attribute",
    "old_value",
    "new_value",
    "reason",
    "occurred_at",
)


def activity_value_sql(value: str, duck_type: str, label: str | None = None) -> str:
    """SQL for an activity row's old or new value, as Dynamics (and Marketo's Change Data
    Value) shows it: the one rule for every writer of activity rows.

    `value` is an SQL expression of the stored type `duck_type`; `label` is, for a choice, an
    SQL expression of its label.
    - A choice shows its label. An option without a known label shows its code, so that a
      value never reads as cleared.
    - Money and decimals show the digits the value needs: no trailing zeros after the point
      and no point for a whole number (`1234.5`, `3096917551.66`, `12`, `0`, `-0.01`). The
      store keeps money at Dataverse's four decimals, which is storage, not the value.
    - Everything else is DuckDB's text for the stored value.
    The choice's code is not repeated on the activity row: `contacts` keeps the code beside
    the label, and `choice_labels` maps an attribute's label back to its code.
    """
    text = f"CAST({value} AS VARCHAR)"
    if label is not None:
        return f"coalesce({label}, {text})"
    if duck_type.strip().upper().startswith("DECIMAL"):
        # A DECIMAL of scale 0 has no point, and its zeros are significant.
        return (
            f"CASE WHEN contains({text}, '.') THEN rtrim(rtrim({text}, '0'), '.') ELSE {text} END"
        )
    return text


def log_activity(
    con: duckdb.DuckDBPyConnection,
    rows: str,
    source: str,
    *,
    run_id: str | None,
    logged_at: datetime,
    params: dict | None = None,
) -> int:
    """Write `rows`, a SELECT giving ROW_COLUMNS, as `source`'s activity rows; return how many.

    `params` are the named parameters `rows` uses.
    """
    given = ", ".join(ROW_COLUMNS)
    inserted = con.execute(
        f"""
        INSERT INTO activity_log (activity_type, source, run_id, logged_at, {given})
        SELECT {literal(ACTIVITY_TYPE)}, {literal(source)}, $activity_run, $activity_logged_at,
               {given}
        FROM ({rows})
        """,  # no ORDER BY: sorting 500,000 rows costs more than writing them
        {**(params or {}), "activity_run": run_id, "activity_logged_at": logged_at},
    )
    return int(inserted.fetchone()[0])  # DuckDB returns the number of rows an INSERT wrote
