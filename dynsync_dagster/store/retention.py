"""Activity retention: delete Change Data Value rows older than `activity_log_retention_days`.

Marketo deletes Change Data Value activities 90 days after they happened; dynsync keeps them
until a retention is set. Age is measured on `occurred_at`, the activity's own time (the
Dynamics `modifiedon`, or the local edit's time), as Marketo's activity date is: a change
read late is not kept longer for it. Each purge is one transaction through `writing()`, under
the cycle lock (so never in the middle of a cycle), and leaves a row in `activity_purges`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from dynsync_dagster.store.connection import (
    StoreNotReadyError,
    cycle_lock,
    not_yet_synced,
    private_files,
)
from dynsync_dagster.store.publish import bump_generation, writing
from dynsync_dagster.store.schema import ensure_fixed_tables

PURGES_TABLE = """
CREATE TABLE IF NOT EXISTS activity_purges (
    purged_at TIMESTAMPTZ NOT NULL,
    retention_days INTEGER NOT NULL,
    cutoff TIMESTAMPTZ NOT NULL,
    rows_deleted BIGINT NOT NULL,
    rows_kept BIGINT NOT NULL,
    trigger VARCHAR,
    run_id VARCHAR
)
"""


@dataclass(frozen=True)
class PurgeResult:
    """What one purge did. `retention_days` None: retention is off and nothing was touched."""

    retention_days: int | None
    cutoff: datetime | None = None
    rows_deleted: int = 0
    rows_kept: int = 0
    purged_at: datetime | None = None

    def summary(self) -> str:
        """One line for the CLI and the run log."""
        if self.retention_days is None:
            return (
                "activity retention is off (activity_log_retention_days is not set): nothing "
                "deleted; set it in the settings file to delete older activity rows"
            )
        return (
            f"deleted {self.rows_deleted} activity row(s) that occurred before "
            f"{self.cutoff:%Y-%m-%d %H:%M} UTC ({self.retention_days} day"
            f"{'' if self.retention_days == 1 else 's'}); "
            f"{self.rows_kept} kept"
        )


def purge_activity(
    published: Path,
    retention_days: int | None,
    *,
    trigger: str = "cli",
    run_id: str | None = None,
    now: datetime | None = None,
    wait_s: float = 60.0,
) -> PurgeResult:
    """Delete activity_log rows that occurred more than `retention_days` days before `now`,
    and record the purge. Waits for a running cycle (up to `wait_s`) rather than interleave."""
    if retention_days is None:
        return PurgeResult(None)
    published = Path(published)
    if missing := not_yet_synced(published):
        raise StoreNotReadyError(missing)
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    with (
        private_files(),
        cycle_lock(published, wait_s),
        writing(published, wait_s=wait_s, run_id=run_id) as session,
    ):
        con = session.con
        ensure_fixed_tables(con)
        con.execute(PURGES_TABLE)
        con.execute("BEGIN TRANSACTION")
        try:
            deleted, kept = _delete_older(con, cutoff)
            con.execute(
                "INSERT INTO activity_purges VALUES (?, ?, ?, ?, ?, ?, ?)",
                [now, retention_days, cutoff, deleted, kept, trigger, run_id],
            )
            bump_generation(con, run_id, now)  # readers see the purge and its record
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return PurgeResult(retention_days, cutoff, deleted, kept, now)


def _delete_older(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> tuple[int, int]:
    deleted = con.execute("DELETE FROM activity_log WHERE occurred_at < ?", [cutoff]).fetchone()[0]
    kept = con.execute("SELECT count(*) FROM activity_log").fetchone()[0]
    return int(deleted), int(kept)


def last_purge(con: duckdb.DuckDBPyConnection) -> tuple | None:
    """(purged_at, retention_days, rows_deleted) of the latest purge, or None."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'activity_purges'"
    ).fetchone()[0]
    if not exists:
        return None
    return con.execute(
        "SELECT purged_at, retention_days, rows_deleted FROM activity_purges "
        "ORDER BY purged_at DESC LIMIT 1"
    ).fetchone()
