"""`dynsync status`: Marketo's Sync Status tab on the command line."""

from __future__ import annotations

from dynsync_dagster.commands.runs import dagster_home
from dynsync_dagster.settings import ConnectionSettings, duckdb_path
from dynsync_dagster.store.sync_status import collect_status


def status_report() -> str:
    """The status lines, headed by the store they describe."""
    from dynsync_dagster.defs.schedule_state import schedule_state_at  # Dagster: when asked

    db = duckdb_path()
    status = collect_status(db, ConnectionSettings.from_env, schedule_state_at(dagster_home()))
    return "\n".join([f"Sync Status of {db}", *(f"  {line}" for line in status.lines())])
